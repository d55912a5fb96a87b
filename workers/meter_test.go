package workers

import (
	"bufio"
	"context"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	"github.com/weft-dev/weft/internal/testutil"
)

// testClock is a settable clock for bucketing tests: nothing waits.
type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *testClock) Set(t time.Time) {
	c.mu.Lock()
	c.t = t
	c.mu.Unlock()
}

var meterBase = time.Date(2025, 3, 1, 10, 0, 0, 0, time.UTC)

func near(a, b float64) bool { return math.Abs(a-b) < 1e-9*math.Max(1, math.Abs(b)) }

// oneUsage returns the single entry of Usage(function, since, until).
func oneUsage(t *testing.T, m *Meter, function string, since, until time.Time) Usage {
	t.Helper()
	us := m.Usage(function, since, until)
	if len(us) != 1 || us[0].Function != function {
		t.Fatalf("Usage(%q, %v, %v) = %+v, want one entry", function, since, until, us)
	}
	return us[0]
}

func TestMeterBuckets(t *testing.T) {
	t.Parallel()
	clock := &testClock{t: meterBase.Add(10 * time.Minute)}
	m := NewMeter(MeterConfig{Bucket: time.Minute, Retention: time.Hour}, nil, WithMeterClock(clock.Now))
	at := func(d time.Duration) time.Time { return meterBase.Add(d) }
	m.Invocation("b", at(10*time.Second), 100*time.Millisecond, false)
	m.Invocation("b", at(50*time.Second), 300*time.Millisecond, true)
	m.Invocation("b", at(90*time.Second), 200*time.Millisecond, false)
	m.Invocation("b", at(5*time.Minute), time.Second, false)
	m.Invocation("a", at(2*time.Minute), 50*time.Millisecond, false)

	t.Run("whole buckets", func(t *testing.T) {
		us := m.Usage("", at(0), at(2*time.Minute))
		if len(us) != 1 {
			t.Fatalf("Usage = %+v, want only b (a started at the window's end)", us)
		}
		u := us[0]
		if u.Function != "b" || u.Invocations != 3 || u.Failures != 1 || !near(u.DurationSeconds, 0.6) || !near(u.MeanDurationMS, 200) {
			t.Errorf("Usage = %+v, want b: 3 invocations, 1 failure, 0.6s, mean 200ms", u)
		}
		if !u.Since.Equal(at(0)) || !u.Until.Equal(at(2*time.Minute)) {
			t.Errorf("window = [%v, %v), want [%v, %v)", u.Since, u.Until, at(0), at(2*time.Minute))
		}
	})
	t.Run("widened to buckets", func(t *testing.T) {
		u := oneUsage(t, m, "b", at(30*time.Second), at(70*time.Second))
		if u.Invocations != 3 || !u.Since.Equal(at(0)) || !u.Until.Equal(at(2*time.Minute)) {
			t.Errorf("Usage = %+v, want the 3 invocations of buckets [0, 2m)", u)
		}
	})
	t.Run("everything, sorted", func(t *testing.T) {
		us := m.Usage("", time.Time{}, time.Time{})
		if len(us) != 2 || us[0].Function != "a" || us[1].Function != "b" {
			t.Fatalf("Usage = %+v, want a then b", us)
		}
		if us[0].Invocations != 1 || us[1].Invocations != 4 || !near(us[1].DurationSeconds, 1.6) {
			t.Errorf("Usage = %+v", us)
		}
		if !us[1].Until.Equal(clock.Now()) || !us[1].Since.Equal(clock.Now().Add(-time.Hour)) {
			t.Errorf("window = [%v, %v), want the retention up to now", us[1].Since, us[1].Until)
		}
	})
	t.Run("named without usage", func(t *testing.T) {
		for _, fn := range []string{"a", "never-seen"} {
			u := oneUsage(t, m, fn, at(0), at(time.Minute))
			if u.Invocations != 0 || u.MeanDurationMS != 0 || u.CPUSeconds != 0 {
				t.Errorf("Usage(%q) = %+v, want zeros", fn, u)
			}
		}
		if us := m.Usage("", at(6*time.Minute), at(7*time.Minute)); len(us) != 0 {
			t.Errorf("Usage of an idle window = %+v, want none", us)
		}
	})
	t.Run("until capped at now", func(t *testing.T) {
		u := oneUsage(t, m, "b", at(5*time.Minute), at(time.Hour))
		if u.Invocations != 1 || !u.Until.Equal(clock.Now()) {
			t.Errorf("Usage = %+v, want 1 invocation until now", u)
		}
	})
	t.Run("empty window", func(t *testing.T) {
		if us := m.Usage("b", at(2*time.Minute), at(time.Minute)); us != nil {
			t.Errorf("Usage with until before since = %+v, want nil", us)
		}
	})
}

func TestMeterRetention(t *testing.T) {
	t.Parallel()
	clock := &testClock{t: meterBase}
	m := NewMeter(MeterConfig{Bucket: time.Minute, Retention: 10 * time.Minute}, nil, WithMeterClock(clock.Now))
	m.Invocation("f", meterBase.Add(10*time.Second), time.Second, false)
	m.Invocation("f", meterBase.Add(3*time.Minute), time.Second, false)

	// The first bucket ends at base+1m, so it is kept until base+11m.
	clock.Set(meterBase.Add(10*time.Minute + 59*time.Second))
	m.Sample(clock.Now())
	if u := oneUsage(t, m, "f", time.Time{}, time.Time{}); u.Invocations != 2 || !u.Since.Equal(meterBase) {
		t.Fatalf("before expiry: %+v, want 2 invocations since %v", u, meterBase)
	}
	clock.Set(meterBase.Add(11 * time.Minute))
	m.Sample(clock.Now())
	if u := oneUsage(t, m, "f", meterBase, time.Time{}); u.Invocations != 1 || !u.Since.Equal(meterBase.Add(time.Minute)) {
		t.Fatalf("after expiry: %+v, want 1 invocation since %v", u, meterBase.Add(time.Minute))
	}
	m.Invocation("f", meterBase, time.Second, true) // older than the retention: lifetime totals only
	clock.Set(meterBase.Add(14 * time.Minute))
	if us := m.Usage("", time.Time{}, time.Time{}); len(us) != 0 {
		t.Fatalf("after every bucket expired: %+v, want none", us)
	}
	m.mu.Lock()
	kept := len(m.fns["f"].buckets)
	m.mu.Unlock()
	if kept != 0 {
		t.Errorf("%d expired buckets still held", kept)
	}
	got := gather(t, m)
	if got["weft_function_invocations_total"]["f"] != 3 || got["weft_function_failures_total"]["f"] != 1 {
		t.Errorf("lifetime counters = %v, want 3 invocations and 1 failure", got)
	}
}

// TestMeterSampleSpread checks the sampling arithmetic on a fixture /proc
// tree, where CPU ticks and RSS are chosen.
func TestMeterSampleSpread(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	setStat := func(pid, pgrp int, ticks uint64, rssPages int64) {
		t.Helper()
		dir := filepath.Join(root, strconv.Itoa(pid))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		line := statLine(pid, "w", 'S', pgrp, ticks, 0, 0, 0, rssPages)
		if err := os.WriteFile(filepath.Join(dir, "stat"), []byte(line), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	clock := &testClock{t: meterBase.Add(50 * time.Second)}
	m := NewMeter(MeterConfig{Bucket: time.Minute, Retention: time.Hour}, nil, WithMeterClock(clock.Now))
	m.procRoot = root
	page := float64(os.Getpagesize())
	tick := 1 / float64(clockTicks())

	setStat(100, 100, 0, 0)
	setStat(101, 100, 0, 0) // a child in the group
	m.Track("f", "f-1", 100)

	// 20s pass, half in each of two buckets; the group used 1000 ticks and
	// holds 256+256 pages at the sample.
	setStat(100, 100, 600, 256)
	setStat(101, 100, 400, 256)
	clock.Set(meterBase.Add(70 * time.Second))
	m.Sample(clock.Now())
	rss := 512 * page
	first := oneUsage(t, m, "f", meterBase, meterBase.Add(time.Minute))
	second := oneUsage(t, m, "f", meterBase.Add(time.Minute), meterBase.Add(2*time.Minute))
	for i, u := range []Usage{first, second} {
		if !near(u.CPUSeconds, 500*tick) || !near(u.MemoryGBSeconds, rss*10/gibibyte) {
			t.Errorf("bucket %d: %+v, want %v CPU-seconds and %v GB-s", i, u, 500*tick, rss*10/gibibyte)
		}
	}
	if first.PeakRSSBytes != 0 || second.PeakRSSBytes != int64(rss) {
		t.Errorf("peaks = %d, %d; want 0 (no sample in that bucket), %d", first.PeakRSSBytes, second.PeakRSSBytes, int64(rss))
	}

	// A second instance: the peak is the sum over instances at a sample.
	clock.Set(meterBase.Add(75 * time.Second))
	setStat(200, 200, 0, 1024)
	m.Track("f", "f-2", 200)
	setStat(100, 100, 700, 256)
	clock.Set(meterBase.Add(80 * time.Second))
	m.Sample(clock.Now())
	u := oneUsage(t, m, "f", meterBase.Add(time.Minute), meterBase.Add(2*time.Minute))
	if want := int64(rss + 1024*page); u.PeakRSSBytes != want {
		t.Errorf("peak with two instances = %d, want %d", u.PeakRSSBytes, want)
	}
	if want := 600 * tick; !near(u.CPUSeconds, want) {
		t.Errorf("CPU = %v, want %v", u.CPUSeconds, want)
	}
	if got := gather(t, m)["weft_function_rss_bytes"]["f"]; got != rss+1024*page {
		t.Errorf("rss gauge = %v, want %v", got, rss+1024*page)
	}

	// A member leaves the group: the smaller total is a new baseline, never
	// negative usage.
	if err := os.RemoveAll(filepath.Join(root, "101")); err != nil {
		t.Fatal(err)
	}
	clock.Set(meterBase.Add(85 * time.Second))
	m.Sample(clock.Now())
	if u := oneUsage(t, m, "f", meterBase, time.Time{}); !near(u.CPUSeconds, 1100*tick) {
		t.Errorf("CPU after a member left = %v, want %v", u.CPUSeconds, 1100*tick)
	}

	// The second group vanishes without Untrack: it is forgotten.
	if err := os.RemoveAll(filepath.Join(root, "200")); err != nil {
		t.Fatal(err)
	}
	clock.Set(meterBase.Add(90 * time.Second))
	m.Sample(clock.Now())
	// Untrack samples the first group one last time.
	setStat(100, 100, 900, 256)
	clock.Set(meterBase.Add(100 * time.Second))
	m.Untrack("f-1")
	m.Untrack("f-1") // again: a no-op
	m.mu.Lock()
	left := len(m.groups)
	m.mu.Unlock()
	if left != 0 {
		t.Errorf("%d groups still tracked, want 0", left)
	}
	if u := oneUsage(t, m, "f", meterBase, time.Time{}); !near(u.CPUSeconds, 1300*tick) {
		t.Errorf("CPU after Untrack = %v, want %v", u.CPUSeconds, 1300*tick)
	}
	if got := gather(t, m)["weft_function_rss_bytes"]["f"]; got != 0 {
		t.Errorf("rss gauge with nothing tracked = %v, want 0", got)
	}
}

// TestMeterRealProcess meters a real CPU-burning process group.
func TestMeterRealProcess(t *testing.T) {
	t.Parallel()
	cmd := startGroup(t, "while :; do :; done")
	m := NewMeter(MeterConfig{}, nil)
	m.Track("burn", "burn-1", cmd.Process.Pid)
	var u Usage
	testutil.WaitFor(t, 20*time.Second, func() bool {
		m.Sample(time.Now())
		u = oneUsage(t, m, "burn", time.Time{}, time.Time{})
		return u.CPUSeconds >= 0.1 && u.PeakRSSBytes > 0 && u.MemoryGBSeconds > 0
	}, "CPU, peak RSS and GB-seconds of a busy loop")
	got := gather(t, m)
	if got["weft_function_cpu_seconds_total"]["burn"] < 0.1 || got["weft_function_rss_bytes"]["burn"] <= 0 ||
		got["weft_function_memory_byte_seconds_total"]["burn"] <= 0 {
		t.Errorf("metrics = %v, want CPU, RSS and byte-seconds of burn", got)
	}
}

// TestMeterSumsGrandchild: the leader only waits; all the CPU is a
// grandchild's in the same process group, and it counts.
func TestMeterSumsGrandchild(t *testing.T) {
	t.Parallel()
	cmd := startGroup(t, "sh -c 'while :; do :; done' & wait")
	pid := cmd.Process.Pid
	waitGroup(t, pid, func(g groupStat) bool { return g.procs >= 2 })
	m := NewMeter(MeterConfig{}, nil)
	m.Track("fork", "fork-1", pid)
	testutil.WaitFor(t, 20*time.Second, func() bool {
		m.Sample(time.Now())
		return oneUsage(t, m, "fork", time.Time{}, time.Time{}).CPUSeconds >= 0.3
	}, "the grandchild's CPU")
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		t.Fatal(err)
	}
	leader, err := parseProcStat(b)
	if err != nil {
		t.Fatal(err)
	}
	if own := float64(leader.cpuTicks()) / float64(clockTicks()); own >= 0.2 {
		t.Fatalf("the leader itself used %vs of CPU; the test needs an idle leader", own)
	}
}

// TestMeterCountsReapedChild: a child burns CPU and is reaped by the
// leader before any sample; its CPU counts through the leader's cutime.
func TestMeterCountsReapedChild(t *testing.T) {
	t.Parallel()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	cmd := startGroupOut(t, "while :; do :; done & p=$!; sleep 0.5; kill $p; wait $p; echo reaped; exec sleep 60", w)
	_ = w.Close()
	awaitLine(t, r, "reaped")
	m := NewMeter(MeterConfig{}, nil)
	m.Track("child", "child-1", cmd.Process.Pid)
	m.Sample(time.Now())
	if u := oneUsage(t, m, "child", time.Time{}, time.Time{}); u.CPUSeconds < 0.1 {
		t.Fatalf("CPU = %v, want the reaped child's (>= 0.1s)", u.CPUSeconds)
	}
}

// TestMeterUntrackFinalSample: Untrack between the leader's exit and its
// reaping catches the CPU used since the last sample.
func TestMeterUntrackFinalSample(t *testing.T) {
	t.Parallel()
	cmd := startGroup(t, "while :; do :; done & p=$!; sleep 0.5; kill $p; wait $p; exit 0")
	pid := cmd.Process.Pid
	m := NewMeter(MeterConfig{}, nil)
	m.Track("exit", "exit-1", pid)
	m.Sample(time.Now()) // a baseline before the burn is over

	exited := make(chan error, 1)
	go func() {
		var info unix.Siginfo
		for {
			err := unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOWAIT, nil)
			if err != unix.EINTR {
				exited <- err
				return
			}
		}
	}()
	select {
	case err := <-exited:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the leader did not exit within 20s")
	}
	m.Untrack("exit-1") // the zombie still holds its counters
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	u := oneUsage(t, m, "exit", time.Time{}, time.Time{})
	if u.CPUSeconds < 0.1 {
		t.Fatalf("CPU = %v, want the burn caught by Untrack's last sample (>= 0.1s)", u.CPUSeconds)
	}
	m.Sample(time.Now())
	if again := oneUsage(t, m, "exit", time.Time{}, time.Time{}); again.CPUSeconds != u.CPUSeconds {
		t.Errorf("a sample after Untrack changed CPU from %v to %v", u.CPUSeconds, again.CPUSeconds)
	}
}

func TestMeterRun(t *testing.T) {
	t.Parallel()
	cmd := startGroup(t, "while :; do :; done")
	m := NewMeter(MeterConfig{SampleEvery: 10 * time.Millisecond}, nil)
	m.Track("run", "run-1", cmd.Process.Pid)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	testutil.WaitFor(t, 20*time.Second, func() bool {
		return oneUsage(t, m, "run", time.Time{}, time.Time{}).CPUSeconds > 0
	}, "Run to sample the busy loop")
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run = %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
}

// TestMeterConcurrent exercises every method at once, for the race
// detector.
func TestMeterConcurrent(t *testing.T) {
	t.Parallel()
	cmd := startGroup(t, "sleep 60")
	m := NewMeter(MeterConfig{Bucket: time.Millisecond, Retention: 50 * time.Millisecond}, nil)
	reg := prometheus.NewRegistry()
	reg.MustRegister(m.Collector())
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Go(func() {
			fn := "f" + strconv.Itoa(i%2)
			inst := fn + "-" + strconv.Itoa(i)
			for range 50 {
				m.Track(fn, inst, cmd.Process.Pid)
				m.Invocation(fn, time.Now(), time.Millisecond, i%3 == 0)
				m.Sample(time.Now())
				_ = m.Usage("", time.Time{}, time.Time{})
				_ = m.Usage(fn, time.Now().Add(-time.Second), time.Time{})
				if _, err := reg.Gather(); err != nil {
					t.Error(err)
				}
				m.Untrack(inst)
			}
		})
	}
	wg.Wait()
	if got := gather(t, m)["weft_function_invocations_total"]; got["f0"]+got["f1"] != 200 {
		t.Errorf("invocations = %v, want 200 in all", got)
	}
}

func TestMeterNil(t *testing.T) {
	t.Parallel()
	var m *Meter
	m.Invocation("f", time.Now(), time.Second, false)
	m.Track("f", "f-1", 1)
	m.Sample(time.Now())
	m.Untrack("f-1")
	if us := m.Usage("", time.Time{}, time.Time{}); us != nil {
		t.Errorf("Usage of a nil Meter = %v", us)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(m.Collector())
	if mfs, err := reg.Gather(); err != nil || len(mfs) != 0 {
		t.Errorf("Gather of a nil Meter = %v, %v", mfs, err)
	}
}

// gather returns the Meter's metrics: name → function → value.
func gather(t *testing.T, m *Meter) map[string]map[string]float64 {
	t.Helper()
	reg := prometheus.NewRegistry()
	reg.MustRegister(m.Collector())
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]map[string]float64{}
	for _, mf := range mfs {
		vals := map[string]float64{}
		for _, mt := range mf.GetMetric() {
			var fn string
			for _, l := range mt.GetLabel() {
				if l.GetName() == "function" {
					fn = l.GetValue()
				}
			}
			switch {
			case mt.GetCounter() != nil:
				vals[fn] = mt.GetCounter().GetValue()
			case mt.GetGauge() != nil:
				vals[fn] = mt.GetGauge().GetValue()
			}
		}
		out[mf.GetName()] = vals
	}
	return out
}

// startGroupOut is startGroup with the script's stdout going to w.
func startGroupOut(t *testing.T, script string, w *os.File) *exec.Cmd {
	t.Helper()
	cmd := groupCmd(script)
	cmd.Stdout = w
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { killGroup(cmd) })
	return cmd
}

// awaitLine reads lines from r until one is want, for up to 20s.
func awaitLine(t *testing.T, r *os.File, want string) {
	t.Helper()
	if err := r.SetReadDeadline(time.Now().Add(20 * time.Second)); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		if sc.Text() == want {
			return
		}
	}
	t.Fatalf("no line %q: %v", want, sc.Err())
}
