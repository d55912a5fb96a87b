package router

import (
	"math"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// routeTableYAML parses serviceHeader+spec and compiles its routes.
func routeTableYAML(t testing.TB, spec string) *RouteTable {
	t.Helper()
	s, err := parseServiceYAML(t, "svc.yaml", serviceHeader+spec)
	if err != nil {
		t.Fatal(err)
	}
	rt, err := NewRouteTable(s)
	if err != nil {
		t.Fatal(err)
	}
	return rt
}

// shares selects n times with rnd and returns each backend's share in
// percent.
func shares(rt *RouteTable, r *http.Request, n int, rnd func() float64) map[string]float64 {
	counts := map[string]int{}
	for range n {
		b, _ := rt.Select(r, rnd)
		counts[b]++
	}
	out := map[string]float64{}
	for b, c := range counts {
		out[b] = 100 * float64(c) / float64(n)
	}
	return out
}

func TestRouteTableMatch(t *testing.T) {
	t.Parallel()
	rt := routeTableYAML(t, `spec:
  endpoints: ["http://127.0.0.1:8080"]
  routes:
    - match: {pathPrefix: /v2/, headers: {x-canary: "1"}}
      backends: [{name: canary}]
      timeout: 3s
    - match: {pathPrefix: /v2/}
      backends: [{name: v2}]
    - match: {method: DELETE}
      backends: [{name: deleter}]
    - match: {headers: {x-tenant: acme, X-REGION: eu}}
      backends: [{name: acme-eu}]
    - match: {headers: {host: legacy.local}}
      backends: [{name: legacy}]
`)
	cases := map[string]struct {
		method, target string
		header         http.Header
		want           string
		route          int
	}{
		"prefix and header":                 {"GET", "/v2/pay", http.Header{"X-Canary": {"1"}}, "canary", 0},
		"first match wins":                  {"POST", "/v2/pay", http.Header{"X-Canary": {"1"}}, "canary", 0},
		"header value differs":              {"GET", "/v2/pay", http.Header{"X-Canary": {"0"}}, "v2", 1},
		"one of a repeated header's values": {"GET", "/v2/", http.Header{"X-Canary": {"0", "1"}}, "canary", 0},
		"prefix only":                       {"GET", "/v2/pay?x=1", nil, "v2", 1},
		"prefix is byte for byte":           {"GET", "/v2", nil, "payments", -1},
		"earlier route beats method":        {"DELETE", "/v2/x", nil, "v2", 1},
		"method":                            {"DELETE", "/v1/x", nil, "deleter", 2},
		"method differs":                    {"PUT", "/v1/x", nil, "payments", -1},
		"all headers":                       {"GET", "/", http.Header{"X-Tenant": {"acme"}, "X-Region": {"eu"}}, "acme-eu", 3},
		"one header missing":                {"GET", "/", http.Header{"X-Tenant": {"acme"}}, "payments", -1},
		"values are case-sensitive":         {"GET", "/", http.Header{"X-Tenant": {"ACME"}, "X-Region": {"eu"}}, "payments", -1},
		"host":                              {"GET", "http://legacy.local/x", nil, "legacy", 4},
		"no route: the service itself":      {"GET", "/v1/pay", nil, "payments", -1},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			r := httptest.NewRequest(c.method, c.target, nil)
			for k, vs := range c.header {
				r.Header[k] = vs
			}
			got, ok := rt.Pick(r, nil)
			if !ok || got.Backend != c.want || got.Route != c.route {
				t.Errorf("Pick = %+v, %v; want backend %s, route %d", got, ok, c.want, c.route)
			}
			if b, ok := rt.Select(r, nil); !ok || b != c.want {
				t.Errorf("Select = %s, %v; want %s", b, ok, c.want)
			}
			if wantTimeout := map[bool]time.Duration{true: 3 * time.Second}[c.route == 0]; got.Timeout != wantTimeout {
				t.Errorf("timeout %s, want %s", got.Timeout, wantTimeout)
			}
		})
	}
	if rt.Service() != "payments" {
		t.Errorf("Service() = %q", rt.Service())
	}
}

func TestRouteTableFallback(t *testing.T) {
	t.Parallel()
	get := httptest.NewRequest("GET", "/other", nil)
	cases := map[string]struct {
		spec string
		want string
		ok   bool
	}{
		"no routes, registry endpoints": {"", "payments", true},
		"no routes, static endpoints":   {"spec:\n  endpoints: [\"http://a:1\"]\n", "payments", true},
		"no match, static endpoints": {"spec:\n  endpoints: [\"http://a:1\"]\n  routes:\n    - match: {pathPrefix: /v2/}\n      backends: [{name: v2}]\n",
			"payments", true},
		"no match, no endpoints of its own": {"spec:\n  routes:\n    - match: {pathPrefix: /v2/}\n      backends: [{name: v2}]\n", "", false},
		"a catch-all route":                 {"spec:\n  routes:\n    - match: {pathPrefix: /v2/}\n      backends: [{name: v2}]\n    - backends: [{name: v1}]\n", "v1", true},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			got, ok := routeTableYAML(t, c.spec).Select(get, nil)
			if got != c.want || ok != c.ok {
				t.Errorf("Select = %q, %v; want %q, %v", got, ok, c.want, c.ok)
			}
		})
	}
}

// TestRouteTableWeightedSplit checks the canary split of DESIGN.md's
// example: 90/10 within ±2 points over 10,000 requests, and within 3 points
// over every run of 1,000 (the issue's "within a few percent over a
// thousand requests").
func TestRouteTableWeightedSplit(t *testing.T) {
	t.Parallel()
	s, err := parseServiceYAML(t, "payments.yaml", designService)
	if err != nil {
		t.Fatal(err)
	}
	rt, err := NewRouteTable(s)
	if err != nil {
		t.Fatal(err)
	}
	r := httptest.NewRequest("GET", "/v1/charge", nil)
	within := func(t *testing.T, got map[string]float64, v1, v2, tol float64) {
		t.Helper()
		if math.Abs(got["payments-v1"]-v1) > tol || math.Abs(got["payments-v2"]-v2) > tol || len(got) != 2 {
			t.Errorf("split %v, want payments-v1 %.0f%% and payments-v2 %.0f%% within %.0f points", got, v1, v2, tol)
		}
	}
	rnd := rand.New(rand.NewPCG(1, 2)).Float64
	within(t, shares(rt, r, 10_000, rnd), 90, 10, 2)
	for seed := range uint64(20) {
		within(t, shares(rt, r, 1_000, rand.New(rand.NewPCG(seed, 7)).Float64), 90, 10, 3)
	}
	// The default source: at 10,000 draws 2 points are over six standard
	// deviations, so this does not flake.
	within(t, shares(rt, r, 10_000, nil), 90, 10, 2)

	// A request the first route matches is not split.
	canary := httptest.NewRequest("GET", "/v2/charge", nil)
	canary.Header.Set("x-canary", "1")
	if got := shares(rt, canary, 1_000, rnd); got["payments-v2"] != 100 {
		t.Errorf("canary requests split %v, want all to payments-v2", got)
	}
}

// TestRouteTableSwapOnApply does what the proxy does on `weft apply`: it
// compiles the re-applied Service into a new table and swaps the pointer.
// Requests in flight keep the table they loaded; the next ones get the new
// split, and the old table is unchanged.
func TestRouteTableSwapOnApply(t *testing.T) {
	t.Parallel()
	compile := func(v1, v2 string) *RouteTable {
		doc := strings.Replace(strings.Replace(designService, "weight: 90", "weight: "+v1, 1), "weight: 10", "weight: "+v2, 1)
		s, err := parseServiceYAML(t, "payments.yaml", doc)
		if err != nil {
			t.Fatal(err)
		}
		rt, err := NewRouteTable(s)
		if err != nil {
			t.Fatal(err)
		}
		return rt
	}
	var current atomic.Pointer[RouteTable]
	old := compile("90", "10")
	current.Store(old)

	r := httptest.NewRequest("GET", "/", nil)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := range 4 { // readers racing the swap, as the proxy's handlers do
		wg.Go(func() {
			rnd := rand.New(rand.NewPCG(uint64(i), 1)).Float64
			for {
				select {
				case <-stop:
					return
				default:
				}
				if _, ok := current.Load().Select(r, rnd); !ok {
					t.Error("a request found no backend")
					return
				}
			}
		})
	}
	current.Store(compile("50", "50"))
	close(stop)
	wg.Wait()

	rnd := rand.New(rand.NewPCG(3, 4)).Float64
	if got := shares(current.Load(), r, 10_000, rnd); math.Abs(got["payments-v1"]-50) > 2 || math.Abs(got["payments-v2"]-50) > 2 {
		t.Errorf("after apply: split %v, want 50/50 within 2 points", got)
	}
	if got := shares(old, r, 10_000, rnd); math.Abs(got["payments-v1"]-90) > 2 {
		t.Errorf("the old table changed: split %v, want 90/10", got)
	}
	if got := shares(compile("0", "1"), r, 1_000, rnd); got["payments-v2"] != 100 {
		t.Errorf("weight 0 still gets traffic: %v", got)
	}
}

// TestRouteTablePickBounds feeds edge values, including ones a misbehaving
// source might return, and checks each lands on the right backend: with
// weights a=1, b=0, c=3, a owns [0, 0.25) and c owns [0.25, 1).
func TestRouteTablePickBounds(t *testing.T) {
	t.Parallel()
	rt := routeTableYAML(t, "spec:\n  routes:\n    - backends: [{name: a, weight: 1}, {name: b, weight: 0}, {name: c, weight: 3}]\n")
	r := httptest.NewRequest("GET", "/", nil)
	for _, c := range []struct {
		x    float64
		want string
	}{
		{0, "a"}, {0.2499, "a"}, {0.25, "c"}, {0.5, "c"}, {math.Nextafter(1, 0), "c"},
		{1, "c"}, {1.5, "c"}, {-0.5, "a"}, {math.NaN(), "a"}, {math.Inf(1), "c"},
	} {
		got, ok := rt.Select(r, func() float64 { return c.x })
		if !ok || got != c.want {
			t.Errorf("rnd %v: Select = %q, %v; want %q", c.x, got, ok, c.want)
		}
	}
}

func TestNewRouteTableRefuses(t *testing.T) {
	t.Parallel()
	for name, s := range map[string]*Service{
		"nil service":      nil,
		"no backends":      {Name: "s", Routes: []Route{{}}},
		"all weights zero": {Name: "s", Routes: []Route{{Backends: []RouteBackend{{"a", 0}, {"b", 0}}}}},
		"negative weight":  {Name: "s", Routes: []Route{{Backends: []RouteBackend{{"a", 2}, {"b", -1}}}}},
	} {
		if _, err := NewRouteTable(s); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// TestRouteTableSelectAllocs keeps the per-request path free of allocations.
func TestRouteTableSelectAllocs(t *testing.T) {
	s, err := parseServiceYAML(t, "payments.yaml", designService)
	if err != nil {
		t.Fatal(err)
	}
	rt, err := NewRouteTable(s)
	if err != nil {
		t.Fatal(err)
	}
	r := httptest.NewRequest("GET", "/v2/charge", nil)
	r.Header.Set("X-Canary", "0")
	rnd := rand.New(rand.NewPCG(1, 1)).Float64
	if n := testing.AllocsPerRun(1000, func() { rt.Select(r, rnd) }); n != 0 {
		t.Errorf("Select allocates %.1f times per call, want 0", n)
	}
}

func BenchmarkRouteTableSelect(b *testing.B) {
	s, err := parseServiceYAML(b, "payments.yaml", designService)
	if err != nil {
		b.Fatal(err)
	}
	rt, err := NewRouteTable(s)
	if err != nil {
		b.Fatal(err)
	}
	for name, r := range map[string]*http.Request{
		"first-route": func() *http.Request {
			r := httptest.NewRequest("GET", "/v2/charge", nil)
			r.Header.Set("X-Canary", "1")
			return r
		}(),
		"weighted-split": httptest.NewRequest("GET", "/v1/charge", nil),
	} {
		b.Run(name, func(b *testing.B) {
			rnd := rand.New(rand.NewPCG(1, 1)).Float64
			b.ReportAllocs()
			for b.Loop() {
				rt.Select(r, rnd)
			}
		})
	}
}
