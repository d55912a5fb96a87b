package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/valyala/fasthttp"
)

// The HTTP clients of `weft bench ingest`. The bench client shares the
// machine with the node it measures, so what the client spends per request
// is CPU the node does not get, while JetStream's reference, bound by its
// fsyncs, does not feel it. net/http's client hands every request between
// three goroutines (the caller and the connection's reader and writer);
// fasthttp's runs the exchange on the caller's goroutine and reuses its
// buffers, and needs a third to a half of the CPU per request here
// (docs/performance.md).
const (
	clientFastHTTP = "fasthttp" // the default
	clientNetHTTP  = "net/http"
)

// sendFunc sends request seq of one closed-loop worker and returns the
// answer's status and how long the exchange took, building the request left
// out. An error is a transport error, counted and survived, unless it is a
// requestError: the request cannot be built, and the worker stops.
type sendFunc func(ctx context.Context, seq int) (status int, took time.Duration, err error)

// requestError is a request that cannot be built: every later one would
// fail the same way.
type requestError struct{ err error }

func (e requestError) Error() string { return "build request: " + e.err.Error() }
func (e requestError) Unwrap() error { return e.err }

// netHTTPSender sends worker w's requests, built by newRequest, with client.
func netHTTPSender(client *http.Client, newRequest func(ctx context.Context, w, seq int) (*http.Request, error), w int) sendFunc {
	return func(ctx context.Context, seq int) (int, time.Duration, error) {
		req, err := newRequest(ctx, w, seq)
		if err != nil {
			return 0, 0, requestError{err}
		}
		t0 := time.Now()
		resp, err := client.Do(req)
		if err != nil {
			return 0, time.Since(t0), err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode, time.Since(t0), nil
	}
}

// fastIngestClient posts gen's events to target with fasthttp, one
// keep-alive connection per worker.
type fastIngestClient struct {
	client *fasthttp.Client
	target string
	gen    *eventGen
	conns  trackedConns
	stop   func() bool // ends the watch of the context
}

// newFastIngestClient returns a client whose connections, in-flight requests
// and all, are closed when ctx ends: fasthttp's Do takes no context.
func newFastIngestClient(ctx context.Context, target string, concurrency int, gen *eventGen) *fastIngestClient {
	c := &fastIngestClient{target: target, gen: gen}
	dialer := &net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}
	c.client = &fasthttp.Client{
		Dial: func(addr string) (net.Conn, error) {
			conn, err := dialer.DialContext(ctx, "tcp", addr)
			if err != nil {
				return nil, err
			}
			return c.conns.add(conn), nil
		},
		MaxConnsPerHost:    concurrency,
		MaxConnWaitTimeout: 5 * time.Second, // a connection being replaced is briefly not free
		ReadTimeout:        30 * time.Second,
		WriteTimeout:       30 * time.Second,
		// What a stock client sends and nothing the ingress reads.
		NoDefaultUserAgentHeader: true,
	}
	c.stop = context.AfterFunc(ctx, c.conns.closeAll)
	return c
}

// sender returns worker w's sendFunc and what releases its buffers. The
// request is built once; each send rewrites only the body and, in binary
// mode, the ce-id header.
func (c *fastIngestClient) sender(w int) (sendFunc, func()) {
	req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	req.SetRequestURI(c.target)
	req.Header.SetMethod(fasthttp.MethodPost)
	c.gen.header(0, 0, func(name, value string) { req.Header.Set(name, value) }) // ce-id is set per request below
	body := make([]byte, 0, c.gen.sizeHint())
	var id []byte
	send := func(ctx context.Context, seq int) (int, time.Duration, error) {
		body = c.gen.body(body[:0], w, seq)
		req.SetBodyRaw(body) // fasthttp has written it all when Do returns
		if c.gen.mode == "binary" {
			id = c.gen.id(id[:0], w, seq, 0)
			req.Header.SetBytesV("Ce-Id", id)
		}
		t0 := time.Now()
		if err := c.client.Do(req, resp); err != nil {
			return 0, time.Since(t0), fmt.Errorf("POST %s: %w", c.target, err)
		}
		return resp.StatusCode(), time.Since(t0), nil
	}
	release := func() {
		fasthttp.ReleaseRequest(req)
		fasthttp.ReleaseResponse(resp)
	}
	return send, release
}

// close closes the client's connections and stops watching its context.
func (c *fastIngestClient) close() {
	c.stop()
	c.conns.closeAll()
}

// trackedConns are a client's open connections, so that they can be closed
// from outside the client.
type trackedConns struct {
	mu     sync.Mutex
	open   map[*trackedConn]struct{}
	closed bool // closeAll ran: later connections are closed at once
}

type trackedConn struct {
	net.Conn
	set *trackedConns
}

func (t *trackedConns) add(conn net.Conn) net.Conn {
	tc := &trackedConn{Conn: conn, set: t}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		conn.Close()
		return tc // its first read or write fails
	}
	if t.open == nil {
		t.open = make(map[*trackedConn]struct{})
	}
	t.open[tc] = struct{}{}
	return tc
}

func (t *trackedConns) closeAll() {
	t.mu.Lock()
	t.closed = true
	open := t.open
	t.open = nil
	t.mu.Unlock()
	for tc := range open {
		tc.Conn.Close()
	}
}

func (tc *trackedConn) Close() error {
	tc.set.mu.Lock()
	delete(tc.set.open, tc)
	tc.set.mu.Unlock()
	return tc.Conn.Close()
}
