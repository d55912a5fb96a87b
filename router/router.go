package router

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Errors of routing.
var (
	// ErrUnknownHost is returned by RoundTrip for a host that names no
	// Service or Function.
	ErrUnknownHost = errors.New("router: no service or function of that name")
	// ErrNoRoute is returned when a Service's routes match nothing and it has
	// no endpoints of its own.
	ErrNoRoute = errors.New("router: no route matches")
	// ErrRouteLoop is returned when backends name each other deeper than
	// maxHops.
	ErrRouteLoop = errors.New("router: services route to each other in a loop")
)

// IsUnavailable reports whether err says its backend cannot serve now but
// may soon: an error in its chain has a method Unavailable() bool that
// returns true, as the worker pool's errors while its node stops do
// (Functions.Acquire). The router answers such a call 503 with Retry-After,
// so that a caller retries, rather than 502.
func IsUnavailable(err error) bool {
	var u interface{ Unavailable() bool }
	return errors.As(err, &u) && u.Unavailable()
}

// RetryAfterUnavailable is the Retry-After, in seconds, of a 503 for an
// unavailable backend: a restarting node is back within seconds.
const RetryAfterUnavailable = "1"

// maxHops bounds how many Services a request may pass through by naming
// each other as backends.
const maxHops = 4

// maxReplayBody is the largest request body kept in memory so that a retry
// can send it again; larger bodies are sent once.
const maxReplayBody = 1 << 20

// Functions is how the router reaches a function's instances: through the
// worker pool, which enforces the function's concurrency and scales it from
// zero. workers.Pool implements it.
type Functions interface {
	// Has reports whether a Function of that name is applied.
	Has(name string) bool
	// Acquire reserves a slot on a ready instance, waiting while the function
	// starts; release must be called once the request ended. An error that
	// IsUnavailable (the node stopping) is answered 503, any other 502.
	Acquire(ctx context.Context, name string) (addr string, release func(error), err error)
}

// RemoteFunctions lists other nodes that run a function; Registry
// implements it.
type RemoteFunctions interface {
	Endpoints(function string) []string
}

// Identity is the node's own SPIFFE identity and trust bundle, used to
// originate mutual TLS to Services that ask for it without their own
// client certificate.
type Identity struct {
	SVID   x509svid.Source
	Bundle x509bundle.Source
	Domain spiffeid.TrustDomain
}

// Config configures a Router. Zero fields mean their defaults.
type Config struct {
	// Identity, when set, lets the router speak mutual TLS with weft's own
	// certificates. Without it, a Service with tls.mode mutual must give
	// certFile and keyFile.
	Identity *Identity
	// Clock drives latency averages, ejections and budgets; nil is the
	// system clock.
	Clock Clock
	// Denied, when set, counts calls refused by a Service's allow list, by
	// service.
	Denied *prometheus.CounterVec
	// Remote, when set, names other nodes' inbound listeners for functions
	// this node does not run (the Registry); calls to them go over mutual
	// TLS with the node's identity.
	Remote RemoteFunctions
	// Workloads, when set, tells which function a proxied call comes from
	// (its HTTP_PROXY credentials), so that function's SVID is presented to
	// Services with tls.mode mutual instead of the node's.
	Workloads *Workloads
}

// Router resolves requests for Services and Functions by name and carries
// them: it picks a route and a backend, balances over endpoints, retries
// within a budget, ejects failing endpoints and speaks TLS where asked.
// It implements http.RoundTripper. Its methods are safe for concurrent use.
type Router struct {
	cfg      Config
	clk      Clock
	log      *slog.Logger
	fns      Functions
	services atomic.Pointer[map[string]*service]
	plain    *h1Transport // to function instances on loopback

	remoteMu sync.Mutex
	remote   map[string]*service // function → its other nodes, rebuilt when they change
}

// New returns a Router with no Services. fns may be nil (no functions).
func New(cfg Config, fns Functions, log *slog.Logger) *Router {
	if cfg.Clock == nil {
		cfg.Clock = SystemClock{}
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r := &Router{cfg: cfg, clk: cfg.Clock, log: log, fns: fns, plain: newH1Transport(nil), remote: map[string]*service{}}
	empty := map[string]*service{}
	r.services.Store(&empty)
	return r
}

// newTransport returns a net/http transport with the router's settings. The
// router itself carries requests with h1Transport; tests use this one as an
// independent client.
func newTransport(tc *tls.Config) *http.Transport {
	return &http.Transport{
		Proxy:               nil, // the router is the proxy
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSClientConfig:     tc,
		ForceAttemptHTTP2:   tc != nil,
		MaxIdleConns:        256,
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     90 * time.Second,
		TLSHandshakeTimeout: 5 * time.Second,
	}
}

// service is the live state of one Service: its routes, endpoints with
// their statistics, balancer, outlier detector, budget and transport.
type service struct {
	svc       *Service
	routes    *RouteTable
	eps       []*Endpoint
	targets   map[*Endpoint]target
	bal       Balancer
	outlier   *OutlierDetector
	budget    *Budget
	policy    RetryPolicy
	transport *h1Transport
	identity  *Identity
	clk       Clock
	host      string      // when set, the Host header of every request (a remote node's inbound picks the function by it)
	authz     *Authorizer // the Service's allow list; nil when it has none
	callers   sync.Map    // SPIFFE ID → *h1Transport presenting that caller's SVID
}

// transportFor returns the transport of a call from caller (nil: the node):
// a Service that speaks mutual TLS with weft's identities gets the calling
// function's own certificate.
func (s *service) transportFor(caller *SVIDSource) *h1Transport {
	if caller == nil || s.identity == nil || s.svc.TLS.Mode != TLSMutual || s.svc.TLS.CertFile != "" {
		return s.transport
	}
	key := caller.ID().String()
	if t, ok := s.callers.Load(key); ok {
		return t.(*h1Transport)
	}
	match := spiffeid.MatchMemberOf(s.identity.Domain)
	if !s.svc.TLS.SPIFFEID.IsZero() {
		match = spiffeid.MatchID(s.svc.TLS.SPIFFEID)
	}
	t, _ := s.callers.LoadOrStore(key, newH1Transport(ClientTLS(caller, s.identity.Bundle, match, WithTLSClock(s.clk))))
	return t.(*h1Transport)
}

// Prepare builds the routing state of svcs, loading their TLS files, without
// putting it in force; Install does. An error names the Service.
func (r *Router) Prepare(svcs []*Service) (*Table, error) {
	old := *r.services.Load()
	next := map[string]*service{}
	for _, svc := range svcs {
		s, err := r.build(svc, old[svc.Name])
		if err != nil {
			return nil, fmt.Errorf("service %s: %w", svc.Name, err)
		}
		next[svc.Name] = s
	}
	return &Table{services: next}, nil
}

// Table is a prepared set of Services.
type Table struct{ services map[string]*service }

// Install puts a prepared Table in force: new requests use it at once;
// requests in flight finish on the old one. Endpoints that stay keep their
// statistics and ejections.
func (r *Router) Install(t *Table) {
	old := r.services.Swap(&t.services)
	for name, s := range *old {
		if n, ok := t.services[name]; !ok || n.transport != s.transport {
			s.transport.CloseIdleConnections()
		}
	}
}

// SetServices prepares and installs svcs.
func (r *Router) SetServices(svcs []*Service) error {
	t, err := r.Prepare(svcs)
	if err != nil {
		return err
	}
	r.Install(t)
	return nil
}

func (r *Router) build(svc *Service, prev *service) (*service, error) {
	routes, err := NewRouteTable(svc)
	if err != nil {
		return nil, err
	}
	bal, err := NewBalancer(string(svc.LoadBalancer), r.clk, nil)
	if err != nil {
		return nil, err
	}
	outlier, err := NewOutlierDetector(OutlierConfig{
		ConsecutiveFailures: svc.OutlierDetection.ConsecutiveFailures,
		EjectionTime:        svc.OutlierDetection.EjectionTime,
	}, r.clk)
	if err != nil {
		return nil, err
	}
	policy := RetryPolicy{
		Attempts:      max(svc.Retries.Attempts, 1),
		PerTryTimeout: svc.Retries.PerTryTimeout,
		Timeout:       svc.Timeout,
		BudgetPercent: svc.Retries.BudgetPercent,
		RetryOn5xx:    svc.Retries.RetryOn5xx,
	}
	if svc.Retries.BudgetPercent == 0 {
		policy.Attempts = 1 // budgetPercent 0: no retry
	}
	budget, err := NewBudget(BudgetConfig{Percent: policy.BudgetPercent}, r.clk)
	if err != nil {
		return nil, err
	}
	s := &service{svc: svc, routes: routes, bal: bal, outlier: outlier, budget: budget, policy: policy,
		targets: map[*Endpoint]target{}, identity: r.cfg.Identity, clk: r.clk}
	if len(svc.Allow) > 0 {
		if r.cfg.Identity == nil {
			return nil, errors.New("allow needs weft's identities (the node runs without a CA)")
		}
		var denied prometheus.Counter
		if r.cfg.Denied != nil {
			denied = r.cfg.Denied.WithLabelValues(svc.Name)
		}
		if s.authz, err = NewAuthorizerIDs(r.cfg.Identity.Domain, svc.Allow, denied); err != nil {
			return nil, err
		}
	}
	if prev != nil && prev.svc.TLS == svc.TLS {
		s.transport = prev.transport
	} else if s.transport, err = r.transportFor(svc); err != nil {
		return nil, err
	}
	kept := map[string]*Endpoint{}
	if prev != nil {
		for _, ep := range prev.eps {
			kept[ep.Addr] = ep
		}
	}
	for _, u := range svc.Endpoints {
		ep := kept[u.String()]
		if ep == nil {
			ep = NewEndpoint(u.String(), r.clk)
		}
		tgt, err := targetOf(u, "")
		if err != nil {
			return nil, fmt.Errorf("endpoint %s: %w", u, err)
		}
		s.eps = append(s.eps, ep)
		s.targets[ep] = tgt
	}
	outlier.SetEndpoints(s.eps)
	return s, nil
}

func (r *Router) transportFor(svc *Service) (*h1Transport, error) {
	t := svc.TLS
	switch t.Mode {
	case TLSDisable, "":
		return newH1Transport(nil), nil
	case TLSSimple:
		tc := &tls.Config{ServerName: t.ServerName, MinVersion: tls.VersionTLS12}
		if t.CAFile != "" {
			pool, err := loadPool(t.CAFile)
			if err != nil {
				return nil, err
			}
			tc.RootCAs = pool
		}
		return newH1Transport(tc), nil
	case TLSMutual:
		if t.CertFile != "" {
			cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
			if err != nil {
				return nil, fmt.Errorf("tls client certificate: %w", err)
			}
			tc := &tls.Config{ServerName: t.ServerName, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
			if t.CAFile != "" {
				pool, err := loadPool(t.CAFile)
				if err != nil {
					return nil, err
				}
				tc.RootCAs = pool
			}
			return newH1Transport(tc), nil
		}
		id := r.cfg.Identity
		if id == nil {
			return nil, errors.New("tls mode mutual needs certFile and keyFile, or weft's own identity")
		}
		match := spiffeid.MatchMemberOf(id.Domain)
		if !t.SPIFFEID.IsZero() {
			match = spiffeid.MatchID(t.SPIFFEID)
		}
		return newH1Transport(ClientTLS(id.SVID, id.Bundle, match, WithTLSClock(r.clk))), nil
	}
	return nil, fmt.Errorf("unknown tls mode %q", t.Mode)
}

func loadPool(file string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("tls caFile: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("tls caFile %s: no PEM certificate", file)
	}
	return pool, nil
}

// Resolves reports whether host (with or without a port) names a Service or
// a Function the router carries requests for.
func (r *Router) Resolves(host string) bool {
	name := hostname(host)
	if _, ok := (*r.services.Load())[name]; ok {
		return true
	}
	if r.fns != nil && r.fns.Has(name) {
		return true
	}
	return r.cfg.Remote != nil && len(r.cfg.Remote.Endpoints(name)) > 0
}

func hostname(host string) string {
	// SplitHostPort builds an error for a host without a port, the usual
	// case (http://payments/): look for one first.
	if strings.IndexByte(host, ':') >= 0 {
		if h, _, err := net.SplitHostPort(host); err == nil {
			host = h
		}
	}
	return strings.ToLower(host)
}

// RoundTrip carries req to the Service or Function named by its URL's host.
// The response body must be closed; it holds the endpoint slot (and for a
// function, the instance's concurrency slot) until then.
func (r *Router) RoundTrip(req *http.Request) (*http.Response, error) {
	return r.roundTrip(req, 0, false)
}

// roundTrip is RoundTrip; raw asks for the answer's head unparsed, for the
// proxy (see h1Transport.exchange).
func (r *Router) roundTrip(req *http.Request, hops int, raw bool) (*http.Response, error) {
	if hops > maxHops {
		return nil, ErrRouteLoop
	}
	name := hostname(req.URL.Host)
	if s, ok := (*r.services.Load())[name]; ok {
		if err := s.authorize(req.Context()); err != nil {
			return nil, err
		}
		backend, ok := s.routes.Select(req, nil)
		if !ok {
			return nil, fmt.Errorf("service %s: %w", name, ErrNoRoute)
		}
		if backend != s.svc.Name {
			next := req.Clone(req.Context())
			next.URL.Host = backend
			next.Host = backend
			return r.roundTrip(next, hops+1, raw)
		}
		return s.do(req, r.clk, raw)
	}
	if r.fns != nil && r.fns.Has(name) {
		return r.callFunction(req, name, raw)
	}
	if s := r.remoteService(name); s != nil {
		return s.do(req, r.clk, raw)
	}
	return nil, fmt.Errorf("%q: %w", name, ErrUnknownHost)
}

// authorize applies the Service's allow list to the calling function: with
// a list, only the functions on it may call (a call that carries no function
// identity is refused too); without one, anyone may.
func (s *service) authorize(ctx context.Context) error {
	if s.authz == nil {
		return nil
	}
	caller := callerOf(ctx)
	if caller == nil {
		s.authz.deny()
		return fmt.Errorf("service %s: %w: the call carries no function identity", s.svc.Name, ErrNotAllowed)
	}
	if err := s.authz.Authorize(caller.ID()); err != nil {
		return fmt.Errorf("service %s: %w", s.svc.Name, err)
	}
	return nil
}

// remoteService returns the routing state of a function that only other
// nodes run: their inbound listeners as endpoints, mutual TLS with the
// node's identity, connection failures retried. Endpoint statistics last as
// long as the set of nodes does not change.
func (r *Router) remoteService(function string) *service {
	if r.cfg.Remote == nil || r.cfg.Identity == nil {
		return nil
	}
	urls := r.cfg.Remote.Endpoints(function)
	if len(urls) == 0 {
		return nil
	}
	r.remoteMu.Lock()
	defer r.remoteMu.Unlock()
	if s, ok := r.remote[function]; ok && sameAddrs(s.eps, urls) {
		return s
	}
	svc := &Service{Name: function, LoadBalancer: LoadBalancerP2CEWMA, Timeout: 30 * time.Second,
		TLS:              ServiceTLS{Mode: TLSMutual},
		Retries:          ServiceRetries{Attempts: 2, BudgetPercent: 20},
		OutlierDetection: ServiceOutlierDetection{ConsecutiveFailures: 3, EjectionTime: 10 * time.Second}}
	for _, raw := range urls {
		u, err := url.Parse(raw)
		if err != nil || u.Host == "" {
			r.log.Warn("ignoring a malformed registry entry", "function", function, "inbound", raw)
			continue
		}
		svc.Endpoints = append(svc.Endpoints, u)
	}
	s, err := r.build(svc, r.remote[function])
	if err != nil {
		r.log.Warn("cannot route to other nodes", "function", function, "err", err)
		return nil
	}
	s.host = function
	r.remote[function] = s
	return s
}

func sameAddrs(eps []*Endpoint, urls []string) bool {
	if len(eps) != len(urls) {
		return false
	}
	for i, ep := range eps {
		if ep.Addr != urls[i] {
			return false
		}
	}
	return true
}

// callFunction sends req to an instance of the function through the pool;
// raw as for roundTrip.
func (r *Router) callFunction(req *http.Request, name string, raw bool) (*http.Response, error) {
	addr, release, err := r.fns.Acquire(req.Context(), name)
	if err != nil {
		return nil, err // the pool's errors name the function
	}
	resp, err := r.plain.exchange(req.Context(), req, req.Body, target{addr: addr, key: addr, host: name}, time.Time{}, raw)
	if err != nil {
		release(err)
		return nil, fmt.Errorf("function %s: %w", name, err)
	}
	var outcome error
	if resp.StatusCode >= 500 {
		outcome = fmt.Errorf("status %d", resp.StatusCode)
	}
	resp.Body = &onClose{ReadCloser: resp.Body, fn: func() { release(outcome) }}
	return resp, nil
}

// do sends req to one of the Service's endpoints, retrying per its policy
// within its budget.
//
// The Service's timeout is a deadline handed to the transport rather than a
// context: it bounds the same things (every attempt, the backoffs between
// them and the answer's body) without a context, a timer and a
// registration with the parent context per call. Errors it causes wrap
// context.DeadlineExceeded, as a timeout context's would.
func (s *service) do(req *http.Request, clk Clock, raw bool) (*http.Response, error) {
	if len(s.eps) == 0 {
		return nil, fmt.Errorf("service %s: no endpoints", s.svc.Name)
	}
	ctx := req.Context()
	var deadline time.Time
	if s.policy.Timeout > 0 {
		deadline = time.Now().Add(s.policy.Timeout)
	}
	replayable, err := makeReplayable(req)
	if err != nil {
		return nil, err
	}
	s.budget.Deposit()
	for attempt := 1; ; attempt++ {
		ep := s.pick(clk)
		resp, err := s.try(ctx, req, ep, clk, deadline, raw)
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		last := attempt >= s.policy.Attempts || !replayable || ctx.Err() != nil || past(deadline) ||
			!RetryableRequest(req, status, err, s.policy) || !s.budget.Withdraw()
		if last {
			if err != nil {
				return nil, fmt.Errorf("service %s: %w", s.svc.Name, err)
			}
			return resp, nil
		}
		if resp != nil {
			_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
			resp.Body.Close()
		}
		wait := Backoff(attempt, nil)
		if !deadline.IsZero() {
			wait = min(wait, time.Until(deadline))
		}
		t := time.NewTimer(wait)
		select {
		case <-t.C:
			if past(deadline) {
				return nil, fmt.Errorf("service %s: %w", s.svc.Name, context.DeadlineExceeded)
			}
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("service %s: %w", s.svc.Name, ctx.Err())
		}
	}
}

// past reports whether deadline, when set, has passed.
func past(deadline time.Time) bool { return !deadline.IsZero() && !time.Now().Before(deadline) }

// pick chooses the endpoint of the next attempt among those not ejected.
// With one endpoint every balancer picks it, ejected or not (panic mode),
// so the candidates are not listed.
func (s *service) pick(clk Clock) *Endpoint {
	if len(s.eps) == 1 {
		return s.eps[0]
	}
	p := candidatesPool.Get().(*[]*Endpoint)
	cands := Available((*p)[:0], s.eps, clk.Now())
	ep := s.bal.Pick(cands)
	clear(cands)
	*p = cands[:0]
	candidatesPool.Put(p)
	return ep
}

// candidatesPool holds the slices pick lists candidates in.
var candidatesPool = sync.Pool{New: func() any { return new([]*Endpoint) }}

// try sends one attempt to ep, within deadline (zero: none) and the
// Service's per-try timeout, and records its outcome.
func (s *service) try(ctx context.Context, req *http.Request, ep *Endpoint, clk Clock, deadline time.Time, raw bool) (*http.Response, error) {
	tryDeadline, perTry := deadline, false
	if s.policy.PerTryTimeout > 0 {
		if d := time.Now().Add(s.policy.PerTryTimeout); deadline.IsZero() || d.Before(deadline) {
			tryDeadline, perTry = d, true
		}
	}
	tgt := s.targets[ep]
	if s.host != "" {
		tgt.host = s.host
	}
	body := req.Body
	if req.GetBody != nil {
		var err error
		if body, err = req.GetBody(); err != nil {
			return nil, err
		}
	}
	start := clk.Now()
	ep.Begin()
	resp, err := s.transportFor(callerOf(ctx)).exchange(ctx, req, body, tgt, tryDeadline, raw)
	if err != nil && perTry && errors.Is(err, context.DeadlineExceeded) {
		err = fmt.Errorf("%w: %w", ErrPerTryTimeout, err)
	}
	ok := err == nil && resp.StatusCode < 500
	ep.End(clk.Now().Sub(start), ok)
	s.outlier.Observe(ep, ok)
	return resp, err
}

// makeReplayable buffers a small body so retries can send it again, and
// reports whether the request can be retried at all.
func makeReplayable(req *http.Request) (bool, error) {
	if req.Body == nil || req.Body == http.NoBody || req.GetBody != nil {
		return true, nil
	}
	if req.ContentLength < 0 || req.ContentLength > maxReplayBody {
		return false, nil // streamed once: no retry
	}
	data, err := io.ReadAll(io.LimitReader(req.Body, maxReplayBody+1))
	if err != nil {
		return false, fmt.Errorf("%w: %w", errRequestBody, err)
	}
	req.Body.Close()
	req.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil }
	req.Body, _ = req.GetBody()
	return true, nil
}

// onClose runs fn once when the body is closed.
type onClose struct {
	io.ReadCloser
	fn   func()
	done atomic.Bool
}

// rawHead passes on the head of a body read raw (see upBody.rawHead).
func (o *onClose) rawHead() *respHead {
	if h, ok := o.ReadCloser.(interface{ rawHead() *respHead }); ok {
		return h.rawHead()
	}
	return nil
}

func (o *onClose) Close() error {
	err := o.ReadCloser.Close()
	if o.done.CompareAndSwap(false, true) {
		o.fn()
	}
	return err
}

// EndpointStatus is one endpoint as `weft get services` shows it.
type EndpointStatus struct {
	Address             string    `json:"address"`
	Healthy             bool      `json:"healthy"`
	EjectedUntil        time.Time `json:"ejectedUntil,omitzero"`
	ConsecutiveFailures int       `json:"consecutiveFailures"`
	InFlight            int       `json:"inFlight"`
	EWMAMillis          float64   `json:"ewmaMs"`
}

// ServiceStatus is one Service with its endpoints.
type ServiceStatus struct {
	Name         string           `json:"name"`
	LoadBalancer string           `json:"loadBalancer"`
	TLS          string           `json:"tls"`
	Routes       int              `json:"routes"`
	Endpoints    []EndpointStatus `json:"endpoints"`
}

// Status lists the Services in force, sorted by name.
func (r *Router) Status() []ServiceStatus {
	now := r.clk.Now()
	out := []ServiceStatus{}
	for _, s := range *r.services.Load() {
		st := ServiceStatus{Name: s.svc.Name, LoadBalancer: string(s.svc.LoadBalancer), TLS: string(s.svc.TLS.Mode), Routes: len(s.svc.Routes), Endpoints: []EndpointStatus{}}
		for _, ep := range s.eps {
			st.Endpoints = append(st.Endpoints, EndpointStatus{
				Address: ep.Addr, Healthy: !ep.Ejected(now), EjectedUntil: ep.EjectedUntil(),
				ConsecutiveFailures: ep.ConsecutiveFailures(), InFlight: ep.InFlight(),
				EWMAMillis: float64(ep.EWMA().Microseconds()) / 1000,
			})
		}
		out = append(out, st)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}
