package broker

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/binding"
	"github.com/cloudevents/sdk-go/v2/event"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/weft-dev/weft/internal/ceclient"
	wtest "github.com/weft-dev/weft/internal/testutil"
)

// httpDeliverer reaches URL subscribers over real HTTP, as router.Client does.
var httpDeliverer = DelivererFunc(func(ctx context.Context, target string, ev event.Event) (*event.Event, error) {
	return ceclient.Send(ctx, http.DefaultClient, target, ev)
})

// subscriber is a real HTTP subscriber that answers with status and body and
// keeps every event it received.
type subscriber struct {
	*httptest.Server
	status atomic.Int32
	body   string
	mu     sync.Mutex
	got    []event.Event
}

func newSubscriber(t *testing.T, status int, body string) *subscriber {
	s := &subscriber{body: body}
	s.status.Store(int32(status))
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ev, err := binding.ToEvent(r.Context(), cehttp.NewMessageFromHttpRequest(r))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		s.mu.Lock()
		s.got = append(s.got, *ev)
		s.mu.Unlock()
		w.WriteHeader(int(s.status.Load()))
		_, _ = w.Write([]byte(s.body))
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *subscriber) events() []event.Event {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]event.Event(nil), s.got...)
}

// TestRetryThenDeadLetterSink: a subscriber answering 503 gets 1 + retry
// attempts, then the event goes to the deadLetterSink with Knative's error
// extensions.
func TestRetryThenDeadLetterSink(t *testing.T) {
	b, srv := startBroker(t, httpDeliverer)
	failing := newSubscriber(t, http.StatusServiceUnavailable, "database is down")
	sink := newSubscriber(t, http.StatusAccepted, "")
	setTriggers(t, b, triggerYAML("flaky", "", "{uri: "+failing.URL+"}",
		"  delivery: {retry: 2, backoffPolicy: exponential, backoffDelay: PT0.01S, deadLetterSink: {uri: "+sink.URL+"}}"))
	if got := post(t, srv, ingressCase{headers: caseBinary("dls-1"), body: `{"n":1}`}); got != http.StatusAccepted {
		t.Fatalf("status %d", got)
	}
	wtest.WaitFor(t, 10*time.Second, func() bool { return len(sink.events()) == 1 }, "dead letter never reached the sink")
	if n := len(failing.events()); n != 3 {
		t.Errorf("subscriber got %d attempts, want 3 (1 + retry 2)", n)
	}
	dl := sink.events()[0]
	if dl.ID() != "dls-1" {
		t.Errorf("dead letter id %q", dl.ID())
	}
	ext := dl.Extensions()
	if code, _ := ext[extErrorCode]; code != int32(503) && code != "503" {
		t.Errorf("knativeerrorcode = %#v, want 503", code)
	}
	if dest := ext[extErrorDest]; dest != failing.URL {
		t.Errorf("knativeerrordest = %v, want %s", dest, failing.URL)
	}
	if data := ext[extErrorData]; data != base64.StdEncoding.EncodeToString([]byte("database is down")) {
		t.Errorf("knativeerrordata = %v", data)
	}
	if _, ok := ext[TTLExtension]; ok {
		t.Errorf("the hop counter leaked to the sink")
	}
	if n := testutil.ToFloat64(b.metrics.Retried.WithLabelValues("flaky")); n != 2 {
		t.Errorf("retries counted %v, want 2", n)
	}
}

// TestNotRetriedStatus: 400 is not retried (Knative), so one attempt, then
// the node DLQ since the trigger has no sink.
func TestNotRetriedStatus(t *testing.T) {
	b, srv := startBroker(t, httpDeliverer)
	bad := newSubscriber(t, http.StatusBadRequest, "no such order")
	setTriggers(t, b, triggerYAML("strict", "", "{uri: "+bad.URL+"}", "  delivery: {retry: 5, backoffDelay: PT0.01S}"))
	post(t, srv, ingressCase{headers: caseBinary("nr-1"), body: `{}`})
	var list []DLQEntry
	wtest.WaitFor(t, 10*time.Second, func() bool {
		list, _ = b.ListDLQ(context.Background(), DLQFilter{Trigger: "strict"})
		return len(list) == 1
	})
	if n := len(bad.events()); n != 1 {
		t.Errorf("400 was tried %d times, want 1", n)
	}
	if e := list[0]; e.Reason != reasonNotRetryable || len(e.Attempts) != 1 || e.Attempts[0].Status != 400 {
		t.Errorf("entry %+v", e)
	}
}

// TestNodeDLQReplay: without a sink a failed event lands in the node DLQ
// with its attempt history; a replay that fails again keeps it (history
// appended); a replay that succeeds removes it; purge empties the rest.
func TestNodeDLQReplay(t *testing.T) {
	b, srv := startBroker(t, httpDeliverer)
	sub := newSubscriber(t, http.StatusInternalServerError, "boom")
	setTriggers(t, b, triggerYAML("orders", "  filters: [{exact: {type: dev.weft.test}}]", "{uri: "+sub.URL+"}", "  delivery: {retry: 1, backoffPolicy: linear, backoffDelay: PT0.01S}")+
		triggerYAML("other", "  filters: [{exact: {type: other.type}}]", "{uri: "+sub.URL+"}", "  delivery: {retry: 0}"))
	ctx := context.Background()
	// Any NATS client can consume a trigger's dead letters.
	nc, err := nats.Connect(b.NATSURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	dead, err := nc.SubscribeSync("weft.dlq.orders")
	if err != nil {
		t.Fatal(err)
	}
	post(t, srv, ingressCase{headers: caseBinary("dlq-1"), body: `{}`})
	post(t, srv, ingressCase{headers: caseBinary("dlq-2", "ce-type", "other.type"), body: `{}`})

	var entries []DLQEntry
	wtest.WaitFor(t, 10*time.Second, func() bool {
		entries, _ = b.ListDLQ(ctx, DLQFilter{Trigger: "orders"})
		return len(entries) == 1
	})
	first := entries[0]
	msg, err := dead.NextMsg(10 * time.Second)
	if err != nil {
		t.Fatalf("a NATS subscriber got no dead letter: %v", err)
	}
	var seen event.Event
	if err := json.Unmarshal(msg.Data, &seen); err != nil || seen.ID() != "dlq-1" || msg.Header.Get("Weft-Reason") != reasonExhausted {
		t.Fatalf("NATS dead letter %s %v (%v)", msg.Data, msg.Header, err)
	}
	if first.Event.ID() != "dlq-1" || len(first.Attempts) != 2 || first.Attempts[1].Status != 500 || first.Reason != reasonExhausted {
		t.Fatalf("entry %+v", first)
	}
	if all, _ := b.ListDLQ(ctx, DLQFilter{}); len(all) != 2 {
		t.Fatalf("whole DLQ has %d entries, want 2", len(all))
	}
	if got, _ := b.ListDLQ(ctx, DLQFilter{Trigger: "orders", Since: time.Now().Add(time.Hour)}); len(got) != 0 {
		t.Fatalf("since filter kept %d entries", len(got))
	}

	// Replay while the subscriber still fails: the entry is replaced by one
	// with the history of both runs.
	st, err := b.ReplayDLQ(ctx, ReplayRequest{IDs: []uint64{first.ID}})
	if err != nil {
		t.Fatal(err)
	}
	wtest.WaitFor(t, 10*time.Second, func() bool { return b.ReplayProgress(st.ID).Done() })
	if p := b.ReplayProgress(st.ID); p.Failed != 1 || p.Delivered != 0 {
		t.Fatalf("progress %+v", p)
	}
	entries, _ = b.ListDLQ(ctx, DLQFilter{Trigger: "orders"})
	if len(entries) != 1 || entries[0].ID == first.ID || entries[0].Replays != 1 || len(entries[0].Attempts) != 4 {
		t.Fatalf("after failed replay: %+v", entries)
	}
	if _, err := b.GetDLQ(ctx, first.ID); err == nil {
		t.Fatalf("old entry still there")
	}

	// Fix the subscriber and replay by trigger: delivered, gone.
	sub.status.Store(http.StatusOK)
	st, err = b.ReplayDLQ(ctx, ReplayRequest{Filter: DLQFilter{Trigger: "orders"}})
	if err != nil {
		t.Fatal(err)
	}
	wtest.WaitFor(t, 10*time.Second, func() bool { return b.ReplayProgress(st.ID).Done() })
	if p := b.ReplayProgress(st.ID); p.Delivered != 1 || p.Total != 1 {
		t.Fatalf("progress %+v", p)
	}
	if entries, _ = b.ListDLQ(ctx, DLQFilter{Trigger: "orders"}); len(entries) != 0 {
		t.Fatalf("replayed entry still in the DLQ: %+v", entries)
	}
	got := sub.events()
	if last := got[len(got)-1]; last.ID() != "dlq-1" || last.Extensions()[extErrorCode] != nil {
		t.Fatalf("replayed event %v carries error extensions", last)
	}

	n, err := b.PurgeDLQ(ctx, "")
	if err != nil || n != 1 {
		t.Fatalf("purge: %d, %v", n, err)
	}
	if all, _ := b.ListDLQ(ctx, DLQFilter{}); len(all) != 0 {
		t.Fatalf("DLQ not empty after purge")
	}
}

// TestReplyChainAndLoopCut: a subscriber's reply re-enters the broker and
// fires the next trigger; a subscriber that answers every event with one
// matching its own trigger loops until knativebrokerttl runs out, and the cut
// lands in the DLQ.
func TestReplyChainAndLoopCut(t *testing.T) {
	rec := newRecorder()
	b, srv := startBroker(t, rec)
	setTriggers(t, b,
		triggerYAML("first", "  filters: [{exact: {type: step.one}}]", "{uri: http://first.invalid/}", "")+
			triggerYAML("second", "  filters: [{exact: {type: step.two}}]", "{uri: http://second.invalid/}", "")+
			triggerYAML("loop", "  filters: [{exact: {type: loop}}]", "{uri: http://loop.invalid/}", ""))
	reply := func(typ string) func(event.Event) (*event.Event, error) {
		return func(in event.Event) (*event.Event, error) {
			out := event.New()
			out.SetID(in.ID() + "+")
			out.SetSource("/replier")
			out.SetType(typ)
			return &out, nil
		}
	}
	rec.set("http://first.invalid/", reply("step.two"))
	rec.set("http://loop.invalid/", reply("loop"))

	post(t, srv, ingressCase{headers: caseBinary("chain", "ce-type", "step.one"), body: `{}`})
	wtest.WaitFor(t, 10*time.Second, func() bool { return rec.count("http://second.invalid/") == 1 })
	if id := rec.ids("http://second.invalid/")[0]; id != "chain+" {
		t.Fatalf("second got %s", id)
	}

	// A budget of 5 hops: the loop trigger sees 5 events, the 5th reply is cut.
	post(t, srv, ingressCase{headers: caseBinary("l", "ce-type", "loop", "ce-knativebrokerttl", "5"), body: `{}`})
	var entries []DLQEntry
	wtest.WaitFor(t, 10*time.Second, func() bool {
		entries, _ = b.ListDLQ(context.Background(), DLQFilter{Trigger: "loop"})
		return len(entries) == 1
	})
	if n := rec.count("http://loop.invalid/"); n != 5 {
		t.Errorf("loop subscriber saw %d events, want 5", n)
	}
	if e := entries[0]; e.Reason != reasonTTL || e.Event.ID() != "l+++++" {
		t.Errorf("cut entry %s %s", e.Reason, e.Event.ID())
	}
	if n := testutil.ToFloat64(b.metrics.LoopsCut); n != 1 {
		t.Errorf("loops cut %v", n)
	}
}

// TestErrorDataCapped: knativeerrordata carries at most 1024 bytes of the
// failing response body (Knative's cap), base64-encoded.
func TestErrorDataCapped(t *testing.T) {
	b, srv := startBroker(t, httpDeliverer)
	big := newSubscriber(t, http.StatusUnprocessableEntity, strings.Repeat("x", 5000))
	sink := newSubscriber(t, http.StatusAccepted, "")
	setTriggers(t, b, triggerYAML("capped", "", "{uri: "+big.URL+"}",
		"  delivery: {retry: 3, backoffDelay: PT0.01S, deadLetterSink: {uri: "+sink.URL+"}}"))
	post(t, srv, ingressCase{headers: caseBinary("cap-1"), body: `{}`})
	wtest.WaitFor(t, 10*time.Second, func() bool { return len(sink.events()) == 1 })
	if n := len(big.events()); n != 1 {
		t.Errorf("422 was tried %d times, want 1 (not retryable)", n)
	}
	raw, err := base64.StdEncoding.DecodeString(fmt.Sprint(sink.events()[0].Extensions()[extErrorData]))
	if err != nil || len(raw) != 1024 {
		t.Fatalf("knativeerrordata holds %d bytes (%v), want 1024", len(raw), err)
	}
}

// TestInvalidReplyDeadLettered: a subscriber that accepts an event but
// answers with a malformed CloudEvent (a ce-specversion without type or
// source) gets one attempt — retrying cannot mend its bug — and the event
// lands in the node DLQ with reason invalid_reply.
func TestInvalidReplyDeadLettered(t *testing.T) {
	b, srv := startBroker(t, httpDeliverer)
	var calls atomic.Int32
	bad := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		w.Header().Set("ce-specversion", "1.0")
		w.Header().Set("ce-id", "reply-1")
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write([]byte(`{}`))
	}))
	t.Cleanup(bad.Close)
	setTriggers(t, b, triggerYAML("replier", "", "{uri: "+bad.URL+"}", "  delivery: {retry: 3, backoffDelay: PT0.01S}"))
	post(t, srv, ingressCase{headers: caseBinary("ir-1"), body: `{}`})
	var list []DLQEntry
	wtest.WaitFor(t, 10*time.Second, func() bool {
		list, _ = b.ListDLQ(context.Background(), DLQFilter{Trigger: "replier"})
		return len(list) == 1
	}, "the event never reached the DLQ")
	if e := list[0]; e.Reason != reasonInvalidReply || len(e.Attempts) != 1 {
		t.Errorf("entry reason %q with %d attempts, want %q after 1", e.Reason, len(e.Attempts), reasonInvalidReply)
	}
	if n := calls.Load(); n != 1 {
		t.Errorf("subscriber called %d times, want 1", n)
	}
}
