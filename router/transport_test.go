package router

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/weft-dev/weft/internal/testutil"
)

// countConns counts the connections a test server accepts.
func countConns(srv *httptest.Server) *atomic.Int64 {
	var n atomic.Int64
	srv.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			n.Add(1)
		}
	}
	return &n
}

func h1Get(t *testing.T, tr http.RoundTripper, url string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(b)
}

// TestH1TransportReusesConnections: answers read to their end give their
// connection back; an answer closed early or marked close does not.
func TestH1TransportReusesConnections(t *testing.T) {
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/close" {
			w.Header().Set("Connection", "close")
		}
		if r.URL.Path == "/big" {
			_, _ = w.Write(make([]byte, 1<<20))
			return
		}
		fmt.Fprintf(w, "%s %s host=%s ua=%s len=%d", r.Method, r.URL.RequestURI(), r.Host, r.UserAgent(), r.ContentLength)
	}))
	conns := countConns(srv)
	srv.Start()
	defer srv.Close()
	tr := newH1Transport(nil)
	defer tr.CloseIdleConnections()

	for range 5 {
		if _, body := h1Get(t, tr, srv.URL+"/a?b=c"); body != "GET /a?b=c host="+srv.Listener.Addr().String()+" ua=Go-http-client/1.1 len=0" {
			t.Fatalf("body %q", body)
		}
	}
	if n := conns.Load(); n != 1 {
		t.Errorf("5 sequential requests used %d connections, want 1", n)
	}
	h1Get(t, tr, srv.URL+"/close")
	h1Get(t, tr, srv.URL+"/")
	if n := conns.Load(); n != 2 {
		t.Errorf("after Connection: close, %d connections, want 2", n)
	}
	req, _ := http.NewRequest(http.MethodGet, srv.URL+"/big", nil)
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = resp.Body.Read(make([]byte, 10))
	resp.Body.Close() // early: the rest is not drained, the connection goes
	if _, err := resp.Body.Read(make([]byte, 1)); !errors.Is(err, http.ErrBodyReadAfterClose) {
		t.Errorf("read after close: %v", err)
	}
	h1Get(t, tr, srv.URL+"/")
	if n := conns.Load(); n != 3 {
		t.Errorf("after an early close, %d connections, want 3", n)
	}
}

// TestH1TransportBodies: request bodies of known and unknown length arrive
// whole; an empty POST says Content-Length: 0.
func TestH1TransportBodies(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "len=%d te=%v body=%d:%s", r.ContentLength, r.TransferEncoding, len(b), b[:min(len(b), 8)])
	}))
	defer srv.Close()
	tr := newH1Transport(nil)
	defer tr.CloseIdleConnections()
	big := strings.Repeat("x", 100<<10)
	for _, c := range []struct {
		name string
		body io.Reader
		want string
	}{
		{"known", strings.NewReader("hello"), "len=5 te=[] body=5:hello"},
		{"large", strings.NewReader(big), fmt.Sprintf("len=%d te=[] body=%d:xxxxxxxx", len(big), len(big))},
		{"unknown", io.MultiReader(strings.NewReader("hel"), strings.NewReader("lo")), "len=-1 te=[chunked] body=5:hello"},
		{"empty", nil, "len=0 te=[] body=0:"},
	} {
		req, _ := http.NewRequest(http.MethodPost, srv.URL, c.body)
		resp, err := tr.RoundTrip(req)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(b) != c.want {
			t.Errorf("%s: %q, want %q", c.name, b, c.want)
		}
	}
}

// idleCloser answers one request per connection with keep-alive framing,
// then closes the connection, as a server whose idle timeout just fired.
func idleCloser(t *testing.T) (addr string, requests *atomic.Int64) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	requests = &atomic.Int64{}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				req, err := http.ReadRequest(bufio.NewReader(c))
				if err != nil {
					return
				}
				_, _ = io.Copy(io.Discard, req.Body)
				requests.Add(1)
				_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
			})
		}
	})
	return ln.Addr().String(), requests
}

// TestH1TransportRetriesStaleConnection: a request that finds its pooled
// connection closed by the server is sent again on a new one when it is
// safe, and fails otherwise.
func TestH1TransportRetriesStaleConnection(t *testing.T) {
	addr, requests := idleCloser(t)
	tr := newH1Transport(nil)
	defer tr.CloseIdleConnections()
	for i := range 3 {
		if _, body := h1Get(t, tr, "http://"+addr+"/"); body != "ok" {
			t.Fatalf("GET %d: %q", i, body)
		}
	}
	if n := requests.Load(); n != 3 {
		t.Errorf("server saw %d requests, want 3", n)
	}
	// A POST without a way to send its body again is not retried.
	h1Get(t, tr, "http://"+addr+"/") // leaves a stale connection in the pool
	req, _ := http.NewRequest(http.MethodPost, "http://"+addr+"/", io.NopCloser(strings.NewReader("x")))
	req.GetBody = nil
	before := requests.Load()
	_, err := tr.RoundTrip(req)
	if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) && !strings.Contains(err.Error(), "reset") {
		t.Errorf("POST on a stale connection: %v, want the connection's failure", err)
	}
	if requests.Load() != before {
		t.Error("the POST reached the server")
	}
}

// TestH1TransportContext: cancelling or timing out the request's context
// ends a call blocked on a slow endpoint at once, with the context's error.
func TestH1TransportContext(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/body" {
			w.Header().Set("Content-Length", "10")
			_, _ = io.WriteString(w, "12345")
			w.(http.Flusher).Flush()
		}
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	defer close(release)
	tr := newH1Transport(nil)
	defer tr.CloseIdleConnections()

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+"/", nil)
	start := time.Now()
	if _, err := tr.RoundTrip(req); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("deadline: %v, want context.DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("the deadline took %v to end the call", d)
	}

	ctx, cancel = context.WithCancel(context.Background())
	req, _ = http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+"/body", nil)
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(resp.Body, buf); err != nil {
		t.Fatal(err)
	}
	cancel() // while the rest of the body is awaited
	if _, err := resp.Body.Read(buf); !errors.Is(err, context.Canceled) {
		t.Errorf("body read after cancel: %v, want context.Canceled", err)
	}
	resp.Body.Close()
}

// TestH1TransportEarlyAnswer: an endpoint that answers before reading the
// body and closes is heard, not reported as a write failure.
func TestH1TransportEarlyAnswer(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() { // owned: ends with the listener
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		br := bufio.NewReader(c)
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		_, _ = io.WriteString(c, "HTTP/1.1 413 Request Entity Too Large\r\nContent-Length: 3\r\nConnection: close\r\n\r\nbig")
	}()
	tr := newH1Transport(nil)
	defer tr.CloseIdleConnections()
	req, _ := http.NewRequest(http.MethodPost, "http://"+ln.Addr().String()+"/", bytes.NewReader(make([]byte, 8<<20)))
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatalf("early answer lost: %v", err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestEntityTooLarge || string(b) != "big" {
		t.Errorf("%d %q", resp.StatusCode, b)
	}
}

// TestH1TransportCloseIdleConnections: idle connections close at once; a
// connection in use when it is called is closed when its exchange ends.
func TestH1TransportCloseIdleConnections(t *testing.T) {
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "ok")
	}))
	conns := countConns(srv)
	srv.Start()
	defer srv.Close()
	tr := newH1Transport(nil)
	h1Get(t, tr, srv.URL)
	req, _ := http.NewRequest(http.MethodGet, srv.URL, nil)
	inUse, err := tr.RoundTrip(req) // a second connection: the first is idle
	if err != nil {
		t.Fatal(err)
	}
	tr.CloseIdleConnections()
	_, _ = io.ReadAll(inUse.Body)
	inUse.Body.Close()
	h1Get(t, tr, srv.URL)
	if n := conns.Load(); n != 2 {
		t.Errorf("%d connections, want 2 (the idle one closed, the one in use not kept)", n)
	}
	tr.mu.Lock()
	idle := 0
	for _, stack := range tr.idle {
		idle += len(stack)
	}
	tr.mu.Unlock()
	if idle != 1 {
		t.Errorf("%d idle connections, want 1", idle)
	}
	tr.CloseIdleConnections()
}

// TestWriteRequestRefusesInjection: nothing in a request can add a line to
// what the endpoint reads.
func TestWriteRequestRefusesInjection(t *testing.T) {
	var buf bytes.Buffer
	bw := bufio.NewWriter(&buf)
	req, _ := http.NewRequest(http.MethodGet, "http://x/", nil)
	req.Header["X-A"] = []string{"one\r\nX-Injected: 1"}
	if err := writeRequest(bw, req, nil, "x"); err != nil {
		t.Fatal(err)
	}
	_ = bw.Flush()
	if strings.Contains(buf.String(), "\r\nX-Injected") {
		t.Errorf("a header value added a field:\n%s", buf.String())
	}
	for name, mutate := range map[string]func(*http.Request) string{
		"host":   func(*http.Request) string { return "x\r\nX-Injected: 1" },
		"method": func(r *http.Request) string { r.Method = "GET /evil HTTP/1.1\r\n"; return "x" },
		"name":   func(r *http.Request) string { r.Header["Bad Name"] = []string{"v"}; return "x" },
	} {
		req, _ := http.NewRequest(http.MethodGet, "http://x/", nil)
		host := mutate(req)
		if err := writeRequest(bufio.NewWriter(io.Discard), req, nil, host); err == nil {
			t.Errorf("%s: an invalid request was written", name)
		}
	}
}

// TestH1TransportSkipsAnsweredIdleConnection: an endpoint that wrote to an
// idle connection (a 408 before closing it, as some servers do on their idle
// timeout) must not have that read as the next request's answer.
func TestH1TransportSkipsAnsweredIdleConnection(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var wg sync.WaitGroup
	defer wg.Wait()
	defer ln.Close()
	sent408 := make(chan struct{})
	wg.Go(func() {
		first := true
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			br := bufio.NewReader(c)
			if _, err := http.ReadRequest(br); err != nil {
				c.Close()
				return
			}
			_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfresh")
			if first {
				first = false
				_, _ = io.WriteString(c, "HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n")
				close(sent408)
			}
			c.Close()
		}
	})
	tr := newH1Transport(nil)
	tr.checkAfter = 0 // check every idle connection
	defer tr.CloseIdleConnections()
	url := "http://" + ln.Addr().String() + "/"
	if _, body := h1Get(t, tr, url); body != "fresh" {
		t.Fatalf("first answer %q", body)
	}
	<-sent408
	tr.mu.Lock()
	idle := tr.idle[ln.Addr().String()]
	tr.mu.Unlock()
	if len(idle) != 1 {
		t.Fatalf("%d idle connections, want 1", len(idle))
	}
	testutil.WaitFor(t, 5*time.Second, func() bool { return !alive(idle[0].conn) },
		"alive still reports a connection the endpoint wrote to and closed")
	if resp, body := h1Get(t, tr, url); resp.StatusCode != http.StatusOK || body != "fresh" {
		t.Errorf("second answer %d %q: the stale 408 was taken for it", resp.StatusCode, body)
	}
}

// failingBody gives some bytes, then an error.
type failingBody struct{ sent bool }

func (b *failingBody) Read(p []byte) (int, error) {
	if !b.sent {
		b.sent = true
		return copy(p, "half"), nil
	}
	return 0, errors.New("client went away")
}

func (*failingBody) Close() error { return nil }

// TestH1TransportFailingRequestBody is a regression test: when the body
// being sent failed, the exchange used to wait for an answer that the
// endpoint, holding part of a request, would never send (until the
// Service's timeout, or forever for a function). Now it ends at once with
// an error that wraps errRequestBody, and the connection is not reused.
func TestH1TransportFailingRequestBody(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
	}))
	t.Cleanup(srv.Close)
	tr := newH1Transport(nil)
	t.Cleanup(tr.CloseIdleConnections)
	// The context only keeps a broken build from hanging the suite.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, srv.URL, &failingBody{})
	if err != nil {
		t.Fatal(err)
	}
	req.ContentLength = 100
	resp, err := tr.RoundTrip(req)
	if err == nil {
		resp.Body.Close()
		t.Fatal("a failing body was sent as a whole request")
	}
	if !errors.Is(err, errRequestBody) || errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("error %v, want one wrapping errRequestBody", err)
	}
	tr.mu.Lock()
	idle := len(tr.idle)
	tr.mu.Unlock()
	if idle != 0 {
		t.Errorf("%d connections kept after a failed body", idle)
	}
}
