package main

import (
	"fmt"
	"net/http"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/weft-dev/weft/internal/testutil"
)

// TestCrashLosesNoAcknowledgedEvent publishes 1,000 events, kill -9s weft
// while deliveries are in flight, restarts it on the same data dir, and
// checks that every event answered 202 reached the function at least once.
// It also checks that the function process did not outlive weft.
func TestCrashLosesNoAcknowledgedEvent(t *testing.T) {
	skipShort(t)
	dir := t.TempDir()
	out := filepath.Join(dir, "received.jsonl")
	manifests := filepath.Join(dir, "manifests")
	writeLoadManifests(t, manifests, "sink", out, "2ms", 16, "{min: 1}")
	n := startNode(t, manifests, filepath.Join(dir, "data"))

	var fn []struct {
		Instances []struct {
			PID int `json:"pid"`
		} `json:"instances"`
	}
	testutil.WaitFor(t, 30*time.Second, func() bool {
		n.mustCLI(&fn, "get", "functions", "-o", "json")
		return len(fn) == 1 && len(fn[0].Instances) == 1 && fn[0].Instances[0].PID > 0
	}, "function instance never started")
	workerPID := fn[0].Instances[0].PID

	const total = 1000
	var acked sync.Map
	var nAcked atomic.Int64
	killed := make(chan struct{})
	var once sync.Once
	var wg sync.WaitGroup
	next := atomic.Int64{}
	client := &http.Client{Timeout: 10 * time.Second}
	for range 8 {
		wg.Go(func() {
			for {
				i := next.Add(1)
				if i > total {
					return
				}
				id := fmt.Sprintf("crash-%04d", i)
				if publishLoad(client, n.http, "/crash-test", id) == http.StatusAccepted {
					acked.Store(id, true)
					if nAcked.Add(1) == total/2 {
						once.Do(func() { n.kill9(); close(killed) })
					}
				}
			}
		})
	}
	wg.Wait()
	select {
	case <-killed:
	default:
		t.Fatalf("only %d events acknowledged before the kill", nAcked.Load())
	}
	delivered := ids(records(t, out))
	t.Logf("acknowledged %d of %d; %d delivered before kill -9", nAcked.Load(), total, len(delivered))

	// No worker outlives weft (parent-death signal).
	testutil.WaitFor(t, 10*time.Second, func() bool {
		return syscall.Kill(workerPID, 0) == syscall.ESRCH
	}, "worker pid %d survived kill -9 of weft", workerPID)

	n.start() // same data dir, same ports
	r := checkDelivery(t, n, out, &acked, "everything")
	if r.Delivered != r.Acked {
		t.Errorf("not every acknowledged event was delivered: %v", r)
	}
	t.Logf("after restart: %v (at-least-once)", r)
}
