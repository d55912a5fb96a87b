package broker

import (
	"context"
	"fmt"
	"maps"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/weft-dev/weft/internal/ceclient"
	wtest "github.com/weft-dev/weft/internal/testutil"
)

// storedDeliveries is how many deliveries were ever stored in WEFT_DELIVERIES.
func storedDeliveries(t *testing.T, b *Broker) uint64 {
	t.Helper()
	return streamState(t, b.conn.Load().js, deliveriesStream).LastSeq
}

// TestDirectDeliveryStoresNothing: with a free slot, the dispatcher delivers
// an event itself; no delivery is stored and the event is acknowledged.
func TestDirectDeliveryStoresNothing(t *testing.T) {
	rec := newRecorder()
	b, srv := startBroker(t, rec)
	setTriggers(t, b, triggerYAML("direct", "", "{uri: http://direct.invalid/}", ""))
	for i := range 5 {
		if got := post(t, srv, ingressCase{headers: caseBinary(fmt.Sprintf("d%d", i)), body: `{}`}); got != http.StatusAccepted {
			t.Fatalf("status %d", got)
		}
	}
	wtest.WaitFor(t, 10*time.Second, func() bool { return rec.count("http://direct.invalid/") == 5 }, "events not delivered")
	wtest.WaitFor(t, 10*time.Second, func() bool { return streamEmpty(b.conn.Load().js, eventsStream) }, "delivered events not acknowledged")
	if n := storedDeliveries(t, b); n != 0 {
		t.Errorf("%d deliveries stored, want none: each had a free slot", n)
	}
	if n := testutil.ToFloat64(b.metrics.Delivered.WithLabelValues("direct")); n != 5 {
		t.Errorf("delivered counted %v, want 5", n)
	}
}

// TestDirectFailureHandedOver: a first attempt that fails with a retried
// status is handed over to the trigger's runner, stored with the attempt,
// and the runner's attempt is the second, after the policy's backoff.
func TestDirectFailureHandedOver(t *testing.T) {
	rec := newRecorder()
	const target = "http://flaky.invalid/"
	var (
		mu    sync.Mutex
		times []time.Time
	)
	rec.set(target, func(event.Event) (*event.Event, error) {
		mu.Lock()
		defer mu.Unlock()
		times = append(times, time.Now())
		if len(times) == 1 {
			return nil, &ceclient.StatusError{Code: http.StatusServiceUnavailable}
		}
		return nil, nil
	})
	b, srv := startBroker(t, rec)
	const backoff = 300 * time.Millisecond
	setTriggers(t, b, triggerYAML("flaky", "", "{uri: "+target+"}", "  delivery: {retry: 3, backoffPolicy: exponential, backoffDelay: PT0.3S}"))
	post(t, srv, ingressCase{headers: caseBinary("h1"), body: `{}`})
	wtest.WaitFor(t, 10*time.Second, func() bool { return rec.count(target) == 2 }, "the handed-over delivery was not retried")
	wtest.WaitFor(t, 10*time.Second, func() bool { return streamEmpty(b.conn.Load().js, eventsStream) }, "event not acknowledged")
	if n := storedDeliveries(t, b); n != 1 {
		t.Errorf("%d deliveries stored, want the one handed over", n)
	}
	mu.Lock()
	gap := times[1].Sub(times[0])
	mu.Unlock()
	// Exponential backoff as Knative computes it: backoffDelay × 2^(n−1)
	// after attempt n.
	if gap < backoff {
		t.Errorf("second attempt %v after the first, want at least the backoff %v", gap, backoff)
	}
	if n := testutil.ToFloat64(b.metrics.Retried.WithLabelValues("flaky")); n != 1 {
		t.Errorf("retries counted %v, want 1", n)
	}
	if list, _ := b.ListDLQ(context.Background(), DLQFilter{}); len(list) != 0 {
		t.Errorf("dead letters %+v, want none", list)
	}
	if rec.count(target) != 2 {
		t.Errorf("subscriber called %d times, want 2", rec.count(target))
	}
}

// TestDirectSlotsShared: direct deliveries and the runner's share the
// trigger's TriggerWorkers slots; with every slot busy, further events are
// stored for the runner, and each event still arrives once.
func TestDirectSlotsShared(t *testing.T) {
	const slots, events = 2, 6
	var (
		mu            sync.Mutex
		inFlight, top int
		got           = map[string]int{}
	)
	release := make(chan struct{})
	blocking := DelivererFunc(func(ctx context.Context, _ string, ev event.Event) (*event.Event, error) {
		mu.Lock()
		inFlight++
		top = max(top, inFlight)
		got[ev.ID()]++
		mu.Unlock()
		defer func() {
			mu.Lock()
			inFlight--
			mu.Unlock()
		}()
		select {
		case <-release:
			return nil, nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	})
	b, srv := startBrokerWith(t, blocking, func(c *Config) { c.TriggerWorkers = slots })
	b.StartDispatching()
	setTriggers(t, b, triggerYAML("busy", "", "{uri: http://busy.invalid/}", ""))
	for i := range events {
		post(t, srv, ingressCase{headers: caseBinary(fmt.Sprintf("s%d", i)), body: `{}`})
	}
	wtest.WaitFor(t, 10*time.Second, func() bool { return storedDeliveries(t, b) == events-slots },
		"%d deliveries stored, want %d: the events beyond the busy slots", storedDeliveries(t, b), events-slots)
	close(release)
	wtest.WaitFor(t, 10*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(got) == events
	}, "not every event delivered")
	wtest.WaitFor(t, 10*time.Second, func() bool { return streamEmpty(b.conn.Load().js, eventsStream) }, "events not acknowledged")
	mu.Lock()
	defer mu.Unlock()
	if top > slots {
		t.Errorf("%d deliveries ran at once, want at most TriggerWorkers = %d", top, slots)
	}
	for id, n := range got {
		if n != 1 {
			t.Errorf("event %s delivered %d times", id, n)
		}
	}
}

// TestDirectShareBounded: direct deliveries hold their events
// unacknowledged, so together they take at most 1/directShare of what the
// dispatcher may have in flight; beyond that deliveries are stored, however
// many triggers have free slots.
func TestDirectShareBounded(t *testing.T) {
	const perTrigger = 20
	var (
		mu  sync.Mutex
		got = map[string]int{}
	)
	release := make(chan struct{})
	blocking := DelivererFunc(func(ctx context.Context, target string, ev event.Event) (*event.Event, error) {
		mu.Lock()
		got[target+" "+ev.ID()]++
		mu.Unlock()
		select {
		case <-release:
			return nil, nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	})
	b, srv := startBrokerWith(t, blocking, func(c *Config) { c.DispatchWorkers = 1 })
	b.StartDispatching()
	share := dispatchPending / directShare
	setTriggers(t, b, triggerYAML("a", "  filters: [{exact: {type: com.example.a}}]", "{uri: http://a.invalid/}", "")+
		triggerYAML("b", "  filters: [{exact: {type: com.example.b}}]", "{uri: http://b.invalid/}", ""))
	for i := range perTrigger {
		for _, typ := range []string{"com.example.a", "com.example.b"} {
			post(t, srv, ingressCase{headers: caseBinary(fmt.Sprintf("%s-%d", typ, i), "ce-type", typ), body: `{}`})
		}
	}
	// Each trigger has TriggerWorkers (32) slots, more than its 20 events,
	// but together they may make only share deliveries directly.
	wtest.WaitFor(t, 10*time.Second, func() bool { return storedDeliveries(t, b) == 2*perTrigger-uint64(share) },
		"%d deliveries stored, want %d beyond the direct share of %d", storedDeliveries(t, b), 2*perTrigger-share, share)
	close(release)
	wtest.WaitFor(t, 10*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(got) == 2*perTrigger
	}, "not every event delivered")
	mu.Lock()
	defer mu.Unlock()
	for k, n := range got {
		if n != 1 {
			t.Errorf("%s delivered %d times", k, n)
		}
	}
}

// gatedDeliverer blocks each delivery until a token arrives on gate (or
// its context ends) and counts deliveries per event id.
type gatedDeliverer struct {
	gate chan struct{}
	mu   sync.Mutex
	got  map[string]int
}

func newGatedDeliverer() *gatedDeliverer {
	return &gatedDeliverer{gate: make(chan struct{}, 100), got: map[string]int{}}
}

func (g *gatedDeliverer) Deliver(ctx context.Context, _ string, ev event.Event) (*event.Event, error) {
	g.mu.Lock()
	g.got[ev.ID()]++
	g.mu.Unlock()
	select {
	case <-g.gate:
		return nil, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (g *gatedDeliverer) counts() map[string]int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return maps.Clone(g.got)
}

// TestDispatcherWaitsForABusySlot: when a trigger's only slot is busy, the
// dispatcher waits for it (up to slotWait) rather than storing the delivery;
// each event is delivered directly, once, and nothing is stored.
func TestDispatcherWaitsForABusySlot(t *testing.T) {
	g := newGatedDeliverer()
	b, srv := startBrokerWith(t, g, func(c *Config) { c.TriggerWorkers = 1; c.slotWait = time.Minute })
	b.StartDispatching()
	setTriggers(t, b, triggerYAML("one-slot", "", "{uri: http://one-slot.invalid/}", ""))
	for i := range 3 {
		post(t, srv, ingressCase{headers: caseBinary(fmt.Sprintf("w%d", i)), body: `{}`})
	}
	// The first holds the slot; the other two hold a place in the direct
	// share while they wait for it.
	wtest.WaitFor(t, 10*time.Second, func() bool { return b.direct.Load() == 3 },
		"%d direct deliveries reserved, want 3: one running and two waiting for its slot", b.direct.Load())
	for range 3 {
		g.gate <- struct{}{}
	}
	wtest.WaitFor(t, 10*time.Second, func() bool { return len(g.counts()) == 3 }, "not every event delivered")
	wtest.WaitFor(t, 10*time.Second, func() bool { return streamEmpty(b.conn.Load().js, eventsStream) }, "events not acknowledged")
	if n := storedDeliveries(t, b); n != 0 {
		t.Errorf("%d deliveries stored, want none: the slot was free within slotWait", n)
	}
	for id, n := range g.counts() {
		if n != 1 {
			t.Errorf("event %s delivered %d times", id, n)
		}
	}
	if n := testutil.ToFloat64(b.metrics.SlotWaits.WithLabelValues("acquired")); n < 1 {
		t.Errorf("slot waits that acquired counted %v, want at least 1", n)
	}
}

// TestBusyTriggerIsWaitedFor: a trigger whose slot stays busy for longer than
// slotWait, but which keeps finishing deliveries, is busy rather than slow:
// the dispatcher waits on, window by window, and every event is delivered
// directly. Three workers queue for one slot whose deliveries take 100 ms, so
// the last waits about 300 ms: past its first 250 ms window, within two.
func TestBusyTriggerIsWaitedFor(t *testing.T) {
	b := dispatchToOneSlot(t, "busy", 100*time.Millisecond, 3, 250*time.Millisecond, 8)
	if n := storedDeliveries(t, b); n != 0 {
		t.Errorf("%d deliveries stored, want none: the trigger kept finishing deliveries", n)
	}
	for _, outcome := range []string{"timed_out", "busy"} {
		if n := testutil.ToFloat64(b.metrics.SlotWaits.WithLabelValues(outcome)); n != 0 {
			t.Errorf("slot waits counted %s: %v, want none", outcome, n)
		}
	}
}

// TestLongQueueForASlotEndsTheWait: a trigger that keeps finishing
// deliveries is waited for at most slotWindows windows; a worker queued
// longer stores its delivery, counted busy, and the trigger then counts as
// slow. Twenty-four workers queue for one slot whose deliveries take 50 ms:
// the last would wait 1.15 s, past slotWindows windows of 200 ms.
func TestLongQueueForASlotEndsTheWait(t *testing.T) {
	b := dispatchToOneSlot(t, "queued", 50*time.Millisecond, 24, 200*time.Millisecond, 30)
	if n := testutil.ToFloat64(b.metrics.SlotWaits.WithLabelValues("busy")); n < 1 {
		t.Errorf("slot waits counted busy: %v, want at least one", n)
	}
	if n := testutil.ToFloat64(b.metrics.SlotWaits.WithLabelValues("timed_out")); n != 0 {
		t.Errorf("slot waits counted timed_out: %v, want none: the trigger kept finishing deliveries", n)
	}
	if n := storedDeliveries(t, b); n == 0 {
		t.Error("no delivery stored, want those whose wait ran out")
	}
}

// dispatchToOneSlot publishes events to trigger name, whose subscriber takes
// each to answer and which has one slot, with workers dispatch workers and
// slot waits of slotWait (the trigger never counts slow for long: slowFor
// is an hour), and returns the broker once every event was delivered, each
// exactly once, and acknowledged.
func dispatchToOneSlot(t *testing.T, name string, each time.Duration, workers int, slotWait time.Duration, events int) *Broker {
	t.Helper()
	d := &pacedDeliverer{each: each, got: map[string]int{}}
	b, srv := startBrokerWith(t, d, func(c *Config) {
		c.TriggerWorkers, c.DispatchWorkers = 1, workers
		c.slotWait, c.slowFor = slotWait, time.Hour
	})
	b.StartDispatching()
	setTriggers(t, b, triggerYAML(name, "", "{uri: http://"+name+".invalid/}", ""))
	for i := range events {
		post(t, srv, ingressCase{headers: caseBinary(fmt.Sprintf("%s%d", name, i)), body: `{}`})
	}
	wtest.WaitFor(t, 30*time.Second, func() bool { return len(d.counts()) == events }, "not every event delivered")
	wtest.WaitFor(t, 10*time.Second, func() bool { return streamEmpty(b.conn.Load().js, eventsStream) }, "events not acknowledged")
	for id, n := range d.counts() {
		if n != 1 {
			t.Errorf("event %s delivered %d times", id, n)
		}
	}
	return b
}

// pacedDeliverer is a subscriber that takes each to answer, and counts
// deliveries per event id.
type pacedDeliverer struct {
	each time.Duration
	mu   sync.Mutex
	got  map[string]int
}

func (p *pacedDeliverer) Deliver(ctx context.Context, _ string, ev event.Event) (*event.Event, error) {
	p.mu.Lock()
	p.got[ev.ID()]++
	p.mu.Unlock()
	select {
	case <-time.After(p.each):
		return nil, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (p *pacedDeliverer) counts() map[string]int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return maps.Clone(p.got)
}

// TestSlowTriggerStoredAtOnce: a wait for a slot that runs out marks the
// trigger slow; for slowFor its busy deliveries are stored without waiting,
// so one slow subscriber costs the dispatcher one slotWait, not one per event.
func TestSlowTriggerStoredAtOnce(t *testing.T) {
	g := newGatedDeliverer()
	b, srv := startBrokerWith(t, g, func(c *Config) {
		c.TriggerWorkers, c.DispatchWorkers = 1, 1
		c.slotWait, c.slowFor = 20*time.Millisecond, time.Hour
	})
	b.StartDispatching()
	setTriggers(t, b, triggerYAML("slow", "", "{uri: http://slow.invalid/}", ""))
	const events = 5
	for i := range events {
		post(t, srv, ingressCase{headers: caseBinary(fmt.Sprintf("s%d", i)), body: `{}`})
	}
	wtest.WaitFor(t, 10*time.Second, func() bool { return storedDeliveries(t, b) == events-1 },
		"%d deliveries stored, want %d: all but the one holding the slot", storedDeliveries(t, b), events-1)
	if n := testutil.ToFloat64(b.metrics.SlotWaits.WithLabelValues("timed_out")); n != 1 {
		t.Errorf("slot waits that timed out counted %v, want 1: after it the trigger counts as slow", n)
	}
	for range events {
		g.gate <- struct{}{}
	}
	wtest.WaitFor(t, 10*time.Second, func() bool { return len(g.counts()) == events }, "not every event delivered")
	wtest.WaitFor(t, 10*time.Second, func() bool { return streamEmpty(b.conn.Load().js, eventsStream) }, "events not acknowledged")
	for id, n := range g.counts() {
		if n != 1 {
			t.Errorf("event %s delivered %d times", id, n)
		}
	}
}

// TestKeptDeliveryGoroutines: a goroutine that made a direct delivery waits
// for the next one instead of exiting, and at most keptIdle of them wait.
// (They end with the broker's run: the cleanup waits for Run, which waits
// for them.)
func TestKeptDeliveryGoroutines(t *testing.T) {
	g := newGatedDeliverer()
	const many = keptIdle + 16
	b, srv := startBrokerWith(t, g, func(c *Config) { c.TriggerWorkers = many })
	b.StartDispatching()
	setTriggers(t, b, triggerYAML("kept", "", "{uri: http://kept.invalid/}", ""))
	// One at a time: each delivery runs on the goroutine the one before used.
	for i := range 5 {
		g.gate <- struct{}{}
		post(t, srv, ingressCase{headers: caseBinary(fmt.Sprintf("k%d", i)), body: `{}`})
		wtest.WaitFor(t, 10*time.Second, func() bool { return len(g.counts()) == i+1 && b.kept.idle.Load() == 1 },
			"after delivery %d: %d delivered, %d goroutines waiting, want %d and 1", i+1, len(g.counts()), b.kept.idle.Load(), i+1)
	}
	// Many at once: each needs a goroutine; afterwards only keptIdle wait.
	for i := range many {
		post(t, srv, ingressCase{headers: caseBinary(fmt.Sprintf("m%d", i)), body: `{}`})
	}
	wtest.WaitFor(t, 10*time.Second, func() bool { return len(g.counts()) == 5+many }, "not every event reached the subscriber")
	for range many {
		g.gate <- struct{}{}
	}
	wtest.WaitFor(t, 10*time.Second, func() bool { return streamEmpty(b.conn.Load().js, eventsStream) }, "events not acknowledged")
	wtest.WaitFor(t, 10*time.Second, func() bool { return b.kept.idle.Load() == keptIdle },
		"%d delivery goroutines waiting, want keptIdle = %d", b.kept.idle.Load(), keptIdle)
	if n := storedDeliveries(t, b); n != 0 {
		t.Errorf("%d deliveries stored, want none: every event had a slot", n)
	}
}
