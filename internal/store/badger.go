package store

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dgraph-io/badger/v4"
)

// Value-log GC, as Badger's README recommends: every few minutes, rewrite
// files of which at least half is garbage. Small values live in the LSM tree
// and are compacted there; only values over Badger's value threshold reach the
// value log, so a pass is usually a cheap no-op.
const (
	gcInterval     = 5 * time.Minute
	gcDiscardRatio = 0.5
)

// keyPrefix namespaces weft's keys inside the database. Badger refuses keys
// that start with "!badger!"; with the prefix every key a caller gives is
// storable, as it is in Redis, and the rest of the key space stays free for
// the store's own records (a format version, should one ever be needed).
const keyPrefix = "k/"

// metaPut is the user meta of every entry a write stores (see entry).
const metaPut byte = 1

// Badger is the embedded Store: a Badger database in one directory. It is
// safe for concurrent use; create it with OpenBadger and release it with Close.
// The zero value is not usable.
type Badger struct {
	db  *badger.DB
	log *slog.Logger

	// mu's read side is held by every call in progress and its write side by
	// Close while it marks the store closed, so Close never closes the
	// database under a running call. closed is guarded by mu.
	mu     sync.RWMutex
	closed bool

	stop     chan struct{}  // closed by Close: the GC loop returns
	gcDone   sync.WaitGroup // the GC loop; Close waits for it before closing db
	gcPasses atomic.Uint64  // completed GC passes, for tests

	// Watch support (badger_watch.go), started by the first Watch. Lock
	// order: mu, subMu, ttlMu, feedsMu, then a feed's own mutex.
	watch     watchers           // the feeds' delivery goroutines
	subMu     sync.Mutex         // serializes starting the subscription
	subCancel context.CancelFunc // ends the subscription and the sweep; guarded by subMu
	subReady  chan struct{}      // closed once the subscription is in place; guarded by subMu
	readyOnce sync.Once          // closes subReady
	scanned   bool               // TTL keys were loaded into ttls; guarded by subMu
	bg        sync.WaitGroup     // the subscription and the sweep
	ttlMu     sync.Mutex         // also orders the sweep's reports against updates
	ttls      map[string]uint64  // key → expiry (Unix s) of keys with a TTL; guarded by ttlMu
	feedsMu   sync.Mutex
	feeds     map[*feed]struct{} // guarded by feedsMu

	closeOnce sync.Once
	closeErr  error
	// closeWait bounds Close's wait for the database to close: Badger
	// retries a memtable flush that fails (its directory removed, a failing
	// disk) every second, forever, and a node must still stop.
	closeWait time.Duration
	dbClosed  chan struct{} // closed when the database has closed, in time or not
}

// closeWait is Badger.closeWait's value outside tests.
const closeWait = 10 * time.Second

// ErrCloseTimeout is Close's error when the database did not close in time.
// On a disk that is still there, what Badger had not flushed is in its
// write-ahead log, replayed when the store is opened again.
var ErrCloseTimeout = errors.New("database still closing")

var _ Store = (*Badger)(nil)

// OpenBadger opens (creating if needed) the Badger database in dir; the caller
// passes <data>/store. log receives Badger's own warnings and errors (its
// info and debug chatter is dropped); nil discards them. The returned store
// runs value-log GC in a goroutine that Close stops.
//
// Writes are synced: control-plane writes are rare, and an applied resource or
// a CA key must survive kill -9 and power loss once Put has returned.
func OpenBadger(dir string, log *slog.Logger) (*Badger, error) {
	return openBadger(dir, log, gcInterval)
}

func openBadger(dir string, log *slog.Logger, every time.Duration) (*Badger, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	// Badger's defaults are sized for databases of many GB (64 MiB memtables,
	// a 256 MiB block cache, 1 GiB value-log files). Control-plane state is
	// KiB to a few MiB and shares the machine with the broker and workers, so
	// the sizes are cut down; smaller value-log files also give GC a file it
	// can actually rewrite (it never touches the one being written).
	opts := badger.DefaultOptions(dir).
		WithSyncWrites(true).
		WithLogger(badgerLogger{log}).
		WithMemTableSize(8 << 20).
		WithNumMemtables(2).
		WithBlockCacheSize(8 << 20).
		WithValueLogFileSize(64 << 20).
		WithNumCompactors(2)
	db, err := badger.Open(opts)
	if err != nil {
		return nil, fmt.Errorf("open badger store in %s: %w", dir, err)
	}
	b := &Badger{db: db, log: log, stop: make(chan struct{}), closeWait: closeWait, dbClosed: make(chan struct{})}
	b.gcDone.Add(1)
	go b.collectGarbage(every)
	return b, nil
}

// Get implements Store.
func (b *Badger) Get(ctx context.Context, key string) ([]byte, error) {
	if err := b.begin(ctx, key); err != nil {
		return nil, fmt.Errorf("get %q: %w", key, err)
	}
	defer b.mu.RUnlock()
	var v []byte
	err := b.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get(dbKey(key))
		if err != nil {
			return err
		}
		v, err = item.ValueCopy(nil)
		return err
	})
	switch {
	case errors.Is(err, badger.ErrKeyNotFound):
		return nil, fmt.Errorf("get %q: %w", key, ErrNotFound)
	case err != nil:
		return nil, fmt.Errorf("get %q: %w", key, err)
	case v == nil:
		v = []byte{} // Badger hands back nil for an empty value
	}
	return v, nil
}

// Put implements Store. It returns after the write is fsynced.
func (b *Badger) Put(ctx context.Context, key string, value []byte) error {
	if err := b.begin(ctx, key); err != nil {
		return fmt.Errorf("put %q: %w", key, err)
	}
	defer b.mu.RUnlock()
	if err := b.set(key, value, 0); err != nil {
		return fmt.Errorf("put %q: %w", key, err)
	}
	return nil
}

// PutTTL implements Store. Badger stores an expiry time in whole Unix
// seconds; it is rounded up, so the key never vanishes before ttl.
func (b *Badger) PutTTL(ctx context.Context, key string, value []byte, ttl time.Duration) error {
	if err := b.begin(ctx, key); err != nil {
		return fmt.Errorf("put %q with ttl: %w", key, err)
	}
	defer b.mu.RUnlock()
	if err := checkTTL(ttl, false); err != nil {
		return fmt.Errorf("put %q with ttl: %w", key, err)
	}
	if err := b.set(key, value, ttl); err != nil {
		return fmt.Errorf("put %q with ttl: %w", key, err)
	}
	return nil
}

// PutIfAbsent implements Store with a transaction that reads the key and
// writes it only if absent. Badger's transactions detect conflicts: of two
// that race for one key, one commits and the other gets ErrConflict, and is
// retried, now to find the key present.
func (b *Badger) PutIfAbsent(ctx context.Context, key string, value []byte, ttl time.Duration) (bool, error) {
	if err := b.begin(ctx, key); err != nil {
		return false, fmt.Errorf("put %q if absent: %w", key, err)
	}
	defer b.mu.RUnlock()
	if err := checkTTL(ttl, true); err != nil {
		return false, fmt.Errorf("put %q if absent: %w", key, err)
	}
	for {
		stored := false
		err := b.db.Update(func(txn *badger.Txn) error {
			_, err := txn.Get(dbKey(key))
			switch {
			case err == nil:
				return nil
			case !errors.Is(err, badger.ErrKeyNotFound):
				return err
			}
			stored = true
			return txn.SetEntry(entry(key, value, ttl))
		})
		switch {
		case errors.Is(err, badger.ErrConflict):
			if err := ctx.Err(); err != nil {
				return false, fmt.Errorf("put %q if absent: %w", key, err)
			}
			continue
		case err != nil:
			return false, fmt.Errorf("put %q if absent: %w", key, err)
		}
		return stored, nil
	}
}

// set writes one entry; ttl 0 means none.
func (b *Badger) set(key string, value []byte, ttl time.Duration) error {
	// Update commits before returning, and a committed entry has been copied
	// into the memtable, so value is not retained.
	return b.db.Update(func(txn *badger.Txn) error {
		return txn.SetEntry(entry(key, value, ttl))
	})
}

// entry builds the Badger entry for a write. Its user meta marks it as a
// put: Badger's subscriptions do not say whether an update is a deletion,
// and a tombstone carries user meta 0. ttl 0 means no expiry; otherwise the
// expiry is rounded up to the next whole second (Badger's resolution, and
// Entry.WithTTL would round down, letting a key vanish up to 1 s early).
func entry(key string, value []byte, ttl time.Duration) *badger.Entry {
	e := badger.NewEntry(dbKey(key), value).WithMeta(metaPut)
	if ttl > 0 {
		at := time.Now().Add(ttl)
		e.ExpiresAt = uint64(at.Unix())
		if at.Nanosecond() > 0 {
			e.ExpiresAt++
		}
	}
	return e
}

// Delete implements Store. Badger writes a tombstone whether or not the key
// exists, so an absent key needs no special case.
func (b *Badger) Delete(ctx context.Context, key string) error {
	if err := b.begin(ctx, key); err != nil {
		return fmt.Errorf("delete %q: %w", key, err)
	}
	defer b.mu.RUnlock()
	err := b.db.Update(func(txn *badger.Txn) error {
		return txn.Delete(dbKey(key))
	})
	if err != nil {
		return fmt.Errorf("delete %q: %w", key, err)
	}
	return nil
}

// List implements Store. It reads one snapshot, so it is atomic with respect
// to concurrent writes (more than Store promises), and checks ctx between
// items so that a long listing can be abandoned.
func (b *Badger) List(ctx context.Context, prefix string) ([]KV, error) {
	if err := b.acquire(ctx); err != nil { // a prefix is not a key: any is valid
		return nil, fmt.Errorf("list %q: %w", prefix, err)
	}
	defer b.mu.RUnlock()
	var out []KV
	err := b.db.View(func(txn *badger.Txn) error {
		opts := badger.DefaultIteratorOptions
		opts.Prefix = dbKey(prefix)
		it := txn.NewIterator(opts)
		defer it.Close()
		for it.Seek(opts.Prefix); it.ValidForPrefix(opts.Prefix); it.Next() {
			if err := ctx.Err(); err != nil {
				return err
			}
			item := it.Item()
			v, err := item.ValueCopy(nil)
			if err != nil {
				return err
			}
			if v == nil {
				v = []byte{}
			}
			// item.Key is reused by Next; the string conversion copies it.
			out = append(out, KV{Key: string(item.Key()[len(keyPrefix):]), Value: v})
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list %q: %w", prefix, err)
	}
	return out, nil
}

// Close implements Store: it waits for calls in progress, ends every Watch,
// stops the subscription, the expiry sweep and value-log GC, and closes the
// database.
func (b *Badger) Close() error {
	b.closeOnce.Do(func() {
		b.mu.Lock()
		b.closed = true
		b.mu.Unlock()
		b.watch.stopAll()
		b.subMu.Lock()
		if b.subCancel != nil {
			b.subCancel()
		}
		b.subMu.Unlock()
		b.bg.Wait() // the subscription and sweep read db
		close(b.stop)
		b.gcDone.Wait() // RunValueLogGC must not race db.Close
		var dbErr error // written before dbClosed is closed
		// Owned by Close, which waits for it unless it outlasts closeWait;
		// then the process is about to exit, or the caller waits on dbClosed.
		go func() {
			dbErr = b.db.Close()
			close(b.dbClosed)
		}()
		t := time.NewTimer(b.closeWait)
		defer t.Stop()
		select {
		case <-b.dbClosed:
			if dbErr != nil {
				b.closeErr = fmt.Errorf("close badger store: %w", dbErr)
			}
		case <-t.C:
			b.closeErr = fmt.Errorf("close badger store: %w after %s (the log says what Badger cannot write)", ErrCloseTimeout, b.closeWait)
		}
	})
	return b.closeErr
}

// acquire checks ctx and takes the read side of mu, so that Close waits for
// the call. On success the caller must call b.mu.RUnlock.
func (b *Badger) acquire(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	b.mu.RLock()
	if b.closed {
		b.mu.RUnlock()
		return ErrClosed
	}
	return nil
}

// begin is acquire for a call that takes a key, which it also checks. A done
// ctx wins over a bad key, as Store documents.
func (b *Badger) begin(ctx context.Context, key string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := checkKey(key); err != nil {
		return err
	}
	return b.acquire(ctx)
}

// collectGarbage runs value-log GC every interval until Close.
func (b *Badger) collectGarbage(every time.Duration) {
	defer b.gcDone.Done()
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-b.stop:
			return
		case <-t.C:
		}
		// Each RunValueLogGC rewrites at most one file; Badger's docs say to
		// repeat until it finds nothing to rewrite. Stop between files if
		// Close is waiting.
	rewrite:
		for {
			err := b.db.RunValueLogGC(gcDiscardRatio)
			switch {
			case err == nil:
			case errors.Is(err, badger.ErrNoRewrite), errors.Is(err, badger.ErrRejected):
				break rewrite // nothing to do, or a GC already running
			default:
				b.log.Warn("store value-log gc", "err", err)
				break rewrite
			}
			select {
			case <-b.stop:
				return
			default:
			}
		}
		b.gcPasses.Add(1)
	}
}

func dbKey(key string) []byte {
	return []byte(keyPrefix + key)
}

// badgerLogger routes Badger's log to slog. Badger logs every table it opens
// and every compaction at Info, which is noise in weft's log; its warnings
// and errors are worth a human's attention, so only those pass.
type badgerLogger struct{ log *slog.Logger }

func (l badgerLogger) Errorf(format string, args ...any) {
	l.log.Error(badgerMessage(format, args), "backend", "badger")
}

func (l badgerLogger) Warningf(format string, args ...any) {
	l.log.Warn(badgerMessage(format, args), "backend", "badger")
}

func (badgerLogger) Infof(string, ...any)  {}
func (badgerLogger) Debugf(string, ...any) {}

// badgerMessage formats a Badger log line, whose format often ends in "\n".
func badgerMessage(format string, args []any) string {
	return strings.TrimSpace(fmt.Sprintf(format, args...))
}
