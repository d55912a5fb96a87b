package router

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// hotPath is what the tests' HTTPServers serve on the router's loop.
func hotPath(r *http.Request) bool { return r.Method == http.MethodPost && r.URL.Path == "/in" }

// engineOf names the engine serving a request, by its ResponseWriter.
func engineOf(w http.ResponseWriter) string {
	if _, ok := w.(*respWriter); ok {
		return "router"
	}
	return "net/http"
}

// startHTTPServer serves std with an HTTPServer on a loopback port until the
// test ends.
func startHTTPServer(t *testing.T, std *http.Server) string {
	t.Helper()
	s := NewHTTPServer(std, hotPath, slog.New(slog.DiscardHandler))
	return serveUntilCleanup(t, s.Serve, s.Shutdown)
}

// TestHTTPServerHandsOver: hot requests are served on the router's loop
// until the first other one, which hands the connection, with everything
// the client already sent, to net/http for good.
func TestHTTPServerHandsOver(t *testing.T) {
	addr := startHTTPServer(t, &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s %s %s by %s", r.Method, r.URL.Path, b, engineOf(w))
	})})
	got := rawExchange(t, addr, "POST /in HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"+
		"POST /in HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nde"+
		"POST /api HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nwxyz"+
		"POST /in HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nfg\r\n0\r\n\r\n"+
		"GET /last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	br := bufio.NewReader(strings.NewReader(got))
	for _, want := range []string{
		"POST /in abc by router",
		"POST /in de by router",
		"POST /api wxyz by net/http",
		"POST /in fg by net/http",
		"GET /last  by net/http",
	} {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("reading the answer %q: %v\n%s", want, err, got)
		}
		b, _ := io.ReadAll(resp.Body)
		if string(b) != want {
			t.Errorf("answer %q, want %q", b, want)
		}
	}
	if rest, _ := io.ReadAll(br); len(rest) != 0 {
		t.Errorf("trailing bytes after the last answer: %q", rest)
	}
}

// TestHTTPServerDeadlines: a hot request's handler bounds the reading of
// its body with http.ResponseController, and the deadline ends with the
// request: the next request on the connection is read as usual.
func TestHTTPServerDeadlines(t *testing.T) {
	addr := startHTTPServer(t, &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rc := http.NewResponseController(w)
		if err := rc.SetReadDeadline(time.Now().Add(100 * time.Millisecond)); err != nil {
			http.Error(w, "SetReadDeadline: "+err.Error(), http.StatusInternalServerError)
			return
		}
		if err := rc.SetWriteDeadline(time.Now().Add(5 * time.Second)); err != nil {
			http.Error(w, "SetWriteDeadline: "+err.Error(), http.StatusInternalServerError)
			return
		}
		b, err := io.ReadAll(r.Body)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			w.Header().Set("Connection", "close")
			http.Error(w, "body timed out", http.StatusRequestTimeout)
			return
		}
		// A deadline in the past: if it outlived the request, the next
		// request's read would fail at once.
		_ = rc.SetReadDeadline(time.Unix(1, 0))
		fmt.Fprintf(w, "%s by %s", b, engineOf(w))
	})})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	for _, body := range []string{"one", "two"} {
		fmt.Fprintf(c, "POST /in HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("answer to %q: %v", body, err)
		}
		b, _ := io.ReadAll(resp.Body)
		if want := body + " by router"; resp.StatusCode != http.StatusOK || string(b) != want {
			t.Fatalf("answer to %q: %d %q, want 200 %q", body, resp.StatusCode, b, want)
		}
	}
	// A body that stops half-way: the handler's read deadline ends it.
	io.WriteString(c, "POST /in HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("answer to a stalled body: %v", err)
	}
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusRequestTimeout {
		t.Errorf("stalled body: %d %q, want 408", resp.StatusCode, b)
	}
}

// TestHTTPServerIdleTimeout: a keep-alive connection left idle past
// IdleTimeout is closed on the router's loop as net/http closes its own.
func TestHTTPServerIdleTimeout(t *testing.T) {
	addr := startHTTPServer(t, &http.Server{IdleTimeout: 200 * time.Millisecond, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, engineOf(w))
	})})
	for _, req := range []string{"POST /in", "GET /api"} {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		br := bufio.NewReader(c)
		io.WriteString(c, req+" HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("%s: %v", req, err)
		}
		_, _ = io.ReadAll(resp.Body)
		start := time.Now()
		if _, err := br.ReadByte(); !errors.Is(err, io.EOF) {
			t.Errorf("%s: idle connection read %v, want EOF", req, err)
		}
		if waited := time.Since(start); waited < 200*time.Millisecond {
			t.Errorf("%s: closed after %s idle, before IdleTimeout", req, waited)
		}
		c.Close()
	}
}

// TestHTTPServerHeaderLimit: MaxHeaderBytes holds on the router's loop.
func TestHTTPServerHeaderLimit(t *testing.T) {
	addr := startHTTPServer(t, &http.Server{MaxHeaderBytes: 1 << 10, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {})})
	got := rawExchange(t, addr, "POST /in HTTP/1.1\r\nHost: x\r\nX-Big: "+strings.Repeat("a", 8<<10)+"\r\n\r\n")
	if !strings.HasPrefix(got, "HTTP/1.1 431 ") {
		t.Errorf("a header over MaxHeaderBytes: %q, want 431", got[:min(len(got), 40)])
	}
}

// TestHTTPServerShutdown: requests in progress on either engine finish
// before Shutdown returns, and Serve then returns http.ErrServerClosed.
func TestHTTPServerShutdown(t *testing.T) {
	entered := make(chan string, 2)
	release := make(chan struct{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := NewHTTPServer(&http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		entered <- engineOf(w)
		<-release
		io.WriteString(w, "done")
	})}, hotPath, slog.New(slog.DiscardHandler))
	served := make(chan error, 1)
	go func() { served <- s.Serve(ln) }() // owned: read below
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	var wg sync.WaitGroup
	answers := make(chan string, 2)
	for _, method := range []string{http.MethodPost, http.MethodGet} {
		wg.Go(func() {
			req, _ := http.NewRequest(method, "http://"+ln.Addr().String()+"/in", nil)
			resp, err := client.Do(req)
			if err != nil {
				answers <- method + ": " + err.Error()
				return
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			answers <- method + ": " + string(b)
		})
	}
	engines := map[string]bool{<-entered: true, <-entered: true}
	if !engines["router"] || !engines["net/http"] {
		t.Fatalf("engines serving: %v, want router and net/http", engines)
	}
	shut := make(chan error, 1)
	go func() { shut <- s.Shutdown(context.Background()) }() // owned: read below
	close(release)
	if err := <-shut; err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	wg.Wait()
	close(answers)
	for a := range answers {
		if !strings.HasSuffix(a, ": done") {
			t.Errorf("answer %q, want done", a)
		}
	}
	if err := <-served; !errors.Is(err, http.ErrServerClosed) {
		t.Errorf("Serve: %v", err)
	}
}
