package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weft-dev/weft/internal/testutil"
)

// outageManifests writes a Function running the recorder (records to out,
// every request to hits, failing with 500 while failFlag exists, waiting
// while holdFlag exists) and a Trigger "orders" with the given delivery.
func outageManifests(t *testing.T, manifests, out, hits, failFlag, holdFlag, delivery string) {
	t.Helper()
	if err := os.MkdirAll(manifests, 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(manifests, "orders.yaml"), fmt.Sprintf(`apiVersion: weft.dev/v1
kind: Function
metadata: {name: backend}
spec:
  command: [%q]
  env: [{name: OUT, value: %q}, {name: HITS, value: %q}, {name: FAIL_FLAG, value: %q}, {name: HOLD_FLAG, value: %q}]
  concurrency: 8
  scale: {min: 1, max: 1}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: orders}
spec:
  subscriber: {ref: {apiVersion: weft.dev/v1, kind: Function, name: backend}}
  delivery: %s
`, recorderBin, out, hits, failFlag, holdFlag, delivery))
}

// TestDownstreamOutage: the function answers 500 to everything for a while.
// The circuit opens after --circuit-failures 5 and, while it is open, the
// function sees no more calls than the threshold, the attempts already in
// flight when it opened and the half-open probes; nothing is dropped (every
// acknowledged event is delivered or dead-lettered); after recovery a DLQ
// replay delivers the rest and empties the DLQ.
func TestDownstreamOutage(t *testing.T) {
	skipShort(t)
	dir := t.TempDir()
	out, hits := filepath.Join(dir, "received.jsonl"), filepath.Join(dir, "hits.jsonl")
	failFlag := filepath.Join(dir, "outage")
	if err := os.WriteFile(failFlag, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	outageManifests(t, filepath.Join(dir, "manifests"), out, hits, failFlag, filepath.Join(dir, "no-hold"),
		"{retry: 3, backoffDelay: PT0.05S}")
	const threshold, triggerWorkers = 5, 32 // broker.Config.TriggerWorkers bounds attempts in flight
	n := startNode(t, filepath.Join(dir, "manifests"), filepath.Join(dir, "data"),
		"--circuit-failures", strconv.Itoa(threshold), "--circuit-open", "500ms")

	var acked sync.Map
	client := &http.Client{Timeout: 10 * time.Second}
	const events = 200
	for i := range events {
		id := fmt.Sprintf("outage-%d", i)
		if code := publishLoad(client, n.http, "/outage", id); code != http.StatusAccepted {
			t.Fatalf("publish %s: %d", id, code)
		}
		acked.Store(id, true)
	}
	// The outage lasts until events have reached the DLQ through open-circuit
	// refusals, and at least four seconds.
	outageStart := time.Now()
	testutil.WaitFor(t, 60*time.Second, func() bool {
		return time.Since(outageStart) > 4*time.Second && len(dlqEntries(t, n, "orders")) > 0
	}, "no event reached the DLQ during the outage")
	opened := metricSum(t, n, "weft_circuit_opened_total")
	probes := metricSum(t, n, "weft_circuit_probes_total")
	refused := metricSum(t, n, "weft_circuit_rejected_total")
	failed := countHits(t, hits, "fail-flag")
	if err := os.Remove(failFlag); err != nil { // recovery
		t.Fatal(err)
	}
	outage := time.Since(outageStart)
	t.Logf("outage %s: %d events, the function saw %d failing calls; circuit opened %.0f times, %.0f probes, %.0f attempts refused without a call",
		outage.Round(time.Millisecond), events, failed, opened, probes, refused)
	if opened < 1 || refused < 1 {
		t.Fatalf("the circuit never opened (opened %.0f, refused %.0f)", opened, refused)
	}
	// Calls while closed end at the threshold, plus what was in flight when
	// it opened; after that only probes reach the function.
	if bound := threshold + triggerWorkers + int(probes); failed > bound {
		t.Errorf("the function saw %d failing calls, more than threshold %d + %d in flight + %.0f probes", failed, threshold, triggerWorkers, probes)
	}

	r := checkDelivery(t, n, out, &acked, "orders")
	t.Logf("after recovery, before replay: %s", r)
	if r.DeadLettered == 0 {
		t.Errorf("nothing was dead-lettered during the outage: %s", r)
	}
	start := time.Now()
	n.mustCLI(nil, "dlq", "replay", "--trigger", "orders")
	waitDelivered(t, out, &acked, 60*time.Second)
	testutil.WaitFor(t, 30*time.Second, func() bool { return len(dlqEntries(t, n, "orders")) == 0 }, "the DLQ was not emptied by the replay")
	r = checkDelivery(t, n, out, &acked, "orders")
	t.Logf("after replay (%s): %s", time.Since(start).Round(time.Millisecond), r)
	if r.Delivered != events {
		t.Errorf("delivered %d of %d after the replay", r.Delivered, events)
	}
}

// TestStorageFull: with --max-store-bytes 2 MiB and a function that holds
// every request, stored deliveries fill the store; the ingress then answers
// 503 with Retry-After and /readyz fails, and weft keeps running; when the
// function lets go, the deliveries drain, /readyz and the ingress recover,
// and every event acknowledged before was delivered.
func TestStorageFull(t *testing.T) {
	skipShort(t)
	dir := t.TempDir()
	out, hits := filepath.Join(dir, "received.jsonl"), filepath.Join(dir, "hits.jsonl")
	holdFlag := filepath.Join(dir, "hold")
	if err := os.WriteFile(holdFlag, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	outageManifests(t, filepath.Join(dir, "manifests"), out, hits, filepath.Join(dir, "no-fail"), holdFlag,
		"{retry: 10, backoffDelay: PT0.1S, timeout: PT120S}")
	n := startNode(t, filepath.Join(dir, "manifests"), filepath.Join(dir, "data"), "--max-store-bytes", strconv.Itoa(2<<20))

	var acked sync.Map
	client := &http.Client{Timeout: 10 * time.Second}
	pad := strings.Repeat("x", 8<<10)
	var refusedAt int
	for i := 0; refusedAt == 0; i++ {
		if i > 1000 {
			t.Fatal("8 MiB published into a 2 MiB store and never refused")
		}
		id := fmt.Sprintf("fill-%d", i)
		req, _ := http.NewRequest(http.MethodPost, "http://"+n.http+"/", strings.NewReader(`{"pad":"`+pad+`"}`))
		for k, v := range map[string]string{"Content-Type": "application/json", "ce-specversion": "1.0", "ce-id": id, "ce-source": "/full", "ce-type": "test.full"} {
			req.Header.Set(k, v)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("publish %s: %v", id, err)
		}
		resp.Body.Close()
		switch resp.StatusCode {
		case http.StatusAccepted:
			acked.Store(id, true)
		case http.StatusServiceUnavailable:
			if resp.Header.Get("Retry-After") == "" {
				t.Error("503 without Retry-After")
			}
			refusedAt = i
		default:
			t.Fatalf("publish %s: status %d, want 202 or 503", id, resp.StatusCode)
		}
	}
	if code := getCode(t, "http://"+n.http+"/readyz"); code != http.StatusServiceUnavailable {
		t.Errorf("/readyz answered %d while the store is full, want 503", code)
	}
	if code := getCode(t, "http://"+n.http+"/healthz"); code != http.StatusOK {
		t.Errorf("/healthz answered %d while the store is full: weft should be alive", code)
	}
	t.Logf("refused after %d events acknowledged; storage used %.0f of %.0f bytes", refusedAt,
		metricSum(t, n, "weft_storage_used_bytes"), metricSum(t, n, "weft_storage_limit_bytes"))

	start := time.Now()
	if err := os.Remove(holdFlag); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, 60*time.Second, func() bool { return getCode(t, "http://"+n.http+"/readyz") == http.StatusOK }, "/readyz never recovered")
	t.Logf("ready again %s after the function let go", time.Since(start).Round(time.Millisecond))
	// The guard also counts deliveries stored since its last sample, so a
	// publish may still get a 503 for a moment after /readyz turned.
	id := "after-recovery"
	testutil.WaitFor(t, 30*time.Second, func() bool {
		switch code := publishLoad(client, n.http, "/full", id); code {
		case http.StatusAccepted:
			return true
		case http.StatusServiceUnavailable:
			return false
		default:
			t.Fatalf("publish after recovery: %d, want 202 (or 503 for a moment)", code)
			return false
		}
	}, "the ingress never accepted again after recovery")
	acked.Store(id, true)
	r := checkDelivery(t, n, out, &acked, "orders")
	t.Log(r)
	if r.Delivered != r.Acked {
		t.Errorf("delivered %d of %d", r.Delivered, r.Acked)
	}
}

func getCode(t *testing.T, url string) int {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// metricSum adds up every sample of a metric on the node's /metrics.
func metricSum(t *testing.T, n *weftNode, name string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + n.http + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sum := 0.0
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
		if err != nil {
			t.Fatalf("/metrics: %q: %v", line, err)
		}
		sum += v
	}
	return sum
}

// countHits counts the recorder's $HITS lines with the given outcome.
func countHits(t *testing.T, path, outcome string) int {
	t.Helper()
	f, err := os.Open(path)
	if os.IsNotExist(err) {
		return 0
	}
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	n := 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var h map[string]string
		if json.Unmarshal(sc.Bytes(), &h) == nil && h["outcome"] == outcome {
			n++
		}
	}
	return n
}
