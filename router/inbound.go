package router

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"time"
)

// Inbound is the node's mutual-TLS listener through which other nodes (and
// callers holding an SVID of the trust domain) reach the functions this node
// runs. The function is named by the Host header; only local functions are
// served, so a call never bounces between nodes. Callers are authorized by
// SPIFFE ID: the TLS config's Authorizer decides.
type Inbound struct {
	addr   string
	router *Router
	tls    *tls.Config
	log    *slog.Logger
	ready  chan struct{}
	bound  net.Addr
}

// NewInbound returns a listener for addr that will serve with tc (from
// ServerTLS, which requires client certificates).
func NewInbound(addr string, r *Router, tc *tls.Config, log *slog.Logger) *Inbound {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Inbound{addr: addr, router: r, tls: tc, log: log, ready: make(chan struct{})}
}

// Ready is closed once the listener is bound.
func (in *Inbound) Ready() <-chan struct{} { return in.ready }

// Addr is the bound address; valid after Ready.
func (in *Inbound) Addr() string { return in.bound.String() }

// Run serves until ctx ends.
func (in *Inbound) Run(ctx context.Context) error {
	ln, err := net.Listen("tcp", in.addr)
	if err != nil {
		return fmt.Errorf("inbound: listen %s: %w", in.addr, err)
	}
	in.bound = ln.Addr()
	srv := &http.Server{Handler: http.HandlerFunc(in.serve), TLSConfig: in.tls, ReadHeaderTimeout: 10 * time.Second,
		ErrorLog: slog.NewLogLogger(in.log.Handler(), slog.LevelDebug)}
	close(in.ready)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(tls.NewListener(ln, in.tls)) }() // owned: Shutdown below ends it
	select {
	case err := <-errc:
		return fmt.Errorf("inbound: serve: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = srv.Shutdown(sctx)
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("inbound: serve: %w", err)
	}
	return nil
}

func (in *Inbound) serve(w http.ResponseWriter, req *http.Request) {
	name := hostname(req.Host)
	if in.router.fns == nil || !in.router.fns.Has(name) {
		http.Error(w, fmt.Sprintf("weft inbound: no local function %q", name), http.StatusNotFound)
		return
	}
	out := req.Clone(req.Context())
	out.URL.Host = name
	for _, h := range hopHeaders {
		out.Header.Del(h)
	}
	resp, err := in.router.callFunction(out, name, false)
	if err != nil {
		in.log.Debug("inbound call failed", "function", name, "err", err)
		status := http.StatusBadGateway
		if IsUnavailable(err) {
			status = http.StatusServiceUnavailable
			w.Header().Set("Retry-After", RetryAfterUnavailable)
		}
		http.Error(w, "weft inbound: "+err.Error(), status)
		return
	}
	defer resp.Body.Close()
	for k, vs := range resp.Header {
		w.Header()[k] = vs
	}
	w.WriteHeader(resp.StatusCode)
	_, _ = io.Copy(w, resp.Body)
}
