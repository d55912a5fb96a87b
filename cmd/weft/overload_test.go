//go:build faults

package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// plainWeft is a weft binary built without the race detector, whose memory
// figures mean something (the race detector multiplies them).
var plainWeft = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "weft-plain")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "weft")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build: %v\n%s", err, out)
	}
	return bin, nil
})

// Overload settings. The generator keeps fewer connections than the node
// accepts (--max-connections 1024), so every request gets an HTTP answer;
// --max-inflight 256 makes the node refuse with 429 rather than queue.
const (
	overloadFactor      = 10
	overloadDuration    = 60 * time.Second
	overloadConnections = 1000
	overloadInflight    = 256
	// What bounds the node's memory under overload, without the race
	// detector (the node's own idle RSS is added at run time):
	// 1000 connections × 64 KiB (goroutine stack, bufio buffers, request),
	// 256 events in flight × 16 KiB, JetStream's block buffers about 32 MiB,
	// and the dedup window: JetStream keeps every Nats-Msg-Id of the last 2
	// minutes, in WEFT_EVENTS and again in WEFT_DELIVERIES, about 128 bytes
	// each (heap profile: storeMsgIdLocked), so 2 × accepted/s × 120 s × 128 B.
	// The heap part is multiplied by the Go GC's headroom: weft serve lets
	// the heap grow to (1 + serveGCPercent/100) × the live heap.
	overloadConnBytes     = overloadConnections * 64 << 10
	overloadInflightBytes = overloadInflight * 16 << 10
	overloadJetStream     = 32 << 20
	overloadDedupWindow   = 120 // seconds, weft's default --dedup-window
	overloadMsgIDBytes    = 128
)

// TestOverload offers ten times the node's sustainable ingest rate for a
// minute with an open-loop generator (`weft bench load`): every request is
// answered 202, 429 or 503, every 429/503 carries Retry-After, the node's
// peak RSS stays under the bound its limits imply (see overloadConnBytes),
// it stays up, and afterwards every acknowledged event is delivered.
func TestOverload(t *testing.T) {
	skipShort(t)
	bin, err := plainWeft()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	out := filepath.Join(dir, "received.jsonl")
	manifests := filepath.Join(dir, "manifests")
	if err := os.MkdirAll(manifests, 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(manifests, "sink.yaml"), fmt.Sprintf(`apiVersion: weft.dev/v1
kind: Function
metadata: {name: sink}
spec:
  command: [%q]
  env: [{name: OUT, value: %q}]
  concurrency: 64
  scale: {min: 1, max: 2}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: load}
spec:
  filter: {attributes: {type: dev.weft.bench.load}}
  subscriber: {ref: {apiVersion: weft.dev/v1, kind: Function, name: sink}}
  delivery: {retry: 10, backoffDelay: PT0.1S}
`, recorderBin, out))
	n := startNodeBin(t, bin, manifests, filepath.Join(dir, "data"), "--max-inflight", strconv.Itoa(overloadInflight))
	pid := n.cmd.Process.Pid
	idle := procStatusKB(t, pid, "VmRSS")

	// Sustainable rate: closed loop, 32 connections; these events match no
	// trigger (type dev.weft.bench).
	var sustained struct {
		Weft struct {
			EventsPerSec float64 `json:"events_per_sec"`
		} `json:"weft"`
	}
	plainCLI(t, bin, n, &sustained, "bench", "ingest", "--duration", "3s", "--rounds", "1", "--concurrency", "32", "--size", "64", "--reference-process=false", "-o", "json")
	rate := int(sustained.Weft.EventsPerSec * overloadFactor)
	if rate < overloadFactor {
		t.Fatalf("sustainable rate %.0f events/s: nothing to multiply", sustained.Weft.EventsPerSec)
	}

	acked := filepath.Join(dir, "acked.jsonl")
	var rep loadReport
	start := time.Now()
	plainCLI(t, bin, n, &rep, "bench", "load", "--rate", strconv.Itoa(rate), "--duration", overloadDuration.String(),
		"--connections", strconv.Itoa(overloadConnections), "--size", "64", "--record", acked, "-o", "json")
	peak := procStatusKB(t, pid, "VmHWM")
	t.Logf("sustainable %.0f events/s; offered %d (%.0f/s), sent %d (%.0f/s), not sent for want of a connection %d; statuses %v; accepted %.0f events/s; latency p50 %.1f / p99 %.1f ms",
		sustained.Weft.EventsPerSec, rep.Offered, rep.OfferedPerSec, rep.Sent, rep.SentPerSec, rep.NotSent, rep.Statuses, rep.AcceptedPerSec, rep.LatencyMS.P50, rep.LatencyMS.P99)
	t.Logf("node RSS idle %.0f MiB, peak %.0f MiB", float64(idle)/1024, float64(peak)/1024)

	for code, count := range rep.Statuses {
		if code != "202" && code != "429" && code != "503" {
			t.Errorf("%d answers with status %s: overload must be answered 202, 429 or 503", count, code)
		}
	}
	if rep.TransportErrors > 0 {
		t.Errorf("%d requests got no answer (first: %s)", rep.TransportErrors, rep.FirstError)
	}
	if rep.NoRetryAfter > 0 {
		t.Errorf("%d 429/503 answers without Retry-After", rep.NoRetryAfter)
	}
	if rep.Statuses["429"]+rep.Statuses["503"] == 0 {
		t.Errorf("no request was refused: the node was not overloaded (statuses %v)", rep.Statuses)
	}
	dedup := int64(2 * rep.AcceptedPerSec * overloadDedupWindow * overloadMsgIDBytes)
	live := int64(overloadConnBytes + overloadInflightBytes + overloadJetStream + dedup)
	limit := idle*1024 + live*(100+serveGCPercent)/100
	t.Logf("RSS bound %d MiB: idle %d + %.1f × (connections %d + in flight %d + JetStream %d + dedup ids %d) MiB",
		limit>>20, idle>>10, float64(100+serveGCPercent)/100, overloadConnBytes>>20, overloadInflightBytes>>20, overloadJetStream>>20, dedup>>20)
	if peak*1024 > limit {
		t.Errorf("peak RSS %d MiB over the %d MiB bound", peak>>10, limit>>20)
	}
	select {
	case <-n.exited:
		t.Fatalf("weft serve exited under overload:\n%s", tail(n.log.String(), 40))
	default:
	}

	ackedIDs := readAcked(t, acked)
	if len(ackedIDs) != rep.Statuses["202"] {
		t.Errorf("recorded %d acknowledged events, the generator counted %d 202s", len(ackedIDs), rep.Statuses["202"])
	}
	var ackMap sync.Map
	for _, id := range ackedIDs {
		ackMap.Store(id, true)
	}
	waitDelivered(t, out, &ackMap, 5*time.Minute)
	r := checkDelivery(t, n, out, &ackMap, "load")
	t.Logf("%s; backlog drained %s after the load ended", r, time.Since(start)-overloadDuration)
	if r.Lost != 0 {
		t.Errorf("lost %d acknowledged events", r.Lost)
	}
}

// plainCLI runs a verb of bin against n (load generators must not pay for
// the race detector) and decodes its JSON output into out.
func plainCLI(t *testing.T, bin string, n *weftNode, out any, args ...string) {
	t.Helper()
	cmd := exec.Command(bin, append([]string{"--server", "http://" + n.http}, args...)...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	stdout, err := cmd.Output()
	if err != nil {
		t.Fatalf("weft %v: %v: %s", args, err, stderr.String())
	}
	if err := json.Unmarshal(stdout, out); err != nil {
		t.Fatalf("weft %v: %v in %q", args, err, stdout)
	}
}

// procStatusKB reads a kB field of /proc/<pid>/status (VmRSS, VmHWM).
func procStatusKB(t *testing.T, pid int, field string) int64 {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				t.Fatalf("%s: %v", field, err)
			}
			return kb
		}
	}
	t.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}

// readAcked reads the ids `weft bench load --record` wrote.
func readAcked(t *testing.T, path string) []string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var ids []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var r ackRecord
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		ids = append(ids, r.ID)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return ids
}
