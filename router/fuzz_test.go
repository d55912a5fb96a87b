package router

import (
	"bufio"
	"errors"
	"io"
	"net/http"
	"net/textproto"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/weft-dev/weft/internal/resource"
)

// FuzzParseService: any manifest either parses into a Service whose route
// table builds and selects without panicking, or fails with
// *resource.FieldError values.
func FuzzParseService(f *testing.F) {
	for _, s := range []string{
		"apiVersion: weft.dev/v1\nkind: Service\nmetadata: {name: s}\nspec: {endpoints: [\"http://127.0.0.1:1\"]}\n",
		"apiVersion: weft.dev/v1\nkind: Service\nmetadata: {name: s}\nspec:\n  routes:\n    - match: {pathPrefix: /v2/, headers: {x-canary: \"1\"}, method: GET}\n      backends: [{name: a}]\n    - backends: [{name: a, weight: 90}, {name: b, weight: 10}]\n",
		"apiVersion: weft.dev/v1\nkind: Service\nmetadata: {name: s}\nspec:\n  endpoints: [\"https://127.0.0.1:9443\"]\n  tls: {mode: mutual, spiffeID: spiffe://weft.local/fn/x}\n  retries: {attempts: 3, perTryTimeout: 1s, budgetPercent: 0}\n",
		"apiVersion: weft.dev/v1\nkind: Service\nmetadata: {name: s}\nspec: {routes: [{backends: [{name: s}]}]}\n",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, doc string) {
		objs, err := resource.Decode("s.yaml", []byte(doc))
		if err != nil {
			return
		}
		for _, o := range objs {
			svc, err := ParseService(o)
			if err != nil {
				var fe *resource.FieldError
				if !errors.As(err, &fe) {
					t.Fatalf("ParseService error %T %v is not a FieldError", err, err)
				}
				continue
			}
			table, err := NewRouteTable(svc)
			if err != nil {
				t.Fatalf("a parsed Service has no route table: %v", err)
			}
			req, _ := http.NewRequest(http.MethodGet, "http://s/v2/x", nil)
			table.Select(req, func() float64 { return 0.5 })
		}
	})
}

// FuzzParseRequest: whatever the proxy's server accepts, net/http's
// ReadRequest accepts too and reads the same way: method, target, host,
// header, framing and body. The proxy's parser may refuse more (obs-fold,
// both lengths, a missing or bad Host, HTTP other than 1.x), never less.
func FuzzParseRequest(f *testing.F) {
	for _, s := range []string{
		"GET http://svc/a?b=c HTTP/1.1\r\nHost: svc\r\nUser-Agent: x\r\nAccept-Encoding: gzip\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
		"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3;e=1\r\nabc\r\n0\r\nT: v\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
		"GET / HTTP/1.0\nconnection: keep-alive\nPragma: no-cache\n\n",
		"CONNECT svc:443 HTTP/1.1\r\nHost: svc:443\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n b\r\n\r\n",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		got, body, status := parseRaw(raw)
		if status != 0 {
			return
		}
		want, err := http.ReadRequest(bufio.NewReader(strings.NewReader(raw)))
		if err != nil {
			t.Fatalf("accepted what net/http refuses (%v): %q", err, raw)
		}
		delete(want.Header, "Host") // as net/http's server does
		if got.Method != want.Method || got.RequestURI != want.RequestURI || got.URL.String() != want.URL.String() ||
			got.Host != want.Host || got.Proto != want.Proto || got.Close != want.Close || got.ContentLength != want.ContentLength ||
			!reflect.DeepEqual(got.TransferEncoding, want.TransferEncoding) || !reflect.DeepEqual(got.Header, want.Header) {
			t.Fatalf("read %q as\n%+v\nnet/http as\n%+v", raw, got, want)
		}
		wb, err := io.ReadAll(want.Body)
		// net/http parses trailers net/http's way; the bodies agree up to them.
		if err == nil && string(wb) != body || !strings.HasPrefix(body, string(wb)) {
			t.Fatalf("body %q, net/http's %q (%v)", body, wb, err)
		}
	})
}

// FuzzParseResponseHead: whatever answer head the proxy forwards, net/http's
// ReadResponse accepts too, with the same status and framing, and the fields
// forwarded are its header less the hop-by-hop ones and those Connection
// names.
func FuzzParseResponseHead(f *testing.F) {
	for _, s := range []string{
		"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello",
		"HTTP/1.1 200 OK\r\nConnection: X-Hop, close\r\nX-Hop: 1\r\nKeep-Alive: 5\r\n\r\nuntil close",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: T\r\n\r\n5\r\nhello\r\n0\r\nT: 1\r\n\r\n",
		"HTTP/1.0 304 Not Modified\nContent-Length: 7\nPragma: no-cache\n\n",
		"HTTP/1.1 204\r\nContent-Length: 0\r\n\r\n",
		"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n",
	} {
		f.Add(s, false)
		f.Add(s, true)
	}
	f.Fuzz(func(t *testing.T, raw string, head bool) {
		method := http.MethodGet
		if head {
			method = http.MethodHead
		}
		br := bufio.NewReader(strings.NewReader(raw))
		hd, buffered, err := readHead(br, maxResponseHead)
		if err != nil {
			return
		}
		var h respHead
		if err := parseResponseHead(hd, method, &h); err != nil {
			return
		}
		if buffered {
			_, _ = br.Discard(len(hd))
		}
		want, err := http.ReadResponse(bufio.NewReader(strings.NewReader(raw)), &http.Request{Method: method})
		if err != nil {
			t.Fatalf("accepted what net/http refuses (%v): %q", err, raw)
		}
		if want.StatusCode != h.status || want.Close != h.close {
			t.Fatalf("status %d, close %v; net/http: %d, %v", h.status, h.close, want.StatusCode, want.Close)
		}
		if h.body != 0 || h.chunked {
			wantLength := h.body
			if h.chunked {
				wantLength = -1
			}
			if want.ContentLength != wantLength || h.chunked != slices.Equal(want.TransferEncoding, []string{"chunked"}) {
				t.Fatalf("body %d, chunked %v; net/http: length %d, %q", h.body, h.chunked, want.ContentLength, want.TransferEncoding)
			}
			var b bodyReader
			b.init(br, h.body, h.chunked)
			got, gerr := io.ReadAll(&b)
			wb, werr := io.ReadAll(want.Body)
			if gerr == nil && werr == nil && string(got) != string(wb) || !strings.HasPrefix(string(got), string(wb)) && !strings.HasPrefix(string(wb), string(got)) {
				t.Fatalf("body %q (%v); net/http's %q (%v)", got, gerr, wb, werr)
			}
		} else if want.Body != http.NoBody && want.ContentLength != 0 {
			t.Fatalf("no body; net/http: length %d", want.ContentLength)
		}
		fields, err := textproto.NewReader(bufio.NewReader(strings.NewReader(string(h.fields) + "\r\n"))).ReadMIMEHeader()
		if err != nil {
			t.Fatalf("forwarded fields %q do not parse: %v", h.fields, err)
		}
		wh := want.Header
		for _, k := range append(hopHeaders, "Content-Length") {
			delete(wh, k)
		}
		tr := textproto.NewReader(bufio.NewReader(strings.NewReader(string(hd))))
		_, _ = tr.ReadLine()
		all, _ := tr.ReadMIMEHeader() // before net/http drops Connection: close
		for _, v := range all["Connection"] {
			for _, tok := range strings.Split(v, ",") {
				delete(wh, http.CanonicalHeaderKey(strings.TrimSpace(tok)))
			}
		}
		if !strings.Contains(strings.ToLower(raw), "cache-control") {
			delete(wh, "Cache-Control") // added by net/http for Pragma: no-cache
		}
		if !reflect.DeepEqual(http.Header(fields), wh) {
			t.Fatalf("forwarded %q; net/http's header less hop-by-hop: %q", fields, wh)
		}
	})
}
