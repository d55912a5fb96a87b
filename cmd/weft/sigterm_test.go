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

// TestSIGTERMUnderLoad stops weft with SIGTERM while events are published
// and delivered: it exits 0 within its drain bounds, leaves no worker
// process behind, and after a restart every acknowledged event reaches the
// function (in-flight work either finished or was left for redelivery).
func TestSIGTERMUnderLoad(t *testing.T) {
	skipShort(t)
	dir := t.TempDir()
	out := filepath.Join(dir, "received.jsonl")
	manifests := filepath.Join(dir, "manifests")
	writeLoadManifests(t, manifests, "slow", out, "20ms", 8, "{min: 1, max: 2, target: 4}")
	n := startNode(t, manifests, filepath.Join(dir, "data"))

	var acked sync.Map
	var nAcked atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	client := &http.Client{Timeout: 10 * time.Second}
	for w := range 4 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				id := fmt.Sprintf("term-%d-%d", w, i)
				if publishLoad(client, n.http, "/sigterm", id) == http.StatusAccepted {
					acked.Store(id, true)
					nAcked.Add(1)
				}
			}
		})
	}
	testutil.WaitFor(t, 30*time.Second, func() bool { return nAcked.Load() >= 300 }, "load never got going")

	var pids []int
	for _, in := range n.function(t, "slow").Instances {
		pids = append(pids, in.PID)
	}
	start := time.Now()
	if err := n.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-n.exited:
	case <-time.After(60 * time.Second):
		t.Fatal("weft did not exit within 60s of SIGTERM")
	}
	close(stop)
	wg.Wait()
	if code := n.cmd.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("weft exited %d after SIGTERM:\n%s", code, tail(n.log.String(), 30))
	}
	t.Logf("exited %v after SIGTERM with %d events acknowledged", time.Since(start).Round(time.Millisecond), nAcked.Load())
	for _, pid := range pids {
		if pid > 0 && syscall.Kill(pid, 0) != syscall.ESRCH {
			t.Errorf("worker %d outlived weft", pid)
		}
	}

	n.start()
	r := checkDelivery(t, n, out, &acked, "everything")
	if r.Delivered != r.Acked {
		t.Errorf("not every acknowledged event was delivered: %v", r)
	}
	t.Logf("after restart: %v", r)
}
