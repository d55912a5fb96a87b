package broker

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	wtest "github.com/weft-dev/weft/internal/testutil"
)

// TestStoreMarksUnmatchedEvents: an event no trigger matches is stored with
// the current mark, one a trigger matches without, and a change of the
// triggers makes the earlier mark stale (so that event is dispatched again
// in full: TestEventsWaitForTheWholeConfiguration delivers such events).
func TestStoreMarksUnmatchedEvents(t *testing.T) {
	b, srv := startStoringBroker(t, newRecorder())
	setTriggers(t, b, triggerYAML("wanted", "  filter: {attributes: {type: dev.weft.wanted}}", "{uri: http://wanted.invalid/}", ""))
	for _, typ := range []string{"dev.weft.other", "dev.weft.wanted"} {
		if got := post(t, srv, ingressCase{headers: caseBinary(typ, "ce-type", typ), body: `{}`}); got != http.StatusAccepted {
			t.Fatalf("status %d", got)
		}
	}
	c := b.conn.Load()
	s, err := c.js.Stream(t.Context(), eventsStream)
	if err != nil {
		t.Fatal(err)
	}
	marks := map[string]string{}
	for seq := uint64(1); seq <= 2; seq++ {
		m, err := s.GetMsg(t.Context(), seq)
		if err != nil {
			t.Fatal(err)
		}
		var ev struct{ Type string }
		if err := json.Unmarshal(m.Data, &ev); err != nil {
			t.Fatal(err)
		}
		marks[ev.Type] = m.Header.Get(hdrUnmatched)
	}
	if m := marks["dev.weft.other"]; !b.stillUnmatched(m) {
		t.Errorf("unmatched event stored with mark %q, want the current one %q", m, b.unmatchedToken(b.indexVersion.Load()))
	}
	if m := marks["dev.weft.wanted"]; m != "" {
		t.Errorf("matched event stored with mark %q, want none", m)
	}
	setTriggers(t, b, triggerYAML("wanted", "  filter: {attributes: {type: dev.weft.other}}", "{uri: http://wanted.invalid/}", ""))
	if b.stillUnmatched(marks["dev.weft.other"]) {
		t.Error("the mark is still current after the triggers changed")
	}
}

// TestDispatcherTrustsOnlyCurrentMarks stores two events of a type a
// trigger matches, straight into the events stream: one marked unmatched
// with the broker's current mark, one with a mark of another run. The
// dispatcher acks the first without delivering it and delivers the second.
func TestDispatcherTrustsOnlyCurrentMarks(t *testing.T) {
	rec := newRecorder()
	b, _ := startBroker(t, rec)
	const target = "http://wanted.invalid/"
	setTriggers(t, b, triggerYAML("wanted", "  filter: {attributes: {type: dev.weft.test}}", "{uri: "+target+"}", ""))
	// The dispatcher makes its consumer after StartDispatching returns.
	wtest.WaitFor(t, 10*time.Second, func() bool { return b.dispatching.Load() != nil }, "dispatching did not begin")
	c := b.conn.Load()
	otherRun := "0000000000000000." + fmt.Sprint(b.indexVersion.Load())
	var last uint64
	for _, e := range []struct{ id, mark string }{
		{"current-mark", b.unmatchedToken(b.indexVersion.Load())},
		{"other-run", otherRun},
	} {
		msg := nats.NewMsg(eventsSubject)
		msg.Data = []byte(caseStructured(e.id))
		msg.Header.Set(jetstream.MsgIDHeader, e.id)
		msg.Header.Set(hdrUnmatched, e.mark)
		ack, err := c.js.PublishMsg(t.Context(), msg)
		if err != nil {
			t.Fatal(err)
		}
		last = ack.Sequence
	}
	cons, err := c.js.Consumer(t.Context(), eventsStream, dispatchConsumer)
	if err != nil {
		t.Fatal(err)
	}
	wtest.WaitFor(t, 10*time.Second, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		info, err := cons.Info(ctx)
		return err == nil && info.AckFloor.Stream >= last
	}, "the dispatcher did not settle both events")
	if got := rec.ids(target); len(got) != 1 || got[0] != "other-run" {
		t.Fatalf("delivered %v, want only other-run (the current mark is trusted, another run's is not)", got)
	}
}

// TestUnmatchedEventsAreSetApart: once dispatching has begun, an event no
// trigger matches is stored under unmatchedSubject, which the dispatcher's
// consumer never reads, while a matching one is delivered; the compactor
// then purges both, though the consumer's ack floor never passes the
// unmatched events stored after the last matched one.
func TestUnmatchedEventsAreSetApart(t *testing.T) {
	rec := newRecorder()
	b, srv := startBroker(t, rec)
	const target = "http://wanted.invalid/"
	setTriggers(t, b, triggerYAML("wanted", "  filter: {attributes: {type: dev.weft.wanted}}", "{uri: "+target+"}", ""))
	wtest.WaitFor(t, 10*time.Second, func() bool { return b.dispatching.Load() != nil }, "dispatching did not begin")
	post1 := func(id, typ string) {
		t.Helper()
		if got := post(t, srv, ingressCase{headers: caseBinary(id, "ce-type", typ), body: `{}`}); got != http.StatusAccepted {
			t.Fatalf("status %d", got)
		}
	}
	post1("w1", "dev.weft.wanted")
	for i := range 20 {
		post1(fmt.Sprint("o", i), "dev.weft.other")
	}
	c := b.conn.Load()
	s, err := c.js.Stream(t.Context(), eventsStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if info.State.LastSeq != 21 {
		t.Fatalf("stream at %d, want 21 events stored", info.State.LastSeq)
	}
	wtest.WaitFor(t, 10*time.Second, func() bool { return rec.count(target) == 1 }, "the matching event was not delivered")
	wtest.WaitFor(t, 10*time.Second, func() bool {
		info, err := s.Info(t.Context())
		return err == nil && info.State.Msgs == 0
	}, "the compactor did not purge the stream")
	cons, err := c.js.Consumer(t.Context(), eventsStream, dispatchConsumer)
	if err != nil {
		t.Fatal(err)
	}
	ci, err := cons.Info(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if ci.Delivered.Consumer != 1 {
		t.Errorf("the dispatcher was handed %d events, want only the matching one", ci.Delivered.Consumer)
	}
	if got := rec.ids(target); len(got) != 1 || got[0] != "w1" {
		t.Errorf("delivered %v, want [w1]", got)
	}
}

// TestEventsBeforeDispatchingAreNotSetApart: while the node's configuration
// is still being applied (dispatching has not begun), an event no trigger
// matches yet is stored for the dispatcher, which matches it against the
// whole configuration once it is in force.
func TestEventsBeforeDispatchingAreNotSetApart(t *testing.T) {
	rec := newRecorder()
	b, srv := startStoringBroker(t, rec)
	if got := post(t, srv, ingressCase{headers: caseBinary("early", "ce-type", "dev.weft.later"), body: `{}`}); got != http.StatusAccepted {
		t.Fatalf("status %d", got)
	}
	const target = "http://later.invalid/"
	setTriggers(t, b, triggerYAML("later", "  filter: {attributes: {type: dev.weft.later}}", "{uri: "+target+"}", ""))
	b.StartDispatching()
	wtest.WaitFor(t, 10*time.Second, func() bool { return rec.count(target) == 1 }, "the event stored before dispatching began was not delivered")
}

// TestAtomicBatchSetsApartSome: one atomic batch (a Store call of more than
// atomicMin events) holding matched and unmatched events stores them all,
// under their two subjects; only the matched ones reach the dispatcher.
func TestAtomicBatchSetsApartSome(t *testing.T) {
	rec := newRecorder()
	b, _ := startBroker(t, rec)
	const target = "http://wanted.invalid/"
	setTriggers(t, b, triggerYAML("wanted", "  filter: {attributes: {type: dev.weft.wanted}}", "{uri: "+target+"}", ""))
	wtest.WaitFor(t, 10*time.Second, func() bool { return b.dispatching.Load() != nil }, "dispatching did not begin")
	var evs []event.Event
	for i := range atomicMin + 4 {
		ev := testEvent("/apart", fmt.Sprint(i))
		if i%2 == 0 {
			ev.SetType("dev.weft.wanted")
		}
		evs = append(evs, ev)
	}
	atomics := b.batcher().atomicBatches.Load()
	if err := b.Store(t.Context(), evs); err != nil {
		t.Fatal(err)
	}
	if b.batcher().atomicBatches.Load() != atomics+1 {
		t.Fatal("the events were not committed as one atomic batch")
	}
	wanted := (atomicMin + 5) / 2
	wtest.WaitFor(t, 10*time.Second, func() bool { return rec.count(target) == wanted }, "the matching events were not delivered")
	c := b.conn.Load()
	cons, err := c.js.Consumer(t.Context(), eventsStream, dispatchConsumer)
	if err != nil {
		t.Fatal(err)
	}
	wtest.WaitFor(t, 10*time.Second, func() bool {
		ci, err := cons.Info(t.Context())
		return err == nil && ci.AckFloor.Consumer == uint64(wanted) && streamMsgs(t, b) == 0
	}, "the stream was not purged after the matching events were acknowledged")
	ci, err := cons.Info(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if ci.Delivered.Consumer != uint64(wanted) {
		t.Errorf("the dispatcher was handed %d events, want the %d matching ones", ci.Delivered.Consumer, wanted)
	}
}
