package main

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/weft-dev/weft/internal/testutil"
)

// functionView is what `weft get functions -o json` prints for one function.
type functionView struct {
	Name      string `json:"name"`
	State     string `json:"state"`
	Desired   int    `json:"desired"`
	Restarts  int    `json:"restarts"`
	Waiting   int    `json:"waiting"`
	InFlight  int    `json:"inFlight"`
	Instances []struct {
		ID  string `json:"id"`
		PID int    `json:"pid"`
	} `json:"instances"`
	Decisions []struct {
		Desired int    `json:"desired"`
		Reason  string `json:"reason"`
	} `json:"decisions"`
}

func (n *weftNode) function(t *testing.T, name string) functionView {
	t.Helper()
	var fns []functionView
	n.mustCLI(&fns, "get", "functions", "-o", "json")
	for _, f := range fns {
		if f.Name == name {
			return f
		}
	}
	t.Fatalf("function %s not listed", name)
	return functionView{}
}

// TestAutoscaleEndToEnd runs the real binary with an elastic function: idle
// it has no process; a burst of events grows it to several processes (seen
// through the API and the OS); every event is delivered; idle again it
// returns to zero. Then an instance killed with SIGKILL mid-request is
// replaced and its request is retried per the trigger's policy.
func TestAutoscaleEndToEnd(t *testing.T) {
	skipShort(t)
	dir := t.TempDir()
	out, marks := filepath.Join(dir, "received.jsonl"), filepath.Join(dir, "marks")
	if err := os.Mkdir(marks, 0o755); err != nil {
		t.Fatal(err)
	}
	manifests := filepath.Join(dir, "manifests")
	if err := os.Mkdir(manifests, 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(manifests, "elastic.yaml"), fmt.Sprintf(`apiVersion: weft.dev/v1
kind: Function
metadata: {name: elastic}
spec:
  command: [%q]
  env: [{name: OUT, value: %q}, {name: DELAY, value: 300ms}, {name: HOLD, value: 20s}, {name: MARKS, value: %q}]
  concurrency: 1
  scale: {min: 0, max: 4, target: 1, stableWindow: 6s, scaleToZeroGrace: 6s}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: to-elastic}
spec:
  filters: [{prefix: {type: test.elastic}}]
  subscriber: {ref: {apiVersion: weft.dev/v1, kind: Function, name: elastic}}
  delivery: {retry: 5, backoffDelay: PT0.2S, timeout: PT30S}
`, recorderBin, out, marks))
	n := startNode(t, manifests, filepath.Join(dir, "data"))

	if f := n.function(t, "elastic"); f.State != "idle" || len(f.Instances) != 0 {
		t.Fatalf("idle function: %+v", f)
	}

	var batch []string
	for i := range 30 {
		batch = append(batch, fmt.Sprintf(`{"specversion":"1.0","id":"burst-%02d","source":"/e2e","type":"test.elastic"}`, i))
	}
	if s := n.post("application/cloudevents-batch+json", nil, "["+strings.Join(batch, ",")+"]"); s != http.StatusAccepted {
		t.Fatalf("batch: %d", s)
	}
	peak := 0
	testutil.WaitFor(t, 60*time.Second, func() bool {
		live := 0
		for _, in := range n.function(t, "elastic").Instances {
			if in.PID > 0 && syscall.Kill(in.PID, 0) == nil {
				live++
			}
		}
		peak = max(peak, live)
		return len(ids(records(t, out))) == 30
	}, "not every event of the burst was delivered")
	if peak < 2 {
		t.Fatalf("the pool never grew beyond %d live process(es)", peak)
	}
	t.Logf("burst of 30: peak %d live processes", peak)

	testutil.WaitFor(t, 60*time.Second, func() bool {
		f := n.function(t, "elastic")
		return f.State == "idle" && len(f.Instances) == 0
	}, "the pool did not return to zero")
	f := n.function(t, "elastic")
	if last := f.Decisions[len(f.Decisions)-1]; last.Desired != 0 || !strings.Contains(last.Reason, "zero") {
		t.Errorf("last decision %+v, want a scale to zero", last)
	}
	if out := n.mustCLI(nil, "describe", "function", "elastic"); !strings.Contains(out, "decisions") || !strings.Contains(out, "reason") {
		t.Errorf("describe does not show scaling decisions:\n%s", out)
	}

	// SIGKILL mid-request: the marker says the process holds the request.
	n.mustCLI(nil, "publish", "--type", "test.elastic.hold", "--source", "/e2e", "--id", "held")
	var killed int
	testutil.WaitFor(t, 30*time.Second, func() bool {
		m, _ := filepath.Glob(filepath.Join(marks, "held.*"))
		if len(m) == 0 {
			return false
		}
		_, err := fmt.Sscanf(filepath.Ext(m[0]), ".%d", &killed)
		return err == nil
	}, "the held request never reached an instance")
	if err := syscall.Kill(killed, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, 60*time.Second, func() bool {
		m, _ := filepath.Glob(filepath.Join(marks, "held.*"))
		return len(m) >= 2
	}, "the killed request was not retried on a new instance")
	f = n.function(t, "elastic")
	if f.Restarts < 1 {
		t.Errorf("restarts %d after a SIGKILL", f.Restarts)
	}
	for _, in := range f.Instances {
		if in.PID == killed {
			t.Errorf("the killed process %d is still listed", killed)
		}
	}
}
