package broker

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"

	wtest "github.com/weft-dev/weft/internal/testutil"
)

// TestTriggerRemovedWhileItsReplyIsStored removes a trigger while its runner
// is delivering an event whose subscriber replies. Stopping the runner waits
// for that delivery, which stores the reply; the reply matches another
// trigger, so storing it starts that trigger's delivery and looks its runner
// up. The removal must not hold the lock that lookup takes while it waits:
// it ends, and the reply reaches the other trigger.
func TestTriggerRemovedWhileItsReplyIsStored(t *testing.T) {
	rec := newRecorder()
	b, _ := startBroker(t, rec)
	replier := triggerYAML("replier", "  filters: [{exact: {type: test.ask}}]", "{uri: http://replier.invalid/}", "  delivery: {retry: 1, backoffDelay: PT0.01S}")
	sink := triggerYAML("sink", "  filters: [{exact: {type: test.answer}}]", "{uri: http://sink.invalid/}", "")
	setTriggers(t, b, replier+sink)

	inDelivery, release := make(chan struct{}), make(chan struct{})
	var attempts atomic.Int32
	rec.set("http://replier.invalid/", func(ev event.Event) (*event.Event, error) {
		if attempts.Add(1) == 1 {
			return nil, errors.New("first attempt fails") // the runner makes the second
		}
		close(inDelivery)
		<-release // a subscriber that does not watch its context
		reply := event.New()
		reply.SetID("answer-" + ev.ID())
		reply.SetSource("/replier")
		reply.SetType("test.answer")
		return &reply, nil
	})
	ask := event.New()
	ask.SetID("ask-1")
	ask.SetSource("/test")
	ask.SetType("test.ask")
	if err := b.Store(context.Background(), []event.Event{ask}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-inDelivery:
	case <-time.After(30 * time.Second):
		t.Fatal("the runner's attempt did not reach the subscriber")
	}

	removed := make(chan struct{})
	go func() {
		setTriggers(t, b, sink) // replier removed: its runner stops, waiting for the delivery
		close(removed)
	}()
	wtest.WaitFor(t, 10*time.Second, func() bool { _, ok := b.Triggers().Get("replier"); return !ok },
		"the new triggers were not put in force")
	close(release)
	select {
	case <-removed:
	case <-time.After(20 * time.Second):
		t.Fatal("removing the trigger did not end: it waits for a delivery that waits for it")
	}
	wtest.WaitFor(t, 20*time.Second, func() bool { return rec.count("http://sink.invalid/") == 1 },
		"the reply did not reach the other trigger")
}
