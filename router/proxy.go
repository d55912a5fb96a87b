package router

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"sync"
	"time"
)

// Proxy is the forward proxy that workers reach through HTTP_PROXY. A
// request for a host that names a Service or a Function goes through the
// Router (routes, balancing, retries, TLS); any other plain-HTTP host is
// passed through as by any forward proxy. CONNECT (HTTPS tunnels) is refused
// with 405: weft does not tunnel yet.
//
// Every call a worker makes crosses this hop, so it is built for it (issue
// 5, goal 6: within nginx's added latency and 1.5× its CPU per request):
// HTTP/1.1 served by h1Server (a goroutine per connection, none per
// request) and routed requests carried by the Router's h1Transport (the
// exchange on the calling goroutine, connections reused). Pass-through
// hosts use httputil.ReverseProxy.
type Proxy struct {
	addr   string
	log    *slog.Logger
	router *Router
	ready  chan struct{}
	bound  net.Addr
}

// NewProxy returns a proxy that will listen on addr ("host:port"; port 0
// picks a free port) and route known names through r (nil: pass through
// only).
func NewProxy(addr string, r *Router, log *slog.Logger) *Proxy {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Proxy{addr: addr, router: r, log: log, ready: make(chan struct{})}
}

// Ready is closed once the proxy listens.
func (p *Proxy) Ready() <-chan struct{} { return p.ready }

// Addr is the bound address; valid after Ready.
func (p *Proxy) Addr() string { return p.bound.String() }

// Run listens and serves until ctx ends.
func (p *Proxy) Run(ctx context.Context) error {
	ln, err := net.Listen("tcp", p.addr)
	if err != nil {
		return fmt.Errorf("router: listen %s: %w", p.addr, err)
	}
	p.bound = ln.Addr()
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.Proxy = nil
	rp := &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.Out.URL.Scheme = "http"
			r.Out.URL.Host = r.In.Host
			if r.In.URL.Host != "" {
				r.Out.URL.Host = r.In.URL.Host
			}
		},
		Transport: t,
		ErrorLog:  slog.NewLogLogger(p.log.Handler(), slog.LevelDebug),
	}
	// The proxy carries every call a worker makes: it serves HTTP/1.1 with
	// h1Server, a goroutine per connection and none per request (see
	// server.go for what differs from net/http's Server).
	srv := newH1Server(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodConnect {
			http.Error(w, "weft router: CONNECT is not supported yet", http.StatusMethodNotAllowed)
			return
		}
		host := r.URL.Host
		if host == "" {
			host = r.Host
		}
		if p.router != nil && p.router.Resolves(host) {
			p.router.serve(w, r, true) // h1Server gives each request up to its handler
			return
		}
		rp.ServeHTTP(w, r)
	}), 10*time.Second, p.log)
	close(p.ready)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }() // owned: Shutdown below ends it and we read errc
	select {
	case err := <-errc:
		return fmt.Errorf("router: serve: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = srv.Shutdown(sctx)
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("router: serve: %w", err)
	}
	return nil
}

// hopHeaders are connection-level headers a proxy must not forward (RFC 9110
// section 7.6.1).
var hopHeaders = []string{"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade"}

// ServeHTTP carries a proxied request (absolute-form, as HTTP_PROXY sends
// it, or with the name in Host) through the router and writes the answer:
// 502 when no endpoint answered, 504 on a timeout, 404 for an unknown name.
// req is not modified.
func (r *Router) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	r.serve(w, req, false)
}

// serve is ServeHTTP; owned means the caller gives req up (the proxy's own
// server, which parsed it), so it is changed in place instead of copied.
func (r *Router) serve(w http.ResponseWriter, req *http.Request, owned bool) {
	ctx := req.Context()
	// Only a call with proxy credentials can name a function; looking
	// them up costs a request's worth of allocations, so skip it without.
	if r.cfg.Workloads != nil && len(req.Header["Proxy-Authorization"]) > 0 {
		if src, ok := r.cfg.Workloads.Caller(req); ok {
			ctx = WithCaller(ctx, src)
		}
	}
	out := req
	if !owned || ctx != req.Context() {
		out = req.WithContext(ctx)
	}
	if !owned {
		u := *req.URL
		out.URL = &u
	}
	u := out.URL
	out.RequestURI = ""
	if u.Host == "" {
		u.Host = req.Host
	}
	if u.Scheme == "" {
		u.Scheme = "http"
	}
	if hasHopHeaders(req.Header) {
		if !owned {
			out.Header = req.Header.Clone()
		}
		for _, h := range hopHeaders {
			delete(out.Header, h)
		}
	}
	// Through the proxy's own server the answer's header is forwarded as
	// it came, never parsed into an http.Header (respWriter.forward).
	rw, raw := w.(*respWriter)
	resp, err := r.roundTrip(out, 0, raw)
	if err != nil {
		status := http.StatusBadGateway
		switch {
		case errors.Is(err, errRequestBody):
			status = http.StatusBadRequest
		case errors.Is(err, ErrUnknownHost), errors.Is(err, ErrNoRoute):
			status = http.StatusNotFound
		case errors.Is(err, ErrNotAllowed):
			status = http.StatusForbidden
		case errors.Is(err, context.DeadlineExceeded), errors.Is(err, ErrPerTryTimeout):
			status = http.StatusGatewayTimeout
		case IsUnavailable(err):
			status = http.StatusServiceUnavailable
			w.Header().Set("Retry-After", RetryAfterUnavailable)
		}
		r.log.Debug("routing failed", "host", u.Host, "err", err)
		http.Error(w, "weft router: "+err.Error(), status)
		return
	}
	defer resp.Body.Close()
	if head := rawHeadOf(resp); head != nil {
		rw.forward(head)
	} else {
		h := w.Header()
		for k, vs := range resp.Header {
			h[k] = vs
		}
		for _, k := range hopHeaders {
			delete(h, k)
		}
		w.WriteHeader(resp.StatusCode)
	}
	if err := copyBody(w, resp.Body); err != nil {
		// The answer was cut short: drop the client's connection rather
		// than end the answer as if it were whole (httputil.ReverseProxy
		// does the same).
		r.log.Debug("copying the answer failed", "host", u.Host, "err", err)
		panic(http.ErrAbortHandler)
	}
}

// rawHeadOf returns the head of an answer read raw, nil for any other.
func rawHeadOf(resp *http.Response) *respHead {
	if b, ok := resp.Body.(interface{ rawHead() *respHead }); ok {
		return b.rawHead()
	}
	return nil
}

// hasHopHeaders reports whether h holds any of hopHeaders.
func hasHopHeaders(h http.Header) bool {
	for _, k := range hopHeaders {
		if _, ok := h[k]; ok {
			return true
		}
	}
	return false
}

// copyBufs holds the buffers answers are copied through: io.Copy would
// make a 32 KiB one per answer.
var copyBufs = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// copyBody copies an answer's body to w.
func copyBody(w io.Writer, body io.Reader) error {
	b := copyBufs.Get().(*[]byte)
	_, err := io.CopyBuffer(w, body, *b)
	copyBufs.Put(b)
	return err
}
