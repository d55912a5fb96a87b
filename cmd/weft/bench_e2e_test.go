package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/weft-dev/weft/internal/testutil"
)

// checkLatencySide fails t unless side s was measured: samples, ordered
// percentiles, no failures, one entry per round.
func checkLatencySide(t *testing.T, name string, s benchSide, rounds int) {
	t.Helper()
	if s.Accepted == 0 {
		t.Errorf("%s: no sample (%s)", name, s.failures())
		return
	}
	if !(0 < s.P50ms && s.P50ms <= s.P90ms && s.P90ms <= s.P99ms && s.P99ms <= s.MaxMs) {
		t.Errorf("%s: percentiles out of order: p50 %v p90 %v p99 %v max %v", name, s.P50ms, s.P90ms, s.P99ms, s.MaxMs)
	}
	if s.Errors+s.Status429+s.Status503+s.StatusOther != 0 {
		t.Errorf("%s: failures: %s", name, s.failures())
	}
	if len(s.Rounds) != rounds {
		t.Errorf("%s: %d rounds, want %d", name, len(s.Rounds), rounds)
	}
}

// TestBenchE2E runs `weft bench e2e` briefly against the real binary, with
// its own hidden worker as the Function: weft's path and every hop are
// measured, summed and checked against goal 4.
func TestBenchE2E(t *testing.T) {
	skipShort(t)
	// Two rounds: the second's first event comes after the worker hop's
	// thousands of requests, whose reports once crowded its report out.
	cfg := e2eConfig{Duration: 300 * time.Millisecond, Rounds: 2, Size: 256, Weft: weftBin}
	rep, err := benchE2E(t.Context(), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	for name, s := range map[string]benchSide{"weft": rep.Weft, "http": rep.HTTP, "publish": rep.Publish, "consume": rep.Consume, "worker": rep.Worker} {
		checkLatencySide(t, name, s, 2)
	}
	want := rep.HTTP.P50ms + rep.Publish.P50ms + rep.Consume.P50ms + rep.Worker.P50ms
	if rep.Sum.P50ms != want || rep.Sum.P99ms < rep.Sum.P50ms {
		t.Errorf("sum of hops %+v, want p50 %v", rep.Sum, want)
	}
	if rep.Ratio.P50 <= 0 || rep.Ratio.P99 <= 0 {
		t.Errorf("ratio not computed: %+v", rep.Ratio)
	}
	if len(rep.Goals) != 2 || !rep.Goals[0].Measured || !rep.Goals[1].Measured {
		t.Errorf("goal 4 not checked: %+v", rep.Goals)
	}
	var out bytes.Buffer
	if err := rep.writeTable(&out); err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"sum of hops", "weft ÷ sum", "goal 4", "consume", "machine:"} {
		if !strings.Contains(out.String(), s) {
			t.Errorf("table lacks %q:\n%s", s, out.String())
		}
	}
}

// TestBenchScale runs `weft bench scale` briefly through the command, with
// the smallest worker (testdata/benchworker) given by --worker: both sides
// measured, the scale-up step too (its worker holds requests and names its
// process in its replies), JSON out, goal 7 checked.
func TestBenchScale(t *testing.T) {
	skipShort(t)
	worker := filepath.Join(t.TempDir(), "benchworker")
	if b, err := exec.Command("go", "build", "-o", worker, "./testdata/benchworker").CombinedOutput(); err != nil {
		t.Fatalf("build benchworker: %v\n%s", err, b)
	}
	var out bytes.Buffer
	g := &globals{output: "json", stdout: &out, stderr: io.Discard}
	cmd := newBenchCmd(g)
	cmd.SetArgs([]string{"scale", "--samples", "3", "--steps", "1", "--rounds", "2", "--weft", weftBin, "--worker", worker})
	if err := cmd.ExecuteContext(t.Context()); err != nil {
		t.Fatal(err)
	}
	var rep scaleReport
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatalf("output: %v\n%s", err, out.String())
	}
	checkLatencySide(t, "weft", rep.Weft, 2)
	checkLatencySide(t, "by hand", rep.ByHand, 2)
	if rep.Weft.Accepted != 6 || rep.ByHand.Accepted != 6 {
		t.Errorf("samples: weft %d, by hand %d, want 6 each", rep.Weft.Accepted, rep.ByHand.Accepted)
	}
	if rep.Ratio.P50 <= 0 || rep.Ratio.P90 <= 0 || rep.Worker != worker {
		t.Errorf("ratio %+v, worker %q", rep.Ratio, rep.Worker)
	}
	if rep.Step == nil {
		t.Fatal("no step measured")
	}
	checkLatencySide(t, "step", *rep.Step, 2)
	if rep.Step.Accepted != 2 || rep.Step.P50ms < float64(stepHold.Milliseconds()) {
		t.Errorf("step: %d samples, p50 %.1f ms; want 2, at least the worker's hold (%s)", rep.Step.Accepted, rep.Step.P50ms, stepHold)
	}
	if len(rep.Goals) != 4 {
		t.Fatalf("goal 7: %d checks, want 4: %+v", len(rep.Goals), rep.Goals)
	}
	for _, g := range rep.Goals {
		if !g.Measured {
			t.Errorf("goal 7 not checked: %+v", g)
		}
	}
}

// TestBenchWorker: the hidden worker answers 200 and reports each event's
// id and arrival time over UDP; with $BENCH_HOLD it holds the request and
// replies with an event naming its process.
func TestBenchWorker(t *testing.T) {
	skipShort(t)
	a, err := newArrivals()
	if err != nil {
		t.Fatal(err)
	}
	defer a.close()
	addr, err := freeAddr()
	if err != nil {
		t.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(addr)
	p, err := startWorkerProc(workerArgv(weftBin, ""), port, benchWorkerReportEnv+"="+a.addr, benchWorkerHoldEnv+"=20ms")
	if err != nil {
		t.Fatal(err)
	}
	defer p.stop()
	testutil.WaitFor(t, 30*time.Second, func() bool { return tcpOpen(addr) }, "bench worker not listening")
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, "http://"+addr+"/", strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Ce-Id", "w-1")
	before := time.Now()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	held := time.Since(before)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %s", resp.Status)
	}
	if src := resp.Header.Get("Ce-Source"); src != benchWorkerSource+strconv.Itoa(p.pid()) || held < 20*time.Millisecond {
		t.Errorf("reply source %q after %s, want %s%d after at least 20ms", src, held, benchWorkerSource, p.pid())
	}
	at, err := a.wait(t.Context(), "w-1", 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if at.Before(before.Add(-time.Second)) || at.After(time.Now().Add(time.Second)) {
		t.Errorf("arrival %v outside the request (%v…now)", at, before)
	}
}

// TestBenchIngestGoals: with the JetStream reference, ingest checks goal 1a
// at every concurrency and goal 3 at one connection; with --relaxed-server
// it measures that node in the same rounds, with a second JetStream synced
// on an interval, and checks goals 1b and 2a from their figures.
func TestBenchIngestGoals(t *testing.T) {
	srv, _ := ingestStub(t, http.StatusAccepted)
	relaxed, relaxedIDs := ingestStub(t, http.StatusAccepted)
	criteria := func(goals []goalCheck) []string {
		var cs []string
		for _, g := range goals {
			if !g.Measured {
				t.Errorf("goal %q not measured", g.Criterion)
			}
			cs = append(cs, g.Criterion[:3])
		}
		return cs
	}
	for _, tc := range []struct {
		concurrency int
		relaxed     bool
		want        []string
	}{
		{1, false, []string{"1a.", "3. ", "3. "}},
		{2, false, []string{"1a."}},
		{2, true, []string{"1a.", "1b.", "2a."}},
	} {
		cfg := ingestConfig{Server: srv.URL, Duration: 300 * time.Millisecond, Concurrency: tc.concurrency, Size: 256, Rounds: 1, Mode: "binary", JetStream: true}
		if tc.relaxed {
			cfg.RelaxedServer = relaxed.URL
		}
		rep, err := benchIngest(t.Context(), cfg, ingestProbes{}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if rep.JetStream == nil || rep.JetStream.Accepted == 0 || rep.JetStream.P50ms <= 0 || rep.JetStream.P50ms > rep.JetStream.P99ms {
			t.Fatalf("%+v: JetStream percentiles not measured: %+v", tc, rep.JetStream)
		}
		if got := criteria(rep.Goals); !slices.Equal(got, tc.want) {
			t.Errorf("%+v: goals %q, want %q", tc, got, tc.want)
		}
		if want := rep.Weft.EventsPerSec / rep.JetStream.EventsPerSec; rep.Goals[0].Got != want {
			t.Errorf("%+v: goal 1a got %v, want %v", tc, rep.Goals[0].Got, want)
		}
		var out bytes.Buffer
		if err := rep.writeTable(&out); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out.String(), "issue 5 goals") {
			t.Errorf("table lacks the goals:\n%s", out.String())
		}
		switch {
		case tc.concurrency == 1:
			want := rep.Weft.P50ms / (rep.Reference.P50ms + rep.JetStream.P50ms)
			if rep.Ratio.P50HopSum != want || rep.Ratio.P99HopSum <= 0 {
				t.Errorf("goal-3 ratios %v / %v, want p50 %v", rep.Ratio.P50HopSum, rep.Ratio.P99HopSum, want)
			}
		case tc.relaxed:
			x, j := rep.Relaxed, rep.JetStreamRelaxed
			if x == nil || x.Accepted == 0 || j == nil || j.Accepted == 0 || len(x.Rounds) != 1 {
				t.Fatalf("relaxed sides not measured: %+v, %+v", x, j)
			}
			if int64(len(relaxedIDs())) != x.Requests {
				t.Errorf("the relaxed node saw %d distinct ids for %d requests", len(relaxedIDs()), x.Requests)
			}
			if want := rep.Weft.EventsPerSec / x.EventsPerSec; rep.Ratio.DurabilityTax != want || rep.Goals[1].Got != want {
				t.Errorf("durability tax %v (goal %v), want %v", rep.Ratio.DurabilityTax, rep.Goals[1].Got, want)
			}
			bound := 1 / (1/rep.Reference.EventsPerSec + 1/j.EventsPerSec)
			if want := x.EventsPerSec / bound; rep.Ratio.RelaxedBound != want || rep.Goals[2].Got != want {
				t.Errorf("goal 2a ratio %v (goal %v), want %v", rep.Ratio.RelaxedBound, rep.Goals[2].Got, want)
			}
			if !strings.Contains(out.String(), "durability tax") {
				t.Errorf("table lacks the relaxed node:\n%s", out.String())
			}
		default:
			if rep.Ratio.P50HopSum != 0 || rep.Relaxed != nil {
				t.Errorf("concurrency %d: goal 3 or relaxed figures reported: %+v", tc.concurrency, rep.Ratio)
			}
		}
	}
}

func TestBenchE2EUsage(t *testing.T) {
	checkBenchUsage(t, [][]string{
		{"e2e", "--duration", "0s"},
		{"e2e", "--rounds", "0"},
		{"e2e", "--size", "-1"},
		{"scale", "--samples", "0"},
		{"scale", "--rounds", "0"},
	})
}

// TestArrivalsKeepTheNewestReport: reports nobody waits for fill the
// arrivals' queue between weft rounds (the hand-started worker's); the report
// of the event awaited next must still be found, the oldest stale ones
// making room for it.
func TestArrivalsKeepTheNewestReport(t *testing.T) {
	a := &arrivals{ch: make(chan arrival, 8)}
	for i := range 3 * cap(a.ch) {
		a.push(arrival{id: fmt.Sprintf("stale-%d", i), at: time.Now()})
	}
	a.push(arrival{id: "wanted", at: time.Now()})
	if len(a.ch) != cap(a.ch) {
		t.Errorf("%d reports queued, want %d: a full queue drops one for each new one", len(a.ch), cap(a.ch))
	}
	if _, err := a.wait(t.Context(), "wanted", time.Second); err != nil {
		t.Fatalf("the awaited report behind stale ones: %v", err)
	}
}
