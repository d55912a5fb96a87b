package main

import (
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/weft-dev/weft/internal/testutil"
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
	if err := os.Mkdir(manifests, 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(manifests, "crash.yaml"), fmt.Sprintf(`apiVersion: weft.dev/v1
kind: Function
metadata: {name: sink}
spec:
  command: [%q]
  env: [{name: OUT, value: %q}, {name: DELAY, value: 2ms}]
  concurrency: 16
  scale: {min: 1}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: everything}
spec:
  subscriber: {ref: {apiVersion: weft.dev/v1, kind: Function, name: sink}}
  delivery: {retry: 10, backoffDelay: PT0.05S}
`, recorderBin, out))
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
					req, _ := http.NewRequest(http.MethodPost, "http://"+n.http+"/", strings.NewReader(`{}`))
					req.Header.Set("Content-Type", "application/json")
					req.Header.Set("ce-specversion", "1.0")
					req.Header.Set("ce-id", id)
					req.Header.Set("ce-source", "/repeated-crash")
					req.Header.Set("ce-type", "test.crash")
					resp, err := client.Do(req)
					if err != nil {
						continue
					}
					resp.Body.Close()
					if resp.StatusCode == http.StatusAccepted {
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

	var missing []string
	testutil.WaitFor(t, 120*time.Second, func() bool {
		got := ids(records(t, out))
		missing = missing[:0]
		acked.Range(func(k, _ any) bool {
			if got[k.(string)] == 0 {
				missing = append(missing, k.(string))
			}
			return true
		})
		return len(missing) == 0
	}, "acknowledged events lost after repeated kill -9 (seed %d): e.g. %v", seed, missing)
	got := ids(records(t, out))
	dups := 0
	for _, c := range got {
		if c > 1 {
			dups++
		}
	}
	t.Logf("acknowledged %d, lost 0, delivered more than once %d", total.Load(), dups)
}
