package storetest

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/weft-dev/weft/internal/store"
)

// changeTimeout bounds the wait for a change that a write has caused.
const changeTimeout = 10 * time.Second

// watcher reads one Watch channel in a test.
type watcher struct {
	t    *testing.T
	name string
	ch   <-chan store.Change
}

// watch starts a Watch that lasts as long as the test.
func watch(t *testing.T, s store.Store, prefix string) *watcher {
	t.Helper()
	ch, err := s.Watch(t.Context(), prefix)
	if err != nil {
		t.Fatalf("Watch(%q): %v", prefix, err)
	}
	if ch == nil {
		t.Fatalf("Watch(%q) returned a nil channel", prefix)
	}
	return &watcher{t: t, name: fmt.Sprintf("Watch(%q)", prefix), ch: ch}
}

// nextAny returns the next change, Resync included.
func (w *watcher) nextAny() store.Change {
	w.t.Helper()
	select {
	case c, ok := <-w.ch:
		if !ok {
			w.t.Fatalf("%s: channel closed while a change was awaited", w.name)
		}
		return c
	case <-time.After(changeTimeout):
		w.t.Fatalf("%s: no change within %v", w.name, changeTimeout)
	}
	panic("unreachable")
}

// next returns the next change that is not a Resync: a Resync may come at any
// time (a backend may resync periodically), and is not what these tests await.
func (w *watcher) next() store.Change {
	w.t.Helper()
	for {
		if c := w.nextAny(); !c.Resync {
			return c
		}
	}
}

// want fails unless the next changes, Resyncs aside, are exactly want.
func (w *watcher) want(want ...store.Change) {
	w.t.Helper()
	for i, c := range want {
		if got := w.next(); got != c {
			w.t.Fatalf("%s: change %d = %+v, want %+v", w.name, i, got, c)
		}
	}
}

// wantExpiry waits for the report that key expired: a Deleted change, or,
// with opts.ExpiryByResync, a Resync after which the key is gone.
func (w *watcher) wantExpiry(s store.Store, key string, opts Options) {
	w.t.Helper()
	deadline := time.Now().Add(expiryTimeout)
	for time.Now().Before(deadline) {
		c := w.nextAny()
		switch {
		case opts.ExpiryByResync && c.Resync && gone(w.t, s, key):
			return
		case c.Resync:
		case c == store.Change{Key: key, Deleted: true}:
			return
		default:
			w.t.Fatalf("%s: got %+v while awaiting the expiry of %q", w.name, c, key)
		}
	}
	w.t.Fatalf("%s: expiry of %q not reported within %v", w.name, key, expiryTimeout)
}

// drainUntil reads changes until one for key, or a Resync after which key
// is present (the List a watcher makes on a Resync would show it), and
// returns the keys of the changes before it and whether a Resync was among
// them.
func (w *watcher) drainUntil(s store.Store, key string) (keys []string, resync bool) {
	w.t.Helper()
	deadline := time.Now().Add(changeTimeout)
	for time.Now().Before(deadline) {
		c := w.nextAny()
		switch {
		case c.Resync:
			resync = true
			if !gone(w.t, s, key) {
				return keys, resync
			}
		case c.Key == key:
			return keys, resync
		default:
			keys = append(keys, c.Key)
		}
	}
	w.t.Fatalf("%s: no change for %q within %v (%d others)", w.name, key, changeTimeout, len(keys))
	return nil, false
}

// wantClosed waits for the channel to be closed, reading what is left.
func (w *watcher) wantClosed() {
	w.t.Helper()
	timeout := time.After(changeTimeout)
	for {
		select {
		case _, ok := <-w.ch:
			if !ok {
				return
			}
		case <-timeout:
			w.t.Fatalf("%s: channel still open %v after the watch ended", w.name, changeTimeout)
		}
	}
}

func put(key string) store.Change     { return store.Change{Key: key} }
func deleted(key string) store.Change { return store.Change{Key: key, Deleted: true} }

// testWatch checks that a watcher hears of every put, delete and expiry
// under its prefix, in order, and of nothing else.
func testWatch(t *testing.T, open func(t *testing.T) store.Store, opts Options) {
	s := openStore(t, open)
	w := watch(t, s, "reg/")
	all := watch(t, s, "")
	mustPut(t, s, "other/x", []byte("1"))
	mustPut(t, s, "reg", []byte("2")) // the prefix is "reg/", not "reg"
	mustPut(t, s, "reg/a", []byte("3"))
	mustDelete(t, s, "reg/a")
	mustPutIfAbsent(t, s, "reg/b", []byte("4"), 0, true)
	mustPutTTL(t, s, "reg/t", []byte("5"), shortTTL)
	w.want(put("reg/a"), deleted("reg/a"), put("reg/b"), put("reg/t"))
	all.want(put("other/x"), put("reg"), put("reg/a"), deleted("reg/a"), put("reg/b"), put("reg/t"))
	w.wantExpiry(s, "reg/t", opts)

	mustPut(t, s, "other/y", []byte("6"))
	mustPut(t, s, "reg/end", []byte("7"))
	if keys, _ := w.drainUntil(s, "reg/end"); len(keys) > 0 {
		t.Fatalf("Watch(%q) reported %q, not under the prefix or not changed", "reg/", keys)
	}
}

// testWatchLiteralPrefix checks that glob and regexp syntax in a prefix is
// taken literally, as in List.
func testWatchLiteralPrefix(t *testing.T, open func(t *testing.T) store.Store) {
	s := openStore(t, open)
	const prefix = `g*?[^a-z]\.+`
	w := watch(t, s, prefix)
	mustPut(t, s, "gx", nil)
	mustPut(t, s, `g*?[^a-z]\`, nil)
	mustPut(t, s, "g*?[b]\\.+", nil)
	mustPut(t, s, prefix+"\x00\xff", nil)
	mustPut(t, s, prefix+"end", nil)
	keys, resync := w.drainUntil(s, prefix+"end")
	want := []string{prefix + "\x00\xff"}
	if resync { // a periodic Resync may stand for some changes
		keys = slices.DeleteFunc(keys, func(k string) bool { return k == want[0] })
		want = nil
	}
	if !slices.Equal(keys, want) {
		t.Fatalf("Watch(%q) reported %q, want %q", prefix, keys, want)
	}
}

// testWatchEnds checks that a watch's channel is closed when its ctx ends
// and when the store is closed, and that ending one watch leaves the others.
func testWatchEnds(t *testing.T, open func(t *testing.T) store.Store) {
	s := openStore(t, open)
	ctx, cancel := context.WithCancel(t.Context())
	ch, err := s.Watch(ctx, "")
	if err != nil {
		t.Fatalf("Watch: %v", err)
	}
	ended := &watcher{t: t, name: "cancelled Watch", ch: ch}
	kept := watch(t, s, "")
	cancel()
	ended.wantClosed()
	mustPut(t, s, "after-cancel", nil)
	kept.want(put("after-cancel"))

	// Close ends the remaining watch, which nobody reads: a watcher that is
	// behind must not hold Close up.
	idle := watch(t, s, "")
	mustPut(t, s, "unread", nil)
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	kept.wantClosed()
	idle.wantClosed()
}

// testWatchSlowWatcher checks that a watcher that reads nothing neither
// blocks writers nor loses changes silently: it either gets every change or a
// Resync. (Whether it falls WatchBuffer behind depends on how far the
// backend's own delivery lags, which a test cannot see from outside; the
// overflow itself is unit-tested on the queue.)
func testWatchSlowWatcher(t *testing.T, open func(t *testing.T) store.Store) {
	s := openStore(t, open)
	slow := watch(t, s, "burst/")
	const writers = 8
	n := 2 * store.WatchBuffer
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := w; i < n; i += writers {
				if err := s.Put(t.Context(), fmt.Sprintf("burst/%04d", i), nil); err != nil {
					t.Errorf("Put: %v", err)
					return
				}
			}
		})
	}
	wg.Wait() // returns although nobody reads slow: writers are not blocked
	if t.Failed() {
		return
	}
	mustPut(t, s, "burst/end", nil)
	keys, resync := slow.drainUntil(s, "burst/end")
	if !resync {
		seen := make(map[string]bool, len(keys))
		for _, k := range keys {
			seen[k] = true
		}
		for i := range n {
			if k := fmt.Sprintf("burst/%04d", i); !seen[k] {
				t.Fatalf("the change of %q was lost without a Resync (%d of %d delivered)", k, len(seen), n)
			}
		}
	}
	t.Logf("%d changes written, %d delivered, resync: %v", n, len(keys), resync)
	// After a Resync, the watcher follows changes again. (Changes already
	// on their way may still arrive: a Change that alters nothing is allowed.)
	mustPut(t, s, "burst/after", nil)
	slow.drainUntil(s, "burst/after")
}

// testWatchAfterReopen checks that a key put with a TTL by an earlier handle
// is reported when it expires, to a watcher of a later one.
func testWatchAfterReopen(t *testing.T, open func(t *testing.T) store.Store, opts Options) {
	s := openStore(t, open)
	mustPutTTL(t, s, "reg/t", []byte("v"), shortTTL)
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	s = openStore(t, open)
	w := watch(t, s, "reg/")
	w.wantExpiry(s, "reg/t", opts)
}

// testWatchShared checks, on a backend that allows it, that two handles on
// one store (two nodes on one Redis) each see the other's changes.
func testWatchShared(t *testing.T, open func(t *testing.T) store.Store, opts Options) {
	if !opts.SharedWatch {
		t.Skip("the backend allows one handle per store (Options.SharedWatch is false)")
	}
	s1 := openStore(t, open)
	s2 := openStore(t, open)
	w1 := watch(t, s1, "reg/")
	w2 := watch(t, s2, "reg/")

	mustPut(t, s1, "reg/n1", []byte("http://10.0.0.1:8080"))
	w2.want(put("reg/n1"))
	w1.want(put("reg/n1"))
	wantValue(t, s2, "reg/n1", []byte("http://10.0.0.1:8080"))

	mustPut(t, s2, "reg/n2", []byte("http://10.0.0.2:8080"))
	mustDelete(t, s2, "reg/n1")
	w1.want(put("reg/n2"), deleted("reg/n1"))
	w2.want(put("reg/n2"), deleted("reg/n1"))

	// A node that stops heartbeating: its entry expires, and the other node
	// hears of it.
	mustPutTTL(t, s1, "reg/n3", []byte("http://10.0.0.3:8080"), shortTTL)
	w2.want(put("reg/n3"))
	w2.wantExpiry(s2, "reg/n3", opts)
}
