package broker

import (
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	wtest "github.com/weft-dev/weft/internal/testutil"
)

// TestEarlyDispatch: events stored one by one have their deliveries started
// by Store as soon as they are stored; the dispatcher's consumer then only
// settles them. Each event arrives once, concurrent publishers included, and
// every event is acknowledged.
func TestEarlyDispatch(t *testing.T) {
	rec := newRecorder()
	b, srv := startBroker(t, rec)
	setTriggers(t, b, triggerYAML("early", "", "{uri: http://early.invalid/}", ""))
	const sequential, publishers, each = 20, 4, 25
	for i := range sequential {
		if got := post(t, srv, ingressCase{headers: caseBinary(fmt.Sprintf("e%d", i)), body: `{}`}); got != http.StatusAccepted {
			t.Fatalf("status %d", got)
		}
	}
	var wg sync.WaitGroup
	for p := range publishers {
		wg.Go(func() {
			for i := range each {
				post(t, srv, ingressCase{headers: caseBinary(fmt.Sprintf("c%d-%d", p, i)), body: `{}`})
			}
		})
	}
	wg.Wait()
	const total = sequential + publishers*each
	wtest.WaitFor(t, 10*time.Second, func() bool { return rec.count("http://early.invalid/") >= total }, "events not delivered")
	wtest.WaitFor(t, 10*time.Second, func() bool { return streamEmpty(b.conn.Load().js, eventsStream) }, "events not acknowledged")
	seen := map[string]int{}
	for _, id := range rec.ids("http://early.invalid/") {
		seen[id]++
	}
	for id, n := range seen {
		if n != 1 {
			t.Errorf("event %s delivered %d times", id, n)
		}
	}
	if len(seen) != total {
		t.Errorf("%d events delivered, want %d", len(seen), total)
	}
	if n := b.earlyStarted.Load(); n == 0 {
		t.Error("no event was dispatched early")
	}
	b.earlyMu.Lock()
	left := len(b.early)
	b.earlyMu.Unlock()
	if left != 0 {
		t.Errorf("%d early reservations left after every event was settled", left)
	}
	if n := storedDeliveries(t, b); n != 0 {
		t.Errorf("%d deliveries stored, want none", n)
	}
}
