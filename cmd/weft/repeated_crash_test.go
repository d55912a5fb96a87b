package main

import (
	"context"
	"fmt"
	"net/http"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// TestRepeatedKill9 kills weft with SIGKILL five times under load, after
// seeded random amounts of acknowledged events, restarting it on the same
// data dir each time; at the end every acknowledged event was delivered at
// least once (lost = 0, none dead-lettered) and the duplicates are
// reported and bounded (see dupWindow). The seed is printed so a failing run can be repeated
// (WEFT_TEST_SEED).
func TestRepeatedKill9(t *testing.T) {
	skipShort(t)
	rnd := seededRand(t)

	dir := t.TempDir()
	out := filepath.Join(dir, "received.jsonl")
	manifests := filepath.Join(dir, "manifests")
	writeLoadManifests(t, manifests, "sink", out, "2ms", 16, "{min: 1}")
	n := startNode(t, manifests, filepath.Join(dir, "data"))

	var acked sync.Map // id → when it was acknowledged
	var kills []time.Time
	client := &http.Client{Timeout: 5 * time.Second}
	for round := range 5 {
		killAt := int64(100 + rnd.IntN(300))
		var nAcked atomic.Int64
		var once sync.Once
		killed := make(chan struct{})
		var wg sync.WaitGroup
		for w := range 6 {
			wg.Go(func() {
				for i := 0; ; i++ {
					select {
					case <-killed:
						return
					default:
					}
					id := fmt.Sprintf("r%d-w%d-%d", round, w, i)
					if publishLoad(client, n.http, "/repeated-crash", id) == http.StatusAccepted {
						acked.Store(id, time.Now())
						if nAcked.Add(1) == killAt {
							once.Do(func() { kills = append(kills, time.Now()); n.kill9(); close(killed) })
						}
					}
				}
			})
		}
		wg.Wait()
		t.Logf("round %d: killed after %d acknowledgements", round, killAt)
		n.start()
	}

	r := checkDelivery(t, n, out, &acked, "everything")
	if r.Delivered != r.Acked {
		t.Errorf("not every acknowledged event was delivered: %v", r)
	}
	t.Log(r)
	// A kill repeats the deliveries handed out and not settled (a trigger's
	// consumer hands out at most TriggerWorkers, 32, at once) and those
	// acknowledged but not purged yet (broker/compact.go): on each of the two
	// consumers an event passes, at most 256, all acknowledged within
	// dupWindow before the kill.
	bound := 0
	for _, k := range kills {
		recent := 0
		acked.Range(func(_, v any) bool {
			if at := v.(time.Time); !at.After(k) && k.Sub(at) <= dupWindow {
				recent++
			}
			return true
		})
		bound += 32 + 2*min(recent, 256)
	}
	if r.Duplicated > bound {
		t.Errorf("%d events delivered more than once, more than %d kills × 32 in flight + twice the (at most 256) acknowledged within %s before each kill = %d",
			r.Duplicated, len(kills), dupWindow, bound)
	}
	t.Logf("duplicates %d, bound %d", r.Duplicated, bound)
	n.requireStreams(t, "WEFT_EVENTS", "WEFT_DELIVERIES", "WEFT_DLQ")
}

// dupWindow is how recent an acknowledgement can be and its delivery still
// be made again after a kill: the compactor purges a prefix at the latest
// 250 ms after the previous purge and reads the floors every 50 ms, plus the
// time from the ingress's acknowledgement to the delivery's under the race
// detector.
const dupWindow = 500 * time.Millisecond

// requireStreams fails unless each named JetStream stream exists on n.
func (n *weftNode) requireStreams(t *testing.T, names ...string) {
	t.Helper()
	nc, err := nats.Connect("nats://" + n.nats)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range names {
		if _, err := js.Stream(context.Background(), name); err != nil {
			t.Errorf("stream %s after the kills: %v", name, err)
		}
	}
}
