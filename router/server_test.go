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
	"testing"
	"time"
)

// startH1 serves h with h1Server on a loopback port until the test ends.
func startH1(t *testing.T, h http.Handler) string {
	t.Helper()
	s := newH1Server(h, 10*time.Second, slog.New(slog.DiscardHandler))
	return serveUntilCleanup(t, s.Serve, s.Shutdown)
}

// serveUntilCleanup runs serve on a loopback listener and returns its
// address; when the test ends it calls shutdown and checks that both
// return as a clean shutdown should.
func serveUntilCleanup(t *testing.T, serve func(net.Listener) error, shutdown func(context.Context) error) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- serve(ln) }() // owned: the cleanup shuts it down and reads done
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		if err := <-done; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("Serve: %v", err)
		}
	})
	return ln.Addr().String()
}

// rawExchange writes raw to addr and returns everything the server sends
// until it closes the connection or 2 s pass.
func rawExchange(t *testing.T, addr, raw string) string {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
	b, _ := io.ReadAll(c)
	return string(b)
}

// TestH1ServerFraming checks how answers are framed: declared lengths,
// short answers measured, long ones chunked, bodiless ones empty.
func TestH1ServerFraming(t *testing.T) {
	big := strings.Repeat("b", 10<<10)
	addr := startH1(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/declared":
			w.Header().Set("Content-Length", "5")
			_, _ = io.WriteString(w, "hello")
		case "/small":
			_, _ = io.WriteString(w, "small")
		case "/big":
			_, _ = io.WriteString(w, big)
		case "/flush":
			_, _ = io.WriteString(w, "part1,")
			w.(http.Flusher).Flush()
			_, _ = io.WriteString(w, "part2")
		case "/empty":
			w.WriteHeader(http.StatusNoContent)
		case "/error":
			http.Error(w, "nope", http.StatusTeapot)
		}
	}))
	client := &http.Client{Transport: &http.Transport{}}
	defer client.CloseIdleConnections()
	for _, c := range []struct {
		path, body string
		status     int
		length     int64
		chunked    bool
	}{
		{"/declared", "hello", 200, 5, false},
		{"/small", "small", 200, 5, false},
		{"/big", big, 200, -1, true},
		{"/flush", "part1,part2", 200, -1, true},
		{"/empty", "", 204, 0, false},
		{"/error", "nope\n", 418, 5, false},
	} {
		resp, err := client.Get("http://" + addr + c.path)
		if err != nil {
			t.Fatalf("%s: %v", c.path, err)
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatalf("%s: body: %v", c.path, err)
		}
		chunked := len(resp.TransferEncoding) == 1 && resp.TransferEncoding[0] == "chunked"
		if resp.StatusCode != c.status || string(b) != c.body || resp.ContentLength != c.length || chunked != c.chunked {
			t.Errorf("%s: %d, %d bytes, length %d, chunked %v; want %d, %d bytes, length %d, chunked %v",
				c.path, resp.StatusCode, len(b), resp.ContentLength, chunked, c.status, len(c.body), c.length, c.chunked)
		}
		if resp.Header.Get("Date") == "" {
			t.Errorf("%s: no Date", c.path)
		}
	}
	// HEAD: the length of the GET answer, no body.
	resp, err := client.Head("http://" + addr + "/declared")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.ContentLength != 5 {
		t.Errorf("HEAD: length %d, want 5", resp.ContentLength)
	}
}

// TestH1ServerKeepAliveAndPipelining: requests sent back to back on one
// connection are answered in order, and Connection: close ends it.
func TestH1ServerKeepAliveAndPipelining(t *testing.T) {
	addr := startH1(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s %s %s", r.Method, r.URL.Path, b)
	}))
	got := rawExchange(t, addr, "GET /one HTTP/1.1\r\nHost: x\r\n\r\n"+
		"POST /two HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"+
		"POST /three HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nde\r\n0\r\n\r\n"+
		"GET /four HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	br := bufio.NewReader(strings.NewReader(got))
	for _, want := range []string{"GET /one ", "POST /two abc", "POST /three de", "GET /four "} {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("reading the answer %q: %v\n%s", want, err, got)
		}
		b, _ := io.ReadAll(resp.Body)
		if string(b) != want {
			t.Errorf("answer %q, want %q", b, want)
		}
		if want == "GET /four " && !resp.Close {
			t.Error("the answer to Connection: close does not close")
		}
	}
	if rest, _ := io.ReadAll(br); len(rest) != 0 {
		t.Errorf("trailing bytes after the last answer: %q", rest)
	}
}

// TestH1ServerUnreadBody: a body the handler did not read is drained when
// small, so the connection carries on, and closes the connection when large.
func TestH1ServerUnreadBody(t *testing.T) {
	addr := startH1(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "ignored")
	}))
	small := "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nabcd"
	got := rawExchange(t, addr, small+small+"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	if n := strings.Count(got, "HTTP/1.1 200 OK"); n != 3 {
		t.Errorf("%d answers to 3 requests with small unread bodies:\n%s", n, got)
	}
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	n := maxDrain + 1<<20
	go func() { // owned: ends when the server closes the connection
		_, _ = io.WriteString(c, fmt.Sprintf("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n", n))
		_, _ = c.Write(make([]byte, n))
	}()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if !resp.Close {
		t.Error("a large unread body did not close the connection")
	}
}

// TestH1ServerExpectContinue: the client is told to continue, the handler
// never sees Expect, and other expectations are refused with 417.
func TestH1ServerExpectContinue(t *testing.T) {
	addr := startH1(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "expect=%q body=%s", r.Header.Get("Expect"), b)
	}))
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	_, _ = io.WriteString(c, "POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n")
	br := bufio.NewReader(c)
	line, err := br.ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "HTTP/1.1 100 Continue") {
		t.Fatalf("first line %q, %v; want 100 Continue", line, err)
	}
	_, _ = br.ReadString('\n')
	_, _ = io.WriteString(c, "hi")
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	if string(b) != `expect="" body=hi` {
		t.Errorf("handler saw %q", b)
	}
	got := rawExchange(t, addr, "POST / HTTP/1.1\r\nHost: x\r\nExpect: something\r\nContent-Length: 2\r\n\r\nhi")
	if !strings.HasPrefix(got, "HTTP/1.1 417") {
		t.Errorf("Expect: something answered %q, want 417", got)
	}
}

// TestH1ServerBadRequests: malformed requests get 400, headers over the
// limit 431, an HTTP/1.0 client a close-delimited answer.
func TestH1ServerBadRequests(t *testing.T) {
	addr := startH1(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, strings.Repeat("z", 5000))
	}))
	if got := rawExchange(t, addr, "NOT HTTP\r\n\r\n"); !strings.HasPrefix(got, "HTTP/1.1 400") {
		t.Errorf("garbage answered %q", got)
	}
	huge := "GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat("a", maxHeaderBytes+8<<10) + "\r\n\r\n"
	if got := rawExchange(t, addr, huge); !strings.HasPrefix(got, "HTTP/1.1 431") {
		t.Errorf("a %d-byte header answered %.60q", len(huge), got)
	}
	got := rawExchange(t, addr, "GET / HTTP/1.0\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(strings.NewReader(got)), &http.Request{Method: "GET"})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	if len(b) != 5000 || len(resp.TransferEncoding) != 0 || !resp.Close {
		t.Errorf("HTTP/1.0: %d bytes, transfer encoding %v, close %v", len(b), resp.TransferEncoding, resp.Close)
	}
}

// TestH1ServerPanicAndHijack: a panicking handler loses its connection, not
// the server; a hijacked connection belongs to the handler.
func TestH1ServerPanicAndHijack(t *testing.T) {
	addr := startH1(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/panic":
			panic(http.ErrAbortHandler)
		case "/hijack":
			c, brw, err := http.NewResponseController(w).Hijack()
			if err != nil {
				http.Error(w, err.Error(), 500)
				return
			}
			defer c.Close()
			_, _ = brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n")
			_ = brw.Flush()
			line, _ := brw.ReadString('\n')
			_, _ = brw.WriteString("echo " + line)
			_ = brw.Flush()
		default:
			_, _ = io.WriteString(w, "fine")
		}
	}))
	if got := rawExchange(t, addr, "GET /panic HTTP/1.1\r\nHost: x\r\n\r\n"); got != "" {
		t.Errorf("a panicking handler's connection got %q", got)
	}
	got := rawExchange(t, addr, "GET /hijack HTTP/1.1\r\nHost: x\r\n\r\nping\n")
	if !strings.HasPrefix(got, "HTTP/1.1 101") || !strings.HasSuffix(got, "echo ping\n") {
		t.Errorf("hijacked exchange %q", got)
	}
	if got := rawExchange(t, addr, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"); !strings.HasSuffix(got, "fine") {
		t.Errorf("after a panic and a hijack the server answered %q", got)
	}
}

// TestH1ServerShutdown: idle connections are closed at once, an active
// request finishes (and its connection closes after it).
func TestH1ServerShutdown(t *testing.T) {
	release := make(chan struct{})
	started := make(chan struct{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := newH1Server(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			close(started)
			<-release
		}
		_, _ = io.WriteString(w, "done")
	}), 10*time.Second, slog.New(slog.DiscardHandler))
	served := make(chan error, 1)
	go func() { served <- s.Serve(ln) }() // owned: read below
	addr := ln.Addr().String()

	idle, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	_, _ = io.WriteString(idle, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	ibr := bufio.NewReader(idle)
	if resp, err := http.ReadResponse(ibr, nil); err != nil {
		t.Fatal(err)
	} else {
		_, _ = io.Copy(io.Discard, resp.Body)
	}
	active, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer active.Close()
	_, _ = io.WriteString(active, "GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
	select {
	case <-started:
	case <-time.After(5 * time.Second):
		t.Fatal("slow request not started")
	}
	shut := make(chan error, 1)
	go func() { shut <- s.Shutdown(context.Background()) }() // owned: read below

	_ = idle.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := ibr.ReadByte(); !errors.Is(err, io.EOF) {
		t.Errorf("idle connection after Shutdown: %v, want EOF", err)
	}
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned (%v) while a request was active", err)
	default:
	}
	close(release)
	_ = active.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(active), nil)
	if err != nil {
		t.Fatalf("the active request was not answered: %v", err)
	}
	b, _ := io.ReadAll(resp.Body)
	if string(b) != "done" || !resp.Close {
		t.Errorf("active request answered %q, close %v", b, resp.Close)
	}
	if err := <-shut; err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	if err := <-served; !errors.Is(err, http.ErrServerClosed) {
		t.Errorf("Serve: %v", err)
	}
}
