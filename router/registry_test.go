package router

import (
	"context"
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
