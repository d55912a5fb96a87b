package broker

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"testing"
	"time"

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
