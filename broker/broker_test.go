package broker

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/weft-dev/weft/internal/resource"
	wtest "github.com/weft-dev/weft/internal/testutil"
	"github.com/weft-dev/weft/triggers"
)

// startBroker runs a real broker (embedded nats-server, JetStream on disk
// under t.TempDir(), kernel-chosen loopback port) and its HTTP ingress, and
// stops both when the test ends.
func startBroker(t *testing.T, d Deliverer) (*Broker, *httptest.Server) {
	t.Helper()
	b, srv := startStoringBroker(t, d)
	b.StartDispatching()
	return b, srv
}

// startStoringBroker is startBroker without StartDispatching: it stores
// events, but they wait.
func startStoringBroker(t *testing.T, d Deliverer) (*Broker, *httptest.Server) {
	t.Helper()
	return startBrokerWith(t, d, func(*Config) {})
}

// startBrokerWith is startStoringBroker with a configuration edited by edit.
func startBrokerWith(t *testing.T, d Deliverer, edit func(*Config)) (*Broker, *httptest.Server) {
	t.Helper()
	cfg := Config{DataDir: t.TempDir(), NATSAddr: "127.0.0.1:0", DrainTimeout: time.Second}
	edit(&cfg)
	b, err := New(cfg, d, nil, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("broker.Run: %v", err)
		}
	})
	select {
	case <-b.Ready():
	case err := <-done:
		done <- err // for the cleanup, which waits for Run's end
		t.Fatalf("broker exited before ready: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("broker not ready after 30s")
	}
	srv := httptest.NewServer(b.IngressHandler())
	t.Cleanup(srv.Close)
	return b, srv
}

// setTriggers parses YAML trigger manifests and puts them in force.
func setTriggers(t *testing.T, b *Broker, manifests string) {
	t.Helper()
	objs, err := resource.Decode("triggers.yaml", []byte(manifests))
	if err != nil {
		t.Fatal(err)
	}
	var trs []*triggers.Trigger
	for _, o := range objs {
		tr, err := triggers.Parse(o)
		if err != nil {
			t.Fatal(err)
		}
		trs = append(trs, tr)
	}
	b.SetTriggers(triggers.NewIndex(trs))
}

func triggerYAML(name, filters, subscriber, delivery string) string {
	return fmt.Sprintf(`apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: %s}
spec:
%s
  subscriber: %s
%s
---
`, name, filters, subscriber, delivery)
}

// recorder is a Deliverer that records what each target received and
// answers with the target's behaviour (nil: accept).
type recorder struct {
	mu     sync.Mutex
	got    map[string][]event.Event
	behave map[string]func(event.Event) (*event.Event, error)
}

func newRecorder() *recorder {
	return &recorder{got: map[string][]event.Event{}, behave: map[string]func(event.Event) (*event.Event, error){}}
}

func (r *recorder) Deliver(_ context.Context, target string, ev event.Event) (*event.Event, error) {
	r.mu.Lock()
	r.got[target] = append(r.got[target], ev)
	f := r.behave[target]
	r.mu.Unlock()
	if f != nil {
		return f(ev)
	}
	return nil, nil
}

func (r *recorder) set(target string, f func(event.Event) (*event.Event, error)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.behave[target] = f
}

func (r *recorder) ids(target string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, ev := range r.got[target] {
		out = append(out, ev.ID())
	}
	return out
}

func (r *recorder) count(target string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.got[target])
}

func post(t *testing.T, srv *httptest.Server, c ingressCase) int {
	t.Helper()
	method := c.method
	if method == "" {
		method = http.MethodPost
	}
	path := c.path
	if path == "" {
		path = "/"
	}
	req, err := http.NewRequest(method, srv.URL+path, strings.NewReader(c.body))
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
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// TestIngressStoresNothingInvalid runs every bad input against the real
// JetStream broker: each gets its exact status, none is stored or delivered,
// and the node still stores and delivers the next good event.
func TestIngressStoresNothingInvalid(t *testing.T) {
	rec := newRecorder()
	b, srv := startBroker(t, rec)
	setTriggers(t, b, triggerYAML("all", "", "{uri: http://catch-all.invalid/}", ""))

	for _, c := range badIngressCases {
		if got := post(t, srv, c); got != c.wantStatus {
			t.Errorf("%s: status %d, want %d", c.name, got, c.wantStatus)
		}
	}
	if n := testutil.ToFloat64(b.metrics.Stored); n != 0 {
		t.Fatalf("bad inputs stored %v events, want 0", n)
	}
	good := ingressCase{name: "next good", headers: caseBinary("after-bad"), body: `{"ok":true}`}
	if got := post(t, srv, good); got != http.StatusAccepted {
		t.Fatalf("good event after bad ones: status %d", got)
	}
	wtest.WaitFor(t, 10*time.Second, func() bool { return rec.count("http://catch-all.invalid/") == 1 }, "good event not delivered")
	if ids := rec.ids("http://catch-all.invalid/"); ids[0] != "after-bad" {
		t.Fatalf("delivered %v, want only after-bad", ids)
	}
	if n := testutil.ToFloat64(b.metrics.Stored); n != 1 {
		t.Fatalf("stored %v events, want 1", n)
	}
}

// TestIngressGoodModes stores binary, structured and batch events and
// delivers each exactly as many as were sent.
func TestIngressGoodModes(t *testing.T) {
	rec := newRecorder()
	b, srv := startBroker(t, rec)
	setTriggers(t, b, triggerYAML("all", "", "{uri: http://all.invalid/}", ""))
	want := 0
	for _, c := range goodIngressCases {
		if got := post(t, srv, c); got != c.wantStatus {
			t.Errorf("%s: status %d, want %d", c.name, got, c.wantStatus)
		}
		want += c.wantEvents
	}
	wtest.WaitFor(t, 15*time.Second, func() bool { return rec.count("http://all.invalid/") >= want }, "not every good event delivered")
	if n := testutil.ToFloat64(b.metrics.Stored); int(n) != want {
		t.Fatalf("stored %v, want %d", n, want)
	}
}

// TestDuplicateStoredOnce publishes the same (source, id) twice: both are
// acknowledged, one is stored and delivered.
func TestDuplicateStoredOnce(t *testing.T) {
	rec := newRecorder()
	b, srv := startBroker(t, rec)
	setTriggers(t, b, triggerYAML("all", "", "{uri: http://all.invalid/}", ""))
	for range 2 {
		if got := post(t, srv, ingressCase{headers: caseBinary("dup-1"), body: `{}`}); got != http.StatusAccepted {
			t.Fatalf("status %d", got)
		}
	}
	// Same id, other source: a different event.
	if got := post(t, srv, ingressCase{headers: caseBinary("dup-1", "ce-source", "/other"), body: `{}`}); got != http.StatusAccepted {
		t.Fatalf("status %d", got)
	}
	wtest.WaitFor(t, 10*time.Second, func() bool { return rec.count("http://all.invalid/") == 2 })
	if s, d := testutil.ToFloat64(b.metrics.Stored), testutil.ToFloat64(b.metrics.Duplicates); s != 2 || d != 1 {
		t.Fatalf("stored %v duplicates %v, want 2 and 1", s, d)
	}
}

// TestNATSIngress publishes over NATS with a reply subject: a valid event is
// acknowledged after storage and delivered, an invalid one is refused with
// code 400 and stored nowhere.
func TestNATSIngress(t *testing.T) {
	rec := newRecorder()
	b, _ := startBroker(t, rec)
	setTriggers(t, b, triggerYAML("orders", "  filter: {attributes: {type: com.example.order}}", "{uri: http://orders.invalid/}", ""))
	nc, err := nats.Connect(b.NATSURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()

	structured := `{"specversion":"1.0","id":"n1","source":"/nats","type":"com.example.order","data":{"x":1}}`
	reply, err := nc.Request("weft.in.orders", []byte(structured), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if string(reply.Data) != `{"stored":1}` {
		t.Fatalf("ack %s", reply.Data)
	}

	bin := nats.NewMsg("weft.in.orders.binary")
	bin.Header.Set("ce-specversion", "1.0")
	bin.Header.Set("ce-id", "n2")
	bin.Header.Set("ce-source", "/nats")
	bin.Header.Set("ce-type", "com.example.order")
	bin.Header.Set("Content-Type", "application/json")
	bin.Data = []byte(`{"x":2}`)
	reply, err = nc.RequestMsg(bin, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if string(reply.Data) != `{"stored":1}` {
		t.Fatalf("binary ack %s", reply.Data)
	}

	reply, err = nc.Request("weft.in.orders", []byte(`{"specversion":"1.0","id":"n3","type":"com.example.order"}`), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var nack struct {
		Error string `json:"error"`
		Code  int    `json:"code"`
	}
	if err := json.Unmarshal(reply.Data, &nack); err != nil || nack.Code != 400 || !strings.Contains(nack.Error, "source") {
		t.Fatalf("invalid event ack %s (%v)", reply.Data, err)
	}
	wtest.WaitFor(t, 10*time.Second, func() bool { return rec.count("http://orders.invalid/") == 2 })
	if n := testutil.ToFloat64(b.metrics.Stored); n != 2 {
		t.Fatalf("stored %v, want 2", n)
	}
}

// TestFiltersRouteEvents checks that each trigger gets exactly the events
// its filters match, legacy and new dialect, CESQL included.
func TestFiltersRouteEvents(t *testing.T) {
	rec := newRecorder()
	b, srv := startBroker(t, rec)
	setTriggers(t, b,
		triggerYAML("legacy", "  filter: {attributes: {type: com.example.a}}", "{uri: http://legacy.invalid/}", "")+
			triggerYAML("prefix", "  filters: [{prefix: {source: /shop/}}]", "{uri: http://prefix.invalid/}", "")+
			triggerYAML("cesql", "  filters: [{cesql: \"tenant = 'acme' AND type LIKE 'com.example.%'\"}]", "{uri: http://cesql.invalid/}", "")+
			triggerYAML("none", "  filters: [{exact: {type: never.sent}}]", "{uri: http://none.invalid/}", ""))
	send := func(id, typ, source, tenant string) {
		h := caseBinary(id, "ce-type", typ, "ce-source", source)
		if tenant != "" {
			h["ce-tenant"] = tenant
		}
		if got := post(t, srv, ingressCase{headers: h, body: `{}`}); got != http.StatusAccepted {
			t.Fatalf("%s: status %d", id, got)
		}
	}
	send("e1", "com.example.a", "/shop/1", "")     // legacy, prefix
	send("e2", "com.example.b", "/warehouse", "")  // nothing
	send("e3", "com.example.b", "/shop/2", "acme") // prefix, cesql
	send("e4", "org.other", "/x", "acme")          // nothing (cesql type does not match)
	send("e5", "com.example.a", "/x", "globex")    // legacy
	want := map[string][]string{
		"http://legacy.invalid/": {"e1", "e5"},
		"http://prefix.invalid/": {"e1", "e3"},
		"http://cesql.invalid/":  {"e3"},
		"http://none.invalid/":   nil,
	}
	total := 0
	for _, ids := range want {
		total += len(ids)
	}
	wtest.WaitFor(t, 10*time.Second, func() bool {
		return testutil.ToFloat64(b.metrics.Delivered.WithLabelValues("legacy"))+testutil.ToFloat64(b.metrics.Delivered.WithLabelValues("prefix"))+testutil.ToFloat64(b.metrics.Delivered.WithLabelValues("cesql")) == float64(total)
	})
	// Every event is fanned out before it is acked, and all five were acked
	// once the dispatcher's consumer has nothing pending.
	c := b.conn.Load()
	wtest.WaitFor(t, 10*time.Second, func() bool {
		info, err := c.js.Consumer(context.Background(), eventsStream, dispatchConsumer)
		if err != nil {
			return false
		}
		ci, err := info.Info(context.Background())
		return err == nil && ci.NumPending == 0 && ci.NumAckPending == 0
	})
	for target, ids := range want {
		got := rec.ids(target)
		if strings.Join(slices.Sorted(slices.Values(got)), ",") != strings.Join(ids, ",") {
			t.Errorf("%s got %v, want %v", target, got, ids)
		}
	}
}

// TestEventsWaitForTheWholeConfiguration is the regression test for events
// lost at start-up: before the fix, the first SetTriggers (the store's
// resources, before the files' triggers were applied) started dispatching,
// and events stored before the restart were matched against that partial
// index and acked unmatched. Now they wait for StartDispatching.
func TestEventsWaitForTheWholeConfiguration(t *testing.T) {
	rec := newRecorder()
	b, srv := startStoringBroker(t, rec)
	for i := range 50 {
		if got := post(t, srv, ingressCase{headers: caseBinary(fmt.Sprintf("w%d", i)), body: `{}`}); got != http.StatusAccepted {
			t.Fatalf("status %d", got)
		}
	}
	b.SetTriggers(triggers.NewIndex(nil)) // a partial configuration
	setTriggers(t, b, triggerYAML("all", "", "{uri: http://all.invalid/}", ""))
	b.StartDispatching()
	wtest.WaitFor(t, 10*time.Second, func() bool { return rec.count("http://all.invalid/") == 50 }, "events stored before dispatching started were lost")
}
