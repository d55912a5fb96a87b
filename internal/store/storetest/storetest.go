// Package storetest is the conformance suite for store.Store: every
// implementation (Badger, Redis) runs Run from its own tests, so the
// semantics documented on store.Store hold whichever one a node uses.
//
// It is a test helper: only _test.go files and other helpers may import it.
package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weft-dev/weft/internal/store"
)

// Options tell Run what a backend can do beyond what every Store must.
type Options struct {
	// SharedWatch means that open may be called again while an earlier
	// handle of the same test is still open, and gives a second handle on
	// the same data, as a second node sharing a Redis server has. Run then
	// checks that each handle's Watch sees the other's writes and expiries.
	// Badger allows one handle per directory, so it leaves this false.
	SharedWatch bool

	// ExpiryByResync means that watchers learn of expired keys only from a
	// periodic Change{Resync: true}, not from a Deleted change, as on a Redis
	// server that refuses keyspace notifications. The expiry checks then wait
	// for a Resync after which the key is gone.
	ExpiryByResync bool
}

// Run checks that the stores made by open behave as store.Store documents. Its
// subtests run in parallel, and take a few seconds because TTLs are real.
//
// open must return a new handle on the storage that belongs to t, identified
// by t.Name(): the first call for a test gives an empty store, and a later
// call with the same t, made after the earlier handle was closed, gives a
// handle on the same data (that is how the suite checks that values survive
// Close). With opts.SharedWatch, open may also be called again while an
// earlier handle is open. Different tests must never see each other's keys,
// nor each other's changes in Watch. The suite closes every handle it opens;
// Close is idempotent, so open may also close the handle in t.Cleanup. For
// example, for an on-disk store:
//
//	base := t.TempDir()
//	storetest.Run(t, func(t *testing.T) store.Store {
//		s, err := store.OpenBadger(filepath.Join(base, t.Name()), nil)
//		if err != nil {
//			t.Fatal(err)
//		}
//		return s
//	}, storetest.Options{})
func Run(t *testing.T, open func(t *testing.T) store.Store, opts Options) {
	t.Helper()
	tests := []struct {
		name string
		run  func(t *testing.T, open func(t *testing.T) store.Store)
	}{
		{"GetMissing", testGetMissing},
		{"PutGet", testPutGet},
		{"Overwrite", testOverwrite},
		{"Delete", testDelete},
		{"DeleteMissing", testDeleteMissing},
		{"EmptyValue", testEmptyValue},
		{"BinaryValues", testBinaryValues},
		{"Ownership", testOwnership},
		{"InvalidKeys", testInvalidKeys},
		{"ListPrefix", testListPrefix},
		{"ConcurrentPuts", testConcurrentPuts},
		{"ConcurrentClose", testConcurrentClose},
		{"Reopen", testReopen},
		{"ContextDone", testContextDone},
		{"Closed", testClosed},
		{"TTL", testTTL},
		{"InvalidTTL", testInvalidTTL},
		{"PutIfAbsent", testPutIfAbsent},
		{"PutIfAbsentConcurrent", testPutIfAbsentConcurrent},
		{"Watch", func(t *testing.T, open func(t *testing.T) store.Store) { testWatch(t, open, opts) }},
		{"WatchLiteralPrefix", testWatchLiteralPrefix},
		{"WatchEnds", testWatchEnds},
		{"WatchSlowWatcher", testWatchSlowWatcher},
		{"WatchAfterReopen", func(t *testing.T, open func(t *testing.T) store.Store) { testWatchAfterReopen(t, open, opts) }},
		{"WatchSharedHandles", func(t *testing.T, open func(t *testing.T) store.Store) { testWatchShared(t, open, opts) }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.run(t, open)
		})
	}
}

// openStore calls open and closes the store when the test ends.
func openStore(t *testing.T, open func(t *testing.T) store.Store) store.Store {
	t.Helper()
	s := open(t)
	if s == nil {
		t.Fatal("open returned a nil store")
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

func mustPut(t *testing.T, s store.Store, key string, value []byte) {
	t.Helper()
	if err := s.Put(t.Context(), key, value); err != nil {
		t.Fatalf("Put(%q): %v", key, err)
	}
}

// wantValue fails unless key holds want.
func wantValue(t *testing.T, s store.Store, key string, want []byte) {
	t.Helper()
	got, err := s.Get(t.Context(), key)
	if err != nil {
		t.Fatalf("Get(%q): %v", key, err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("Get(%q) = %s, want %s", key, short(got), short(want))
	}
}

// wantMissing fails unless Get reports ErrNotFound for key.
func wantMissing(t *testing.T, s store.Store, key string) {
	t.Helper()
	got, err := s.Get(t.Context(), key)
	if !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("Get(%q) = %s, %v; want an error wrapping ErrNotFound", key, short(got), err)
	}
}

// wantList fails unless List(prefix) returns exactly want, in order.
func wantList(t *testing.T, s store.Store, prefix string, want []store.KV) {
	t.Helper()
	got, err := s.List(t.Context(), prefix)
	if err != nil {
		t.Fatalf("List(%q): %v", prefix, err)
	}
	if !slices.EqualFunc(got, want, func(a, b store.KV) bool {
		return a.Key == b.Key && bytes.Equal(a.Value, b.Value)
	}) {
		t.Fatalf("List(%q) =\n\t%s\nwant\n\t%s", prefix, kvs(got), kvs(want))
	}
}

func testGetMissing(t *testing.T, open func(t *testing.T) store.Store) {
	s := openStore(t, open)
	wantMissing(t, s, "resources/Trigger/absent")
	mustPut(t, s, "resources/Trigger/present", []byte("x"))
	wantMissing(t, s, "resources/Trigger/pres") // a prefix of a key is not the key
}

func testPutGet(t *testing.T, open func(t *testing.T) store.Store) {
	s := openStore(t, open)
	// Keys are arbitrary bytes: none of these may be refused or mangled, in
	// particular not Badger's reserved prefix nor Redis glob characters.
	keys := []string{
		"a",
		"resources/Trigger/on-upload",
		"with space and\ttab",
		"ünïcödé/键",
		"\x00\xff\xfe binary",
		"!badger!head",
		`*?[glob]\`,
		strings.Repeat("k", store.MaxKeyLen),
	}
	for i, k := range keys {
		mustPut(t, s, k, fmt.Appendf(nil, "value %d", i))
	}
	for i, k := range keys {
		wantValue(t, s, k, fmt.Appendf(nil, "value %d", i))
	}
}

func testOverwrite(t *testing.T, open func(t *testing.T) store.Store) {
	s := openStore(t, open)
	mustPut(t, s, "k", []byte("a long first value"))
	mustPut(t, s, "k", []byte("short")) // nothing of the first may remain
	wantValue(t, s, "k", []byte("short"))
	wantList(t, s, "", []store.KV{{Key: "k", Value: []byte("short")}})
}

func testDelete(t *testing.T, open func(t *testing.T) store.Store) {
	s := openStore(t, open)
	mustPut(t, s, "keep", []byte("1"))
	mustPut(t, s, "drop", []byte("2"))
	if err := s.Delete(t.Context(), "drop"); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	wantMissing(t, s, "drop")
	wantValue(t, s, "keep", []byte("1"))
	wantList(t, s, "", []store.KV{{Key: "keep", Value: []byte("1")}})
	mustPut(t, s, "drop", []byte("3")) // a deleted key can be written again
	wantValue(t, s, "drop", []byte("3"))
}

func testDeleteMissing(t *testing.T, open func(t *testing.T) store.Store) {
	s := openStore(t, open)
	for range 2 {
		if err := s.Delete(t.Context(), "never-written"); err != nil {
			t.Fatalf("Delete of an absent key: %v, want nil", err)
		}
	}
	wantList(t, s, "", nil)
}

func testEmptyValue(t *testing.T, open func(t *testing.T) store.Store) {
	s := openStore(t, open)
	mustPut(t, s, "nil", nil)
	mustPut(t, s, "empty", []byte{})
	for _, k := range []string{"nil", "empty"} {
		got, err := s.Get(t.Context(), k)
		if err != nil || len(got) != 0 {
			t.Fatalf("Get(%q) = %q, %v; want an empty value and no error", k, got, err)
		}
	}
	wantList(t, s, "", []store.KV{{Key: "empty", Value: []byte{}}, {Key: "nil", Value: []byte{}}})
}

func testBinaryValues(t *testing.T, open func(t *testing.T) store.Store) {
	s := openStore(t, open)
	every := make([]byte, 256)
	for i := range every {
		every[i] = byte(i)
	}
	// Above Badger's 1 MiB value threshold, so the value goes to its value
	// log instead of the LSM tree; seeded, so a failure reproduces.
	large := make([]byte, 3<<19)
	rng := rand.NewChaCha8([32]byte{1})
	_, _ = rng.Read(large)
	values := map[string][]byte{
		"every-byte":   every,
		"nul":          {0, 0, 0},
		"invalid-utf8": {0xff, 0xfe, 0xc3, 0x28},
		"crlf":         []byte("a\r\nb\n"),
		"large":        large,
	}
	for k, v := range values {
		mustPut(t, s, k, v)
	}
	for k, v := range values {
		wantValue(t, s, k, v)
	}
	got, err := s.List(t.Context(), "")
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	if len(got) != len(values) {
		t.Fatalf("List returned %d pairs, want %d", len(got), len(values))
	}
	for _, kv := range got {
		if !bytes.Equal(kv.Value, values[kv.Key]) {
			t.Fatalf("List: %q = %s, want %s", kv.Key, short(kv.Value), short(values[kv.Key]))
		}
	}
}

// testOwnership checks that a store neither keeps the slice given to Put nor
// shares the slices it returns: callers reuse buffers.
func testOwnership(t *testing.T, open func(t *testing.T) store.Store) {
	s := openStore(t, open)
	in := []byte("original")
	mustPut(t, s, "k", in)
	copy(in, "MUTATED!")
	wantValue(t, s, "k", []byte("original"))

	out, err := s.Get(t.Context(), "k")
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	copy(out, "MUTATED!")
	wantValue(t, s, "k", []byte("original"))

	list, err := s.List(t.Context(), "")
	if err != nil || len(list) != 1 {
		t.Fatalf("List = %s, %v; want one pair", kvs(list), err)
	}
	copy(list[0].Value, "MUTATED!")
	wantValue(t, s, "k", []byte("original"))
}

func testInvalidKeys(t *testing.T, open func(t *testing.T) store.Store) {
	s := openStore(t, open)
	ctx := t.Context()
	for name, key := range map[string]string{
		"empty":    "",
		"too long": strings.Repeat("k", store.MaxKeyLen+1),
	} {
		if err := s.Put(ctx, key, []byte("v")); !errors.Is(err, store.ErrInvalidKey) {
			t.Errorf("Put(%s key) = %v, want ErrInvalidKey", name, err)
		}
		if _, err := s.Get(ctx, key); !errors.Is(err, store.ErrInvalidKey) {
			t.Errorf("Get(%s key) = %v, want ErrInvalidKey", name, err)
		}
		if err := s.Delete(ctx, key); !errors.Is(err, store.ErrInvalidKey) {
			t.Errorf("Delete(%s key) = %v, want ErrInvalidKey", name, err)
		}
		if err := s.PutTTL(ctx, key, []byte("v"), time.Minute); !errors.Is(err, store.ErrInvalidKey) {
			t.Errorf("PutTTL(%s key) = %v, want ErrInvalidKey", name, err)
		}
		if ok, err := s.PutIfAbsent(ctx, key, []byte("v"), 0); ok || !errors.Is(err, store.ErrInvalidKey) {
			t.Errorf("PutIfAbsent(%s key) = %v, %v; want false, ErrInvalidKey", name, ok, err)
		}
	}
	wantList(t, s, "", nil)
}

func testListPrefix(t *testing.T, open func(t *testing.T) store.Store) {
	s := openStore(t, open)
	// "a/10" sorts before "a/2", upper case before lower, and multi-byte
	// UTF-8 after ASCII: the order is bytewise, not numeric or collated.
	keys := []string{
		"a", "a/1", "a/10", "a/2", "ab", "b/1", "B/1", "é", "\x00nul",
		"a*x", "a?y", "a[1]", `a\b`, "a%", "a_",
	}
	for _, k := range keys {
		mustPut(t, s, k, []byte("v:"+k))
	}
	// Prefixes with glob, regexp or LIKE syntax must be taken literally.
	for _, prefix := range []string{"", "a", "a/", "a/1", "b", "B", "zz", "a*", "a?", "a[", `a\`, "a%", "a_", "\x00"} {
		var want []store.KV
		for _, k := range keys {
			if strings.HasPrefix(k, prefix) {
				want = append(want, store.KV{Key: k, Value: []byte("v:" + k)})
			}
		}
		slices.SortFunc(want, func(a, b store.KV) int { return strings.Compare(a.Key, b.Key) })
		wantList(t, s, prefix, want)
	}
}

func testConcurrentPuts(t *testing.T, open func(t *testing.T) store.Store) {
	s := openStore(t, open)
	ctx := t.Context()
	const writers, perWriter = 8, 32
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range perWriter {
				key := fmt.Sprintf("w%d/%03d", w, i)
				if err := s.Put(ctx, key, []byte(key)); err != nil {
					t.Errorf("Put(%q): %v", key, err)
					return
				}
				if err := s.Put(ctx, "shared", []byte(key)); err != nil {
					t.Errorf("Put(shared): %v", err)
					return
				}
			}
		})
		// Readers run alongside, so the race detector sees reads and
		// writes interleave; what they read is checked after the writes.
		wg.Go(func() {
			for range perWriter {
				if _, err := s.List(ctx, fmt.Sprintf("w%d/", w)); err != nil {
					t.Errorf("List during writes: %v", err)
					return
				}
				if _, err := s.Get(ctx, "shared"); err != nil && !errors.Is(err, store.ErrNotFound) {
					t.Errorf("Get during writes: %v", err)
					return
				}
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	var want []store.KV
	for w := range writers {
		for i := range perWriter {
			key := fmt.Sprintf("w%d/%03d", w, i)
			want = append(want, store.KV{Key: key, Value: []byte(key)})
		}
	}
	wantList(t, s, "w", want)
	// The last write to "shared" wins; it must be one that was written.
	got, err := s.Get(ctx, "shared")
	if err != nil {
		t.Fatalf("Get(shared): %v", err)
	}
	if !slices.ContainsFunc(want, func(kv store.KV) bool { return bytes.Equal(kv.Value, got) }) {
		t.Fatalf("Get(shared) = %q, not a value any writer wrote", got)
	}
}

// testConcurrentClose closes the store while writers are busy: each call must
// either succeed or fail with ErrClosed, never panic or hang.
func testConcurrentClose(t *testing.T, open func(t *testing.T) store.Store) {
	s := openStore(t, open)
	ctx := t.Context()
	var started, done sync.WaitGroup
	for w := range 4 {
		started.Add(1)
		done.Go(func() {
			first := true
			for i := 0; ; i++ {
				err := s.Put(ctx, fmt.Sprintf("w%d/%d", w, i), []byte("v"))
				if err != nil {
					if !errors.Is(err, store.ErrClosed) {
						t.Errorf("Put during Close: %v, want nil or ErrClosed", err)
					}
					if first {
						started.Done()
					}
					return
				}
				if first {
					started.Done() // at least one write landed before Close
					first = false
				}
			}
		})
	}
	started.Wait()
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	done.Wait()
}

func testReopen(t *testing.T, open func(t *testing.T) store.Store) {
	s := openStore(t, open)
	mustPut(t, s, "resources/Trigger/a", []byte("a1"))
	mustPut(t, s, "resources/Trigger/b", []byte("b1"))
	mustPut(t, s, "resources/Trigger/b", []byte("b2"))
	mustPut(t, s, "resources/Trigger/c", []byte("c1"))
	if err := s.Delete(t.Context(), "resources/Trigger/c"); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}

	s = openStore(t, open)
	wantValue(t, s, "resources/Trigger/b", []byte("b2"))
	wantMissing(t, s, "resources/Trigger/c")
	wantList(t, s, "", []store.KV{
		{Key: "resources/Trigger/a", Value: []byte("a1")},
		{Key: "resources/Trigger/b", Value: []byte("b2")},
	})
}

func testContextDone(t *testing.T, open func(t *testing.T) store.Store) {
	s := openStore(t, open)
	mustPut(t, s, "kept", []byte("v"))

	cancelled, cancel := context.WithCancel(t.Context())
	cancel()
	expired, cancel2 := context.WithDeadline(t.Context(), time.Now().Add(-time.Second))
	defer cancel2()

	for name, ctx := range map[string]context.Context{"cancelled": cancelled, "expired": expired} {
		want := ctx.Err()
		if _, err := s.Get(ctx, "kept"); !errors.Is(err, want) {
			t.Errorf("Get with %s ctx = %v, want an error wrapping %v", name, err, want)
		}
		if err := s.Put(ctx, "new", []byte("v")); !errors.Is(err, want) {
			t.Errorf("Put with %s ctx = %v, want an error wrapping %v", name, err, want)
		}
		if err := s.Delete(ctx, "kept"); !errors.Is(err, want) {
			t.Errorf("Delete with %s ctx = %v, want an error wrapping %v", name, err, want)
		}
		if _, err := s.List(ctx, ""); !errors.Is(err, want) {
			t.Errorf("List with %s ctx = %v, want an error wrapping %v", name, err, want)
		}
		if err := s.PutTTL(ctx, "new", []byte("v"), time.Minute); !errors.Is(err, want) {
			t.Errorf("PutTTL with %s ctx = %v, want an error wrapping %v", name, err, want)
		}
		if ok, err := s.PutIfAbsent(ctx, "new", []byte("v"), 0); ok || !errors.Is(err, want) {
			t.Errorf("PutIfAbsent with %s ctx = %v, %v; want false and an error wrapping %v", name, ok, err, want)
		}
		if ch, err := s.Watch(ctx, ""); ch != nil || !errors.Is(err, want) {
			t.Errorf("Watch with %s ctx = %v, %v; want nil and an error wrapping %v", name, ch, err, want)
		}
	}
	// A call refused for its context has no effect.
	wantList(t, s, "", []store.KV{{Key: "kept", Value: []byte("v")}})
}

func testClosed(t *testing.T, open func(t *testing.T) store.Store) {
	s := openStore(t, open)
	mustPut(t, s, "k", []byte("v"))
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close = %v, want the first's result (nil)", err)
	}
	ctx := t.Context()
	if _, err := s.Get(ctx, "k"); !errors.Is(err, store.ErrClosed) {
		t.Errorf("Get after Close = %v, want ErrClosed", err)
	}
	if err := s.Put(ctx, "k", []byte("v")); !errors.Is(err, store.ErrClosed) {
		t.Errorf("Put after Close = %v, want ErrClosed", err)
	}
	if err := s.Delete(ctx, "k"); !errors.Is(err, store.ErrClosed) {
		t.Errorf("Delete after Close = %v, want ErrClosed", err)
	}
	if _, err := s.List(ctx, ""); !errors.Is(err, store.ErrClosed) {
		t.Errorf("List after Close = %v, want ErrClosed", err)
	}
	if err := s.PutTTL(ctx, "k", []byte("v"), time.Minute); !errors.Is(err, store.ErrClosed) {
		t.Errorf("PutTTL after Close = %v, want ErrClosed", err)
	}
	if ok, err := s.PutIfAbsent(ctx, "new", []byte("v"), 0); ok || !errors.Is(err, store.ErrClosed) {
		t.Errorf("PutIfAbsent after Close = %v, %v; want false, ErrClosed", ok, err)
	}
	if ch, err := s.Watch(ctx, ""); ch != nil || !errors.Is(err, store.ErrClosed) {
		t.Errorf("Watch after Close = %v, %v; want nil, ErrClosed", ch, err)
	}
}

// short renders a value for a failure message without flooding it.
func short(b []byte) string {
	if b == nil {
		return "nil"
	}
	if len(b) > 64 {
		return fmt.Sprintf("%q… (%d bytes)", b[:64], len(b))
	}
	return fmt.Sprintf("%q", b)
}

func kvs(list []store.KV) string {
	parts := make([]string, len(list))
	for i, kv := range list {
		parts[i] = fmt.Sprintf("%q=%s", kv.Key, short(kv.Value))
	}
	return "[" + strings.Join(parts, " ") + "]"
}
