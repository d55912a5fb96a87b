package main

import (
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/weft-dev/weft/broker"
)

// faultReport classifies the acknowledged events of a fault test. Every
// acknowledged event is exactly one of delivered, dead-lettered or lost, so
// Acked = Delivered + DeadLettered + Lost; Duplicated counts the delivered
// events that reached the function more than once (at-least-once allows
// them, lost must be zero).
type faultReport struct{ Acked, Delivered, DeadLettered, Lost, Duplicated int }

// String sums the report up on one line, for t.Log.
func (r faultReport) String() string {
	return fmt.Sprintf("acknowledged %d: delivered %d (%d more than once), dead-lettered %d, lost %d",
		r.Acked, r.Delivered, r.Duplicated, r.DeadLettered, r.Lost)
}

// seededRand returns a generator seeded from WEFT_TEST_SEED, or from the
// clock when that is unset, and logs the seed, again at the end when the
// test failed, so that a failing run can be repeated.
func seededRand(t *testing.T) *rand.Rand {
	t.Helper()
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("WEFT_TEST_SEED"); s != "" {
		if _, err := fmt.Sscan(s, &seed); err != nil {
			t.Fatalf("WEFT_TEST_SEED=%q: %v", s, err)
		}
	}
	t.Logf("seed %d (rerun with WEFT_TEST_SEED=%d)", seed, seed)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("failed with seed %d: rerun with WEFT_TEST_SEED=%d", seed, seed)
		}
	})
	return rand.New(rand.NewPCG(seed, seed))
}

// checkWait bounds how long checkDelivery waits for every acknowledged event
// to be delivered or dead-lettered: a restarted node may have thousands of
// deliveries to catch up on.
const checkWait = 120 * time.Second

// checkDelivery classifies every acknowledged event (the keys of acked, ids
// published to n) as delivered (recorded in the recorder's $OUT, out),
// dead-lettered (in the node DLQ of trigger, as `weft dlq ls --trigger
// trigger` lists it; "" means every trigger) or lost. It first waits, up to
// checkWait, until no event is unaccounted for and then until n has no
// delivery pending, so the counts are final; an event both recorded and
// dead-lettered (a function that recorded it but answered too late) counts
// as delivered. Lost events fail the test, naming a few; the caller asserts
// the rest of the report.
func checkDelivery(t *testing.T, n *weftNode, out string, acked *sync.Map, trigger string) faultReport {
	t.Helper()
	var keys []string
	acked.Range(func(k, _ any) bool {
		keys = append(keys, k.(string))
		return true
	})
	slices.Sort(keys)

	var dead map[string]bool
	var lastDLQ time.Time
	classify := func(fresh bool) (r faultReport, lost []string) {
		got := ids(records(t, out))
		r.Acked = len(keys)
		var missing []string
		for _, id := range keys {
			switch c := got[id]; {
			case c > 1:
				r.Duplicated++
				fallthrough
			case c == 1:
				r.Delivered++
			default:
				missing = append(missing, id)
			}
		}
		// Listing the DLQ runs the CLI: once a second is enough while waiting.
		if len(missing) > 0 && (fresh || dead == nil || time.Since(lastDLQ) > time.Second) {
			dead, lastDLQ = dlqEventIDs(t, n, trigger), time.Now()
		}
		for _, id := range missing {
			if dead[id] {
				r.DeadLettered++
			} else {
				lost = append(lost, id)
			}
		}
		r.Lost = len(lost)
		return r, lost
	}

	r, lost := classify(false)
	for deadline := time.Now().Add(checkWait); len(lost) > 0 && time.Now().Before(deadline); {
		<-time.After(100 * time.Millisecond) // a polling interval
		r, lost = classify(false)
	}
	if len(lost) == 0 {
		n.settled(t) // no retry or redelivery left: duplicates are final too
		r, lost = classify(true)
	}
	if len(lost) > 0 {
		t.Errorf("%d acknowledged events lost (neither delivered nor in the DLQ of %q after %v), e.g. %v; %v",
			len(lost), trigger, checkWait, lost[:min(5, len(lost))], r)
	}
	return r
}

// dlqEntries lists the node DLQ of trigger ("" for every trigger) through
// the CLI.
func dlqEntries(t *testing.T, n *weftNode, trigger string) []broker.DLQEntry {
	t.Helper()
	args := []string{"dlq", "ls", "-o", "json"}
	if trigger != "" {
		args = append(args, "--trigger", trigger)
	}
	var list []broker.DLQEntry
	n.mustCLI(&list, args...)
	return list
}

// dlqEventIDs returns the event ids in the node DLQ of trigger.
func dlqEventIDs(t *testing.T, n *weftNode, trigger string) map[string]bool {
	t.Helper()
	out := map[string]bool{}
	for _, e := range dlqEntries(t, n, trigger) {
		out[e.Event.ID()] = true
	}
	return out
}
