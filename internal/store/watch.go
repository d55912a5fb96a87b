package store

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
)

// feed queues the changes for one watcher and hands them to its channel. The
// producers (a Badger subscription and sweep, a Redis connection) call push,
// which never blocks, so a slow watcher cannot hold up writers or other
// watchers; run delivers, on a goroutine of its own.
type feed struct {
	prefix string
	out    chan Change   // unbuffered: queue is the buffer
	wake   chan struct{} // capacity 1: one pending wake-up covers any number of pushes

	mu     sync.Mutex
	queue  []Change // at most WatchBuffer
	resync bool     // a Resync is owed; it goes out before anything queued
}

func newFeed(prefix string) *feed {
	return &feed{prefix: prefix, out: make(chan Change), wake: make(chan struct{}, 1)}
}

// push queues c if its key is under the feed's prefix. A change that finds
// the queue full empties it and owes the watcher a Resync; while one is owed,
// changes are dropped: the List that the watcher makes on receiving it
// happens after them, so it sees their effect. A Resync pushed by a producer
// (after a reconnection, or periodically) queues like any change.
func (f *feed) push(c Change) {
	if !c.Resync && !strings.HasPrefix(c.Key, f.prefix) {
		return
	}
	f.mu.Lock()
	switch {
	case f.resync:
	case len(f.queue) >= WatchBuffer:
		f.queue = nil
		f.resync = true
	default:
		f.queue = append(f.queue, c)
	}
	f.mu.Unlock()
	select {
	case f.wake <- struct{}{}:
	default:
	}
}

// pop takes the next change to deliver: an owed Resync first.
func (f *feed) pop() (Change, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case f.resync:
		f.resync = false
		return Change{Resync: true}, true
	case len(f.queue) == 0:
		return Change{}, false
	}
	c := f.queue[0]
	f.queue = f.queue[1:]
	return c, true
}

// run delivers queued changes to f.out until ctx ends, then closes f.out.
func (f *feed) run(ctx context.Context) {
	defer close(f.out)
	for {
		c, ok := f.pop()
		if !ok {
			select {
			case <-f.wake:
				continue
			case <-ctx.Done():
				return
			}
		}
		select {
		case f.out <- c:
		case <-ctx.Done():
			return
		}
	}
}

// watchers owns the goroutines of every Watch on one store handle, so that
// Close can end them and wait for them. The zero value is ready to use.
type watchers struct {
	wg      sync.WaitGroup
	mu      sync.Mutex
	cancels map[uint64]context.CancelFunc // guarded by mu
	next    uint64                        // guarded by mu
}

// start runs each fn on its own goroutine with a context derived from ctx.
// The goroutines share a fate: when one returns, the context of the others
// is cancelled. The caller must not call start once stopAll has begun (the
// stores hold their read lock, which Close's write lock excludes).
func (w *watchers) start(ctx context.Context, fns ...func(ctx context.Context)) {
	ctx, cancel := context.WithCancel(ctx)
	w.mu.Lock()
	if w.cancels == nil {
		w.cancels = make(map[uint64]context.CancelFunc)
	}
	id := w.next
	w.next++
	w.cancels[id] = cancel
	w.mu.Unlock()

	var running atomic.Int32
	running.Store(int32(len(fns)))
	for _, fn := range fns {
		w.wg.Go(func() {
			defer func() {
				cancel()
				if running.Add(-1) == 0 {
					w.mu.Lock()
					delete(w.cancels, id)
					w.mu.Unlock()
				}
			}()
			fn(ctx)
		})
	}
}

// stopAll cancels every watch and waits for its goroutines to return.
func (w *watchers) stopAll() {
	w.mu.Lock()
	for _, cancel := range w.cancels {
		cancel()
	}
	w.mu.Unlock()
	w.wg.Wait()
}
