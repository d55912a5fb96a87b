package store

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// How Watch works on Redis.
//
// Each Watch holds one pub/sub connection of its own and a feed (watch.go).
//
// With keyspace notifications (the usual case: OpenRedis turns them on), the
// connection PSUBSCRIBEs to __keyspace@<db>__:weft:<prefix>*, so the server
// itself sends the watcher every change under its prefix, made by any client
// on any node: "set" for Put, PutTTL and a PutIfAbsent that stored, "del" for
// Delete, "expired" when a TTL runs out (and "evicted" under maxmemory).
// Redis removes an expired key when a client touches it or when its active
// expiry cycle (10 times a second, sampling) finds it, so an expiry is
// reported within about 100 ms of the deadline on a lightly loaded server,
// later on one with millions of volatile keys.
//
// Without them (a managed Redis that refuses CONFIG SET), every write is
// followed, in the same MULTI/EXEC, by a PUBLISH on weft:changes:<db> of "p"
// or "d" and the key, and every watcher SUBSCRIBEs to that channel and keeps
// the keys under its prefix. Expiries produce no message in that mode: watchers
// get a Resync every resyncEvery (5 s), and learn of expired keys by listing
// again. Writes made by other clients, outside weft, are not seen at all.
//
// Either way, pub/sub is fire-and-forget: messages sent while a watcher is
// disconnected are lost. A watcher whose connection fails, or stays silent
// past a ping, reconnects with backoff and, once subscribed again, delivers a
// Resync. On reconnection it also turns keyspace notifications on again,
// since a restarted server has forgotten them.

// defaultResyncEvery is how often a watcher without keyspace notifications
// gets a Resync (its only news of expiries).
const defaultResyncEvery = 5 * time.Second

// pingEvery is how long a watcher's connection may stay silent before it is
// pinged; a ping unanswered for as long again means the connection is dead.
const pingEvery = 15 * time.Second

// Reconnection backoff of a watcher: doubling from the first to the last.
const (
	reconnectFirst = 50 * time.Millisecond
	reconnectMax   = 2 * time.Second
)

// Watch implements Store; see the comment at the top of redis_watch.go.
func (r *Redis) Watch(ctx context.Context, prefix string) (<-chan Change, error) {
	if err := r.acquire(ctx); err != nil {
		return nil, fmt.Errorf("watch %q: %w", prefix, err)
	}
	defer r.mu.RUnlock()
	ps, err := r.subscribe(ctx, prefix)
	if err != nil {
		return nil, fmt.Errorf("watch %q: %w", prefix, err)
	}
	f := newFeed(prefix)
	r.watch.start(ctx, f.run, func(ctx context.Context) { r.receive(ctx, ps, f) })
	return f.out, nil
}

// subscribe opens a pub/sub connection for a watcher of prefix and returns
// once the server has confirmed the subscription: from then on, every change
// is sent to it.
func (r *Redis) subscribe(ctx context.Context, prefix string) (*redis.PubSub, error) {
	var ps *redis.PubSub
	if r.keyspace {
		ps = r.client.PSubscribe(ctx, r.keyspacePattern(prefix))
	} else {
		ps = r.client.Subscribe(ctx, r.changes)
	}
	stop := context.AfterFunc(ctx, func() { _ = ps.Close() }) // unblocks the read
	msg, err := ps.ReceiveTimeout(ctx, openTimeout)
	stop()
	if err == nil {
		if _, ok := msg.(*redis.Subscription); !ok {
			err = fmt.Errorf("subscribe: got %T before the confirmation", msg)
		}
	}
	if err != nil {
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return nil, errors.Join(fmt.Errorf("subscribe: %w", err), ps.Close())
	}
	return ps, nil
}

// keyspacePattern is the PSUBSCRIBE pattern of the keyspace channels of the
// keys under prefix.
func (r *Redis) keyspacePattern(prefix string) string {
	return fmt.Sprintf("__keyspace@%d__:", r.db) + globEscape(namespace+prefix) + "*"
}

// receive reads ps into f until ctx ends, reconnecting when the connection
// fails. It owns ps and closes it.
func (r *Redis) receive(ctx context.Context, ps *redis.PubSub, f *feed) {
	backoff := reconnectFirst
	for {
		err := r.receiveOn(ctx, ps, f)
		_ = ps.Close()
		if ctx.Err() != nil {
			return
		}
		r.log.Warn("store watch: redis connection lost; reconnecting", "prefix", f.prefix, "err", err)
		for {
			t := time.NewTimer(backoff)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			backoff = min(2*backoff, reconnectMax)
			if ps, err = r.subscribe(ctx, f.prefix); err == nil {
				break
			}
			if ctx.Err() != nil {
				return
			}
		}
		backoff = reconnectFirst
		r.resubscribed(ctx, f)
	}
}

// resubscribed runs once a watcher is subscribed again after losing its
// connection: changes may have been missed, and a restarted server has
// forgotten its keyspace-notification setting.
func (r *Redis) resubscribed(ctx context.Context, f *feed) {
	if r.keyspace {
		if err := r.enableKeyspaceEvents(ctx); err != nil && ctx.Err() == nil {
			r.log.Warn("store watch: turn keyspace notifications on again", "err", err)
		}
	}
	r.log.Info("store watch: redis connection back; watcher resyncs", "prefix", f.prefix)
	f.push(Change{Resync: true})
}

// receiveOn reads ps into f until ctx ends (nil) or the connection fails.
func (r *Redis) receiveOn(ctx context.Context, ps *redis.PubSub, f *feed) error {
	stop := context.AfterFunc(ctx, func() { _ = ps.Close() }) // unblocks the read
	defer stop()
	var nextResync time.Time // zero with keyspace notifications: no periodic resync
	if !r.keyspace {
		nextResync = time.Now().Add(r.resyncEvery)
	}
	lastHeard, pingSent := time.Now(), time.Time{}
	for {
		wait := pingEvery
		if !nextResync.IsZero() {
			wait = max(min(wait, time.Until(nextResync)), time.Millisecond)
		}
		msg, err := ps.ReceiveTimeout(ctx, wait)
		if ctx.Err() != nil {
			return nil
		}
		if !nextResync.IsZero() && !time.Now().Before(nextResync) {
			f.push(Change{Resync: true})
			nextResync = time.Now().Add(r.resyncEvery)
		}
		switch {
		case isTimeout(err):
			switch {
			case !pingSent.IsZero() && time.Since(pingSent) >= pingEvery:
				return fmt.Errorf("no answer to ping in %v", pingEvery)
			case pingSent.IsZero() && time.Since(lastHeard) >= pingEvery:
				if err := ps.Ping(ctx); err != nil {
					return err
				}
				pingSent = time.Now()
			}
			continue
		case err != nil:
			return err
		}
		lastHeard, pingSent = time.Now(), time.Time{}
		switch m := msg.(type) {
		case *redis.Subscription:
			// go-redis reconnected by itself and subscribed again.
			r.resubscribed(ctx, f)
		case *redis.Message:
			if c, ok := r.decode(m); ok {
				f.push(c)
			}
		}
	}
}

// decode turns a keyspace notification or a fallback message into a Change.
func (r *Redis) decode(m *redis.Message) (Change, bool) {
	if !r.keyspace {
		return decodeChange(m.Payload)
	}
	key, ok := strings.CutPrefix(m.Channel, fmt.Sprintf("__keyspace@%d__:%s", r.db, namespace))
	if !ok {
		return Change{}, false
	}
	switch m.Payload {
	case "del", "expired", "evicted", "rename_from", "move_from":
		return Change{Key: key, Deleted: true}, true
	case "expire", "persist", "new":
		return Change{}, false // the TTL changed, or nothing yet: no new value
	default: // set, and any other command that changes a value
		return Change{Key: key}, true
	}
}

// encodeChange and decodeChange are the fallback's message format: "p" (put)
// or "d" (deleted), then the key.
func encodeChange(key string, deleted bool) string {
	if deleted {
		return "d" + key
	}
	return "p" + key
}

func decodeChange(msg string) (Change, bool) {
	if len(msg) < 2 || msg[0] != 'p' && msg[0] != 'd' {
		return Change{}, false
	}
	return Change{Key: msg[1:], Deleted: msg[0] == 'd'}, true
}

// enableKeyspaceEvents adds the notification classes Watch needs to the
// server's notify-keyspace-events, keeping those already set: K (keyspace
// channels), g (del, expire), $ (set), x (expired), e (evicted).
func (r *Redis) enableKeyspaceEvents(ctx context.Context) error {
	const param = "notify-keyspace-events"
	cur, err := r.client.ConfigGet(ctx, param).Result()
	if err != nil {
		return err
	}
	flags := cur[param]
	want := keyspaceFlags(flags)
	if want == flags {
		return nil
	}
	return r.client.ConfigSet(ctx, param, want).Err()
}

// keyspaceFlags returns flags with the classes Watch needs added. "A" stands
// for every class, g, $, x and e included.
func keyspaceFlags(flags string) string {
	need := "Kg$xe"
	if strings.Contains(flags, "A") {
		need = "K"
	}
	for _, c := range need {
		if !strings.ContainsRune(flags, c) {
			flags += string(c)
		}
	}
	return flags
}

// isTimeout reports whether err is a read that timed out, as ReceiveTimeout
// returns when nothing arrived in time; the connection is still good.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
