package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/weft-dev/weft/internal/testutil"
	"golang.org/x/sys/unix"
)

// ingestStub stands in for weft's ingress: it answers every POST with
// status and records the ids it saw; a binary-mode request that lacks an
// attribute, or whose body is not the event's data, is recorded under the
// id "malformed".
func ingestStub(t *testing.T, status int) (*httptest.Server, func() map[string]int) {
	t.Helper()
	var mu sync.Mutex
	ids := map[string]int{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if r.Method == http.MethodPost {
			id := r.Header.Get("Ce-Id")
			h := r.Header
			if h.Get("Ce-Specversion") != "1.0" || h.Get("Ce-Source") != benchSource || h.Get("Ce-Type") != benchType ||
				h.Get("Content-Type") != "application/json" || !json.Valid(body) || id == "" {
				id = "malformed"
			}
			mu.Lock()
			ids[id]++
			mu.Unlock()
		}
		w.WriteHeader(status)
	}))
	t.Cleanup(srv.Close)
	return srv, func() map[string]int {
		mu.Lock()
		defer mu.Unlock()
		return ids
	}
}

func TestBenchIngest(t *testing.T) {
	for _, client := range []string{clientFastHTTP, clientNetHTTP} {
		t.Run(strings.ReplaceAll(client, "/", ""), func(t *testing.T) { testBenchIngest(t, client) })
	}
}

func testBenchIngest(t *testing.T, client string) {
	srv, ids := ingestStub(t, http.StatusAccepted)
	cfg := ingestConfig{Server: srv.URL, Duration: time.Second, Concurrency: 4, Size: 256, Rounds: 1, Mode: "binary", Client: client}
	rep, err := benchIngest(t.Context(), cfg, ingestProbes{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Client != client {
		t.Errorf("report's client %q, want %q", rep.Client, client)
	}
	for name, s := range map[string]benchSide{"weft": rep.Weft, "reference": rep.Reference} {
		if s.EventsPerSec <= 0 || s.RequestsPerSec <= 0 || s.Accepted == 0 {
			t.Errorf("%s: no throughput: %+v", name, s.loadStats)
		}
		if !(0 < s.P50ms && s.P50ms <= s.P90ms && s.P90ms <= s.P99ms && s.P99ms <= s.MaxMs) {
			t.Errorf("%s: percentiles out of order: p50 %v p90 %v p99 %v max %v", name, s.P50ms, s.P90ms, s.P99ms, s.MaxMs)
		}
		if s.Errors+s.Status429+s.Status503+s.StatusOther != 0 {
			t.Errorf("%s: unexpected failures: %s", name, s.failures())
		}
		if len(s.Rounds) != 1 {
			t.Errorf("%s: %d rounds, want 1", name, len(s.Rounds))
		}
	}
	if rep.Ratio.EventsPerSec <= 0 || rep.Ratio.P50 <= 0 || rep.Ratio.P99 <= 0 {
		t.Errorf("ratio not computed: %+v", rep.Ratio)
	}
	if rep.Machine.CPUs < 1 {
		t.Errorf("machine: %+v", rep.Machine)
	}
	// Every request was a whole event with a new id: the node would drop
	// duplicates.
	seen := ids()
	if seen["malformed"] > 0 {
		t.Errorf("%d requests were not a binary-mode event", seen["malformed"])
	}
	if int64(len(seen)) != rep.Weft.Requests {
		t.Errorf("%d distinct ids for %d requests", len(seen), rep.Weft.Requests)
	}

	var out bytes.Buffer
	if err := printOut(&out, "json", rep); err != nil {
		t.Fatal(err)
	}
	var back ingestReport
	if err := json.Unmarshal(out.Bytes(), &back); err != nil {
		t.Fatalf("JSON output does not parse: %v\n%s", err, out.String())
	}
	if back.Weft.EventsPerSec != rep.Weft.EventsPerSec || back.Ratio != rep.Ratio || back.Reference.P99ms != rep.Reference.P99ms {
		t.Errorf("JSON round trip differs: %+v", back)
	}
	out.Reset()
	if err := rep.writeTable(&out); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"events/s", "p99", "weft/ref", "CPUs"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, out.String())
		}
	}
}

// TestBenchIngestReferenceProcess runs the HTTP ceiling in a process of its
// own beside the one in the bench's process: both serve, the child's CPU is
// read from its own /proc entry, goals 2a and 3 are checked against both,
// and the child is gone once the bench returns.
func TestBenchIngestReferenceProcess(t *testing.T) {
	skipShort(t)
	srv, _ := ingestStub(t, http.StatusAccepted)
	relaxed, _ := ingestStub(t, http.StatusAccepted)
	cfg := ingestConfig{Server: srv.URL, RelaxedServer: relaxed.URL, JetStream: true, Duration: 500 * time.Millisecond,
		Concurrency: 1, Size: 256, Rounds: 1, Mode: "binary", OwnProcess: true, Weft: weftBin}
	rep, err := benchIngest(t.Context(), cfg, ingestProbes{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	p := rep.ReferenceProcess
	if p == nil {
		t.Fatal("no reference_process side")
	}
	if p.Accepted == 0 || p.Errors+p.Status429+p.Status503+p.StatusOther != 0 || len(p.Rounds) != 1 {
		t.Fatalf("reference in its own process: %+v", p.loadStats)
	}
	if p.Target == rep.Reference.Target {
		t.Errorf("both references at %s", p.Target)
	}
	if rep.CPU.ReferenceProcessUs <= 0 {
		t.Errorf("the child's CPU per request not measured: %+v", rep.CPU)
	}
	if r := rep.Ratio; r.EventsPerSecProcess <= 0 || r.RelaxedBoundProcess <= 0 || r.P50HopSumProcess <= 0 || r.P99HopSumProcess <= 0 {
		t.Errorf("ratios against the child not computed: %+v", r)
	}
	var checked []string
	for _, g := range rep.Goals {
		if strings.Contains(g.Criterion, "process of its own") && g.Measured {
			checked = append(checked, g.Criterion)
		}
	}
	if len(checked) != 3 { // 2a, 3's p50 and p99
		t.Errorf("goals checked against the child: %q", checked)
	}
	var out bytes.Buffer
	if err := rep.writeTable(&out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "in a process of its own at "+p.Target) {
		t.Errorf("table does not show the child:\n%s", out.String())
	}
	if addr := strings.TrimSuffix(strings.TrimPrefix(p.Target, "http://"), "/"); tcpOpen(addr) {
		t.Errorf("the reference at %s still serves after the bench returned", addr)
	}
}

func TestBenchIngestModes(t *testing.T) {
	for _, c := range []struct{ mode, client string }{
		{"structured", clientFastHTTP}, {"batch", clientFastHTTP}, {"structured", clientNetHTTP}, {"batch", clientNetHTTP},
	} {
		mode := c.mode
		t.Run(mode+"/"+strings.ReplaceAll(c.client, "/", ""), func(t *testing.T) {
			t.Parallel()
			var mu sync.Mutex
			var bodies [][]byte
			var ctypes []string
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				b, _ := io.ReadAll(r.Body)
				mu.Lock()
				bodies, ctypes = append(bodies, b), append(ctypes, r.Header.Get("Content-Type"))
				mu.Unlock()
				w.WriteHeader(http.StatusAccepted)
			}))
			defer srv.Close()
			cfg := ingestConfig{Duration: 50 * time.Millisecond, Concurrency: 2, Size: 100, Rounds: 1, Mode: mode, Batch: 3, Client: c.client}
			st, err := runLoad(t.Context(), srv.URL+"/", cfg, nil)
			if err != nil {
				t.Fatal(err)
			}
			if st.Accepted == 0 || st.Events != st.Accepted*int64(cfg.eventsPerRequest()) {
				t.Fatalf("stats: %+v", st)
			}
			mu.Lock()
			defer mu.Unlock()
			var evs []map[string]any
			if mode == "batch" {
				if ctypes[0] != "application/cloudevents-batch+json" {
					t.Errorf("content type %q", ctypes[0])
				}
				if err := json.Unmarshal(bodies[0], &evs); err != nil {
					t.Fatal(err)
				}
			} else {
				if ctypes[0] != "application/cloudevents+json" {
					t.Errorf("content type %q", ctypes[0])
				}
				var ev map[string]any
				if err := json.Unmarshal(bodies[0], &ev); err != nil {
					t.Fatal(err)
				}
				evs = append(evs, ev)
			}
			if len(evs) != cfg.eventsPerRequest() {
				t.Fatalf("%d events in a request, want %d", len(evs), cfg.eventsPerRequest())
			}
			for _, ev := range evs {
				if ev["specversion"] != "1.0" || ev["type"] != benchType || ev["id"] == "" {
					t.Errorf("event %v", ev)
				}
			}
		})
	}
}

func TestBenchIngestCounts503(t *testing.T) {
	srv, _ := ingestStub(t, http.StatusServiceUnavailable)
	cfg := ingestConfig{Duration: 100 * time.Millisecond, Concurrency: 2, Size: 10, Rounds: 1, Mode: "binary"}
	st, err := runLoad(t.Context(), srv.URL+"/", cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	if st.Status503 == 0 || st.Status503 != st.Requests || st.Accepted != 0 || st.Status429 != 0 || st.EventsPerSec != 0 {
		t.Errorf("503s not counted as such: %+v", st)
	}

	// The command exits 1 when weft answered nothing but errors, after
	// printing what it measured.
	var out, errOut bytes.Buffer
	g := &globals{server: srv.URL, output: "json", stdout: &out, stderr: &errOut}
	cmd := newBenchCmd(g)
	cmd.SetArgs([]string{"ingest", "--duration", "100ms", "--rounds", "1", "--concurrency", "2", "--reference-process=false"})
	err = cmd.ExecuteContext(t.Context())
	var ee *exitErr
	if !errors.As(err, &ee) || ee.code != exitError {
		t.Fatalf("err = %v, want exit %d", err, exitError)
	}
	var rep ingestReport
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatalf("output: %v\n%s", err, out.String())
	}
	if rep.Weft.Status503 == 0 || rep.Reference.Accepted == 0 {
		t.Errorf("report: weft %+v reference %+v", rep.Weft.loadStats, rep.Reference.loadStats)
	}
}

// fasthttp's client takes no context: a node that stops answering must not
// hold the bench past its context for the client's 30-second timeout.
func TestBenchIngestFastHTTPHonoursContext(t *testing.T) {
	arrived := make(chan struct{}, 1)
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case arrived <- struct{}{}:
		default:
		}
		<-release // never answers while the test runs
	}))
	defer srv.Close()
	defer close(release)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		cfg := ingestConfig{Duration: time.Hour, Concurrency: 2, Size: 10, Rounds: 1, Mode: "binary", Client: clientFastHTTP}
		_, err := runLoad(ctx, srv.URL+"/", cfg, nil)
		done <- err
	}()
	<-arrived
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("runLoad after its context ended: %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("runLoad still waits for an answer 10 s after its context ended (the client's own timeout is 30 s)")
	}
}

func TestBenchIngestUnreachable(t *testing.T) {
	var out bytes.Buffer
	g := &globals{server: "http://" + testutil.RefusingAddr(t), output: "table", stdout: &out, stderr: &out}
	cmd := newBenchCmd(g)
	cmd.SetArgs([]string{"ingest", "--duration", "100ms", "--rounds", "1"})
	err := cmd.ExecuteContext(t.Context())
	var ee *exitErr
	if !errors.As(err, &ee) || ee.code != exitUnreachable {
		t.Fatalf("err = %v, want exit %d", err, exitUnreachable)
	}
}

// checkBenchUsage runs `weft bench` with each argument list and requires a
// usage error (exit 2) for every one.
func checkBenchUsage(t *testing.T, argLists [][]string) {
	t.Helper()
	for _, args := range argLists {
		g := &globals{server: "http://127.0.0.1:1", output: "table", stdout: io.Discard, stderr: io.Discard}
		cmd := newBenchCmd(g)
		cmd.SetArgs(args)
		err := cmd.ExecuteContext(t.Context())
		var ee *exitErr
		if !errors.As(err, &ee) || ee.code != exitUsage {
			t.Errorf("%q: err = %v, want exit %d", args, err, exitUsage)
		}
	}
}

func TestBenchIngestUsage(t *testing.T) {
	checkBenchUsage(t, [][]string{
		{"ingest", "--mode", "carrier-pigeon"},
		{"ingest", "--concurrency", "0"},
		{"ingest", "--client", "curl"},
		{"ingest", "--mode", "batch", "--batch", "0"},
		{"ingest", "--relaxed-sync", "--relaxed-server", "http://127.0.0.1:1"},
		{"nats", "--concurrency", "0"},
		{"nats", "--rounds", "0"},
		{},
	})
}

func TestPercentileAndMedian(t *testing.T) {
	d := []time.Duration{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}
	for p, want := range map[float64]time.Duration{0.5: 5, 0.9: 9, 0.99: 10, 1: 10, 0.01: 1} {
		if got := percentile(d, p); got != want {
			t.Errorf("percentile(%v) = %v, want %v", p, got, want)
		}
	}
	if percentile(nil, 0.5) != 0 {
		t.Error("percentile of nothing")
	}
	if m := median([]float64{3, 1, 2}); m != 2 {
		t.Errorf("median odd = %v", m)
	}
	if m := median([]float64{4, 1, 2, 3}); m != 2.5 {
		t.Errorf("median even = %v", m)
	}
}

// TestJetStreamReference: the embedded JetStream reference publishes,
// measures and cleans up after itself.
func TestJetStreamReference(t *testing.T) {
	ref, err := startJetStreamRef(context.Background(), false, false)
	if err != nil {
		t.Fatal(err)
	}
	defer ref.stop()
	st, err := ref.run(context.Background(), ingestConfig{Duration: 300 * time.Millisecond, Concurrency: 2, Size: 256, Mode: "binary", Batch: 1}, "t")
	if err != nil {
		t.Fatal(err)
	}
	if st.Accepted == 0 || st.EventsPerSec <= 0 || st.Errors != 0 || st.P50ms > st.P99ms || st.P99ms > st.MaxMs {
		t.Fatalf("reference stats %+v", st)
	}
}

// TestBenchRouter runs every side of `weft bench router` briefly against
// the real weft binary: the direct baseline, weft's router plain and with
// mutual TLS, and nginx when it is installed (else reported as such).
func TestBenchRouter(t *testing.T) {
	skipShort(t)
	cfg := routerConfig{Duration: 300 * time.Millisecond, Concurrency: 2, Rounds: 1, Size: 64, MTLS: true, Weft: weftBin, NginxWorkers: "1"}
	rep, err := benchRouter(t.Context(), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, why := findNginx("")
	sides := map[string]*routerSide{"direct": &rep.Direct, "weft": &rep.Weft, "weft-mtls": &rep.WeftMTLS}
	if why == "" {
		sides["nginx"] = &rep.Nginx
	} else if rep.Nginx.Skipped != "not installed" || rep.Nginx.measured() {
		t.Errorf("nginx is not installed but reported %q, measured %v", rep.Nginx.Skipped, rep.Nginx.measured())
	}
	for name, s := range sides {
		if !s.measured() || s.Accepted == 0 || s.RequestsPerSec <= 0 || s.P50ms <= 0 || s.P50ms > s.P99ms {
			t.Errorf("%s not measured: %+v", name, s.loadStats)
		}
		if s.Errors+s.Status429+s.Status503+s.StatusOther != 0 {
			t.Errorf("%s: failures: %s", name, s.failures())
		}
		if name != "direct" && s.CPUPerRequestUs <= 0 {
			t.Errorf("%s: no CPU per request measured", name)
		}
	}
	if len(rep.Goals) != 5 {
		t.Fatalf("%d goal checks, want 5", len(rep.Goals))
	}
	for _, g := range rep.Goals {
		if g.Measured != (why == "" || strings.HasPrefix(g.Criterion, "mutual TLS")) {
			t.Errorf("goal %q measured %v with nginx %q", g.Criterion, g.Measured, why)
		}
	}
	var out bytes.Buffer
	if err := printOut(&out, "json", rep); err != nil {
		t.Fatal(err)
	}
	var back routerReport
	if err := json.Unmarshal(out.Bytes(), &back); err != nil {
		t.Fatalf("JSON output does not parse: %v\n%s", err, out.String())
	}
	if back.Weft.AddedP50us != rep.Weft.AddedP50us || back.Weft.CPUPerRequestUs != rep.Weft.CPUPerRequestUs || len(back.Weft.Rounds) != 1 {
		t.Errorf("JSON round trip differs: %+v", back.Weft)
	}
	out.Reset()
	if err := rep.writeTable(&out); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"added p50", "CPU/request", "weft/nginx", "goal 6", "CPUs"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, out.String())
		}
	}
}

// TestBenchRouterCommand: the verb's flags, JSON output, and nginx left out
// on request.
func TestBenchRouterCommand(t *testing.T) {
	skipShort(t)
	var out bytes.Buffer
	g := &globals{output: "json", stdout: &out, stderr: io.Discard}
	cmd := newBenchCmd(g)
	cmd.SetArgs([]string{"router", "--duration", "200ms", "--rounds", "1", "--concurrency", "1", "--mtls=false", "--nginx", "none", "--weft", weftBin})
	if err := cmd.ExecuteContext(t.Context()); err != nil {
		t.Fatal(err)
	}
	var rep routerReport
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatalf("output: %v\n%s", err, out.String())
	}
	if rep.Weft.Accepted == 0 || rep.Direct.Accepted == 0 {
		t.Errorf("a side was not measured: weft %+v direct %+v", rep.Weft.loadStats, rep.Direct.loadStats)
	}
	if rep.Nginx.Skipped == "" || rep.WeftMTLS.Skipped == "" || rep.Nginx.measured() || rep.WeftMTLS.measured() {
		t.Errorf("skipped sides: nginx %q, weft-mtls %q", rep.Nginx.Skipped, rep.WeftMTLS.Skipped)
	}
}

func TestBenchRouterUsage(t *testing.T) {
	checkBenchUsage(t, [][]string{
		{"router", "--concurrency", "0"},
		{"router", "--rounds", "0"},
		{"router", "--nginx-workers", "many"},
		{"footprint", "--rounds", "0"},
		{"footprint", "--functions", "-1"},
	})
}

// TestBenchFootprint measures a real weft serve against the embedded
// nats-server (no nats-server binary needed), with a few Functions at zero.
func TestBenchFootprint(t *testing.T) {
	skipShort(t)
	cfg := footprintConfig{Rounds: 1, Settle: 200 * time.Millisecond, Functions: 5, Weft: weftBin, NATSServer: "embedded"}
	rep, err := benchFootprint(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if !rep.Embedded || rep.Weft.IdleRSS <= 0 || rep.NATS.IdleRSS <= 0 || rep.Ratio <= 0 {
		t.Errorf("report: %+v", rep)
	}
	w := rep.Weft.Rounds[0]
	if w.FunctionsListedByAPI != 5 || w.FunctionsRSS <= 0 || w.ProcessesAtZero != 0 || rep.Weft.MaxProcesses != 0 {
		t.Errorf("weft round with Functions at zero: %+v", w)
	}
	if len(rep.Goals) != 3 || !rep.Goals[2].Met {
		t.Errorf("goals: %+v", rep.Goals)
	}
	var out bytes.Buffer
	if err := printOut(&out, "json", rep); err != nil {
		t.Fatal(err)
	}
	var back footprintReport
	if err := json.Unmarshal(out.Bytes(), &back); err != nil || back.Weft.IdleRSS != rep.Weft.IdleRSS {
		t.Fatalf("JSON round trip: %v\n%s", err, out.String())
	}
	out.Reset()
	if err := rep.writeTable(&out); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"idle RSS", "Functions at scale 0", "goal 8", "upper bound"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, out.String())
		}
	}
}

// TestBenchProcReadings reads this process's CPU time and memory, and
// finds a child it started.
func TestBenchProcReadings(t *testing.T) {
	if cpu, err := procCPU(os.Getpid()); err != nil || cpu < 0 {
		t.Errorf("procCPU: %v %v", cpu, err)
	}
	if rss, hwm, err := procRSS(os.Getpid()); err != nil || rss <= 0 || hwm < rss {
		t.Errorf("procRSS: %d %d %v", rss, hwm, err)
	}
	p, err := startProc("sleep", "sleep", "30")
	if err != nil {
		t.Fatal(err)
	}
	defer p.stop()
	if !slices.Contains(children(os.Getpid()), p.pid()) {
		t.Errorf("children(%d) = %v, lacks %d", os.Getpid(), children(os.Getpid()), p.pid())
	}
}

// benchParentEnv makes the test binary act as a bench that started a
// process of each kind and then dies (see TestBenchChildrenDieWithTheBench).
const benchParentEnv = "WEFT_TEST_BENCH_PARENT"

// benchParent starts `sleep` as startProc and workerCommand do, prints both
// pids and waits to be killed.
func benchParent() {
	p, err := startProc("sleep", "sleep", "120")
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	w := workerCommand([]string{"sleep", "120"}, "0")
	if err := w.Start(); err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	fmt.Println(p.pid(), w.Process.Pid)
	select {}
}

// TestBenchChildrenDieWithTheBench kills a bench with SIGKILL, so it stops
// nothing itself, and expects what it started to end anyway.
func TestBenchChildrenDieWithTheBench(t *testing.T) {
	parent := exec.Command(os.Args[0], "-test.run=^$")
	parent.Env = append(os.Environ(), benchParentEnv+"=1")
	out, err := parent.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := parent.Start(); err != nil {
		t.Fatal(err)
	}
	var procPid, workerPid int
	line, err := bufio.NewReader(out).ReadString('\n')
	if _, serr := fmt.Sscan(line, &procPid, &workerPid); err != nil || serr != nil {
		_ = parent.Process.Kill()
		t.Fatalf("the bench's pids: %q, %v, %v", line, err, serr)
	}
	// Watch both before the bench dies: a pidfd turns readable when its
	// process ends, zombie or reaped.
	var fds []int
	for _, pid := range []int{procPid, workerPid} {
		fd, err := unix.PidfdOpen(pid, 0)
		if err != nil {
			_ = parent.Process.Kill()
			t.Fatalf("pidfd of %d: %v", pid, err)
		}
		defer unix.Close(fd)
		fds = append(fds, fd)
	}
	_ = parent.Process.Kill()
	_ = parent.Wait()
	for i, fd := range fds {
		pid := []int{procPid, workerPid}[i]
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(pfd, 10_000)
		for err == unix.EINTR {
			n, err = unix.Poll(pfd, 10_000)
		}
		if err != nil || n == 0 {
			_ = syscall.Kill(-pid, syscall.SIGKILL)
			t.Fatalf("process %d still runs 10 s after its bench was killed (%v)", pid, err)
		}
	}
}

// benchOnNode starts a node with no manifests (and nodeFlags) and runs
// `weft bench` against it with the arguments args gives, -o json; it
// returns the node and what the bench printed.
func benchOnNode(t *testing.T, args func(*weftNode) []string, nodeFlags ...string) (*weftNode, *bytes.Buffer) {
	t.Helper()
	dir := t.TempDir()
	manifests := filepath.Join(dir, "manifests")
	if err := os.Mkdir(manifests, 0o755); err != nil {
		t.Fatal(err)
	}
	n := startNode(t, manifests, filepath.Join(dir, "data"), nodeFlags...)
	var out bytes.Buffer
	g := &globals{server: "http://" + n.http, output: "json", stdout: &out, stderr: io.Discard}
	cmd := newBenchCmd(g)
	cmd.SetArgs(args(n))
	if err := cmd.ExecuteContext(t.Context()); err != nil {
		t.Fatal(err)
	}
	return n, &out
}

// TestBenchNATS runs `weft bench nats` briefly against a real node's NATS
// ingress and the embedded JetStream reference: both sides store events, the
// node stored every event it acknowledged, and the report parses.
func TestBenchNATS(t *testing.T) {
	skipShort(t)
	n, out := benchOnNode(t, func(n *weftNode) []string {
		return []string{"nats", "--url", "nats://" + n.nats, "--relaxed-sync", "--weft", weftBin, "--duration", "500ms", "--rounds", "2", "--concurrency", "4", "--size", "128"}
	}, "--relaxed-sync")
	var rep natsReport
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatalf("JSON output does not parse: %v\n%s", err, out.String())
	}
	if rep.ReferenceProcess == nil {
		t.Fatal("no reference_process side")
	}
	for name, s := range map[string]benchSide{"weft": rep.Weft, "reference": rep.Reference, "reference in its own process": *rep.ReferenceProcess} {
		if s.Accepted == 0 || s.EventsPerSec <= 0 || len(s.Rounds) != 2 {
			t.Errorf("%s: nothing measured: %+v", name, s.loadStats)
		}
		if s.Errors+s.Status429+s.Status503+s.StatusOther != 0 {
			t.Errorf("%s: unexpected failures: %s", name, s.failures())
		}
		if !(0 < s.P50ms && s.P50ms <= s.P99ms && s.P99ms <= s.MaxMs) {
			t.Errorf("%s: percentiles out of order: %+v", name, s.loadStats)
		}
	}
	if len(rep.Goals) != 2 || !rep.Goals[0].Measured || rep.Goals[0].Got != rep.Ratio.EventsPerSec || rep.Ratio.EventsPerSec <= 0 ||
		!rep.Goals[1].Measured || rep.Goals[1].Got != rep.Ratio.EventsPerSecProcess || rep.Ratio.EventsPerSecProcess <= 0 {
		t.Errorf("goal 2b not checked against both references: %+v, ratio %+v", rep.Goals, rep.Ratio)
	}
	// The node and this process both worked for weft's events; the
	// reference's server runs in this process, the other reference's in
	// a child whose CPU is read from /proc.
	if c := rep.CPU; !(c.WeftNodeUs > 0 && c.WeftPublishersUs > 0 && c.ReferenceUs > 0 &&
		c.WeftUs > c.WeftNodeUs && c.WeftUs > c.WeftPublishersUs && c.Ratio == c.WeftUs/c.ReferenceUs && c.ReferenceProcessUs > 0) {
		t.Errorf("CPU per event not measured: %+v", c)
	}
	// Every acknowledged event has a new id, so the node stored each one.
	if stored := metricSum(t, n, "weft_events_stored_total"); stored != float64(rep.Weft.Accepted) {
		t.Errorf("node stored %v events, bench counted %d acknowledged", stored, rep.Weft.Accepted)
	}
	var table bytes.Buffer
	if err := rep.writeTable(&table); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"events/s", "weft/ref", "2b.", "CPU per stored event", "CPUs", "in a process of its own"} {
		if !strings.Contains(table.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, table.String())
		}
	}
}

// TestBenchIngestCPU runs `weft bench ingest` briefly against a real node:
// the report gives the CPU per event of the node (its /metrics), of the
// client alone (this process in weft's rounds) and of the HTTP reference,
// in this process and in one of its own.
func TestBenchIngestCPU(t *testing.T) {
	skipShort(t)
	_, out := benchOnNode(t, func(n *weftNode) []string {
		return []string{"ingest", "--jetstream=false", "--weft", weftBin, "--relaxed-server", "http://" + n.http,
			"--duration", "300ms", "--rounds", "2", "--concurrency", "4", "--size", "128"}
	}, "--relaxed-sync")
	var rep ingestReport
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatalf("JSON output does not parse: %v\n%s", err, out.String())
	}
	if rep.Weft.Accepted == 0 || rep.Relaxed == nil || rep.Relaxed.Accepted == 0 {
		t.Fatalf("nothing stored: weft %+v, relaxed %+v", rep.Weft.loadStats, rep.Relaxed)
	}
	if c := rep.CPU; !(c.WeftNodeUs > 0 && c.ClientUs > 0 && c.ReferenceUs > 0 && c.RelaxedNodeUs > 0 && c.ReferenceProcessUs > 0) {
		t.Errorf("CPU per event not measured: %+v", c)
	}
	if rep.GroupCommit != nil {
		t.Errorf("group commits reported for a --relaxed-sync node, which fsyncs none: %+v", rep.GroupCommit)
	}
	var table bytes.Buffer
	if err := rep.writeTable(&table); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"CPU per event: weft's node", "the fasthttp client", "the --relaxed-sync node", "the server in its own process"} {
		if !strings.Contains(table.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, table.String())
		}
	}
}

// TestBenchIngestGroupCommit: against a node that fsyncs before each 202,
// the report says how many events its fsynced commits stored
// (weft_store_commit_events, read around weft's rounds only), and it adds
// up with what the node counted.
func TestBenchIngestGroupCommit(t *testing.T) {
	skipShort(t)
	n, out := benchOnNode(t, func(*weftNode) []string {
		return []string{"ingest", "--jetstream=false", "--reference-process=false", "--duration", "400ms", "--rounds", "2", "--concurrency", "16", "--size", "128"}
	})
	var rep ingestReport
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatalf("JSON output does not parse: %v\n%s", err, out.String())
	}
	gc := rep.GroupCommit
	if gc == nil {
		t.Fatalf("no group commits reported: %s", out.String())
	}
	if gc.EventsPerCommit < 1 || gc.LoneCommitsPct < 0 || gc.LoneCommitsPct > 100 {
		t.Errorf("group commits out of range: %+v", gc)
	}
	node := &apiClient{base: "http://" + n.http, http: &http.Client{}}
	m, err := nodeMetrics(t.Context(), node, "weft_store_commit_events_count", "weft_store_commit_events_sum", "weft_events_stored_total")
	if err != nil {
		t.Fatal(err)
	}
	if m["weft_store_commit_events_sum"] != m["weft_events_stored_total"] || m["weft_store_commit_events_sum"] < float64(rep.Weft.Accepted) {
		t.Errorf("the node's commits stored %v events; it stored %v and answered 202 to %d", m["weft_store_commit_events_sum"], m["weft_events_stored_total"], rep.Weft.Accepted)
	}
	if perCommit := m["weft_store_commit_events_sum"] / m["weft_store_commit_events_count"]; gc.EventsPerCommit > 16 || perCommit > 16 {
		t.Errorf("more events per commit than 16 connections can have in flight: %v reported, %v on the node", gc.EventsPerCommit, perCommit)
	}
	var table bytes.Buffer
	if err := rep.writeTable(&table); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(table.String(), "group commit on weft's node") {
		t.Errorf("table lacks the group commits:\n%s", table.String())
	}
}

// TestBenchNATSUnreachable: a NATS URL nothing listens on exits 6 at once.
func TestBenchNATSUnreachable(t *testing.T) {
	g := &globals{server: "http://127.0.0.1:1", output: "table", stdout: io.Discard, stderr: io.Discard}
	cmd := newBenchCmd(g)
	cmd.SetArgs([]string{"nats", "--url", "nats://" + testutil.RefusingAddr(t), "--duration", "100ms", "--rounds", "1"})
	err := cmd.ExecuteContext(t.Context())
	var ee *exitErr
	if !errors.As(err, &ee) || ee.code != exitUnreachable {
		t.Fatalf("err = %v, want exit %d", err, exitUnreachable)
	}
}
