package main

import (
	"encoding/base64"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weft-dev/weft/broker"
	"github.com/weft-dev/weft/internal/testutil"
)

// faultsManifests declares TestDeliveryFaults' functions and triggers; its
// arguments are the recorder binary, $OUT, $HITS and $MARKS. One trigger per
// delivery policy, each filtering on its own type. Every function runs one
// process, so the recorder's per-process attempt count is the node's.
const faultsManifests = `apiVersion: weft.dev/v1
kind: Function
metadata: {name: faults}
spec:
  command: [%[1]q]
  env: [{name: OUT, value: %[2]q}, {name: HITS, value: %[3]q}]
  concurrency: 64
  scale: {min: 1, max: 1}
---
# A crash ends every request the process holds, so the crash case has its own
# process and cannot add attempts to the other cases.
apiVersion: weft.dev/v1
kind: Function
metadata: {name: crasher}
spec:
  command: [%[1]q]
  env: [{name: OUT, value: %[2]q}, {name: HITS, value: %[3]q}, {name: MARKS, value: %[4]q}]
  concurrency: 8
  scale: {min: 1, max: 1}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: hang}
spec:
  filters: [{exact: {type: faults.hang}}]
  subscriber: {ref: {apiVersion: weft.dev/v1, kind: Function, name: faults}}
  delivery: {retry: 2, backoffDelay: PT0.05S, timeout: PT0.5S}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: slow}
spec:
  filters: [{exact: {type: faults.slow}}]
  subscriber: {ref: {apiVersion: weft.dev/v1, kind: Function, name: faults}}
  delivery: {retry: 2, backoffDelay: PT0.05S, timeout: PT1S}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: flaky}
spec:
  filters: [{exact: {type: faults.flaky}}]
  subscriber: {ref: {apiVersion: weft.dev/v1, kind: Function, name: faults}}
  delivery: {retry: 3, backoffDelay: PT0.05S}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: classify}
spec:
  filters: [{exact: {type: faults.classify}}]
  subscriber: {ref: {apiVersion: weft.dev/v1, kind: Function, name: faults}}
  delivery: {retry: 2, backoffDelay: PT0.05S}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: patient}
spec:
  filters: [{exact: {type: faults.patient}}]
  subscriber: {ref: {apiVersion: weft.dev/v1, kind: Function, name: faults}}
  delivery: {retry: 1, backoffDelay: PT0.01S}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: capped}
spec:
  filters: [{exact: {type: faults.capped}}]
  subscriber: {ref: {apiVersion: weft.dev/v1, kind: Function, name: faults}}
  delivery: {retry: 1, backoffDelay: PT0.01S, retryAfterMax: PT1S}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: crash}
spec:
  filters: [{exact: {type: faults.crash}}]
  subscriber: {ref: {apiVersion: weft.dev/v1, kind: Function, name: crasher}}
  delivery: {retry: 5, backoffDelay: PT0.1S, timeout: PT10S}
`

// faultEvent is one event of TestDeliveryFaults: its type picks the trigger
// (and, for hang and crash, the misbehaviour, by the type's last part);
// misbehave, when set, is the recorder's ce-misbehave extension.
type faultEvent struct{ id, typ, misbehave string }

// Statuses Knative retries and statuses it does not (docs/semantics.md).
var (
	retriedStatuses    = []int{404, 408, 409, 429, 500, 503}
	notRetriedStatuses = []int{400, 422}
)

// TestDeliveryFaults runs the real binary with one recorder function that
// misbehaves per event on command, and triggers with different delivery
// policies, all cases at once on one node; once every delivery settled, it
// checks the exact attempts each case got (from the recorder's $HITS), what
// was delivered ($OUT) and what the node DLQ shows:
//
//   - a hung function: each attempt ends at the per-try timeout, 1 + retry
//     attempts, then the DLQ (no status, so no knativeerrorcode);
//   - a function slower than the timeout: retried, and both runs delivered
//     (the duplicate at-least-once allows);
//   - 503 on the first two attempts then success: delivered at attempt 3;
//   - 404, 408, 409, 429, 500, 503: 1 + retry attempts, then the DLQ with the
//     last status and body as knativeerrorcode and knativeerrordata;
//   - 400, 422: the DLQ after exactly one attempt; knativeerrordata holds
//     the first 1024 bytes of a 5000-byte body;
//   - 429/503 with Retry-After: 1: the retry comes at least 1 s later;
//     Retry-After: 3600 is cut to the trigger's retryAfterMax (1 s);
//   - a crash mid-request: retried on the restarted process, delivered once.
func TestDeliveryFaults(t *testing.T) {
	skipShort(t)
	dir := t.TempDir()
	out, hits, marks := filepath.Join(dir, "out.jsonl"), filepath.Join(dir, "hits.jsonl"), filepath.Join(dir, "marks")
	manifests := filepath.Join(dir, "manifests")
	for _, d := range []string{marks, manifests} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	writeFile(t, filepath.Join(manifests, "faults.yaml"), fmt.Sprintf(faultsManifests, recorderBin, out, hits, marks))
	n := startNode(t, manifests, filepath.Join(dir, "data"))
	// The per-try timeout also bounds waiting for an instance: publish only
	// once both are up, so that every attempt reaches the recorder.
	testutil.WaitFor(t, 60*time.Second, func() bool {
		return n.function(t, "faults").State == "ready" && n.function(t, "crasher").State == "ready"
	}, "functions never ready")

	events := []faultEvent{
		{"hang-1", "faults.hang", ""},
		{"slow-1", "faults.slow", "fail=1,sleep=2s"},
		{"flaky-1", "faults.flaky", "fail=2,status=503"},
		{"ra-429", "faults.patient", "fail=1,status=429,retryafter=1"},
		{"ra-503", "faults.patient", "fail=1,status=503,retryafter=1"},
		{"ra-cap", "faults.capped", "fail=1,status=429,retryafter=3600"},
		{"crash-1", "faults.crash", ""},
	}
	for _, code := range retriedStatuses {
		events = append(events, faultEvent{fmt.Sprintf("status-%d", code), "faults.classify", fmt.Sprintf("status=%d", code)})
	}
	for _, code := range notRetriedStatuses {
		events = append(events, faultEvent{fmt.Sprintf("status-%d", code), "faults.classify", fmt.Sprintf("status=%d,body=5000", code)})
	}
	start := time.Now()
	var acked sync.Map
	for _, ev := range events {
		h := map[string]string{"ce-specversion": "1.0", "ce-id": ev.id, "ce-source": "/faults", "ce-type": ev.typ}
		if ev.misbehave != "" {
			h["ce-misbehave"] = ev.misbehave
		}
		if s := n.post("application/json", h, `{}`); s != http.StatusAccepted {
			t.Fatalf("publish %s: %d", ev.id, s)
		}
		acked.Store(ev.id, true)
	}

	// The first run of slow-1 records the event after the broker gave up on
	// it: wait for it so that the duplicate is counted.
	testutil.WaitFor(t, 30*time.Second, func() bool { return ids(records(t, out))["slow-1"] == 2 },
		"slow-1 was not recorded twice")
	r := checkDelivery(t, n, out, &acked, "")
	t.Logf("all cases settled %v after publishing: %v", time.Since(start).Round(10*time.Millisecond), r)
	want := faultReport{Acked: len(events), Delivered: 6, DeadLettered: 1 + len(retriedStatuses) + len(notRetriedStatuses), Duplicated: 1}
	if r != want {
		t.Errorf("report %+v, want %+v", r, want)
	}

	// Everything settled: the snapshots below are final.
	hitsOf := map[string][]map[string]string{}
	for _, h := range records(t, hits) {
		hitsOf[h["id"]] = append(hitsOf[h["id"]], h)
	}
	recordsOf := map[string][]map[string]string{}
	for _, rec := range records(t, out) {
		recordsOf[rec["id"]] = append(recordsOf[rec["id"]], rec)
	}
	deadOf := map[string][]broker.DLQEntry{}
	for _, e := range dlqEntries(t, n, "") {
		deadOf[e.Event.ID()] = append(deadOf[e.Event.ID()], e)
	}
	// outcomes renders an event's hits as "attempt:outcome" in arrival order.
	outcomes := func(id string) string {
		var s []string
		for _, h := range hitsOf[id] {
			s = append(s, h["attempt"]+":"+h["outcome"])
		}
		return strings.Join(s, " ")
	}
	wantHits := func(t *testing.T, id, want string) {
		t.Helper()
		if got := outcomes(id); got != want {
			t.Errorf("%s: attempts %q, want %q", id, got, want)
		}
	}
	// deadLetter returns id's only DLQ entry, checking its trigger, reason,
	// destination and attempt count.
	deadLetter := func(t *testing.T, id, trigger, reason string, attempts int) broker.DLQEntry {
		t.Helper()
		if len(deadOf[id]) != 1 {
			t.Fatalf("%s: %d DLQ entries, want 1", id, len(deadOf[id]))
		}
		e := deadOf[id][0]
		if e.Trigger != trigger || e.Reason != reason || len(e.Attempts) != attempts {
			t.Errorf("%s: DLQ entry of trigger %q, reason %q, %d attempts %+v; want %q, %q, %d",
				id, e.Trigger, e.Reason, len(e.Attempts), e.Attempts, trigger, reason, attempts)
		}
		if dest := e.Event.Extensions()["knativeerrordest"]; e.Target != "function:faults" || dest != "function:faults" {
			t.Errorf("%s: target %q, knativeerrordest %v; want function:faults", id, e.Target, dest)
		}
		return e
	}
	// errorData decodes an entry's knativeerrordata.
	errorData := func(t *testing.T, e broker.DLQEntry) string {
		t.Helper()
		raw, err := base64.StdEncoding.DecodeString(fmt.Sprint(e.Event.Extensions()["knativeerrordata"]))
		if err != nil {
			t.Fatalf("%s: knativeerrordata: %v", e.Event.ID(), err)
		}
		return string(raw)
	}
	notDead := func(t *testing.T, id string) {
		t.Helper()
		if len(deadOf[id]) != 0 {
			t.Errorf("%s: delivered but also dead-lettered: %+v", id, deadOf[id])
		}
	}
	// gap returns the time between id's first two hits, as the recorder
	// clocked them when each request arrived.
	gap := func(t *testing.T, id string) time.Duration {
		t.Helper()
		h := hitsOf[id]
		if len(h) < 2 {
			t.Fatalf("%s: %d hits", id, len(h))
		}
		t0, err0 := time.Parse(time.RFC3339Nano, h[0]["time"])
		t1, err1 := time.Parse(time.RFC3339Nano, h[1]["time"])
		if err0 != nil || err1 != nil {
			t.Fatalf("%s: hit times %q, %q", id, h[0]["time"], h[1]["time"])
		}
		return t1.Sub(t0)
	}

	t.Run("hung function: per-try timeout, 1+retry attempts, then DLQ", func(t *testing.T) {
		wantHits(t, "hang-1", "1:hang 2:hang 3:hang")
		e := deadLetter(t, "hang-1", "hang", "retries_exhausted", 3)
		for i, a := range e.Attempts {
			// Each attempt lasts the whole timeout (a lower bound: it
			// cannot end sooner) and gets no status.
			if a.Status != 0 || a.Error == "" || a.LatencyMS < 500 {
				t.Errorf("attempt %d: %+v, want no status, an error, ≥ 500 ms", i+1, a)
			}
		}
		ext := e.Event.Extensions()
		if code, ok := ext["knativeerrorcode"]; ok {
			t.Errorf("knativeerrorcode %v after a timeout, want none", code)
		}
		if data, ok := ext["knativeerrordata"]; ok {
			t.Errorf("knativeerrordata %v after a timeout, want none", data)
		}
		t.Logf("last attempt: %+v", e.Attempts[len(e.Attempts)-1])
	})

	t.Run("slower than the timeout: retried, delivered twice", func(t *testing.T) {
		wantHits(t, "slow-1", "1:sleep=2s 2:ok")
		attempts := map[string]bool{}
		for _, rec := range recordsOf["slow-1"] {
			attempts[rec["attempt"]] = true
		}
		if len(recordsOf["slow-1"]) != 2 || !attempts["1"] || !attempts["2"] {
			t.Errorf("records %v, want attempt 2's and the late one of attempt 1", recordsOf["slow-1"])
		}
		notDead(t, "slow-1")
	})

	t.Run("503 twice then success: delivered at attempt 3", func(t *testing.T) {
		wantHits(t, "flaky-1", "1:status=503 2:status=503 3:ok")
		if got := recordsOf["flaky-1"]; len(got) != 1 || got[0]["attempt"] != "3" {
			t.Errorf("records %v, want one, at attempt 3", got)
		}
		notDead(t, "flaky-1")
	})

	t.Run("retried statuses: 1+retry attempts, then DLQ", func(t *testing.T) {
		for _, code := range retriedStatuses {
			id := fmt.Sprintf("status-%d", code)
			s := fmt.Sprintf("status=%d", code)
			wantHits(t, id, "1:"+s+" 2:"+s+" 3:"+s)
			e := deadLetter(t, id, "classify", "retries_exhausted", 3)
			for i, a := range e.Attempts {
				if a.Status != code {
					t.Errorf("%s attempt %d: status %d", id, i+1, a.Status)
				}
			}
			if c := fmt.Sprint(e.Event.Extensions()["knativeerrorcode"]); c != fmt.Sprint(code) {
				t.Errorf("%s: knativeerrorcode %s", id, c)
			}
			// The last attempt's body.
			if d, want := errorData(t, e), fmt.Sprintf("recorder: status %d on attempt 3", code); d != want {
				t.Errorf("%s: knativeerrordata %q, want %q", id, d, want)
			}
		}
	})

	t.Run("not retried statuses: DLQ after one attempt, error data capped", func(t *testing.T) {
		for _, code := range notRetriedStatuses {
			id := fmt.Sprintf("status-%d", code)
			wantHits(t, id, fmt.Sprintf("1:status=%d,body=5000", code))
			e := deadLetter(t, id, "classify", "not_retryable", 1)
			if e.Attempts[0].Status != code {
				t.Errorf("%s: attempt %+v", id, e.Attempts[0])
			}
			if c := fmt.Sprint(e.Event.Extensions()["knativeerrorcode"]); c != fmt.Sprint(code) {
				t.Errorf("%s: knativeerrorcode %s", id, c)
			}
			if d := errorData(t, e); d != strings.Repeat("x", 1024) {
				t.Errorf("%s: knativeerrordata holds %d bytes, want the first 1024 of 5000", id, len(d))
			}
		}
	})

	t.Run("Retry-After honoured on 429 and 503", func(t *testing.T) {
		for _, code := range []int{429, 503} {
			id := fmt.Sprintf("ra-%d", code)
			wantHits(t, id, fmt.Sprintf("1:status=%d,retryafter=1 2:ok", code))
			if g := gap(t, id); g < time.Second {
				t.Errorf("%s: retried %v after a Retry-After of 1s", id, g)
			} else {
				t.Logf("%s: retried %v later (Retry-After: 1, backoff 10ms)", id, g.Round(time.Millisecond))
			}
			if got := recordsOf[id]; len(got) != 1 || got[0]["attempt"] != "2" {
				t.Errorf("%s: records %v, want one, at attempt 2", id, got)
			}
			notDead(t, id)
		}
	})

	t.Run("Retry-After capped by retryAfterMax", func(t *testing.T) {
		// Delivered at all means the hour was not waited: the cap applies.
		wantHits(t, "ra-cap", "1:status=429,retryafter=3600 2:ok")
		if g := gap(t, "ra-cap"); g < time.Second {
			t.Errorf("retried %v after a Retry-After of 3600 capped to 1s", g)
		} else {
			t.Logf("ra-cap: retried %v later (Retry-After: 3600, retryAfterMax PT1S)", g.Round(time.Millisecond))
		}
		if got := recordsOf["ra-cap"]; len(got) != 1 || got[0]["attempt"] != "2" {
			t.Errorf("records %v, want one, at attempt 2", got)
		}
		notDead(t, "ra-cap")
	})

	t.Run("crash mid-request: retried on the new process, delivered once", func(t *testing.T) {
		h := hitsOf["crash-1"]
		if len(h) != 2 || h[0]["outcome"] != "crash" || h[1]["outcome"] != "ok" || h[1]["attempt"] != "1" || h[0]["pid"] == h[1]["pid"] {
			t.Fatalf("hits %v, want a crash, then ok as the first attempt of another process", h)
		}
		if got := recordsOf["crash-1"]; len(got) != 1 || got[0]["pid"] != h[1]["pid"] {
			t.Errorf("records %v, want one, from pid %s", got, h[1]["pid"])
		}
		notDead(t, "crash-1")
		if f := n.function(t, "crasher"); f.Restarts < 1 {
			t.Errorf("crasher restarts %d after a crash", f.Restarts)
		}
	})
}
