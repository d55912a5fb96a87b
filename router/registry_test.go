package router

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/weft-dev/weft/internal/store"
	"github.com/weft-dev/weft/internal/testutil"
)

// localFunctions stands in for a node's worker pool: it runs the named
// functions as one HTTP server each.
type localFunctions map[string]string // name → address

func (l localFunctions) Has(name string) bool { _, ok := l[name]; return ok }
func (l localFunctions) Acquire(_ context.Context, name string) (string, func(error), error) {
	return l[name], func(error) {}, nil
}

// TestRegistryAcrossNodes runs two nodes over one real redis-server: node A
// runs function hello and announces it; node B, which does not run it,
// learns of it through the store's notifications and routes a call over
// mutual TLS to A's inbound listener. When A dies without withdrawing, its
// announcement expires and B stops routing there.
func TestRegistryAcrossNodes(t *testing.T) {
	url := testutil.StartRedis(t)
	open := func() *store.Redis {
		st, err := store.OpenRedis(url, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = st.Close() })
		return st
	}
	stA, stB := open(), open()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	run := func(f func(context.Context) error) { wg.Go(func() { _ = f(ctx) }) }

	hello := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "hello from A")
	}))
	defer hello.Close()

	node := func(st store.Store, name string, fns localFunctions) (*Router, *Identity) {
		ca, err := LoadOrCreateCA(ctx, st, "weft.local", SystemClock{})
		if err != nil {
			t.Fatal(err)
		}
		src, err := NewSVIDSource(ca, spiffeid.RequireFromPath(ca.TrustDomain(), "/node/"+name), SystemClock{}, nil)
		if err != nil {
			t.Fatal(err)
		}
		id := &Identity{SVID: src, Bundle: ca.Bundle(), Domain: ca.TrustDomain()}
		return New(Config{Identity: id}, fns, nil), id
	}

	// Node A: runs hello, serves it inbound, announces it.
	routerA, idA := node(stA, "a", localFunctions{"hello": hello.Listener.Addr().String()})
	authz, err := NewAuthorizerIDs(idA.Domain, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	inA := NewInbound("127.0.0.1:0", routerA, ServerTLS(idA.SVID, idA.Bundle, authz), nil)
	run(inA.Run)
	<-inA.Ready()
	regCtx, killA := context.WithCancel(ctx)
	regA, err := NewRegistry(RegistryConfig{Node: "a", Inbound: "https://" + inA.Addr(), TTL: 2 * time.Second, Heartbeat: 500 * time.Millisecond},
		stA, func() []string { return []string{"hello"} }, nil)
	if err != nil {
		t.Fatal(err)
	}
	regDone := make(chan struct{})
	wg.Go(func() { _ = regA.Run(regCtx); close(regDone) })

	// Node B: runs nothing, learns from the registry.
	regB, err := NewRegistry(RegistryConfig{Node: "b", Inbound: "https://127.0.0.1:1", TTL: 2 * time.Second, Heartbeat: 500 * time.Millisecond},
		stB, func() []string { return nil }, nil)
	if err != nil {
		t.Fatal(err)
	}
	run(regB.Run)
	routerB, _ := node(stB, "b", localFunctions{})
	routerB.cfg.Remote = regB

	testutil.WaitFor(t, 10*time.Second, func() bool { return routerB.Resolves("hello") }, "node B never learned of hello")
	req, _ := http.NewRequest(http.MethodGet, "http://hello/", nil)
	resp, err := routerB.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "hello from A" {
		t.Fatalf("call routed to node A: %d %q", resp.StatusCode, body)
	}

	// A dies: its store connection is gone before it can withdraw, so only
	// the TTL takes its announcement away.
	_ = stA.Close()
	killA()
	<-regDone
	testutil.WaitFor(t, 10*time.Second, func() bool { return !routerB.Resolves("hello") }, "a dead node's function stayed routable")
}

// registryNode runs a Registry for node name over its own handle on the
// Redis at url, running fns, until the test ends.
func registryNode(t *testing.T, url, name string, fns []string, ttl, heartbeat time.Duration) *Registry {
	t.Helper()
	st, err := store.OpenRedis(url, nil)
	if err != nil {
		t.Fatal(err)
	}
	g, err := NewRegistry(RegistryConfig{Node: name, Inbound: "https://" + name + ".example:8443", TTL: ttl, Heartbeat: heartbeat},
		st, func() []string { return fns }, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.Run(ctx) }() // owned: the cleanup waits for it
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("registry %s: Run: %v", name, err)
		}
		_ = st.Close()
	})
	return g
}

// redisHas reports whether key (without weft's namespace) is in the Redis at
// url.
func redisHas(t *testing.T, url, key string) bool {
	t.Helper()
	st, err := store.OpenRedis(url, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	_, err = st.Get(context.Background(), key)
	return err == nil
}

// TestRegistryKeepsViewWhileRedisIsDown: with Redis gone for three TTLs,
// node b keeps routing to node a's function from its view (nothing can
// expire in a store that does not answer), and once Redis is back, empty,
// a's announcement is in it again.
func TestRegistryKeepsViewWhileRedisIsDown(t *testing.T) {
	const ttl, heartbeat = time.Second, 200 * time.Millisecond
	rs := testutil.RunRedis(t)
	registryNode(t, rs.URL(), "a", []string{"hello"}, ttl, heartbeat)
	b := registryNode(t, rs.URL(), "b", nil, ttl, heartbeat)
	testutil.WaitFor(t, 10*time.Second, func() bool { return len(b.Endpoints("hello")) == 1 }, "b never learned of hello")

	rs.Kill()
	down := time.Now()
	testutil.WaitFor(t, 10*time.Second, func() bool {
		if len(b.Endpoints("hello")) != 1 {
			t.Fatalf("b forgot hello %v into the outage", time.Since(down))
		}
		return time.Since(down) > 3*ttl
	})
	rs.Start()
	testutil.WaitFor(t, 10*time.Second, func() bool {
		if len(b.Endpoints("hello")) != 1 {
			t.Fatalf("b forgot hello after Redis came back")
		}
		return redisHas(t, rs.URL(), "registry/fn/hello/a")
	}, "a never announced hello again")
}

// TestRegistryRedisRestartedEmpty is the regression test of Redis coming
// back empty (restarted without persistence). Before the fix, the first
// List after the restart found nothing and node b dropped node a's function
// at once, and a announced it again only at its next heartbeat: calls from
// b to hello failed for up to a heartbeat (here, never within the test).
// Now b keeps the entry for a TTL, and a, finding its announcement missing
// when its watcher resyncs, makes it again at once.
func TestRegistryRedisRestartedEmpty(t *testing.T) {
	const ttl, heartbeat = time.Hour, 30 * time.Minute // no heartbeat after the first
	rs := testutil.RunRedis(t)
	registryNode(t, rs.URL(), "a", []string{"hello"}, ttl, heartbeat)
	b := registryNode(t, rs.URL(), "b", nil, ttl, heartbeat)
	testutil.WaitFor(t, 10*time.Second, func() bool { return len(b.Endpoints("hello")) == 1 }, "b never learned of hello")

	rs.Kill()
	rs.Start()
	testutil.WaitFor(t, 10*time.Second, func() bool {
		if len(b.Endpoints("hello")) != 1 {
			t.Fatalf("b forgot hello when Redis came back empty")
		}
		return redisHas(t, rs.URL(), "registry/fn/hello/a")
	}, "a did not announce hello again when Redis came back empty")
}

// TestRegistryViewRules drives refresh and apply by hand over a store and a
// clock of the test's: an announcement the store stops listing (with no
// notification, as when one was missed) stays a TTL, then goes; one the
// store reports deleted goes at once; and a node whose own announcement is
// missing from the listing makes it again.
func TestRegistryViewRules(t *testing.T) {
	const ttl = 15 * time.Second
	st, err := store.OpenBadger(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ctx := context.Background()
	clk := newLBClock()
	g, err := NewRegistry(RegistryConfig{Node: "self", Inbound: "https://self:1", TTL: ttl, Clock: clk},
		st, func() []string { return []string{"mine"} }, nil)
	if err != nil {
		t.Fatal(err)
	}
	put := func(key string) {
		body, _ := json.Marshal(announcement{Inbound: "https://" + key})
		if err := st.Put(ctx, key, body); err != nil {
			t.Fatal(err)
		}
	}
	const other, gone = registryPrefix + "fn1/other", registryPrefix + "fn2/gone"
	put(other)
	put(gone)
	announced := map[string]bool{"mine": true}
	g.refresh(ctx, announced)
	if len(g.Endpoints("fn1")) != 1 || len(g.Endpoints("fn2")) != 1 {
		t.Fatalf("view after the first listing: %v", g.remote)
	}
	if _, err := st.Get(ctx, g.key("mine")); err != nil {
		t.Fatalf("own announcement missing from the listing was not made again: %v", err)
	}

	// Unlisted without a notification: kept for a TTL after the first
	// listing that lacked it.
	if err := st.Delete(ctx, other); err != nil {
		t.Fatal(err)
	}
	g.refresh(ctx, announced)
	clk.Advance(ttl - time.Millisecond)
	g.refresh(ctx, announced)
	if len(g.Endpoints("fn1")) != 1 {
		t.Fatal("an unlisted announcement was dropped before a TTL")
	}
	clk.Advance(time.Millisecond)
	g.refresh(ctx, announced)
	if len(g.Endpoints("fn1")) != 0 {
		t.Fatal("an unlisted announcement outlived its TTL")
	}

	// Reported deleted: dropped at once.
	g.apply(ctx, store.Change{Key: gone, Deleted: true}, announced)
	if len(g.Endpoints("fn2")) != 0 {
		t.Fatal("an announcement reported deleted stayed in the view")
	}
	// Reported put: read and added.
	put(other)
	g.apply(ctx, store.Change{Key: other}, announced)
	if got := g.Endpoints("fn1"); len(got) != 1 || got[0] != "https://"+other {
		t.Fatalf("after a put notification: %v", got)
	}
	// Own announcement reported expired while the node runs it: made again.
	if err := st.Delete(ctx, g.key("mine")); err != nil {
		t.Fatal(err)
	}
	g.apply(ctx, store.Change{Key: g.key("mine"), Deleted: true}, announced)
	if _, err := st.Get(ctx, g.key("mine")); err != nil {
		t.Fatalf("own announcement reported expired was not made again: %v", err)
	}
}
