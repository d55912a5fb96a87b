package store

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

func receive(t *testing.T, ch <-chan Change) Change {
	t.Helper()
	select {
	case c, ok := <-ch:
		if !ok {
			t.Fatal("channel closed")
		}
		return c
	case <-time.After(5 * time.Second):
		t.Fatal("no change within 5s")
	}
	panic("unreachable")
}

// TestFeedOverflow checks the bounded queue: pushes never block, a full queue
// turns into one Resync, changes while it is owed are dropped, and the feed
// works normally once it is delivered.
func TestFeedOverflow(t *testing.T) {
	t.Parallel()
	f := newFeed("p/")
	for i := range WatchBuffer + 10 { // nobody reads yet: must not block
		f.push(Change{Key: fmt.Sprintf("p/%d", i)})
	}
	f.push(Change{Key: "p/dropped"})
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { f.run(ctx); close(done) }()
	if c := receive(t, f.out); c != (Change{Resync: true}) {
		t.Fatalf("first change after overflow = %+v, want Resync", c)
	}
	f.push(Change{Key: "q/other"}) // another prefix: ignored
	f.push(Change{Key: "p/after", Deleted: true})
	f.push(Change{Resync: true}) // a producer's Resync queues in order
	if c := receive(t, f.out); c != (Change{Key: "p/after", Deleted: true}) {
		t.Fatalf("change after the Resync = %+v, want p/after deleted", c)
	}
	if c := receive(t, f.out); c != (Change{Resync: true}) {
		t.Fatalf("got %+v, want the queued Resync", c)
	}
	cancel()
	<-done
	if _, ok := <-f.out; ok {
		t.Fatal("channel open after run returned")
	}
}

func TestKeyspaceFlags(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"":      "Kg$xe",
		"El":    "ElKg$xe",
		"AKE":   "AKE",
		"KEA":   "KEA",
		"Ex":    "ExKg$e",
		"Kg$xe": "Kg$xe",
	} {
		if got := keyspaceFlags(in); got != want {
			t.Errorf("keyspaceFlags(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestGlobEscape(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"":            "",
		"weft:a/b":    "weft:a/b",
		`a*b?c[d]e\f`: `a\*b\?c\[d\]e\\f`,
		"^-\x00é":     "^-\x00é",
	} {
		if got := globEscape(in); got != want {
			t.Errorf("globEscape(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestDecode(t *testing.T) {
	t.Parallel()
	ks := &Redis{keyspace: true, db: 3}
	for _, tc := range []struct {
		channel, event string
		want           Change
		ok             bool
	}{
		{"__keyspace@3__:weft:reg/a", "set", Change{Key: "reg/a"}, true},
		{"__keyspace@3__:weft:reg/a", "del", Change{Key: "reg/a", Deleted: true}, true},
		{"__keyspace@3__:weft:reg/a", "expired", Change{Key: "reg/a", Deleted: true}, true},
		{"__keyspace@3__:weft:reg/a", "evicted", Change{Key: "reg/a", Deleted: true}, true},
		{"__keyspace@3__:weft:reg/a", "expire", Change{}, false}, // SET PX sends set, then expire
		{"__keyspace@4__:weft:reg/a", "set", Change{}, false},    // another database
		{"__keyspace@3__:other:a", "set", Change{}, false},
	} {
		got, ok := ks.decode(&redis.Message{Channel: tc.channel, Payload: tc.event})
		if got != tc.want || ok != tc.ok {
			t.Errorf("decode(%s %s) = %+v, %v; want %+v, %v", tc.channel, tc.event, got, ok, tc.want, tc.ok)
		}
	}

	fb := &Redis{}
	for _, c := range []Change{{Key: "a"}, {Key: "a/b\x00\n", Deleted: true}} {
		if got, ok := fb.decode(&redis.Message{Payload: encodeChange(c.Key, c.Deleted)}); !ok || got != c {
			t.Errorf("fallback round trip of %+v = %+v, %v", c, got, ok)
		}
	}
	for _, bad := range []string{"", "p", "x-key"} {
		if got, ok := decodeChange(bad); ok {
			t.Errorf("decodeChange(%q) = %+v, want refused", bad, got)
		}
	}
}
