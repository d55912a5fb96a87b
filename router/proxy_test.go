package router

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// rawBackend answers every request on its connections with what answer
// returns for it, written as it is, and closes the connection after an
// answer that says Connection: close. It stops when the test ends.
func rawBackend(t *testing.T, answer func(*http.Request) string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns []net.Conn
	)
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Go(func() {
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					req, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					_, _ = io.Copy(io.Discard, req.Body)
					a := answer(req)
					if _, err := io.WriteString(c, a); err != nil || strings.Contains(a, "Connection: close\r\n") {
						return
					}
				}
			})
		}
	})
	return "http://" + ln.Addr().String()
}

// startRoutedProxy runs a proxy whose Service "svc" has endpoint as its
// only endpoint, until the test ends; it returns the proxy's address.
func startRoutedProxy(t *testing.T, endpoint string) string {
	t.Helper()
	r := New(Config{}, nil, slog.New(slog.DiscardHandler))
	if err := r.SetServices([]*Service{serviceYAML(t, fmt.Sprintf("metadata: {name: svc}\nspec: {endpoints: [%q]}\n", endpoint))}); err != nil {
		t.Fatal(err)
	}
	p := NewProxy("127.0.0.1:0", r, slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }() // owned: the cleanup cancels it and reads done
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("proxy.Run: %v", err)
		}
	})
	select {
	case <-p.Ready():
	case err := <-done:
		t.Fatal(err)
	case <-time.After(10 * time.Second):
		t.Fatal("proxy not ready")
	}
	return p.Addr()
}

// answerHead splits a raw exchange into the answer's head and what follows.
func answerHead(got string) (head, rest string) {
	head, rest, _ = strings.Cut(got, "\r\n\r\n")
	return head + "\r\n", rest
}

// TestProxyForwardsAnswers: the proxy forwards an endpoint's header as it
// came, less the hop-by-hop fields and those Connection names, and frames
// the body itself (HEAD, 1xx, 204 and 304 have none). An answer whose
// framing is broken is a 502, or a dropped connection once it has begun.
func TestProxyForwardsAnswers(t *testing.T) {
	t.Parallel()
	answers := map[string]string{
		"/hop": "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Multi: a\r\nx-multi: b\r\nConnection: keep-alive, X-Hop\r\nX-Hop: secret\r\n" +
			"Keep-Alive: timeout=5\r\nUpgrade: h2c\r\nProxy-Authenticate: Basic\r\nTrailer: X-T\r\nContent-Length: 5\r\n\r\nhello",
		"/chunked":     "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nhello \r\n5\r\nworld\r\n0\r\nX-Trailer: t\r\n\r\n",
		"/until-close": "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil close",
		"/http10":      "HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nold",
		"/head":        "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n",
		"/204":         "HTTP/1.1 204 No Content\r\nContent-Length: 3\r\nX-A: b\r\n\r\n",
		"/304":         "HTTP/1.1 304 Not Modified\r\nContent-Length: 7\r\nEtag: \"x\"\r\n\r\n",
		"/103":         "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal",
		"/both":        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n",
		"/differing":   "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\nConnection: close\r\n\r\nhello!",
		"/fold":        "HTTP/1.1 200 OK\r\nX-A: one\r\n two\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
		"/cut":         "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\nzz\r\n",
	}
	proxy := startRoutedProxy(t, rawBackend(t, func(r *http.Request) string { return answers[r.URL.Path] }))
	exchange := func(method, path string) string {
		return rawExchange(t, proxy, method+" http://svc"+path+" HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n")
	}

	head, body := answerHead(exchange("GET", "/hop"))
	for _, want := range []string{"HTTP/1.1 200 OK\r\n", "\r\nContent-Type: text/plain\r\n", "\r\nX-Multi: a\r\nx-multi: b\r\n", "\r\nContent-Length: 5\r\n", "\r\nDate: "} {
		if !strings.Contains(head, want) {
			t.Errorf("/hop: no %q in\n%s", want, head)
		}
	}
	for _, banned := range []string{"X-Hop", "secret", "Keep-Alive", "Upgrade", "Proxy-Authenticate", "Trailer", "keep-alive"} {
		if strings.Contains(head, banned) {
			t.Errorf("/hop: %q forwarded in\n%s", banned, head)
		}
	}
	if body != "hello" {
		t.Errorf("/hop: body %q", body)
	}

	for path, want := range map[string]string{"/chunked": "hello world", "/until-close": "until close", "/http10": "old", "/103": "final"} {
		got := exchange("GET", path)
		resp, err := http.ReadResponse(bufio.NewReader(strings.NewReader(got)), nil)
		if err != nil {
			t.Errorf("%s: %v in %q", path, err, got)
			continue
		}
		b, err := io.ReadAll(resp.Body)
		if err != nil || resp.StatusCode != 200 || string(b) != want {
			t.Errorf("%s: %d %q (%v), want 200 %q", path, resp.StatusCode, b, err, want)
		}
		if strings.Contains(got, "X-Trailer") || strings.Contains(got, "Early") {
			t.Errorf("%s: a trailer or an informational answer was forwarded: %q", path, got)
		}
	}

	for _, c := range []struct {
		method, path string
		status       string
		length       string // "" for none
	}{
		{"HEAD", "/head", "200", "10"},
		{"GET", "/204", "204", ""},
		{"GET", "/304", "304", "7"},
	} {
		head, rest := answerHead(exchange(c.method, c.path))
		hasLength := strings.Contains(head, "\r\nContent-Length: ")
		if !strings.HasPrefix(head, "HTTP/1.1 "+c.status+" ") || rest != "" ||
			hasLength != (c.length != "") || c.length != "" && !strings.Contains(head, "\r\nContent-Length: "+c.length+"\r\n") {
			t.Errorf("%s %s: want %s with length %q and no body, got\n%s%q", c.method, c.path, c.status, c.length, head, rest)
		}
		if strings.Contains(head, "Transfer-Encoding") {
			t.Errorf("%s %s: chunked without a body:\n%s", c.method, c.path, head)
		}
	}

	for _, path := range []string{"/both", "/differing", "/fold"} {
		if got := exchange("GET", path); !strings.HasPrefix(got, "HTTP/1.1 502 ") {
			t.Errorf("%s: %.80q, want 502", path, got)
		}
	}
	// The body broke after its first chunk: the client must not be given
	// a whole-looking answer.
	got := exchange("GET", "/cut")
	if resp, err := http.ReadResponse(bufio.NewReader(strings.NewReader(got)), nil); err == nil {
		if b, err := io.ReadAll(resp.Body); err == nil {
			t.Errorf("/cut: a cut answer reached the client whole: %d %q", resp.StatusCode, b)
		}
	}
}

// TestProxyRefusesMalformedRequests: requests a proxy could forward as
// something else (RFC 9112 section 11.2) get 400 and never reach the
// endpoint; a good chunked body reaches it whole.
func TestProxyRefusesMalformedRequests(t *testing.T) {
	t.Parallel()
	var hits atomic.Int64
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		b, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		fmt.Fprintf(w, "%s %s", r.Method, b)
	}))
	t.Cleanup(backend.Close)
	proxy := startRoutedProxy(t, backend.URL)

	for name, raw := range map[string]string{
		"both lengths":      "POST http://svc/ HTTP/1.1\r\nHost: svc\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
		"differing lengths": "POST http://svc/ HTTP/1.1\r\nHost: svc\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
		"obs-fold":          "GET http://svc/ HTTP/1.1\r\nHost: svc\r\nX-A: one\r\n two\r\n\r\n",
		"chunked in 1.0":    "POST http://svc/ HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
	} {
		got := rawExchange(t, proxy, raw)
		if !strings.HasPrefix(got, "HTTP/1.1 400 ") || !strings.Contains(got, "\r\nConnection: close\r\n") {
			t.Errorf("%s: %.80q, want 400 and close", name, got)
		}
	}
	// A chunked body whose framing breaks is found out while it is sent
	// on: the endpoint may have seen the start, the client gets 400.
	got := rawExchange(t, proxy, "POST http://svc/ HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\nzz\r\n")
	if !strings.HasPrefix(got, "HTTP/1.1 400 ") {
		t.Errorf("bad chunk size: %.80q, want 400", got)
	}
	if n := hits.Load(); n > 1 {
		t.Errorf("the endpoint answered %d malformed requests", n)
	}
	got = rawExchange(t, proxy, "POST http://svc/ HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n2\r\nab\r\n3\r\ncde\r\n0\r\n\r\n")
	if _, body := answerHead(got); !strings.HasPrefix(got, "HTTP/1.1 200 ") || body != "POST abcde" {
		t.Errorf("good chunked body: %q", got)
	}
}
