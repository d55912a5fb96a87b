package broker

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	wtest "github.com/weft-dev/weft/internal/testutil"
)

// triggerConsumers lists the trigger names that have a consumer on
// WEFT_DELIVERIES.
func triggerConsumers(t *testing.T, b *Broker) map[string]bool {
	t.Helper()
	out := map[string]bool{}
	names := b.conn.Load().dels.ConsumerNames(context.Background())
	for name := range names.Name() {
		if trigger, ok := strings.CutPrefix(name, consumerPrefix); ok {
			out[trigger] = true
		}
	}
	if err := names.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// shortenIdle makes every runner of b sleep after d without work.
func shortenIdle(t *testing.T, b *Broker, d time.Duration, triggers int) {
	t.Helper()
	wtest.WaitFor(t, 10*time.Second, func() bool {
		b.mu.Lock()
		defer b.mu.Unlock()
		return len(b.runners) == triggers
	}, "runners not created")
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, r := range b.runners {
		r.mu.Lock()
		r.idleAfter = d
		r.mu.Unlock()
	}
}

// TestRunnersSleepWithoutConsumers is the regression test for the cost of
// idle triggers: every trigger had a consumer on WEFT_DELIVERIES, and
// nats-server checks all of them on every ack, so 10,000 triggers made each
// delivery about 300 times slower (and the server refuses more than 1,000
// consumers per stream). Now a trigger has a consumer only while it has
// deliveries: it is created when the dispatcher stores one, before the event
// is acked, and deleted once the trigger is idle; the next event wakes it.
func TestRunnersSleepWithoutConsumers(t *testing.T) {
	rec := newRecorder()
	b, srv := startBroker(t, rec)
	setTriggers(t, b,
		triggerYAML("busy", "  filters: [{exact: {type: com.example.busy}}]", "{uri: http://busy.invalid/}", "")+
			triggerYAML("quiet", "  filters: [{exact: {type: com.example.quiet}}]", "{uri: http://quiet.invalid/}", ""))
	shortenIdle(t, b, 200*time.Millisecond, 2)
	if got := triggerConsumers(t, b); len(got) != 0 {
		t.Fatalf("consumers %v before any delivery, want none", got)
	}

	for round := range 2 { // the second round wakes a runner that slept
		id := fmt.Sprintf("busy-%d", round)
		if got := post(t, srv, ingressCase{headers: caseBinary(id, "ce-type", "com.example.busy"), body: `{}`}); got != http.StatusAccepted {
			t.Fatalf("status %d", got)
		}
		wtest.WaitFor(t, 10*time.Second, func() bool { return rec.count("http://busy.invalid/") == round+1 }, "not delivered")
		if got := triggerConsumers(t, b); got["quiet"] {
			t.Fatalf("the quiet trigger has a consumer: %v", got)
		}
		wtest.WaitFor(t, 10*time.Second, func() bool { return !triggerConsumers(t, b)["busy"] }, "the idle trigger kept its consumer")
	}
	if n := rec.count("http://quiet.invalid/"); n != 0 {
		t.Fatalf("quiet got %d events", n)
	}
}

// TestSleepingTriggerGetsOthersDeliveries: deliveries stored for a sleeping
// trigger by anyone but the dispatcher (a DLQ replay does it) wake it
// through the sweep, and Pending counts them while no consumer exists.
func TestSleepingTriggerGetsOthersDeliveries(t *testing.T) {
	rec := newRecorder()
	b, _ := startBroker(t, rec)
	setTriggers(t, b, triggerYAML("asleep", "  filters: [{exact: {type: com.example.x}}]", "{uri: http://asleep.invalid/}", ""))
	shortenIdle(t, b, 200*time.Millisecond, 1)
	c := b.conn.Load()
	ctx := context.Background()
	publish := func(trigger, id string) {
		t.Helper()
		msg := nats.NewMsg(deliverPrefix + trigger)
		msg.Data = []byte(`{"specversion":"1.0","id":"` + id + `","source":"/test","type":"com.example.x"}`)
		msg.Header.Set(hdrTrigger, trigger)
		if _, err := c.js.PublishMsg(ctx, msg, jetstream.WithExpectStream(deliveriesStream)); err != nil {
			t.Fatal(err)
		}
	}

	// A trigger without a runner keeps its deliveries, counted by Pending.
	publish("ghost", "g1")
	publish("ghost", "g2")
	if n, err := b.Pending(ctx, "ghost"); err != nil || n != 2 {
		t.Fatalf("Pending(ghost) = %d, %v; want 2", n, err)
	}
	if n, err := b.Pending(ctx, "asleep"); err != nil || n != 0 {
		t.Fatalf("Pending(asleep) = %d, %v; want 0", n, err)
	}

	publish("asleep", "s1")
	wtest.WaitFor(t, 10*time.Second, func() bool { return rec.count("http://asleep.invalid/") == 1 }, "the sweep did not wake the sleeping trigger")
	wtest.WaitFor(t, 10*time.Second, func() bool { return !triggerConsumers(t, b)["asleep"] }, "the idle trigger kept its consumer")
}

// TestDeliveriesPendingAtStopSurviveRestart: deliveries in flight when the
// broker stops stay stored, with the trigger's consumer; after a restart
// the sweep wakes the trigger and they are delivered. Direct deliveries in
// flight leave their events unacknowledged; after a restart those are
// dispatched again.
func TestDeliveriesPendingAtStopSurviveRestart(t *testing.T) {
	t.Run("stored", func(t *testing.T) { testPendingAtStop(t, true) })
	t.Run("direct", func(t *testing.T) { testPendingAtStop(t, false) })
}

func testPendingAtStop(t *testing.T, storeEveryDelivery bool) {
	dir := t.TempDir()
	cfg := Config{DataDir: dir, AckWait: time.Second, DrainTimeout: 100 * time.Millisecond, storeEveryDelivery: storeEveryDelivery}
	manifest := triggerYAML("slow", "  filters: [{exact: {type: com.example.slow}}]", "{uri: http://slow.invalid/}", "")

	run := func(d Deliverer) (*Broker, func()) {
		b, err := New(cfg, d, nil, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- b.Run(ctx) }()
		select {
		case <-b.Ready():
		case err := <-done:
			t.Fatalf("broker exited before ready: %v", err)
		case <-time.After(30 * time.Second):
			t.Fatal("broker not ready")
		}
		setTriggers(t, b, manifest)
		b.StartDispatching()
		return b, func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("broker.Run: %v", err)
			}
		}
	}

	var started atomic.Int32
	stuck := DelivererFunc(func(ctx context.Context, _ string, _ event.Event) (*event.Event, error) {
		started.Add(1)
		<-ctx.Done() // never answers: cut when the broker stops
		return nil, ctx.Err()
	})
	b, stop := run(stuck)
	evs := make([]event.Event, 3)
	for i := range evs {
		evs[i] = event.New()
		evs[i].SetID(fmt.Sprintf("p%d", i))
		evs[i].SetSource("/test")
		evs[i].SetType("com.example.slow")
	}
	if err := b.Store(context.Background(), evs); err != nil {
		t.Fatal(err)
	}
	wtest.WaitFor(t, 10*time.Second, func() bool { return started.Load() == 3 }, "deliveries not started")
	stop()

	rec := newRecorder()
	_, stop = run(rec)
	defer stop()
	wtest.WaitFor(t, 20*time.Second, func() bool { return rec.count("http://slow.invalid/") >= 3 }, "pending deliveries not delivered after restart")
}
