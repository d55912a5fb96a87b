package main

import (
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestRepeatedKill9 kills weft with SIGKILL five times under load, after
// seeded random amounts of acknowledged events, restarting it on the same
// data dir each time; at the end every acknowledged event was delivered at
// least once (lost = 0) and the duplicates are reported. The seed is
// printed so a failing run can be repeated (WEFT_TEST_SEED).
func TestRepeatedKill9(t *testing.T) {
	skipShort(t)
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("WEFT_TEST_SEED"); s != "" {
		if _, err := fmt.Sscan(s, &seed); err != nil {
			t.Fatalf("WEFT_TEST_SEED=%q: %v", s, err)
		}
	}
	t.Logf("seed %d (rerun with WEFT_TEST_SEED=%d)", seed, seed)
	rnd := rand.New(rand.NewPCG(seed, seed))

	dir := t.TempDir()
	out := filepath.Join(dir, "received.jsonl")
	manifests := filepath.Join(dir, "manifests")
	writeLoadManifests(t, manifests, "sink", out, "2ms", 16, "{min: 1}")
	n := startNode(t, manifests, filepath.Join(dir, "data"))

	var acked sync.Map
	var total atomic.Int64
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
						total.Add(1)
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

	waitDelivered(t, out, &acked, 120*time.Second)
	_, dups := duplicates(t, out)
	t.Logf("acknowledged %d, lost 0, delivered more than once %d", total.Load(), dups)
}
