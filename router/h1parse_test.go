package router

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net/http"
	"reflect"
	"strings"
	"testing"
)

// parseRaw reads one request from raw as the proxy's server does and
// returns it with its body read, or the status the server would answer.
func parseRaw(raw string) (req *http.Request, body string, status int) {
	br := bufio.NewReaderSize(strings.NewReader(raw), 4<<10)
	head, buffered, err := readHead(br, maxHeaderBytes)
	if err != nil {
		return nil, "", statusOf(err)
	}
	s := string(head)
	if buffered {
		_, _ = br.Discard(len(head))
	}
	base := (&http.Request{}).WithContext(context.Background())
	req, chunked, err := parseRequest(s, base)
	if err != nil {
		return nil, "", statusOf(err)
	}
	var b bodyReader
	b.init(br, req.ContentLength, chunked)
	data, err := io.ReadAll(&b)
	if err != nil {
		return req, string(data), statusOf(err)
	}
	return req, string(data), 0
}

func statusOf(err error) int {
	var pe *parseError
	switch {
	case errors.As(err, &pe):
		return pe.status
	case errors.Is(err, errMalformedBody):
		return http.StatusBadRequest
	}
	return -1 // an I/O error: no answer
}

// TestParseRequestRefuses lists malformed requests and what the server
// answers them, most of them the request smuggling vectors of RFC 9112
// section 11.2 that a proxy must not pass on as something else.
func TestParseRequestRefuses(t *testing.T) {
	t.Parallel()
	const ok = "GET / HTTP/1.1\r\nHost: x\r\n"
	for name, c := range map[string]struct {
		raw    string
		status int
	}{
		"both lengths":            {"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400},
		"lengths, other order":    {"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n", 400},
		"chunked in HTTP/1.0":     {"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400},
		"differing lengths":       {"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400},
		"length list":             {"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 3\r\n\r\nabc", 400},
		"negative length":         {"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400},
		"signed length":           {"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +3\r\n\r\nabc", 400},
		"hex length":              {"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0x3\r\n\r\nabc", 400},
		"empty length":            {"POST / HTTP/1.1\r\nHost: x\r\nContent-Length:\r\n\r\n", 400},
		"huge length":             {"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n", 400},
		"gzip encoding":           {"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 501},
		"chunked twice":           {"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 501},
		"chunked listed":          {"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501},
		"bad chunk size":          {"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n", 400},
		"chunk size overflow":     {"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000000\r\nabc\r\n0\r\n\r\n", 400},
		"chunk without CRLF":      {"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n0\r\n\r\n", 400},
		"malformed trailer":       {"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nno colon\r\n\r\n", 400},
		"obs-fold":                {ok + "X-A: one\r\n two\r\n\r\n", 400},
		"obs-fold with tab":       {ok + "X-A: one\r\n\ttwo\r\n\r\n", 400},
		"space before first":      {"GET / HTTP/1.1\r\n Host: x\r\n\r\n", 400},
		"space before colon":      {"GET / HTTP/1.1\r\nHost : x\r\n\r\n", 400},
		"no colon":                {ok + "X-A one\r\n\r\n", 400},
		"empty name":              {ok + ": one\r\n\r\n", 400},
		"separator in name":       {ok + "X(A): one\r\n\r\n", 400},
		"control byte in value":   {ok + "X-A: o\x01ne\r\n\r\n", 400},
		"DEL in value":            {ok + "X-A: o\x7fne\r\n\r\n", 400},
		"bare CR in value":        {ok + "X-A: o\rne\r\n\r\n", 400},
		"missing Host":            {"GET / HTTP/1.1\r\n\r\n", 400},
		"two Hosts":               {"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400},
		"bad Host":                {"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", 400},
		"Host with space":         {"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400},
		"no version":              {"GET /\r\nHost: x\r\n\r\n", 400},
		"double space":            {"GET  / HTTP/1.1\r\nHost: x\r\n\r\n", 400},
		"trailing space":          {"GET / HTTP/1.1 \r\nHost: x\r\n\r\n", 400},
		"lower-case version":      {"GET / http/1.1\r\nHost: x\r\n\r\n", 400},
		"bad version":             {"GET / HTTP/1.x\r\nHost: x\r\n\r\n", 400},
		"HTTP/2":                  {"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505},
		"bad method":              {"G@T / HTTP/1.1\r\nHost: x\r\n\r\n", 400},
		"control byte in target":  {"GET /a\x01b HTTP/1.1\r\nHost: x\r\n\r\n", 400},
		"relative target":         {"GET a/b HTTP/1.1\r\nHost: x\r\n\r\n", 400},
		"empty line first":        {"\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n", 400},
		"garbage":                 {"NOT HTTP\r\n\r\n", 400},
		"cut short":               {"GET / HTTP/1.1\r\nHost: x\r\n", -1},
		"body cut short":          {"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nabc", -1},
		"chunked body cut short":  {"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabc", -1},
		"header over the maximum": {ok + "X-Big: " + strings.Repeat("a", maxHeaderBytes) + "\r\n\r\n", 431},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			req, _, status := parseRaw(c.raw)
			if status != c.status {
				t.Errorf("status %d (request %v), want %d", status, req, c.status)
			}
		})
	}
}

// TestParseRequestFields checks what a handler sees of valid requests: the
// same as net/http's server would give it.
func TestParseRequestFields(t *testing.T) {
	t.Parallel()
	for name, c := range map[string]struct {
		raw    string
		check  func(*http.Request) bool
		body   string
		length int64
	}{
		"absolute form": {"GET http://svc:8080/a%2Fb?q=1 HTTP/1.1\r\nHost: other\r\n\r\n", func(r *http.Request) bool {
			return r.Host == "svc:8080" && r.URL.Host == "svc:8080" && r.URL.Scheme == "http" && r.URL.Path == "/a/b" &&
				r.URL.RawPath == "/a%2Fb" && r.URL.RawQuery == "q=1" && r.RequestURI == "http://svc:8080/a%2Fb?q=1"
		}, "", 0},
		"origin form": {"GET /p HTTP/1.1\r\nHost: svc\r\n\r\n", func(r *http.Request) bool {
			_, hasHost := r.Header["Host"]
			return r.Host == "svc" && r.URL.Host == "" && r.URL.Path == "/p" && !hasHost && !r.Close && r.ProtoMinor == 1
		}, "", 0},
		"names made canonical, values trimmed": {"GET / HTTP/1.1\r\nhost: x\r\ncontent-TYPE:  a/b \t\r\nx-multi: 1\r\nX-Multi: 2\r\nX-Empty:\r\n\r\n", func(r *http.Request) bool {
			return r.Header.Get("Content-Type") == "a/b" && reflect.DeepEqual(r.Header["X-Multi"], []string{"1", "2"}) &&
				reflect.DeepEqual(r.Header["X-Empty"], []string{""}) && r.Host == "x"
		}, "", 0},
		"line feeds only": {"GET / HTTP/1.1\nHost: x\nX-A: b\n\n", func(r *http.Request) bool {
			return r.Host == "x" && r.Header.Get("X-A") == "b"
		}, "", 0},
		"close": {"GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Close\r\n\r\n", func(r *http.Request) bool { return r.Close }, "", 0},
		"HTTP/1.0": {"GET / HTTP/1.0\r\n\r\n", func(r *http.Request) bool {
			return r.Close && r.ProtoMinor == 0 && r.Proto == "HTTP/1.0" && r.Host == ""
		}, "", 0},
		"HTTP/1.0 keep-alive": {"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", func(r *http.Request) bool { return !r.Close }, "", 0},
		"pragma": {"GET / HTTP/1.1\r\nHost: x\r\nPragma: no-cache\r\n\r\n", func(r *http.Request) bool {
			return r.Header.Get("Cache-Control") == "no-cache"
		}, "", 0},
		"connect": {"CONNECT svc:443 HTTP/1.1\r\nHost: svc:443\r\n\r\n", func(r *http.Request) bool {
			return r.Method == "CONNECT" && r.URL.Host == "svc:443" && r.URL.Scheme == "" && r.Host == "svc:443"
		}, "", 0},
		"length": {"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabcGET", func(r *http.Request) bool {
			return reflect.DeepEqual(r.Header["Content-Length"], []string{"3"}) && r.TransferEncoding == nil
		}, "abc", 3},
		"chunked": {"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\n\r\n3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-Trailer: dropped\r\n\r\n", func(r *http.Request) bool {
			_, te := r.Header["Transfer-Encoding"]
			return !te && reflect.DeepEqual(r.TransferEncoding, []string{"chunked"})
		}, "abcde", -1},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			req, body, status := parseRaw(c.raw)
			if status != 0 {
				t.Fatalf("refused with %d", status)
			}
			if !c.check(req) || body != c.body || req.ContentLength != c.length {
				t.Errorf("got %+v, body %q", req, body)
			}
			if req.Context() == nil || req.Body != nil {
				t.Errorf("context %v, body %v: want the base's", req.Context(), req.Body)
			}
		})
	}
}

// TestParseRequestAllocs is the allocation budget of a typical proxied
// request's head: one string for the head, the URL, the Header (map and
// values) and the Request.
func TestParseRequestAllocs(t *testing.T) {
	const raw = "GET http://svc/path HTTP/1.1\r\nHost: svc\r\nUser-Agent: Go-http-client/1.1\r\nAccept-Encoding: gzip\r\n\r\n"
	base := (&http.Request{}).WithContext(context.Background())
	br := bufio.NewReaderSize(strings.NewReader(""), 4<<10)
	sr := strings.NewReader(raw)
	allocs := testing.AllocsPerRun(200, func() {
		sr.Reset(raw)
		br.Reset(sr)
		head, _, err := readHead(br, maxHeaderBytes)
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := parseRequest(string(head), base); err != nil {
			t.Fatal(err)
		}
	})
	if allocs > 7 {
		t.Errorf("%v allocations per request head, budget 7", allocs)
	}
}

// TestParseResponseHead checks what the proxy forwards of an answer's head
// and how it frames the body.
func TestParseResponseHead(t *testing.T) {
	t.Parallel()
	for name, c := range map[string]struct {
		bad         bool
		raw, method string
		fields      string // forwarded
		length      int64
		body        int64
		chunked     bool
		close       bool
	}{
		"length": {raw: "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\n",
			fields: "Content-Type: text/plain\r\n", length: 5, body: 5},
		"hop-by-hop dropped": {raw: "HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\nUpgrade: h2c\r\n" +
			"Proxy-Authenticate: Basic\r\nProxy-Connection: x\r\nTe: trailers\r\nTrailer: X-T\r\nx-kept:  a \r\nX-Kept: b\r\nContent-Length: 0\r\n\r\n",
			fields: "x-kept: a\r\nX-Kept: b\r\n", length: 0, body: 0},
		"chunked":             {raw: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nDate: d\r\n\r\n", fields: "Date: d\r\n", length: -1, body: -1, chunked: true},
		"until close":         {raw: "HTTP/1.1 200 OK\r\nX: y\r\n\r\n", fields: "X: y\r\n", length: -1, body: -1, close: true},
		"HTTP/1.0":            {raw: "HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n", fields: "", length: 2, body: 2, close: true},
		"HTTP/1.0 keep-alive": {raw: "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\n", fields: "", length: 2, body: 2},
		"close":               {raw: "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n", fields: "", length: 2, body: 2, close: true},
		"HEAD":                {raw: "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", method: "HEAD", fields: "", length: 10, body: 0},
		"HEAD chunked":        {raw: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", method: "HEAD", fields: "", length: -1, body: 0},
		"204":                 {raw: "HTTP/1.1 204 No Content\r\nContent-Length: 3\r\n\r\n", fields: "", length: -1, body: 0},
		"304":                 {raw: "HTTP/1.1 304 Not Modified\r\nContent-Length: 7\r\nEtag: x\r\n\r\n", fields: "Etag: x\r\n", length: 7, body: 0},
		"no reason":           {raw: "HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n", fields: "", length: 0, body: 0},
		"LF only":             {raw: "HTTP/1.1 200 OK\nContent-Length: 1\nX: y\n\n", fields: "X: y\r\n", length: 1, body: 1},

		"both lengths":      {bad: true, raw: "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"},
		"differing lengths": {bad: true, raw: "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n"},
		"bad length":        {bad: true, raw: "HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"},
		"gzip":              {bad: true, raw: "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n"},
		"chunked in 1.0":    {bad: true, raw: "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"},
		"obs-fold":          {bad: true, raw: "HTTP/1.1 200 OK\r\nX: a\r\n b\r\nContent-Length: 0\r\n\r\n"},
		"bad name":          {bad: true, raw: "HTTP/1.1 200 OK\r\nX Y: a\r\nContent-Length: 0\r\n\r\n"},
		"bad value":         {bad: true, raw: "HTTP/1.1 200 OK\r\nX: a\x00\r\nContent-Length: 0\r\n\r\n"},
		"bad status":        {bad: true, raw: "HTTP/1.1 2000 OK\r\n\r\n"},
		"HTTP/2":            {bad: true, raw: "HTTP/2.0 200 OK\r\n\r\n"},
		"no status":         {bad: true, raw: "HTTP/1.1\r\n\r\n"},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			method := c.method
			if method == "" {
				method = "GET"
			}
			var h respHead
			err := parseResponseHead([]byte(c.raw), method, &h)
			if c.bad {
				if err == nil {
					t.Fatalf("accepted: %+v", h)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if string(h.fields) != c.fields || h.length != c.length || h.body != c.body || h.chunked != c.chunked || h.close != c.close {
				t.Errorf("fields %q, length %d, body %d, chunked %v, close %v; want %q, %d, %d, %v, %v",
					h.fields, h.length, h.body, h.chunked, h.close, c.fields, c.length, c.body, c.chunked, c.close)
			}
		})
	}
}

// BenchmarkReadRequest compares the proxy's request parser with net/http's
// ReadRequest on a typical proxied request (absolute form, as HTTP_PROXY
// sends it).
func BenchmarkReadRequest(b *testing.B) {
	const raw = "GET http://svc/path?q=1 HTTP/1.1\r\nHost: svc\r\nUser-Agent: Go-http-client/1.1\r\nAccept-Encoding: gzip\r\nTraceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n\r\n"
	sr := strings.NewReader(raw)
	br := bufio.NewReaderSize(sr, 4<<10)
	b.Run("router", func(b *testing.B) {
		base := (&http.Request{}).WithContext(context.Background())
		b.ReportAllocs()
		for b.Loop() {
			sr.Reset(raw)
			br.Reset(sr)
			head, _, err := readHead(br, maxHeaderBytes)
			if err != nil {
				b.Fatal(err)
			}
			if _, _, err := parseRequest(string(head), base); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("net-http", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			sr.Reset(raw)
			br.Reset(sr)
			req, err := http.ReadRequest(br)
			if err != nil {
				b.Fatal(err)
			}
			_ = req.WithContext(context.Background()) // as the server did
		}
	})
}

// BenchmarkReadResponseHead compares reading an answer's head for the
// proxy (checked and filtered, not parsed into a Header) with net/http's
// ReadResponse.
func BenchmarkReadResponseHead(b *testing.B) {
	const raw = "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nDate: Fri, 27 Nov 2026 18:00:00 GMT\r\nContent-Length: 64\r\n\r\n"
	sr := strings.NewReader(raw)
	br := bufio.NewReaderSize(sr, 4<<10)
	b.Run("router", func(b *testing.B) {
		var h respHead
		b.ReportAllocs()
		for b.Loop() {
			sr.Reset(raw)
			br.Reset(sr)
			head, _, err := readHead(br, maxResponseHead)
			if err != nil {
				b.Fatal(err)
			}
			if err := parseResponseHead(head, http.MethodGet, &h); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("net-http", func(b *testing.B) {
		req := &http.Request{Method: http.MethodGet}
		b.ReportAllocs()
		for b.Loop() {
			sr.Reset(raw)
			br.Reset(sr)
			if _, err := http.ReadResponse(br, req); err != nil {
				b.Fatal(err)
			}
		}
	})
}
