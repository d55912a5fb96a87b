package router

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"time"
)

// Proxy is the forward proxy that workers reach through HTTP_PROXY. A
// request for a host that names a Service or a Function goes through the
// Router (routes, balancing, retries, TLS); any other plain-HTTP host is
// passed through as by any forward proxy. CONNECT (HTTPS tunnels) is refused
// with 405: weft does not tunnel yet.
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
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodConnect {
				http.Error(w, "weft router: CONNECT is not supported yet", http.StatusMethodNotAllowed)
				return
			}
			host := r.URL.Host
			if host == "" {
				host = r.Host
			}
			if p.router != nil && p.router.Resolves(host) {
				p.router.ServeHTTP(w, r)
				return
			}
			rp.ServeHTTP(w, r)
		}),
		ReadHeaderTimeout: 10 * time.Second,
	}
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
