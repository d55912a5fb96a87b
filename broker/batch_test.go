package broker

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	wtest "github.com/weft-dev/weft/internal/testutil"
)

func testEvent(source, id string) event.Event {
	ev := event.New()
	ev.SetID(id)
	ev.SetSource(source)
	ev.SetType("test.batch")
	_ = ev.SetData("application/json", map[string]string{"id": id})
	return ev
}

// streamMsgs is how many events WEFT_EVENTS holds (before dispatching).
func streamMsgs(t *testing.T, b *Broker) uint64 {
	t.Helper()
	return streamMsgCount(t, b.conn.Load().js, eventsStream)
}

// TestConcurrentStoreGroupCommit: 2 × atomicMin goroutines store 50 events
// each, one by one and in small slices; every event is stored exactly once,
// many of them in shared atomic batches, and all are then dispatched.
func TestConcurrentStoreGroupCommit(t *testing.T) {
	rec := newRecorder()
	b, _ := startStoringBroker(t, rec)
	setTriggers(t, b, triggerYAML("all", "", "{uri: http://all.invalid/}", ""))
	const workers, per = 2 * atomicMin, 50
	storeFromWorkers(t, b, "/w", workers, per, func(i int) int { return 1 + (i/7)%3 }) // slices of 1, 2 or 3 events
	if got := streamMsgs(t, b); got != workers*per {
		t.Fatalf("stream holds %d events, want %d", got, workers*per)
	}
	if s, d := testutil.ToFloat64(b.metrics.Stored), testutil.ToFloat64(b.metrics.Duplicates); s != workers*per || d != 0 {
		t.Fatalf("stored %v duplicates %v, want %d and 0", s, d, workers*per)
	}
	bt := b.batcher()
	if bt.atomicBatches.Load() == 0 {
		t.Fatal("no atomic batch was committed")
	}
	if f := bt.fallbacks.Load(); f != 0 {
		t.Fatalf("%d batches fell back to one-by-one publishing", f)
	}
	t.Logf("%d atomic batches for %d events", bt.atomicBatches.Load(), workers*per)

	b.StartDispatching()
	target := "http://all.invalid/"
	wtest.WaitFor(t, 30*time.Second, func() bool { return rec.count(target) >= workers*per })
	ids := rec.ids(target)
	slices.Sort(ids)
	if len(slices.Compact(ids)) != workers*per {
		t.Fatalf("dispatched %d distinct of %d deliveries, want %d", len(slices.Compact(ids)), len(ids), workers*per)
	}
}

// storeFromWorkers has workers goroutines store per events each through
// Store, in slices of sliceLen(i) events from the i-th on, and fails t if a
// call fails. Event ids are <worker>-<i>, sources source.
func storeFromWorkers(t *testing.T, b *Broker, source string, workers, per int, sliceLen func(i int) int) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Go(func() {
			for i := 0; i < per; {
				n := min(sliceLen(i), per-i)
				evs := make([]event.Event, n)
				for k := range evs {
					evs[k] = testEvent(source, fmt.Sprintf("%d-%d", w, i+k))
				}
				if err := b.Store(context.Background(), evs); err != nil {
					errs <- err
					return
				}
				i += n
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// storeItems encodes evs into queue items of one call, as Store does.
func storeItems(t *testing.T, b *Broker, evs []event.Event) ([]storeItem, *storeCall) {
	t.Helper()
	call := &storeCall{b: b}
	call.expect(len(evs))
	items := make([]storeItem, len(evs))
	for i := range evs {
		body, err := evs[i].MarshalJSON()
		if err != nil {
			t.Fatal(err)
		}
		b.inflight <- struct{}{} // resolve releases it
		items[i] = storeItem{id: msgID(evs[i].Source(), evs[i].ID()), data: body, call: call}
	}
	return items, call
}

func callErr(t *testing.T, c *storeCall) error {
	t.Helper()
	select {
	case <-c.done:
	case <-time.After(30 * time.Second):
		t.Fatal("call not resolved")
	}
	return c.err
}

// TestBatchDuplicates commits batches directly: a (source, id) twice in one
// batch is sent once and acknowledged twice; a batch holding an event already
// stored is refused whole by the server (10201) and then published one by
// one, so the duplicate is acknowledged and the rest stored once. Each batch
// is padded to atomicMin distinct events, so it is sent as an atomic batch.
func TestBatchDuplicates(t *testing.T) {
	b, _ := startStoringBroker(t, newRecorder())
	bt := b.batcher()
	padded := func(prefix string, evs ...event.Event) []event.Event {
		for i := 0; len(evs) < atomicMin+1; i++ {
			evs = append(evs, testEvent("/d", fmt.Sprintf("%s-%d", prefix, i)))
		}
		return evs
	}

	items, call := storeItems(t, b, padded("p", testEvent("/d", "a"), testEvent("/d", "b"), testEvent("/d", "a")))
	b.commit(bt, items)
	if err := callErr(t, call); err != nil {
		t.Fatal(err)
	}
	if got := streamMsgs(t, b); got != atomicMin {
		t.Fatalf("stream holds %d events, want %d", got, atomicMin)
	}
	if a, f := bt.atomicBatches.Load(), bt.fallbacks.Load(); a != 1 || f != 0 {
		t.Fatalf("atomic %d fallbacks %d, want 1 and 0", a, f)
	}

	// Across batches: "a" is already stored.
	items, call = storeItems(t, b, padded("q", testEvent("/d", "c"), testEvent("/d", "a"), testEvent("/d", "d")))
	b.commit(bt, items)
	if err := callErr(t, call); err != nil {
		t.Fatal(err)
	}
	if got := streamMsgs(t, b); got != 2*atomicMin {
		t.Fatalf("stream holds %d events, want %d", got, 2*atomicMin)
	}
	if f := bt.fallbacks.Load(); f != 1 {
		t.Fatalf("fallbacks %d, want 1 (the server refuses a batch holding a stored Nats-Msg-Id)", f)
	}
	if s, d := testutil.ToFloat64(b.metrics.Stored), testutil.ToFloat64(b.metrics.Duplicates); s != 2*atomicMin || d != 2 {
		t.Fatalf("stored %v duplicates %v, want %d and 2", s, d, 2*atomicMin)
	}

	// Through Store (below atomicMin: published one by one): duplicates
	// within one call and of stored events.
	if err := b.Store(context.Background(), []event.Event{testEvent("/d", "e"), testEvent("/d", "e"), testEvent("/d", "b")}); err != nil {
		t.Fatal(err)
	}
	if got := streamMsgs(t, b); got != 2*atomicMin+1 {
		t.Fatalf("stream holds %d events, want %d", got, 2*atomicMin+1)
	}
}

// TestBatchFailureNotAcknowledged: an event the server refuses fails its own
// call with ErrUnavailable; the events batched with it are still stored.
func TestBatchFailureNotAcknowledged(t *testing.T) {
	b, _ := startStoringBroker(t, newRecorder())
	bt := b.batcher()
	good1, c1 := storeItems(t, b, []event.Event{testEvent("/f", "1")})
	bad, c2 := storeItems(t, b, []event.Event{testEvent("/f", "2")})
	bad[0].data = []byte(strings.Repeat("x", 1<<20+1)) // above MaxMsgSize
	good2, c3 := storeItems(t, b, []event.Event{testEvent("/f", "3")})
	b.commit(bt, slices.Concat(good1, bad, good2))
	if err := callErr(t, c1); err != nil {
		t.Fatal(err)
	}
	if err := callErr(t, c2); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("oversized event: %v, want ErrUnavailable", err)
	}
	if err := callErr(t, c3); err != nil {
		t.Fatal(err)
	}
	if got := streamMsgs(t, b); got != 2 {
		t.Fatalf("stream holds %d events, want 2", got)
	}
}

// TestStoreSplitsLargeCall: one call with more events than a batch holds is
// split over several atomic batches, each event stored once.
func TestStoreSplitsLargeCall(t *testing.T) {
	b, _ := startStoringBroker(t, newRecorder())
	const n = 2*batchMax + batchMax/2
	evs := make([]event.Event, n)
	for i := range evs {
		evs[i] = testEvent("/s", fmt.Sprint(i))
	}
	if err := b.Store(context.Background(), evs); err != nil {
		t.Fatal(err)
	}
	if got := streamMsgs(t, b); got != n {
		t.Fatalf("stream holds %d events, want %d", got, n)
	}
	a := b.batcher().atomicBatches.Load()
	if a < 3 {
		t.Fatalf("%d atomic batches, want at least 3 for %d events of at most %d", a, n, batchMax)
	}
	if commits, events := commitEvents(t, b); commits != a || events != n {
		t.Fatalf("weft_store_commit_events counted %d commits of %d events, want %d of %d", commits, events, a, n)
	}
	if len(b.inflight) != 0 {
		t.Fatalf("%d in-flight slots still held", len(b.inflight))
	}
}

// TestLoneStoreNotHeld: a Store with no other Store running is answered
// without waiting for companions to fill a batch, again and again.
func TestLoneStoreNotHeld(t *testing.T) {
	b, _ := startStoringBroker(t, newRecorder())
	for i := range 20 {
		if err := b.Store(context.Background(), []event.Event{testEvent("/l", fmt.Sprint(i))}); err != nil {
			t.Fatal(err)
		}
		if got := streamMsgs(t, b); got != uint64(i+1) {
			t.Fatalf("stream holds %d events, want %d", got, i+1)
		}
	}
	if commits, events := commitEvents(t, b); commits != 20 || events != 20 {
		t.Fatalf("weft_store_commit_events counted %d commits of %d events, want 20 of one each", commits, events)
	}
	bt := b.batcher()
	bt.mu.Lock()
	defer bt.mu.Unlock()
	if len(bt.queue) != 0 {
		t.Fatalf("%d events still queued", len(bt.queue))
	}
}

// commitEvents reads weft_store_commit_events: how many fsynced commits it
// counted and the events they stored.
func commitEvents(t *testing.T, b *Broker) (commits uint64, events int) {
	t.Helper()
	var m dto.Metric
	if err := b.metrics.CommitEvents.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetHistogram().GetSampleCount(), int(m.GetHistogram().GetSampleSum())
}
