package router

import (
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
)

// This file holds a Service's routes: their parsed form, the checks
// ParseService makes on them, and the RouteTable the proxy selects with.

// Route sends the requests that match it to one of its backends.
type Route struct {
	// Match says which requests the route takes; its zero value takes all.
	Match RouteMatch
	// Backends share the route's traffic by weight; at least one weight is
	// above 0, and no backend names the Service itself.
	Backends []RouteBackend
	// Timeout overrides the Service's Timeout for this route; 0 means the
	// Service's.
	Timeout time.Duration
}

// RouteMatch is what a request must have for a route to apply; every
// non-empty condition must hold.
type RouteMatch struct {
	// PathPrefix, when set, must prefix the request path byte for byte.
	PathPrefix string
	// Headers maps canonical header names (http.CanonicalHeaderKey) to the
	// value the request must carry among that header's values; nil matches
	// any headers.
	Headers map[string]string
	// Method, when set, must equal the request's method.
	Method string
}

// RouteBackend is one backend of a route: a Service or Function name and its
// relative weight (0 sends it nothing).
type RouteBackend struct {
	Name   string
	Weight int
}

type svcRouteJSON struct {
	Match    svcMatchJSON     `json:"match"`
	Backends []svcBackendJSON `json:"backends"`
	Timeout  *string          `json:"timeout"`
}

type svcMatchJSON struct {
	PathPrefix string            `json:"pathPrefix"`
	Headers    map[string]string `json:"headers"`
	Method     string            `json:"method"`
}

type svcBackendJSON struct {
	Name   string `json:"name"`
	Weight *int   `json:"weight"`
}

func (p *serviceParser) routes(raw []svcRouteJSON) []Route {
	var out []Route
	catchAll := -1
	for i, r := range raw {
		at := func(rest ...string) []string {
			return append([]string{"spec", "routes", strconv.Itoa(i)}, rest...)
		}
		if catchAll >= 0 {
			p.fail(fmt.Errorf("never matches: spec.routes[%d] before it takes every request", catchAll), at()...)
		}
		rt := Route{Match: RouteMatch{PathPrefix: r.Match.PathPrefix, Method: r.Match.Method}}
		if r.Timeout != nil {
			rt.Timeout = p.positive(*r.Timeout, at("timeout")...)
		}
		for _, name := range slices.Sorted(maps.Keys(r.Match.Headers)) { // errors in a stable order
			v := r.Match.Headers[name]
			if !validHeaderName(name) {
				p.fail(fmt.Errorf("%q is not an HTTP header name", name), at("match", "headers", name)...)
				continue
			}
			key := http.CanonicalHeaderKey(name)
			if rt.Match.Headers == nil {
				rt.Match.Headers = map[string]string{}
			}
			if _, dup := rt.Match.Headers[key]; dup {
				p.fail(fmt.Errorf("header %s is given twice (names are case-insensitive)", key), at("match", "headers", name)...)
			}
			rt.Match.Headers[key] = v
		}
		if rt.Match.PathPrefix == "" && rt.Match.Method == "" && len(rt.Match.Headers) == 0 && catchAll < 0 {
			catchAll = i
		}
		total := 0
		for j, b := range r.Backends {
			be := RouteBackend{Name: b.Name, Weight: 1}
			if b.Weight != nil {
				be.Weight = *b.Weight
			}
			switch {
			case b.Name == p.obj.Name:
				p.fail(fmt.Errorf("%s is this service itself: a route cannot send back to it; requests no route matches go to its endpoints", b.Name), at("backends", strconv.Itoa(j), "name")...)
			case slices.ContainsFunc(rt.Backends, func(o RouteBackend) bool { return o.Name == b.Name }):
				p.fail(fmt.Errorf("%s is listed twice: give it one backend with the sum of the weights", b.Name), at("backends", strconv.Itoa(j), "name")...)
			}
			total += be.Weight
			rt.Backends = append(rt.Backends, be)
		}
		if total == 0 && len(r.Backends) > 0 {
			p.fail(errors.New("every weight is 0: at least one backend must take traffic"), at("backends")...)
		}
		out = append(out, rt)
	}
	return out
}

// validHeaderName reports whether name is an RFC 9110 token.
func validHeaderName(name string) bool {
	if name == "" {
		return false
	}
	for _, c := range []byte(name) {
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
			strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
		if !ok {
			return false
		}
	}
	return true
}

// BackendNames returns the distinct backend names of s's routes, sorted: the
// Services and Functions that must exist for every route to be served.
func (s *Service) BackendNames() []string {
	var names []string
	for _, r := range s.Routes {
		for _, b := range r.Backends {
			names = append(names, b.Name)
		}
	}
	slices.Sort(names)
	return slices.Compact(names)
}

// RouteTable is the compiled form of one Service's routes: it picks the
// backend of each request. A RouteTable is immutable once built and safe for
// concurrent use; the proxy builds a new one when a Service is applied and
// swaps the whole table in (an atomic.Pointer), so a change of weights takes
// effect at once for new requests and never half-way through one.
type RouteTable struct {
	service  string
	routes   []compiledRoute
	fallback bool // a request no route matches goes to the service itself
}

// compiledRoute is a Route with canonical headers and cumulative weights.
type compiledRoute struct {
	prefix  string
	method  string
	headers []headerMatch
	names   []string // backends with a weight above 0, in manifest order
	cum     []uint64 // cum[i] = sum of the weights of names[0..i]
	timeout time.Duration
}

type headerMatch struct {
	key   string // canonical
	value string
}

// RouteChoice is the outcome of RouteTable.Pick.
type RouteChoice struct {
	// Backend is the Service or Function to send the request to; the
	// table's own service name means its endpoints.
	Backend string
	// Route is the index of the matching route in Service.Routes, -1 when
	// no route matched and the request falls back to the service itself.
	Route int
	// Timeout is the matching route's timeout; 0 means the Service's.
	Timeout time.Duration
}

// NewRouteTable compiles s's routes. A Service from ParseService always
// compiles; the error is for one built by hand with a route without
// backends, a negative weight or weights that are all 0.
//
// Without routes every request goes to s itself (its static or registered
// endpoints). With routes, a request no route matches goes to s itself when
// s has static endpoints, and matches nothing otherwise.
func NewRouteTable(s *Service) (*RouteTable, error) {
	if s == nil {
		return nil, errors.New("route table: nil service")
	}
	t := &RouteTable{service: s.Name, fallback: len(s.Routes) == 0 || len(s.Endpoints) > 0}
	for i, r := range s.Routes {
		cr := compiledRoute{prefix: r.Match.PathPrefix, method: r.Match.Method, timeout: r.Timeout}
		for k, v := range r.Match.Headers {
			cr.headers = append(cr.headers, headerMatch{key: http.CanonicalHeaderKey(k), value: v})
		}
		slices.SortFunc(cr.headers, func(a, b headerMatch) int { return strings.Compare(a.key, b.key) })
		var total uint64
		for _, b := range r.Backends {
			if b.Weight < 0 {
				return nil, fmt.Errorf("service %s: route %d: backend %s has negative weight %d", s.Name, i, b.Name, b.Weight)
			}
			if b.Weight == 0 {
				continue
			}
			total += uint64(b.Weight)
			cr.names = append(cr.names, b.Name)
			cr.cum = append(cr.cum, total)
		}
		if total == 0 {
			return nil, fmt.Errorf("service %s: route %d: no backend with a weight above 0", s.Name, i)
		}
		t.routes = append(t.routes, cr)
	}
	return t, nil
}

// Service returns the name of the Service the table was compiled from.
func (t *RouteTable) Service() string { return t.service }

// Select returns the backend for r: the first route whose match holds wins,
// and one of its backends is picked at random by weight, with rnd as the
// source of random numbers in [0, 1) (nil means math/rand/v2's). ok is false
// when no route matches and the service has no endpoints of its own.
func (t *RouteTable) Select(r *http.Request, rnd func() float64) (backend string, ok bool) {
	c, ok := t.Pick(r, rnd)
	return c.Backend, ok
}

// Pick is Select that also says which route matched and its timeout.
func (t *RouteTable) Pick(r *http.Request, rnd func() float64) (RouteChoice, bool) {
	for i := range t.routes {
		cr := &t.routes[i]
		if cr.matches(r) {
			return RouteChoice{Backend: cr.pick(rnd), Route: i, Timeout: cr.timeout}, true
		}
	}
	if t.fallback {
		return RouteChoice{Backend: t.service, Route: -1}, true
	}
	return RouteChoice{Route: -1}, false
}

func (cr *compiledRoute) matches(r *http.Request) bool {
	if cr.method != "" && r.Method != cr.method {
		return false
	}
	if cr.prefix != "" && (r.URL == nil || !strings.HasPrefix(r.URL.Path, cr.prefix)) {
		return false
	}
	for _, h := range cr.headers {
		if h.key == "Host" { // Go moves Host out of the header map
			if r.Host != h.value {
				return false
			}
			continue
		}
		if !slices.Contains(r.Header[h.key], h.value) {
			return false
		}
	}
	return true
}

// pick draws a backend with probability weight/total: a point on [0, total)
// falls in exactly one backend's slice of the cumulative weights.
func (cr *compiledRoute) pick(rnd func() float64) string {
	if len(cr.names) == 1 {
		return cr.names[0]
	}
	if rnd == nil {
		rnd = rand.Float64
	}
	total := cr.cum[len(cr.cum)-1]
	x := rnd()
	if !(x > 0) { // also NaN
		x = 0
	}
	point := uint64(x * float64(total))
	if point >= total { // x ≥ 1 from a misbehaving source, or rounding
		point = total - 1
	}
	i := sort.Search(len(cr.cum), func(i int) bool { return cr.cum[i] > point })
	return cr.names[i]
}
