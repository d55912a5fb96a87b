package broker

import (
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	wtest "github.com/weft-dev/weft/internal/testutil"
)

// TestAtomicFanout: when WEFT_DELIVERIES allows atomic batch publish, the
// dispatcher commits deliveries in atomic batches; a batch the server
// refuses because one delivery is already stored (an event dispatched again
// after a crash) is published one by one, so the event is still acked and
// every trigger gets it once.
func TestAtomicFanout(t *testing.T) {
	rec := newRecorder()
	b, srv := startBrokerWith(t, rec, func(c *Config) { c.storeEveryDelivery = true })
	c := b.conn.Load()
	ctx := context.Background()
	info, err := c.dels.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !info.Config.AllowAtomicPublish {
		t.Fatal("WEFT_DELIVERIES is created without AllowAtomicPublish")
	}
	sc := info.Config
	sc.AllowAtomicPublish = false // as a stream created by an older weft
	if _, err := c.js.UpdateStream(ctx, sc); err != nil {
		t.Fatal(err)
	}
	if _, ok := b.newFanout(ctx, c).(*asyncFanout); !ok {
		t.Fatal("without AllowAtomicPublish the fan-out must publish one by one")
	}
	sc.AllowAtomicPublish = true
	if _, err := c.js.UpdateStream(ctx, sc); err != nil {
		t.Fatal(err)
	}
	if _, ok := b.newFanout(ctx, c).(*batchFanout); !ok {
		t.Fatal("the fan-out does not use atomic batches")
	}
	var manifests string
	for i := range 3 {
		manifests += triggerYAML(fmt.Sprintf("t%d", i), "  filters: [{exact: {type: com.example.fan}}]", fmt.Sprintf("{uri: http://t%d.invalid/}", i), "")
	}
	setTriggers(t, b, manifests)

	const events = 20
	for i := range events {
		if got := post(t, srv, ingressCase{headers: caseBinary(fmt.Sprintf("f%d", i), "ce-type", "com.example.fan"), body: `{}`}); got != http.StatusAccepted {
			t.Fatalf("status %d", got)
		}
	}
	// The delivery of the first event to t1 is already stored, with the
	// message id the dispatcher will use: the atomic batch holding it is
	// refused as a whole.
	first, err := c.js.Stream(ctx, eventsStream)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := first.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	pre := nats.NewMsg(deliverPrefix + "t1")
	raw, err := first.GetMsg(ctx, fi.State.FirstSeq)
	if err != nil {
		t.Fatal(err)
	}
	pre.Data = raw.Data
	pre.Header.Set(hdrTrigger, "t1")
	if _, err := c.js.PublishMsg(ctx, pre, jetstream.WithMsgID(fmt.Sprintf("%d.t1", fi.State.FirstSeq))); err != nil {
		t.Fatal(err)
	}

	b.StartDispatching()
	for i := range 3 {
		target := fmt.Sprintf("http://t%d.invalid/", i)
		wtest.WaitFor(t, 10*time.Second, func() bool { return rec.count(target) == events }, "%s got %d of %d", target, rec.count(target), events)
	}
	wtest.WaitFor(t, 10*time.Second, func() bool { return streamEmpty(c.js, eventsStream) && streamEmpty(c.js, deliveriesStream) }, "work queues not empty")
	for i := range 3 {
		if n := rec.count(fmt.Sprintf("http://t%d.invalid/", i)); n != events {
			t.Errorf("t%d got %d events, want %d", i, n, events)
		}
	}
}
