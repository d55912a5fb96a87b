package main

import (
	"fmt"
	"net/http"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestRepeatedKill9 kills weft with SIGKILL five times under load, after
// seeded random amounts of acknowledged events, restarting it on the same
// data dir each time; at the end every acknowledged event was delivered at
// least once (lost = 0, none dead-lettered) and the duplicates are
// reported. The seed is printed so a failing run can be repeated
// (WEFT_TEST_SEED).
func TestRepeatedKill9(t *testing.T) {
	skipShort(t)
	rnd := seededRand(t)

	dir := t.TempDir()
	out := filepath.Join(dir, "received.jsonl")
	manifests := filepath.Join(dir, "manifests")
	writeLoadManifests(t, manifests, "sink", out, "2ms", 16, "{min: 1}")
	n := startNode(t, manifests, filepath.Join(dir, "data"))

	var acked sync.Map
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
						acked.Store(id, true)
						if nAcked.Add(1) == killAt {
							once.Do(func() { n.kill9(); close(killed) })
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
}
