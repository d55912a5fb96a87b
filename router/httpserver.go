package router

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"sync"
)

// HTTPServer serves one port with two engines: the router's HTTP/1.1 loop
// (server.go) for the requests hot enough to pay for it, and a net/http
// Server for every other request. The node's --http port uses it: CloudEvents
// ingress takes the router's loop, with which a node stores 4–13 % more
// events per second (issue 5, goal 2a); the API, metrics, probes and
// profiles keep net/http's full behaviour, such as a request context that
// ends when the client goes away (`weft logs -f`).
//
// A connection starts on the router's loop. The first request that hot
// does not pick hands the connection over to net/http, that request
// included, for the rest of its life; a client that mixes both kinds on one
// keep-alive connection is served by net/http from then on.
type HTTPServer struct {
	fast *h1Server
	std  *http.Server
	ln   *handoffListener
}

// NewHTTPServer serves std.Handler: the requests hot picks on the router's
// loop, the others through std. std's ReadHeaderTimeout, MaxHeaderBytes and
// IdleTimeout apply to both engines.
func NewHTTPServer(std *http.Server, hot func(*http.Request) bool, log *slog.Logger) *HTTPServer {
	fast := newH1Server(std.Handler, std.ReadHeaderTimeout, log)
	if std.MaxHeaderBytes > 0 {
		fast.maxHeader = std.MaxHeaderBytes
	}
	fast.idleTimeout = std.IdleTimeout
	ln := &handoffListener{conns: make(chan net.Conn), done: make(chan struct{})}
	fast.elsewhere = func(r *http.Request) bool { return !hot(r) }
	fast.handOff = ln.give
	return &HTTPServer{fast: fast, std: std, ln: ln}
}

// Serve accepts connections on ln until Shutdown or Close, then returns
// http.ErrServerClosed; any other error of ln's ends it too.
func (s *HTTPServer) Serve(ln net.Listener) error {
	s.ln.addr = ln.Addr()
	var wg sync.WaitGroup
	var stdErr error
	wg.Go(func() { stdErr = s.std.Serve(s.ln) }) // owned: ends when Shutdown or Close closes s.ln
	err := s.fast.Serve(ln)
	if !errors.Is(err, http.ErrServerClosed) {
		_ = s.std.Close()
	}
	wg.Wait()
	if err == nil || errors.Is(err, http.ErrServerClosed) {
		err = stdErr
	}
	return err
}

// Shutdown stops accepting, lets every request in progress finish and
// closes idle connections, as http.Server's Shutdown does. The router's
// loop stops first: a connection it hands over while it stops is still
// taken and served by net/http.
func (s *HTTPServer) Shutdown(ctx context.Context) error {
	errFast := s.fast.Shutdown(ctx)
	errStd := s.std.Shutdown(ctx)
	return errors.Join(errFast, errStd)
}

// Close closes every connection at once.
func (s *HTTPServer) Close() error {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_ = s.fast.Shutdown(ctx) // with ctx ended it closes every connection
	return s.std.Close()
}

// handoffListener is the net.Listener net/http accepts handed-over
// connections from.
type handoffListener struct {
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
	addr  net.Addr
}

// give passes c to net/http; false when it no longer accepts.
func (l *handoffListener) give(c net.Conn) bool {
	select {
	case l.conns <- c:
		return true
	case <-l.done:
		return false
	}
}

func (l *handoffListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *handoffListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *handoffListener) Addr() net.Addr { return l.addr }
