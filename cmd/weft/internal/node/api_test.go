package node

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/weft-dev/weft/broker"
	"github.com/weft-dev/weft/internal/resource"
	"github.com/weft-dev/weft/workers"
)

// testNode is a node's HTTP surface over real components: a running broker
// (embedded JetStream under t.TempDir(), in-process clients only), a running
// worker pool, a Badger store, and a Prometheus registry.
type testNode struct {
	srv    *httptest.Server
	cp     *ControlPlane
	broker *broker.Broker
	// notReady is what the API's Ready func reports; nil means ready.
	notReady atomic.Pointer[error]
	// deliveries receives what the broker delivers to URL subscribers;
	// function subscribers go to the pool, as in serve.
	deliveries chan delivery
}

type delivery struct {
	target string
	id     string
}

// run starts fn in a goroutine and, when the test ends, cancels its context
// and waits for it.
func run(t *testing.T, name string, fn func(context.Context) error) <-chan error {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- fn(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("%s: %v", name, err)
			}
		case <-time.After(30 * time.Second):
			t.Errorf("%s did not stop within 30s", name)
		}
	})
	return done
}

func startNode(t *testing.T, token string) *testNode {
	t.Helper()
	st := openStore(t, t.TempDir())
	reg := prometheus.NewRegistry()
	metrics := broker.NewMetrics()
	if err := metrics.Register(reg); err != nil {
		t.Fatal(err)
	}

	pool := workers.New(workers.Config{StopGrace: time.Second}, discard())
	run(t, "pool.Run", pool.Run)
	select {
	case <-pool.Ready():
	case <-time.After(10 * time.Second):
		t.Fatal("pool not ready after 10s")
	}

	n := &testNode{deliveries: make(chan delivery, 64)}
	deliver := broker.DelivererFunc(func(ctx context.Context, target string, ev event.Event) (*event.Event, error) {
		if strings.HasPrefix(target, "function:") {
			return pool.Deliver(ctx, target, ev)
		}
		select {
		case n.deliveries <- delivery{target, ev.ID()}:
		default: // a test that does not read them does not care
		}
		return nil, nil
	})
	b, err := broker.New(broker.Config{DataDir: t.TempDir(), NATSAddr: "", DrainTimeout: time.Second}, deliver, metrics, discard())
	if err != nil {
		t.Fatal(err)
	}
	done := run(t, "broker.Run", b.Run)
	select {
	case <-b.Ready():
	case err := <-done:
		t.Fatalf("broker exited before ready: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("broker not ready after 30s")
	}

	n.broker = b
	n.cp = NewControlPlane(st, b, pool, discard())
	if err := n.cp.Restore(t.Context()); err != nil {
		t.Fatal(err)
	}
	b.StartDispatching()
	api := &API{
		CP: n.cp, Files: NewFiles(nil, n.cp, discard()), Broker: b, Pool: pool,
		Gatherer: reg, Token: token, Log: discard(),
		Ready: func() error {
			if p := n.notReady.Load(); p != nil {
				return *p
			}
			return nil
		},
	}
	n.srv = httptest.NewServer(api.Handler())
	t.Cleanup(n.srv.Close)
	n.waitDispatching(t)
	return n
}

// waitDispatching returns once the broker dispatches events: it applies a
// probe trigger, publishes an event through the ingress, waits for its
// delivery and deletes the probe again, so every test starts on a node that
// has proved it delivers.
func (n *testNode) waitDispatching(t *testing.T) {
	t.Helper()
	probe := strings.Replace(triggerDoc("probe", "dev.weft.probe"), "http://127.0.0.1:9/hook", "http://probe/", 1)
	if _, err := n.cp.Apply(t.Context(), decode(t, "", probe), sourceAPI); err != nil {
		t.Fatal(err)
	}
	ev := `{"specversion":"1.0","id":"probe-1","source":"/api/test","type":"dev.weft.probe"}`
	n.do(t, "POST", "/", "", "application/cloudevents+json", ev).want(t, "probe event", http.StatusAccepted)
	n.waitDelivery(t, "http://probe/", "probe-1")
	if _, err := n.cp.Delete(t.Context(), []resource.Key{{Kind: "Trigger", Name: "probe"}}); err != nil {
		t.Fatal(err)
	}
}

// waitDelivery waits until the broker delivered event id to target.
func (n *testNode) waitDelivery(t *testing.T, target, id string) {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		select {
		case d := <-n.deliveries:
			if d.target == target && d.id == id {
				return
			}
		case <-deadline:
			t.Fatalf("event %s not delivered to %s within 30s", id, target)
		}
	}
}

// response is one answer of the node.
type response struct {
	status int
	header http.Header
	body   []byte
}

// do sends a request; auth is the whole Authorization header ("" for none).
func (n *testNode) do(t *testing.T, method, path, auth, contentType, body string) response {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, n.srv.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := n.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return response{status: resp.StatusCode, header: resp.Header, body: data}
}

func (r response) want(t *testing.T, what string, status int) response {
	t.Helper()
	if r.status != status {
		t.Fatalf("%s: status %d, want %d; body %s", what, r.status, status, r.body)
	}
	return r
}

func (r response) decode(t *testing.T, v any) {
	t.Helper()
	if ct := r.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q, want application/json", ct)
	}
	if err := json.Unmarshal(r.body, v); err != nil {
		t.Fatalf("decode %s: %v", r.body, err)
	}
}

const structuredEvent = `{"specversion":"1.0","id":"e1","source":"/api/test","type":"dev.weft.test","data":{"n":1}}`

func TestAPIToken(t *testing.T) {
	n := startNode(t, "s3cret")
	const good = "Bearer s3cret"

	for _, path := range []string{"/api/v1/status", "/api/v1/resources/triggers", "/api/v1/dlq", "/api/v1/functions", "/debug/pprof/heap"} {
		for _, auth := range []string{"", "Bearer wrong", "Bearer s3cret2", "Bearer ", "s3cret", "Basic s3cret", "bearer s3cret"} {
			r := n.do(t, "GET", path, auth, "", "").want(t, path+" with Authorization "+auth, http.StatusUnauthorized)
			if !strings.HasPrefix(r.header.Get("WWW-Authenticate"), "Bearer") {
				t.Errorf("%s: 401 without a Bearer challenge: %v", path, r.header)
			}
			var e apiError
			if r.decode(t, &e); e.Error == "" {
				t.Errorf("%s: 401 without an error message", path)
			}
		}
		n.do(t, "GET", path, good, "", "").want(t, path+" with the token", http.StatusOK)
	}

	// A refused apply applies nothing.
	n.do(t, "POST", "/api/v1/apply", "", "application/yaml", triggerDoc("t1", "a")).want(t, "apply without token", http.StatusUnauthorized)
	n.do(t, "DELETE", "/api/v1/resources/trigger/t1", "Bearer nope", "", "").want(t, "delete with a wrong token", http.StatusUnauthorized)
	if l := n.cp.List(""); len(l) != 0 {
		t.Fatalf("an unauthenticated apply took effect: %+v", l)
	}
	n.do(t, "POST", "/api/v1/apply", good, "application/yaml", triggerDoc("t1", "a")).want(t, "apply with the token", http.StatusOK)

	// Ingress, health and metrics are not part of the API.
	n.do(t, "POST", "/", "", "application/cloudevents+json", structuredEvent).want(t, "ingress without token", http.StatusAccepted)
	n.do(t, "POST", "/brokers/default", "", "application/cloudevents+json", strings.Replace(structuredEvent, `"e1"`, `"e2"`, 1)).want(t, "broker ingress without token", http.StatusAccepted)
	if r := n.do(t, "GET", "/healthz", "", "", "").want(t, "healthz", http.StatusOK); string(r.body) != "ok\n" {
		t.Errorf("healthz body %q", r.body)
	}
	n.do(t, "GET", "/readyz", "", "", "").want(t, "readyz", http.StatusOK)
	r := n.do(t, "GET", "/metrics", "", "", "").want(t, "metrics", http.StatusOK)
	if !strings.Contains(string(r.body), "weft_events_stored_total 3") {
		t.Errorf("metrics do not count the three stored events (probe, e1, e2):\n%s", r.body)
	}
}

func TestAPIWithoutTokenIsOpen(t *testing.T) {
	n := startNode(t, "")
	n.do(t, "GET", "/api/v1/status", "", "", "").want(t, "status without a configured token", http.StatusOK)
}

func TestAPIApplyListDelete(t *testing.T) {
	n := startNode(t, "")

	// A refused apply: 422 with one problem per bad field, nothing applied.
	bad := join(triggerDoc("t1", "a"), strings.Replace(triggerDoc("t2", "b"), "- exact: {type: b}", `- cesql: "type = "`, 1),
		strings.Replace(triggerDoc("t3", "c"), "broker: default", "broker: other", 1))
	r := n.do(t, "POST", "/api/v1/apply?file=bad.yaml", "", "application/yaml", bad).want(t, "bad apply", http.StatusUnprocessableEntity)
	var e apiError
	r.decode(t, &e)
	var got []where
	for _, p := range e.Problems {
		got = append(got, where{p.File, p.Line, p.Field})
		if p.Message == "" || p.Column == 0 {
			t.Errorf("problem without message or column: %+v", p)
		}
	}
	want := []where{
		{"bad.yaml", lineOf(t, bad, "cesql:", 1), "spec.filters[0].cesql"},
		{"bad.yaml", lineOf(t, bad, "broker: other", 1), "spec.broker"},
	}
	if !slices.Equal(got, want) {
		t.Errorf("problems %+v, want %+v", got, want)
	}
	if e.Error == "" {
		t.Error("422 without an error message")
	}
	var list []Resource
	n.do(t, "GET", "/api/v1/resources/triggers", "", "", "").want(t, "list", http.StatusOK).decode(t, &list)
	if list == nil || len(list) != 0 {
		t.Errorf("after a refused apply the list is %+v, want []", list)
	}
	if n.broker.Triggers().Len() != 0 {
		t.Error("the broker got triggers from a refused apply")
	}

	// YAML that does not parse: 422 naming the file and line.
	r = n.do(t, "POST", "/api/v1/apply?file=syntax.yaml", "", "application/yaml", "apiVersion: v1\nkind: [Trigger\n").want(t, "unparsable apply", http.StatusUnprocessableEntity)
	e = apiError{}
	if r.decode(t, &e); len(e.Problems) != 1 || e.Problems[0].File != "syntax.yaml" || e.Problems[0].Line == 0 {
		t.Errorf("syntax error problems %+v", e.Problems)
	}

	// A good apply.
	var out struct{ Changes []Change }
	n.do(t, "POST", "/api/v1/apply?file=good.yaml", "", "application/yaml", join(triggerDoc("t1", "a"), triggerDoc("t2", "b"))).
		want(t, "apply", http.StatusOK).decode(t, &out)
	if want := []Change{{"Trigger", "t1", "created"}, {"Trigger", "t2", "created"}}; !slices.Equal(out.Changes, want) {
		t.Errorf("changes %v, want %v", out.Changes, want)
	}
	if n.broker.Triggers().Len() != 2 {
		t.Errorf("broker has %d triggers, want 2", n.broker.Triggers().Len())
	}
	ev := `{"specversion":"1.0","id":"to-t2","source":"/api/test","type":"b"}`
	n.do(t, "POST", "/", "", "application/cloudevents+json", ev).want(t, "publish", http.StatusAccepted)
	n.waitDelivery(t, "http://127.0.0.1:9/hook", "to-t2")
	list = nil
	n.do(t, "GET", "/api/v1/resources/triggers", "", "", "").want(t, "list", http.StatusOK).decode(t, &list)
	var names []string
	for _, res := range list {
		names = append(names, res.Kind+"/"+res.Name+" "+res.Source)
		if !json.Valid(res.Manifest) || !bytes.Contains(res.Manifest, []byte(`"name":"`+res.Name+`"`)) {
			t.Errorf("manifest of %s: %s", res.Name, res.Manifest)
		}
	}
	if want := []string{"Trigger/t1 api", "Trigger/t2 api"}; !slices.Equal(names, want) {
		t.Errorf("listed %v, want %v", names, want)
	}
	var fns []Resource
	n.do(t, "GET", "/api/v1/resources/functions", "", "", "").want(t, "list functions", http.StatusOK).decode(t, &fns)
	if fns == nil || len(fns) != 0 {
		t.Errorf("functions %+v, want []", fns)
	}
	var one struct{ Resource Resource }
	n.do(t, "GET", "/api/v1/resources/trigger/t2", "", "", "").want(t, "get", http.StatusOK).decode(t, &one)
	if one.Resource.Name != "t2" || one.Resource.Kind != "Trigger" {
		t.Errorf("get t2: %+v", one)
	}
	n.do(t, "GET", "/api/v1/resources/widgets", "", "", "").want(t, "unknown kind", http.StatusNotFound)
	n.do(t, "GET", "/api/v1/resources/trigger/nope", "", "", "").want(t, "unknown trigger", http.StatusNotFound)

	// Delete one, then again.
	out.Changes = nil
	n.do(t, "DELETE", "/api/v1/resources/trigger/t1", "", "", "").want(t, "delete", http.StatusOK).decode(t, &out)
	if want := []Change{{"Trigger", "t1", "deleted"}}; !slices.Equal(out.Changes, want) {
		t.Errorf("delete changes %v, want %v", out.Changes, want)
	}
	if _, ok := n.broker.Triggers().Get("t1"); ok || n.broker.Triggers().Len() != 1 {
		t.Error("the broker still has t1")
	}
	r = n.do(t, "DELETE", "/api/v1/resources/trigger/t1", "", "", "").want(t, "second delete", http.StatusNotFound)
	e = apiError{}
	if r.decode(t, &e); !strings.Contains(e.Error, "Trigger/t1") {
		t.Errorf("404 body %q does not name Trigger/t1", e.Error)
	}

	// Delete by manifests is all or nothing too.
	n.do(t, "POST", "/api/v1/delete", "", "application/yaml", join(triggerDoc("t2", "b"), triggerDoc("t9", "z"))).want(t, "delete with an unknown manifest", http.StatusNotFound)
	if _, ok := n.cp.Get(resource.Key{Kind: "Trigger", Name: "t2"}); !ok {
		t.Error("t2 was deleted by a refused delete")
	}
	n.do(t, "POST", "/api/v1/delete", "", "application/yaml", triggerDoc("t2", "b")).want(t, "delete by manifest", http.StatusOK)
	if n.broker.Triggers().Len() != 0 {
		t.Error("the broker still has triggers")
	}
}

func TestAPIDLQ(t *testing.T) {
	n := startNode(t, "")
	r := n.do(t, "GET", "/api/v1/dlq", "", "", "").want(t, "empty DLQ", http.StatusOK)
	if got := strings.TrimSpace(string(r.body)); got != "[]" {
		t.Errorf("empty DLQ body %q, want []", got)
	}
	n.do(t, "GET", "/api/v1/dlq?trigger=t1&since=1h", "", "", "").want(t, "filtered empty DLQ", http.StatusOK)
	n.do(t, "GET", "/api/v1/dlq?limit=-1", "", "", "").want(t, "negative limit", http.StatusBadRequest)
	n.do(t, "GET", "/api/v1/dlq?since=yesterday", "", "", "").want(t, "bad since", http.StatusBadRequest)
	n.do(t, "GET", "/api/v1/dlq/abc", "", "", "").want(t, "non-numeric id", http.StatusBadRequest)
	n.do(t, "GET", "/api/v1/dlq/12345", "", "", "").want(t, "unknown id", http.StatusNotFound)

	for name, body := range map[string]string{
		"empty selection": `{}`,
		"explicit empty":  `{"ids":[],"trigger":"","all":false}`,
		"not JSON":        `replay everything`,
		"bad since":       `{"since":"soon"}`,
	} {
		r := n.do(t, "POST", "/api/v1/dlq/replay", "", "application/json", body).want(t, "replay "+name, http.StatusBadRequest)
		var e apiError
		if r.decode(t, &e); e.Error == "" {
			t.Errorf("replay %s: 400 without an error message", name)
		}
	}
	n.do(t, "POST", "/api/v1/dlq/purge", "", "application/json", `{}`).want(t, "purge with no selection", http.StatusBadRequest)
	n.do(t, "GET", "/api/v1/dlq/replays/nope", "", "", "").want(t, "unknown replay", http.StatusNotFound)
}

func TestAPIReadiness(t *testing.T) {
	n := startNode(t, "")
	notReady := errors.New("router not ready")
	n.notReady.Store(&notReady)
	r := n.do(t, "GET", "/readyz", "", "", "").want(t, "readyz while not ready", http.StatusServiceUnavailable)
	if !strings.Contains(string(r.body), "router not ready") {
		t.Errorf("readyz body %q does not say why", r.body)
	}
	var st map[string]any
	n.do(t, "GET", "/api/v1/status", "", "", "").want(t, "status", http.StatusOK).decode(t, &st)
	if st["ready"] != false || st["notReady"] != "router not ready" {
		t.Errorf("status while not ready: %v", st)
	}

	n.notReady.Store(nil)
	n.do(t, "GET", "/readyz", "", "", "").want(t, "readyz when ready", http.StatusOK)
	st = nil
	n.do(t, "GET", "/api/v1/status", "", "", "").want(t, "status", http.StatusOK).decode(t, &st)
	if st["ready"] != true {
		t.Errorf("status when ready: %v", st)
	}
}

// TestIngressRequest: exactly the ingress posts take the router's HTTP/1.1
// loop; the webhook handshake, the API, probes and metrics stay on net/http.
func TestIngressRequest(t *testing.T) {
	for _, c := range []struct {
		method, target string
		want           bool
	}{
		{http.MethodPost, "/", true},
		{http.MethodPost, "/brokers/default", true},
		{http.MethodPost, "/brokers/other", true}, // answered 404 by the ingress itself
		{http.MethodOptions, "/", false},
		{http.MethodGet, "/", false},
		{http.MethodPost, "/api/v1/apply", false},
		{http.MethodPost, "/api/v1/invoke/f", false},
		{http.MethodGet, "/metrics", false},
		{http.MethodGet, "/readyz", false},
		{http.MethodGet, "/api/v1/functions/f/logs?follow=1", false},
	} {
		r := httptest.NewRequest(c.method, c.target, nil)
		if got := IngressRequest(r); got != c.want {
			t.Errorf("%s %s: IngressRequest %v, want %v", c.method, c.target, got, c.want)
		}
	}
}
