package storetest

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/weft-dev/weft/internal/store"
	"github.com/weft-dev/weft/internal/testutil"
)

// shortTTL is the TTL of keys the suite waits to see expire: Redis counts
// milliseconds, Badger whole seconds (rounded up, so up to 2 s here).
const shortTTL = time.Second

// expiryTimeout bounds the wait for a key with shortTTL to vanish, and for a
// watcher to hear of it: the TTL, Badger's rounding and sweep, Redis's
// expiry cycle, and a loaded machine running the race detector.
const expiryTimeout = 15 * time.Second

// longTTL is a TTL no test outlives.
const longTTL = time.Hour

func mustPutTTL(t *testing.T, s store.Store, key string, value []byte, ttl time.Duration) {
	t.Helper()
	if err := s.PutTTL(t.Context(), key, value, ttl); err != nil {
		t.Fatalf("PutTTL(%q, %v): %v", key, ttl, err)
	}
}

func mustPutIfAbsent(t *testing.T, s store.Store, key string, value []byte, ttl time.Duration, want bool) {
	t.Helper()
	got, err := s.PutIfAbsent(t.Context(), key, value, ttl)
	if err != nil {
		t.Fatalf("PutIfAbsent(%q, %v): %v", key, ttl, err)
	}
	if got != want {
		t.Fatalf("PutIfAbsent(%q) = %v, want %v", key, got, want)
	}
}

func mustDelete(t *testing.T, s store.Store, key string) {
	t.Helper()
	if err := s.Delete(t.Context(), key); err != nil {
		t.Fatalf("Delete(%q): %v", key, err)
	}
}

// gone reports whether Get finds no value under key.
func gone(t *testing.T, s store.Store, key string) bool {
	t.Helper()
	_, err := s.Get(t.Context(), key)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("Get(%q): %v", key, err)
	}
	return err != nil
}

// waitGone waits until key has expired.
func waitGone(t *testing.T, s store.Store, key string) {
	t.Helper()
	testutil.WaitFor(t, expiryTimeout, func() bool { return gone(t, s, key) }, "%q expires", key)
}

// testTTL checks expiry, refresh, Put clearing a TTL, and PutIfAbsent with
// TTLs, all against one wait. The canary is written after the first TTL of
// every other key, with the same TTL, so it expires no earlier than any of
// them: once it is gone, so is every key whose TTL was not refreshed or
// cleared.
func testTTL(t *testing.T, open func(t *testing.T) store.Store) {
	s := openStore(t, open)
	mustPut(t, s, "ttl/kept", []byte("k"))
	mustPutTTL(t, s, "ttl/a", []byte("a"), shortTTL)
	mustPut(t, s, "ttl/b", []byte("b"))
	mustPutTTL(t, s, "ttl/b", []byte("b2"), shortTTL) // a TTL on a key that had none
	mustPutTTL(t, s, "ttl/refreshed", []byte("beat 1"), shortTTL)
	mustPutTTL(t, s, "ttl/cleared", []byte("temporary"), shortTTL)
	mustPutIfAbsent(t, s, "ttl/dedup", []byte("d"), shortTTL, true)
	mustPutTTL(t, s, "ttl/dedup2", []byte("e"), shortTTL)
	mustPutIfAbsent(t, s, "ttl/dedup2", []byte("e2"), 0, false) // refused: the TTL stays
	// A TTL under the backends' resolution is valid: the key lives at least
	// that long, and then vanishes.
	mustPutTTL(t, s, "tiny", []byte("v"), time.Nanosecond)
	mustPutTTL(t, s, "ttl/canary", []byte("c"), shortTTL)

	mustPutTTL(t, s, "ttl/refreshed", []byte("beat 2"), longTTL) // restarts the clock
	mustPut(t, s, "ttl/cleared", []byte("permanent"))            // clears the TTL
	wantList(t, s, "ttl/", []store.KV{
		{Key: "ttl/a", Value: []byte("a")},
		{Key: "ttl/b", Value: []byte("b2")},
		{Key: "ttl/canary", Value: []byte("c")},
		{Key: "ttl/cleared", Value: []byte("permanent")},
		{Key: "ttl/dedup", Value: []byte("d")},
		{Key: "ttl/dedup2", Value: []byte("e")},
		{Key: "ttl/kept", Value: []byte("k")},
		{Key: "ttl/refreshed", Value: []byte("beat 2")},
	})

	waitGone(t, s, "ttl/canary")
	for _, k := range []string{"ttl/a", "ttl/b", "ttl/dedup", "ttl/dedup2", "tiny"} {
		wantMissing(t, s, k)
	}
	wantList(t, s, "", []store.KV{
		{Key: "ttl/cleared", Value: []byte("permanent")},
		{Key: "ttl/kept", Value: []byte("k")},
		{Key: "ttl/refreshed", Value: []byte("beat 2")},
	})
	// An expired key is absent: it can be written again.
	mustPutIfAbsent(t, s, "ttl/dedup", []byte("d2"), 0, true)
	wantValue(t, s, "ttl/dedup", []byte("d2"))
	mustPutTTL(t, s, "ttl/a", []byte("again"), longTTL)
	wantValue(t, s, "ttl/a", []byte("again"))
}

func testInvalidTTL(t *testing.T, open func(t *testing.T) store.Store) {
	s := openStore(t, open)
	ctx := t.Context()
	for _, ttl := range []time.Duration{0, -time.Nanosecond, -time.Hour} {
		if err := s.PutTTL(ctx, "k", []byte("v"), ttl); !errors.Is(err, store.ErrInvalidTTL) {
			t.Errorf("PutTTL(ttl %v) = %v, want ErrInvalidTTL", ttl, err)
		}
	}
	for _, ttl := range []time.Duration{-time.Nanosecond, -time.Hour} {
		if ok, err := s.PutIfAbsent(ctx, "k", []byte("v"), ttl); ok || !errors.Is(err, store.ErrInvalidTTL) {
			t.Errorf("PutIfAbsent(ttl %v) = %v, %v; want false, ErrInvalidTTL", ttl, ok, err)
		}
	}
	wantList(t, s, "", nil) // refused calls have no effect
}

func testPutIfAbsent(t *testing.T, open func(t *testing.T) store.Store) {
	s := openStore(t, open)
	mustPutIfAbsent(t, s, "dedup/e1", []byte("first"), 0, true)
	mustPutIfAbsent(t, s, "dedup/e1", []byte("second"), 0, false)
	wantValue(t, s, "dedup/e1", []byte("first"))

	mustPut(t, s, "dedup/e2", nil) // an empty value is a value
	mustPutIfAbsent(t, s, "dedup/e2", []byte("x"), 0, false)
	wantValue(t, s, "dedup/e2", []byte{})

	mustDelete(t, s, "dedup/e1")
	mustPutIfAbsent(t, s, "dedup/e1", []byte("third"), 0, true)
	wantList(t, s, "dedup/", []store.KV{
		{Key: "dedup/e1", Value: []byte("third")},
		{Key: "dedup/e2", Value: []byte{}},
	})

	in := []byte("mine")
	mustPutIfAbsent(t, s, "owned", in, 0, true)
	copy(in, "MUTA")
	wantValue(t, s, "owned", []byte("mine"))
}

// testPutIfAbsentConcurrent races writers for one key, across two handles
// where the backend allows them: exactly one may win.
func testPutIfAbsentConcurrent(t *testing.T, open func(t *testing.T) store.Store) {
	s := openStore(t, open)
	const writers = 16
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		winners []int
	)
	for w := range writers {
		wg.Go(func() {
			ok, err := s.PutIfAbsent(t.Context(), "dedup/race", fmt.Appendf(nil, "writer %d", w), longTTL)
			if err != nil {
				t.Errorf("PutIfAbsent by writer %d: %v", w, err)
				return
			}
			if ok {
				mu.Lock()
				winners = append(winners, w)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if len(winners) != 1 {
		t.Fatalf("PutIfAbsent succeeded for writers %v, want exactly one", winners)
	}
	wantValue(t, s, "dedup/race", fmt.Appendf(nil, "writer %d", winners[0]))
}
