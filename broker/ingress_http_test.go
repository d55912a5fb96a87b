package broker

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"mime"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// recordingStore is the handler's eventStore in these unit tests: it keeps
// what it was given and answers err.
type recordingStore struct {
	mu     sync.Mutex
	events []event.Event
	calls  int
	err    error
	// check, if set, runs on each Store call before it records.
	check func(ctx context.Context) error
}

func (s *recordingStore) Store(ctx context.Context, evs []event.Event) error {
	if s.check != nil {
		if err := s.check(ctx); err != nil {
			return err
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls++
	if s.err != nil {
		return s.err
	}
	s.events = append(s.events, evs...)
	return nil
}

func (s *recordingStore) stored() []event.Event {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]event.Event(nil), s.events...)
}

// counterValue reads a counter without prometheus/testutil, whose diff
// dependency is not in go.sum.
func counterValue(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

func newTestIngress(t *testing.T, store eventStore, cfg IngressConfig) (*httptest.Server, *Metrics) {
	t.Helper()
	m := NewMetrics()
	srv := httptest.NewUnstartedServer(newIngressHandler(store, cfg, m, slog.New(slog.DiscardHandler)))
	srv.Config.MaxHeaderBytes = ingressMaxHeaderBytes
	srv.Start()
	t.Cleanup(srv.Close)
	return srv, m
}

// sendCase sends c to srv and returns the status, headers and body.
func sendCase(t *testing.T, srv *httptest.Server, c ingressCase) (int, http.Header, []byte) {
	t.Helper()
	method := c.method
	if method == "" {
		method = http.MethodPost
	}
	path := c.path
	if path == "" {
		path = "/"
	}
	req, err := http.NewRequestWithContext(t.Context(), method, srv.URL+path, strings.NewReader(c.body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range c.headers {
		req.Header.Set(k, v)
	}
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, resp.Header, body
}

// ingressErrorBody decodes a {"error": "..."} answer.
func ingressErrorBody(t *testing.T, body []byte) string {
	t.Helper()
	var e struct {
		Error string `json:"error"`
	}
	if err := json.Unmarshal(body, &e); err != nil || e.Error == "" {
		t.Fatalf("error body %q is not {\"error\": \"…\"}: %v", body, err)
	}
	return e.Error
}

// TestIngressBadCases sends every bad case, checks its status, its JSON error
// and that nothing was stored, then checks a good event right after it is
// stored (a refusal leaves the handler healthy).
func TestIngressBadCases(t *testing.T) {
	store := &recordingStore{}
	srv, m := newTestIngress(t, store, IngressConfig{})
	for i, c := range badIngressCases {
		t.Run(c.name, func(t *testing.T) {
			before := len(store.stored())
			status, hdr, body := sendCase(t, srv, c)
			if status != c.wantStatus {
				t.Fatalf("status = %d, want %d; body %s", status, c.wantStatus, body)
			}
			ingressErrorBody(t, body)
			if ct := hdr.Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type = %q, want application/json", ct)
			}
			if status == http.StatusMethodNotAllowed && hdr.Get("Allow") != "OPTIONS, POST" {
				t.Errorf("Allow = %q, want \"OPTIONS, POST\"", hdr.Get("Allow"))
			}
			if n := len(store.stored()); n != before {
				t.Fatalf("%d events stored by a refused request", n-before)
			}
			good := ingressCase{headers: caseBinary(fmt.Sprintf("after-%d", i)), body: `{}`}
			if status, _, body := sendCase(t, srv, good); status != http.StatusAccepted || len(body) != 0 {
				t.Fatalf("good event after the bad one: status %d body %q", status, body)
			}
			if n := len(store.stored()); n != before+1 {
				t.Fatalf("good event after the bad one: %d stored, want 1", n-before)
			}
		})
	}
	received := counterValue(t, m.Received.WithLabelValues("http"))
	if want := float64(2 * len(badIngressCases)); received != want {
		t.Errorf("received{http} = %v, want %v (one per request)", received, want)
	}
	var rejected float64
	for _, reason := range []string{"invalid", "too_large", "unsupported_media_type", "method", "not_found"} {
		rejected += counterValue(t, m.Rejected.WithLabelValues(reason))
	}
	if want := float64(len(badIngressCases)); rejected != want {
		t.Errorf("rejected = %v, want %v (one per refused request)", rejected, want)
	}
}

func TestIngressGoodCases(t *testing.T) {
	for _, c := range goodIngressCases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			store := &recordingStore{}
			srv, m := newTestIngress(t, store, IngressConfig{})
			status, _, body := sendCase(t, srv, c)
			if status != c.wantStatus || len(body) != 0 {
				t.Fatalf("status = %d body %q, want %d and no body", status, body, c.wantStatus)
			}
			got := store.stored()
			if len(got) != c.wantEvents {
				t.Fatalf("stored %d events, want %d", len(got), c.wantEvents)
			}
			for i := range got {
				if err := ValidateEvent(&got[i]); err != nil {
					t.Errorf("stored event %d does not validate: %v", i, err)
				}
			}
			if r := counterValue(t, m.Received.WithLabelValues("http")); r != 1 {
				t.Errorf("received{http} = %v, want 1", r)
			}
		})
	}
}

// TestIngressDecodedEvents checks what the handler stores, not only that it
// stores: attributes percent-decoded, data untouched, batch order kept.
func TestIngressDecodedEvents(t *testing.T) {
	store := &recordingStore{}
	srv, _ := newTestIngress(t, store, IngressConfig{})
	for _, c := range goodIngressCases {
		if status, _, body := sendCase(t, srv, c); status != c.wantStatus {
			t.Fatalf("%s: status %d: %s", c.name, status, body)
		}
	}
	byID := map[string]event.Event{}
	var order []string
	for _, ev := range store.stored() {
		byID[ev.ID()] = ev
		order = append(order, ev.ID())
	}
	if ev := byID["g3"]; ev.Subject() != "café au lait" || ev.Extensions()["mixedcase"] != "header names are case-insensitive" {
		t.Errorf("g3: subject %q, extensions %v", ev.Subject(), ev.Extensions())
	}
	if ev := byID["g5"]; string(ev.Data()) != casePayload() || ev.DataContentType() != "application/octet-stream" {
		t.Errorf("g5: binary data changed: %d bytes, type %q", len(ev.Data()), ev.DataContentType())
	}
	if ev := byID["g10"]; string(ev.Data()) != casePayload() {
		t.Errorf("g10: data_base64 decoded to %d bytes, want 256", len(ev.Data()))
	}
	if ev := byID["g9"]; ev.Extensions()["count"] != int32(2147483647) || ev.Extensions()["flag"] != true {
		t.Errorf("g9: extensions %#v", ev.Extensions())
	}
	if _, ok := byID["g9"].Extensions()["absent"]; ok {
		t.Error("g9: a null extension was kept")
	}
	if got := strings.Join(order, ","); !strings.Contains(got, "g13,g14,g15") {
		t.Errorf("batch order: %s", got)
	}
}

// TestIngressErrorNamesAttributeAndIndex checks the contract of the 400 body:
// it names the attribute, the rule and, in a batch, the index.
func TestIngressErrorNamesAttributeAndIndex(t *testing.T) {
	srv, _ := newTestIngress(t, &recordingStore{}, IngressConfig{})
	c := ingressCase{headers: caseBatchCT, body: caseBatch(caseStructured("i0"), caseStructured("i1"), caseStructured("i2", "time", `"soon"`))}
	status, _, body := sendCase(t, srv, c)
	if status != http.StatusBadRequest {
		t.Fatalf("status %d", status)
	}
	msg := ingressErrorBody(t, body)
	for _, want := range []string{"event[2]", `"time"`, "RFC 3339"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q does not mention %s", msg, want)
		}
	}
	var ee *EventError
	_, err := decodeHTTP(http.Header{"Content-Type": {"application/cloudevents-batch+json"}}, []byte(c.body))
	if !errors.As(err, &ee) || ee.Index != 2 || ee.Attribute != "time" {
		t.Errorf("decodeHTTP error = %#v, want index 2, attribute time", err)
	}
}

func TestIngressStoreErrors(t *testing.T) {
	cases := []struct {
		err        error
		wantStatus int
		wantReason string
	}{
		{fmt.Errorf("publish: %w", ErrOverloaded), 429, "overloaded"},
		{fmt.Errorf("publish: %w", ErrUnavailable), 503, "unavailable"},
		{fmt.Errorf("publish: %w", context.DeadlineExceeded), 503, "timeout"},
		{errors.New("something unexpected"), 503, "unavailable"},
	}
	for _, c := range cases {
		t.Run(c.wantReason+"/"+c.err.Error(), func(t *testing.T) {
			t.Parallel()
			srv, m := newTestIngress(t, &recordingStore{err: c.err}, IngressConfig{})
			status, hdr, body := sendCase(t, srv, goodIngressCases[0])
			if status != c.wantStatus || hdr.Get("Retry-After") != "1" {
				t.Fatalf("status %d Retry-After %q, want %d and 1", status, hdr.Get("Retry-After"), c.wantStatus)
			}
			ingressErrorBody(t, body)
			if n := counterValue(t, m.Rejected.WithLabelValues(c.wantReason)); n != 1 {
				t.Errorf("rejected{%s} = %v, want 1", c.wantReason, n)
			}
		})
	}
}

func TestIngressOptionsHandshake(t *testing.T) {
	srv, m := newTestIngress(t, &recordingStore{}, IngressConfig{})
	for _, path := range []string{"/", "/brokers/default"} {
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodOptions, srv.URL+path, nil)
		req.Header.Set("WebHook-Request-Origin", "eventemitter.example.com")
		req.Header.Set("WebHook-Request-Rate", "120")
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK ||
			resp.Header.Get("WebHook-Allowed-Origin") != "eventemitter.example.com" ||
			resp.Header.Get("Allow") != "POST" || resp.Header.Get("WebHook-Allowed-Rate") == "" {
			t.Errorf("%s: handshake answered %d %v", path, resp.StatusCode, resp.Header)
		}
	}
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodOptions, srv.URL+"/", nil)
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent || resp.Header.Get("Allow") != "OPTIONS, POST" {
		t.Errorf("plain OPTIONS answered %d Allow %q", resp.StatusCode, resp.Header.Get("Allow"))
	}
	if r := counterValue(t, m.Received.WithLabelValues("http")); r != 0 {
		t.Errorf("OPTIONS counted as received: %v", r)
	}
}

// TestIngressSlowBody: a client that sends the headers and part of the body,
// then stalls, is answered 408 after ReadTimeout instead of holding the handler.
func TestIngressSlowBody(t *testing.T) {
	store := &recordingStore{}
	srv, m := newTestIngress(t, store, IngressConfig{ReadTimeout: 100 * time.Millisecond})
	conn, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	const body = `{"n":1}`
	fmt.Fprintf(conn, "POST / HTTP/1.1\r\nHost: weft\r\nCe-Specversion: 1.0\r\nCe-Id: slow\r\nCe-Source: /slow\r\n"+
		"Ce-Type: t\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", len(body)+100, body)
	// The client now stalls; the server must answer on its own.
	if err := conn.SetReadDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("no answer to a stalled body: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusRequestTimeout {
		t.Fatalf("status %d, want 408", resp.StatusCode)
	}
	if len(store.stored()) != 0 || store.calls != 0 {
		t.Error("a partial body reached the store")
	}
	if n := counterValue(t, m.Rejected.WithLabelValues("timeout")); n != 1 {
		t.Errorf("rejected{timeout} = %v, want 1", n)
	}
}

// TestIngressStoreOutlivesReadTimeout: ReadTimeout bounds the body, not the
// whole request. A Store slower than ReadTimeout must still see a live
// context (net/http clears the read deadline once the body hit EOF); if the
// deadline leaked into the background read, the request context would be
// cancelled mid-Store and an event that would be stored answered 503.
func TestIngressStoreOutlivesReadTimeout(t *testing.T) {
	const readTimeout = 50 * time.Millisecond
	store := &recordingStore{check: func(ctx context.Context) error {
		// Outlive the read deadline, watching ctx the way a JetStream
		// publish does; the wait is the point of the test.
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(4 * readTimeout):
			return nil
		}
	}}
	srv, _ := newTestIngress(t, store, IngressConfig{ReadTimeout: readTimeout})
	if status, _, body := sendCase(t, srv, goodIngressCases[0]); status != http.StatusAccepted {
		t.Fatalf("status %d: %s", status, body)
	}
}

// TestIngressChunkedTooLarge: without Content-Length the limit is enforced
// while reading.
func TestIngressChunkedTooLarge(t *testing.T) {
	store := &recordingStore{}
	srv, _ := newTestIngress(t, store, IngressConfig{})
	body := io.MultiReader(strings.NewReader(strings.Repeat("x", defaultMaxBodyBytes)), strings.NewReader("!"))
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, srv.URL, body) // an io.Reader of unknown length: chunked
	for k, v := range caseBinary("chunked", "Content-Type", "application/octet-stream") {
		req.Header.Set(k, v)
	}
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestEntityTooLarge || len(store.stored()) != 0 {
		t.Fatalf("status %d, %d stored; want 413 and nothing", resp.StatusCode, len(store.stored()))
	}
}

func TestIngressOversizedHeaders(t *testing.T) {
	srv, _ := newTestIngress(t, &recordingStore{}, IngressConfig{})
	c := ingressCase{headers: caseBinary("h1", "ce-huge", strings.Repeat("h", ingressMaxHeaderBytes+4096)), body: `{}`}
	if status, _, _ := sendCase(t, srv, c); status != http.StatusRequestHeaderFieldsTooLarge {
		t.Fatalf("status %d, want 431", status)
	}
}

func TestIngressConfig(t *testing.T) {
	if err := (IngressConfig{}).withDefaults().Validate(); err != nil {
		t.Fatalf("defaults invalid: %v", err)
	}
	for _, c := range []IngressConfig{
		{MaxBodyBytes: 64<<10 - 1, ReadTimeout: time.Second},
		{MaxBodyBytes: 1 << 20, ReadTimeout: time.Second},
		{MaxBodyBytes: 64 << 10, ReadTimeout: -time.Second},
		{},
	} {
		if err := c.Validate(); err == nil {
			t.Errorf("%+v: Validate accepted it", c)
		}
	}
	defer func() {
		if recover() == nil {
			t.Error("newIngressHandler accepted an invalid config")
		}
	}()
	newIngressHandler(&recordingStore{}, IngressConfig{MaxBodyBytes: 1}, NewMetrics(), slog.New(slog.DiscardHandler))
}

// FuzzIngressDecode feeds structured and batch bodies to the decoders. An
// input is either refused with an *EventError or decodes into events that
// pass ValidateEvent and survive a JSON round trip through sdk-go.
func FuzzIngressDecode(f *testing.F) {
	for _, c := range append(append([]ingressCase(nil), goodIngressCases...), badIngressCases...) {
		if len(c.body) > 4<<10 {
			continue // large seeds slow every mutation down
		}
		switch c.headers["Content-Type"] {
		case "application/cloudevents+json":
			f.Add(false, []byte(c.body))
		case "application/cloudevents-batch+json":
			f.Add(true, []byte(c.body))
		}
	}
	f.Add(false, []byte(`{"specversion":"1.0","id":"f","source":"/f","type":"t","datacontenttype":"text/plain","data":"x"}`))
	f.Add(true, []byte(`[{"specversion":"1.0","id":"f","source":"/f","type":"t","n":-2147483648}]`))
	f.Fuzz(func(t *testing.T, batch bool, body []byte) {
		mediaType := "application/cloudevents+json"
		if batch {
			mediaType = "application/cloudevents-batch+json"
		}
		evs, err := decodeFormat(mediaType, "", body)
		if err != nil {
			var ee *EventError
			if !errors.As(err, &ee) {
				t.Fatalf("error %v (%T) is not an *EventError", err, err)
			}
			if evs != nil {
				t.Fatal("events returned with an error")
			}
			return
		}
		if !batch && len(evs) != 1 {
			t.Fatalf("structured body decoded to %d events", len(evs))
		}
		for i := range evs {
			if err := ValidateEvent(&evs[i]); err != nil {
				t.Fatalf("decoded event %d does not validate: %v", i, err)
			}
			out, err := json.Marshal(&evs[i])
			if err != nil {
				t.Fatalf("marshal event %d: %v", i, err)
			}
			again, err := decodeStructured(out, -1)
			if err != nil {
				t.Fatalf("event %d does not decode after a round trip: %v\n%s", i, err, out)
			}
			if again.ID() != evs[i].ID() || again.Source() != evs[i].Source() || again.Type() != evs[i].Type() {
				t.Fatalf("round trip changed the event: %s", out)
			}
		}
	})
}

// A body whose Content-Length is declared is read into one buffer that fits
// it: bytes.Buffer.ReadFrom wants room to spare before the read that finds
// EOF, and without it every request's body was copied into a second buffer
// twice its size.
func TestReadBodyFitsDeclaredLength(t *testing.T) {
	h := &ingressHandler{cfg: IngressConfig{}.withDefaults()}
	for _, n := range []int{1024, 4096, 100_000} {
		req := httptest.NewRequest(http.MethodPost, "/", strings.NewReader(strings.Repeat("x", n)))
		body, err := h.readBody(httptest.NewRecorder(), req)
		if err != nil {
			t.Fatalf("%d bytes: %v", n, err)
		}
		if len(body) != n {
			t.Fatalf("read %d bytes of %d", len(body), n)
		}
		if cap(body) >= 2*n { // growing a full buffer doubles it
			t.Errorf("%d-byte body in a buffer of %d: grown again after the first read", n, cap(body))
		}
	}
}

// FuzzParseMediaType holds parseMediaType's shortcut to what
// mime.ParseMediaType returns (no parameters and an empty map are the same).
func FuzzParseMediaType(f *testing.F) {
	for _, s := range []string{
		"application/json", "application/cloudevents+json", "application/cloudevents-batch+json",
		"text/plain", "application/vnd.example.v2+json", "Application/JSON", "text/plain; charset=utf-8",
		"text", "/json", "application/", "a/b/c", "application/json ", " application/json", "",
		"application/json;", "text/x.y-z+1", "ap plication/json", "application/jsön",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		gotType, gotParams, gotErr := parseMediaType(v)
		wantType, wantParams, wantErr := mime.ParseMediaType(v)
		if (gotErr == nil) != (wantErr == nil) || gotType != wantType || !maps.Equal(gotParams, wantParams) {
			t.Fatalf("parseMediaType(%q) = %q, %v, %v; mime.ParseMediaType: %q, %v, %v", v, gotType, gotParams, gotErr, wantType, wantParams, wantErr)
		}
	})
}
