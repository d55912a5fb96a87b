package router

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/weft-dev/weft/internal/resource"
	"github.com/weft-dev/weft/internal/store"
	"github.com/weft-dev/weft/internal/testutil"
)

// backend is a real HTTP server that counts its requests and answers with
// the behaviour set for it.
type backend struct {
	*httptest.Server
	name   string
	hits   atomic.Int64
	status atomic.Int32 // 0 = 200
	hang   chan struct{}
}

func newBackend(t *testing.T, name string) *backend {
	b := &backend{name: name, hang: make(chan struct{})}
	b.Server = httptest.NewServer(http.HandlerFunc(b.serve))
	t.Cleanup(func() { close(b.hang); b.Close() })
	return b
}

func (b *backend) serve(w http.ResponseWriter, r *http.Request) {
	b.hits.Add(1)
	switch s := b.status.Load(); s {
	case 0:
		_, _ = io.WriteString(w, b.name)
	case -1: // hang until the client gives up or the test ends
		select {
		case <-r.Context().Done():
		case <-b.hang:
		}
	default:
		http.Error(w, "failing on purpose", int(s))
	}
}

func serviceYAML(t *testing.T, doc string) *Service {
	t.Helper()
	objs, err := resource.Decode("svc.yaml", []byte("apiVersion: weft.dev/v1\nkind: Service\n"+doc))
	if err != nil {
		t.Fatal(err)
	}
	s, err := ParseService(objs[0])
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func get(t *testing.T, r *Router, url string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	resp, err := r.RoundTrip(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// TestRoutingRealBackends runs the router against real servers on
// loopback: a healthy pair, one answering 503 and a closed port. Every
// request that could succeed does; the bad endpoints are ejected (at most
// half the endpoints may be) and come back; load spreads over the good ones.
func TestRoutingRealBackends(t *testing.T) {
	clk := newLBClock()
	a, b, bad := newBackend(t, "a"), newBackend(t, "b"), newBackend(t, "bad")
	bad.status.Store(503)
	closed := "http://" + testutil.RefusingAddr(t)
	r := New(Config{Clock: clk}, nil, slog.New(slog.DiscardHandler))
	svc := serviceYAML(t, fmt.Sprintf(`metadata: {name: api}
spec:
  endpoints: [%q, %q, %q, %q]
  loadBalancer: round-robin
  timeout: 5s
  retries: {attempts: 4}
  outlierDetection: {consecutiveFailures: 2, ejectionTime: 30s}
`, a.URL, b.URL, bad.URL, closed))
	if err := r.SetServices([]*Service{svc}); err != nil {
		t.Fatal(err)
	}
	for i := range 100 {
		if code, body := get(t, r, "http://api/x"); code != 200 || (body != "a" && body != "b") {
			t.Fatalf("request %d: %d %q", i, code, body)
		}
	}
	ejected := map[string]bool{}
	for _, st := range r.Status()[0].Endpoints {
		ejected[st.Address] = !st.Healthy
	}
	if !ejected[bad.URL] || !ejected[closed] || ejected[a.URL] || ejected[b.URL] {
		t.Fatalf("ejections %v, want the 503 and closed endpoints out", ejected)
	}
	if n, m := a.hits.Load(), b.hits.Load(); n < 30 || m < 30 {
		t.Errorf("load did not spread over the good endpoints: a=%d b=%d", n, m)
	}

	// Ejected endpoints come back by themselves once their time is over.
	bad.status.Store(0)
	clk.Advance(31 * time.Second)
	before := bad.hits.Load()
	for range 30 {
		get(t, r, "http://api/x")
	}
	if bad.hits.Load() == before {
		t.Errorf("the recovered endpoint got no traffic after its ejection ended")
	}
}

// TestPerTryTimeoutRetriesAHungEndpoint: a GET to an endpoint that hangs
// is cut at the per-try timeout and retried on another endpoint; the
// overall timeout bounds a request when every endpoint hangs.
func TestPerTryTimeoutRetriesAHungEndpoint(t *testing.T) {
	good, hung := newBackend(t, "good"), newBackend(t, "hung")
	hung.status.Store(-1)
	r := New(Config{}, nil, nil)
	svc := serviceYAML(t, fmt.Sprintf(`metadata: {name: api}
spec:
  endpoints: [%q, %q]
  loadBalancer: round-robin
  timeout: 2s
  retries: {attempts: 2, perTryTimeout: 100ms}
  outlierDetection: {consecutiveFailures: 1000, ejectionTime: 30s}
`, good.URL, hung.URL))
	if err := r.SetServices([]*Service{svc}); err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		if code, body := get(t, r, "http://api/"); code != 200 || body != "good" {
			t.Fatalf("request %d: %d %q", i, code, body)
		}
	}
	if hung.hits.Load() == 0 {
		t.Fatal("the hung endpoint was never tried: the test proves nothing")
	}
	good.status.Store(-1)
	start := time.Now()
	if code, _ := get(t, r, "http://api/"); code == 200 {
		t.Fatal("a request succeeded with every endpoint hung")
	}
	if d := time.Since(start); d > 10*time.Second { // a loose bound: without the timeout it hangs until cleanup
		t.Fatalf("the overall timeout of 2s did not hold: %v", d)
	}
}

// TestRetryBudgetStopsRetries: when every endpoint fails, retries stop at
// the budget (20% of requests plus a floor), so an outage is not multiplied
// by the attempts.
func TestRetryBudgetStopsRetries(t *testing.T) {
	clk := newLBClock()
	b1, b2 := newBackend(t, "b1"), newBackend(t, "b2")
	b1.status.Store(503)
	b2.status.Store(503)
	r := New(Config{Clock: clk}, nil, nil)
	svc := serviceYAML(t, fmt.Sprintf(`metadata: {name: down}
spec:
  endpoints: [%q, %q]
  retries: {attempts: 3, budgetPercent: 20}
  outlierDetection: {consecutiveFailures: 1000000, ejectionTime: 30s}
`, b1.URL, b2.URL))
	if err := r.SetServices([]*Service{svc}); err != nil {
		t.Fatal(err)
	}
	const n = 1000
	for range n {
		if code, _ := get(t, r, "http://down/"); code != 503 {
			t.Fatalf("status %d, want the backend's 503", code)
		}
	}
	hits := b1.hits.Load() + b2.hits.Load()
	// 20% of 1,000 plus the floor of 10/s over the 10 s window.
	if limit := int64(n + n/5 + 100); hits > limit {
		t.Fatalf("%d backend hits for %d requests, the budget allows at most %d", hits, n, limit)
	}
	if hits < n+n/5 {
		t.Fatalf("%d backend hits: retries stopped before the budget", hits)
	}
	t.Logf("%d requests, %d backend hits (%.0f%% retries)", n, hits, float64(hits-n)/n*100)
}

// TestWeightedSplitThroughRouter: a 90/10 route between two Services holds
// within a few percent over a thousand requests, and a new weight applies
// to the next requests.
func TestWeightedSplitThroughRouter(t *testing.T) {
	v1, v2 := newBackend(t, "v1"), newBackend(t, "v2")
	r := New(Config{}, nil, nil)
	set := func(w1, w2 int) {
		t.Helper()
		svcs := []*Service{
			serviceYAML(t, fmt.Sprintf("metadata: {name: pay-v1}\nspec: {endpoints: [%q]}\n", v1.URL)),
			serviceYAML(t, fmt.Sprintf("metadata: {name: pay-v2}\nspec: {endpoints: [%q]}\n", v2.URL)),
			serviceYAML(t, fmt.Sprintf(`metadata: {name: pay}
spec:
  routes:
    - match: {headers: {x-canary: "1"}}
      backends: [{name: pay-v2}]
    - backends: [{name: pay-v1, weight: %d}, {name: pay-v2, weight: %d}]
`, w1, w2)),
		}
		if err := r.SetServices(svcs); err != nil {
			t.Fatal(err)
		}
	}
	share := func() float64 {
		got := map[string]int{}
		for range 1000 {
			_, body := get(t, r, "http://pay/")
			got[body]++
		}
		return float64(got["v2"]) / 1000
	}
	set(90, 10)
	if s := share(); s < 0.07 || s > 0.13 {
		t.Fatalf("v2 got %.1f%%, want 10%% ± 3", s*100)
	}
	set(50, 50)
	if s := share(); s < 0.45 || s > 0.55 {
		t.Fatalf("after the change v2 got %.1f%%, want 50%% ± 5", s*100)
	}
	req, _ := http.NewRequest(http.MethodGet, "http://pay/", nil)
	req.Header.Set("X-Canary", "1")
	resp, err := r.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "v2" {
		t.Fatalf("header route went to %q", body)
	}
}

// TestMutualTLSToService: the router originates mTLS with the node's SVID
// to a Service whose server presents an SVID of weft's CA; the server's
// allow list decides who gets in.
func TestMutualTLSToService(t *testing.T) {
	ca := testCA(t)
	td := ca.TrustDomain()
	nodeSrc := testSVID(t, ca, "/node/test")
	nodeID := nodeSrc.ID()
	serverSrc := testSVID(t, ca, "/svc/payments")
	serve := func(allow []spiffeid.ID) string {
		authz, err := NewAuthorizerIDs(td, allow, nil)
		if err != nil {
			t.Fatal(err)
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			id, _ := PeerID(*r.TLS)
			_, _ = io.WriteString(w, "hello "+id.String())
		}), TLSConfig: ServerTLS(serverSrc, ca.Bundle(), authz)}
		var wg sync.WaitGroup
		wg.Go(func() { _ = srv.Serve(tls.NewListener(ln, srv.TLSConfig)) })
		t.Cleanup(func() { _ = srv.Close(); wg.Wait() })
		return "https://" + ln.Addr().String()
	}
	allowed := serve([]spiffeid.ID{nodeID})
	denied := serve([]spiffeid.ID{spiffeid.RequireFromPath(td, "/fn/someone-else")})

	r := New(Config{Identity: &Identity{SVID: nodeSrc, Bundle: ca.Bundle(), Domain: td}}, nil, nil)
	err := r.SetServices([]*Service{
		serviceYAML(t, fmt.Sprintf("metadata: {name: payments}\nspec:\n  endpoints: [%q]\n  tls: {mode: mutual, spiffeID: %q}\n", allowed, "spiffe://weft.local/svc/payments")),
		serviceYAML(t, fmt.Sprintf("metadata: {name: vault}\nspec:\n  endpoints: [%q]\n  tls: {mode: mutual}\n", denied)),
	})
	if err != nil {
		t.Fatal(err)
	}
	if code, body := get(t, r, "http://payments/"); code != 200 || !strings.Contains(body, nodeID.String()) {
		t.Fatalf("mTLS call: %d %q", code, body)
	}
	if code, body := get(t, r, "http://vault/"); code == 200 {
		t.Fatalf("a node outside the allow list got in: %q", body)
	}
}

// testCA loads weft's built-in CA (trust domain weft.local) from a Badger
// store in tb.TempDir(), as a node does on first start.
func testCA(tb testing.TB) *CA {
	tb.Helper()
	st, err := store.OpenBadger(tb.TempDir(), nil)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = st.Close() })
	ca, err := LoadOrCreateCA(context.Background(), st, "weft.local", SystemClock{})
	if err != nil {
		tb.Fatal(err)
	}
	return ca
}

// testSVID returns a renewing SVID source for path in ca's trust domain.
func testSVID(tb testing.TB, ca *CA, path string) *SVIDSource {
	tb.Helper()
	src, err := NewSVIDSource(ca, spiffeid.RequireFromPath(ca.TrustDomain(), path), SystemClock{}, nil)
	if err != nil {
		tb.Fatal(err)
	}
	return src
}
