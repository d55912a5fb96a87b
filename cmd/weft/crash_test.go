package main

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
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
				req, _ := http.NewRequest(http.MethodPost, "http://"+n.http+"/", strings.NewReader(`{"i":1}`))
				req.Header.Set("Content-Type", "application/json")
				req.Header.Set("ce-specversion", "1.0")
				req.Header.Set("ce-id", id)
				req.Header.Set("ce-source", "/crash-test")
				req.Header.Set("ce-type", "test.crash")
				resp, err := client.Do(req)
				if err != nil {
					continue // weft is gone: not acknowledged, nothing is owed
				}
				resp.Body.Close()
				if resp.StatusCode == http.StatusAccepted {
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
	// Polls rather than testutil.WaitFor so that a failure lists what is missing.
	var missing []string
	for deadline := time.Now().Add(90 * time.Second); ; {
		got := ids(records(t, out))
		missing = missing[:0]
		acked.Range(func(k, _ any) bool {
			if got[k.(string)] == 0 {
				missing = append(missing, k.(string))
			}
			return true
		})
		if len(missing) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d acknowledged events never delivered, e.g. %v", len(missing), missing[:min(5, len(missing))])
		}
		<-time.After(50 * time.Millisecond)
	}
	got := ids(records(t, out))
	dups := 0
	for _, c := range got {
		if c > 1 {
			dups++
		}
	}
	t.Logf("after restart: %d distinct events delivered, %d more than once (at-least-once)", len(got), dups)
}
