package store

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// namespace prefixes every key weft stores in Redis, so that weft can share a
// server (or a database) with other users, and List and Watch never see their
// keys.
const namespace = "weft:"

// Batch sizes of List: SCAN's COUNT hint and the keys per MGET. Both bound
// the work per round trip, so one List never blocks the server for long.
const (
	scanCount = 1000
	mgetBatch = 500
)

// openTimeout bounds OpenRedis's round trips (PING and the configuration of
// keyspace notifications): a server that does not answer in that time is
// reported instead of hanging a node's start-up.
const openTimeout = 10 * time.Second

// Redis is the Store shared by several nodes: keys live on one Redis server
// (or a managed equivalent), under the "weft:" prefix of one database. It is
// safe for concurrent use; create it with OpenRedis and release it with
// Close. The zero value is not usable.
//
// Writes are single commands (SET, SET PX, SET NX PX, DEL), atomic on the
// server; how durable they are is the server's configuration (appendfsync).
// Watch uses keyspace notifications when the server allows them, otherwise
// messages that every handle publishes; see redis_watch.go.
type Redis struct {
	client *redis.Client
	db     int // the database number, which names the keyspace channels
	log    *slog.Logger

	// keyspace is true if the server sends keyspace notifications (OpenRedis
	// configured them); false means the fallback: writes publish to
	// changes. Set before OpenRedis returns, then read-only.
	keyspace bool
	// changes is the fallback's pub/sub channel, "weft:changes:<db>": pub/sub
	// ignores database numbers, so the channel names the database.
	changes string
	// resyncEvery is how often fallback watchers get a Resync, which is how
	// they learn of expiries. Set at open, then read-only.
	resyncEvery time.Duration

	// mu's read side is held by every call in progress and its write side by
	// Close while it marks the store closed, so Close never closes the
	// client under a running call. closed is guarded by mu. Lock order: mu,
	// then the watchers' own lock.
	mu     sync.RWMutex
	closed bool
	watch  watchers

	closeOnce sync.Once
	closeErr  error
}

var _ Store = (*Redis)(nil)

// OpenRedis connects to the Redis server named by url, in the form
// redis://[[user]:password@]host[:port][/db] (rediss:// for TLS; the query
// options of go-redis's ParseURL, such as dial_timeout, are accepted). It
// checks that the server answers, and turns on the keyspace notifications
// that Watch relies on (notify-keyspace-events gains "Kg$xe", keeping flags
// already set). A server that refuses CONFIG (managed Redis often does) is
// used anyway, with the fallback Watch described in redis_watch.go, and a
// warning is logged. log nil discards the store's messages.
func OpenRedis(url string, log *slog.Logger) (*Redis, error) {
	return openRedis(url, log, defaultResyncEvery)
}

func openRedis(url string, log *slog.Logger, resyncEvery time.Duration) (*Redis, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	opts, err := redis.ParseURL(url)
	if err != nil {
		return nil, fmt.Errorf("open redis store: %w", err)
	}
	where := opts.Addr + "/" + fmt.Sprint(opts.DB) // never the password
	r := &Redis{
		client:      redis.NewClient(opts),
		db:          opts.DB,
		log:         log,
		changes:     fmt.Sprintf("%schanges:%d", namespace, opts.DB),
		resyncEvery: resyncEvery,
	}
	ctx, cancel := context.WithTimeout(context.Background(), openTimeout)
	defer cancel()
	if err := r.client.Ping(ctx).Err(); err != nil {
		return nil, errors.Join(fmt.Errorf("open redis store at %s: %w", where, err), r.client.Close())
	}
	switch err := r.enableKeyspaceEvents(ctx); {
	case err == nil:
		r.keyspace = true
	case isServerError(err):
		log.Warn("store: redis refuses to turn on keyspace notifications; watchers fall back to published changes and learn of expiries only by periodic resync",
			"addr", where, "resync_every", resyncEvery, "err", err)
	default:
		return nil, errors.Join(fmt.Errorf("open redis store at %s: %w", where, err), r.client.Close())
	}
	return r, nil
}

// Get implements Store.
func (r *Redis) Get(ctx context.Context, key string) ([]byte, error) {
	if err := r.begin(ctx, key); err != nil {
		return nil, fmt.Errorf("get %q: %w", key, err)
	}
	defer r.mu.RUnlock()
	v, err := r.client.Get(ctx, namespace+key).Bytes()
	switch {
	case errors.Is(err, redis.Nil):
		return nil, fmt.Errorf("get %q: %w", key, ErrNotFound)
	case err != nil:
		return nil, fmt.Errorf("get %q: %w", key, err)
	case v == nil:
		v = []byte{}
	}
	return v, nil
}

// Put implements Store with SET, which clears any TTL.
func (r *Redis) Put(ctx context.Context, key string, value []byte) error {
	if err := r.begin(ctx, key); err != nil {
		return fmt.Errorf("put %q: %w", key, err)
	}
	defer r.mu.RUnlock()
	err := r.write(ctx, key, false, func(c redis.Cmdable) redis.Cmder {
		return c.Set(ctx, namespace+key, value, 0)
	})
	if err != nil {
		return fmt.Errorf("put %q: %w", key, err)
	}
	return nil
}

// PutTTL implements Store with SET PX (EX for whole seconds); a ttl under a
// millisecond counts as one.
func (r *Redis) PutTTL(ctx context.Context, key string, value []byte, ttl time.Duration) error {
	if err := r.begin(ctx, key); err != nil {
		return fmt.Errorf("put %q with ttl: %w", key, err)
	}
	defer r.mu.RUnlock()
	if err := checkTTL(ttl, false); err != nil {
		return fmt.Errorf("put %q with ttl: %w", key, err)
	}
	err := r.write(ctx, key, false, func(c redis.Cmdable) redis.Cmder {
		return c.Set(ctx, namespace+key, value, redisTTL(ttl))
	})
	if err != nil {
		return fmt.Errorf("put %q with ttl: %w", key, err)
	}
	return nil
}

// PutIfAbsent implements Store with SET NX (and PX for a ttl), which the
// server runs atomically.
func (r *Redis) PutIfAbsent(ctx context.Context, key string, value []byte, ttl time.Duration) (bool, error) {
	if err := r.begin(ctx, key); err != nil {
		return false, fmt.Errorf("put %q if absent: %w", key, err)
	}
	defer r.mu.RUnlock()
	if err := checkTTL(ttl, true); err != nil {
		return false, fmt.Errorf("put %q if absent: %w", key, err)
	}
	var cmd *redis.BoolCmd
	err := r.write(ctx, key, false, func(c redis.Cmdable) redis.Cmder {
		cmd = c.SetNX(ctx, namespace+key, value, redisTTL(ttl))
		return cmd
	})
	if err != nil {
		return false, fmt.Errorf("put %q if absent: %w", key, err)
	}
	return cmd.Val(), nil
}

// Delete implements Store with DEL.
func (r *Redis) Delete(ctx context.Context, key string) error {
	if err := r.begin(ctx, key); err != nil {
		return fmt.Errorf("delete %q: %w", key, err)
	}
	defer r.mu.RUnlock()
	err := r.write(ctx, key, true, func(c redis.Cmdable) redis.Cmder {
		return c.Del(ctx, namespace+key)
	})
	if err != nil {
		return fmt.Errorf("delete %q: %w", key, err)
	}
	return nil
}

// List implements Store: SCAN with a MATCH pattern in which the prefix is
// escaped, then MGET in batches. SCAN guarantees every key present for the
// whole scan, but may return a key twice, and keys deleted between SCAN and
// MGET come back nil; both are handled. Keys are sorted here, because SCAN's
// order is the hash table's.
func (r *Redis) List(ctx context.Context, prefix string) ([]KV, error) {
	if err := r.acquire(ctx); err != nil { // a prefix is not a key: any is valid
		return nil, fmt.Errorf("list %q: %w", prefix, err)
	}
	defer r.mu.RUnlock()
	kvs, err := r.list(ctx, prefix)
	if err != nil {
		return nil, fmt.Errorf("list %q: %w", prefix, err)
	}
	return kvs, nil
}

func (r *Redis) list(ctx context.Context, prefix string) ([]KV, error) {
	match := globEscape(namespace+prefix) + "*"
	seen := make(map[string]struct{})
	var keys []string
	for cursor := uint64(0); ; {
		page, next, err := r.client.Scan(ctx, cursor, match, scanCount).Result()
		if err != nil {
			return nil, err
		}
		for _, k := range page {
			if _, dup := seen[k]; !dup {
				seen[k] = struct{}{}
				keys = append(keys, k)
			}
		}
		if cursor = next; cursor == 0 {
			break
		}
	}
	slices.Sort(keys) // string order is byte order
	var out []KV
	for batch := range slices.Chunk(keys, mgetBatch) {
		vals, err := r.client.MGet(ctx, batch...).Result()
		if err != nil {
			return nil, err
		}
		for i, v := range vals {
			s, ok := v.(string)
			if !ok {
				continue // deleted or expired since SCAN
			}
			out = append(out, KV{Key: strings.TrimPrefix(batch[i], namespace), Value: []byte(s)})
		}
	}
	return out, nil
}

// write runs the one command that cmd queues on c. Without keyspace
// notifications, it wraps the command and a PUBLISH of the change in
// MULTI/EXEC, so that watchers on every node hear of exactly the writes that
// happened (a PutIfAbsent that stored nothing is announced too: a Change that
// altered nothing is allowed).
func (r *Redis) write(ctx context.Context, key string, deleted bool, cmd func(c redis.Cmdable) redis.Cmder) error {
	if r.keyspace {
		return cmd(r.client).Err()
	}
	var c redis.Cmder
	_, err := r.client.TxPipelined(ctx, func(p redis.Pipeliner) error {
		c = cmd(p)
		p.Publish(ctx, r.changes, encodeChange(key, deleted))
		return nil
	})
	if err != nil {
		return err
	}
	return c.Err()
}

// Close implements Store: it waits for calls in progress, ends every Watch
// and closes the connections.
func (r *Redis) Close() error {
	r.closeOnce.Do(func() {
		r.mu.Lock()
		r.closed = true
		r.mu.Unlock()
		r.watch.stopAll()
		if err := r.client.Close(); err != nil {
			r.closeErr = fmt.Errorf("close redis store: %w", err)
		}
	})
	return r.closeErr
}

// acquire checks ctx and takes the read side of mu, so that Close waits for
// the call. On success the caller must call r.mu.RUnlock.
func (r *Redis) acquire(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	r.mu.RLock()
	if r.closed {
		r.mu.RUnlock()
		return ErrClosed
	}
	return nil
}

// begin is acquire for a call that takes a key, which it also checks. A done
// ctx wins over a bad key, as Store documents.
func (r *Redis) begin(ctx context.Context, key string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := checkKey(key); err != nil {
		return err
	}
	return r.acquire(ctx)
}

// redisTTL rounds a positive ttl under Redis's resolution up to 1 ms (go-redis
// would log and send 1 ms anyway); 0 stays "no TTL".
func redisTTL(ttl time.Duration) time.Duration {
	if ttl > 0 && ttl < time.Millisecond {
		return time.Millisecond
	}
	return ttl
}

// globEscape escapes the characters that Redis's glob matching (SCAN MATCH,
// PSUBSCRIBE) treats specially, so the pattern matches s literally.
func globEscape(s string) string {
	var b strings.Builder
	b.Grow(len(s))
	for i := range len(s) {
		switch c := s[i]; c {
		case '*', '?', '[', ']', '\\':
			b.WriteByte('\\')
			b.WriteByte(c)
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

// isServerError reports whether err is an error reply from the server (such
// as an unknown or forbidden command), as opposed to a network failure.
func isServerError(err error) bool {
	var re redis.Error
	return errors.As(err, &re)
}
