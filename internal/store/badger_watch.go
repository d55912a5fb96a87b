package store

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/badger/v4/pb"
)

// How Watch works on Badger.
//
// The first Watch on a handle starts one subscription (db.Subscribe) to every
// weft key; its callback fans each update out to the feeds whose prefix
// matches. Badger's subscription API does not say when it is in place, so
// Watch writes a sync key, outside weft's key space, until the subscription
// reports it: from then on no write can be missed, and Watch returns.
//
// Badger reports writes only. A key whose TTL runs out produces no update (it
// is simply skipped by reads), so a sweep goroutine reports expiries: it
// tracks the expiry time of every key written with a TTL (learned from the
// subscription, and by a scan when the subscription starts), and every
// sweepInterval it reads the keys whose time has come; those that are gone are
// reported Deleted. An expiry is therefore reported up to sweepInterval after
// the key vanished, and TTL precision is one second, so a watcher learns of an
// expiry between ttl and ttl + 2 s after the last write.
//
// Badger allows one handle per directory, so a Badger store has one process
// writing it: every change goes through this subscription.

// sweepInterval is how often the sweep looks for expired keys.
const sweepInterval = time.Second

// syncKey is the database key Watch writes to learn that the subscription is
// in place; it lies outside keyPrefix, so no weft key or List sees it.
const syncKey = "s/watch"

// Watch implements Store; see the comment at the top of badger_watch.go.
func (b *Badger) Watch(ctx context.Context, prefix string) (<-chan Change, error) {
	if err := b.acquire(ctx); err != nil {
		return nil, fmt.Errorf("watch %q: %w", prefix, err)
	}
	defer b.mu.RUnlock()
	if err := b.subscribe(ctx); err != nil {
		return nil, fmt.Errorf("watch %q: %w", prefix, err)
	}
	f := newFeed(prefix)
	b.feedsMu.Lock()
	if b.feeds == nil {
		b.feeds = make(map[*feed]struct{})
	}
	b.feeds[f] = struct{}{}
	b.feedsMu.Unlock()
	b.watch.start(ctx, func(ctx context.Context) {
		f.run(ctx)
		b.feedsMu.Lock()
		delete(b.feeds, f)
		b.feedsMu.Unlock()
	})
	return f.out, nil
}

// subscribe starts the subscription and the sweep if they are not running,
// and returns once the subscription is in place. The caller holds b.mu's read
// side, so Close waits for it.
func (b *Badger) subscribe(ctx context.Context) error {
	b.subMu.Lock()
	defer b.subMu.Unlock()
	if b.subReady == nil {
		b.subReady = make(chan struct{})
		// The subscription outlives the Watch that starts it: Close ends it.
		subCtx, cancel := context.WithCancel(context.Background())
		b.subCancel = cancel
		matches := []pb.Match{{Prefix: []byte(keyPrefix)}, {Prefix: []byte(syncKey)}}
		b.bg.Go(func() {
			err := b.db.Subscribe(subCtx, b.onUpdate, matches)
			if err != nil && !errors.Is(err, context.Canceled) {
				b.log.Error("store watch: badger subscription ended; watchers see no more changes", "err", err)
			}
		})
		b.bg.Go(func() { b.sweepLoop(subCtx) })
	}
	if !b.scanned {
		if err := b.awaitSubscription(ctx); err != nil {
			return err
		}
		if err := b.scanTTLs(ctx); err != nil {
			return err
		}
		b.scanned = true
	}
	return nil
}

// awaitSubscription writes the sync key until the subscription reports it. A
// write made before the subscription registered goes unreported, hence the
// repetition; usually the first write is enough.
func (b *Badger) awaitSubscription(ctx context.Context) error {
	retry := time.NewTicker(50 * time.Millisecond)
	defer retry.Stop()
	for {
		err := b.db.Update(func(txn *badger.Txn) error {
			return txn.Set([]byte(syncKey), nil)
		})
		if err != nil {
			return fmt.Errorf("sync subscription: %w", err)
		}
		select {
		case <-b.subReady:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		case <-retry.C:
		}
	}
}

// scanTTLs loads the expiry of every key that has one, so that keys written
// with a TTL before the subscription started are swept too. Entries the
// subscription recorded meanwhile are newer and are kept.
func (b *Badger) scanTTLs(ctx context.Context) error {
	found := make(map[string]uint64)
	err := b.db.View(func(txn *badger.Txn) error {
		opts := badger.DefaultIteratorOptions
		opts.PrefetchValues = false
		opts.Prefix = []byte(keyPrefix)
		it := txn.NewIterator(opts)
		defer it.Close()
		for it.Seek(opts.Prefix); it.ValidForPrefix(opts.Prefix); it.Next() {
			if err := ctx.Err(); err != nil {
				return err
			}
			if at := it.Item().ExpiresAt(); at > 0 {
				found[string(it.Item().Key()[len(keyPrefix):])] = at
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("scan keys with a ttl: %w", err)
	}
	b.ttlMu.Lock()
	defer b.ttlMu.Unlock()
	if b.ttls == nil {
		b.ttls = make(map[string]uint64)
	}
	for k, at := range found {
		if _, ok := b.ttls[k]; !ok {
			b.ttls[k] = at
		}
	}
	return nil
}

// onUpdate is the subscription's callback. It must not block: Badger's
// publisher, and behind it every writer, waits for it. It never fails, since
// an error would end the subscription.
func (b *Badger) onUpdate(list *badger.KVList) error {
	b.ttlMu.Lock()
	defer b.ttlMu.Unlock()
	if b.ttls == nil {
		b.ttls = make(map[string]uint64)
	}
	for _, kv := range list.GetKv() {
		key, ok := strings.CutPrefix(string(kv.GetKey()), keyPrefix)
		if !ok {
			b.readyOnce.Do(func() { close(b.subReady) }) // the sync key
			continue
		}
		deleted := len(kv.GetMeta()) == 0 || kv.GetMeta()[0] != metaPut
		if at := kv.GetExpiresAt(); at > 0 && !deleted {
			b.ttls[key] = at
		} else {
			delete(b.ttls, key)
		}
		b.publish(Change{Key: key, Deleted: deleted})
	}
	return nil
}

// publish hands c to every feed; each takes what matches its prefix. The
// caller holds ttlMu, which keeps the sweep's reports in order with writes.
func (b *Badger) publish(c Change) {
	b.feedsMu.Lock()
	defer b.feedsMu.Unlock()
	for f := range b.feeds {
		f.push(c)
	}
}

func (b *Badger) sweepLoop(ctx context.Context) {
	t := time.NewTicker(sweepInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := b.sweep(); err != nil {
			b.log.Warn("store watch: expiry sweep", "err", err)
		}
	}
}

// sweep reports the keys whose TTL ran out. It holds ttlMu from the read to
// the reports, so that a write the read missed is reported after the expiry,
// never before it.
func (b *Badger) sweep() error {
	b.ttlMu.Lock()
	defer b.ttlMu.Unlock()
	now := uint64(time.Now().Unix())
	var due []string
	for k, at := range b.ttls {
		if at <= now { // Badger's own test for an expired entry
			due = append(due, k)
		}
	}
	if len(due) == 0 {
		return nil
	}
	var gone []string
	err := b.db.View(func(txn *badger.Txn) error {
		for _, k := range due {
			item, err := txn.Get(dbKey(k))
			switch {
			case errors.Is(err, badger.ErrKeyNotFound):
				gone = append(gone, k)
				delete(b.ttls, k)
			case err != nil:
				return err
			case item.ExpiresAt() == 0:
				delete(b.ttls, k) // rewritten without a TTL; its update is on its way
			default:
				b.ttls[k] = item.ExpiresAt()
			}
		}
		return nil
	})
	for _, k := range gone {
		b.publish(Change{Key: k, Deleted: true})
	}
	return err
}
