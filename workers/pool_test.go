package workers

import (
	"context"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weft-dev/weft/internal/ceclient"
)

func TestDeliver(t *testing.T) {
	p := startPool(t, Config{})
	cases := map[string]struct {
		fn     *Function
		target string
		path   string
	}{
		"go":     {goFn("echo-go"), "function:echo-go/hooks/a", "/hooks/a"},
		"python": {pyFn(t, "echo-py"), "function:echo-py", "/"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			p.Apply(tc.fn)
			in := newEvent(map[string]any{})
			out, err := p.Deliver(t.Context(), tc.target, in)
			if err != nil {
				t.Fatal(err)
			}
			if out == nil {
				t.Fatal("no reply event")
			}
			if out.Type() != "dev.weft.test.reply" || out.ID() != "reply-"+in.ID() {
				t.Errorf("reply type %q id %q, want dev.weft.test.reply and reply-%s", out.Type(), out.ID(), in.ID())
			}
			_, r, err := send(p, tc.target, map[string]any{})
			if err != nil {
				t.Fatal(err)
			}
			if r.Worker != name || r.Path != tc.path || r.Type != "dev.weft.test" {
				t.Errorf("worker saw %+v, want worker %s, path %s, type dev.weft.test", r, name, tc.path)
			}
			if s := statusOf(t, p, tc.fn.Name); s.State != StateReady || s.Ready != 1 || s.Desired != 1 {
				t.Errorf("status %+v, want ready 1/1", s)
			}
		})
	}
}

func TestDeliverStatusError(t *testing.T) {
	p := startPool(t, Config{})
	p.Apply(goFn("fail-go"))
	p.Apply(pyFn(t, "fail-py"))
	for target, code := range map[string]int{"function:fail-go": 503, "function:fail-py": 422} {
		_, _, err := send(p, target, map[string]any{"status": code})
		se, ok := ceclient.IsStatus(err)
		if !ok {
			t.Fatalf("%s: err %v, want a *ceclient.StatusError", target, err)
		}
		if se.Code != code || !strings.Contains(string(se.Body), "failing on demand") {
			t.Errorf("%s: status %d body %q, want %d and the worker's message", target, se.Code, se.Body, code)
		}
	}
}

func TestDeliverErrors(t *testing.T) {
	p := startPool(t, Config{})
	cases := map[string]struct {
		target string
		want   error
	}{
		"unknown function": {"function:nope", ErrUnknownFunction},
		"url":              {"http://127.0.0.1:1/", ErrInvalidTarget},
		"empty name":       {"function:", ErrInvalidTarget},
		"bad name":         {"function:Not_A_Name/x", ErrInvalidTarget},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := p.Deliver(t.Context(), tc.target, newEvent(nil))
			if !errors.Is(err, tc.want) {
				t.Errorf("Deliver(%q) = %v, want %v", tc.target, err, tc.want)
			}
		})
	}
}

func TestDeliverWaitsForReadiness(t *testing.T) {
	p := startPool(t, Config{})
	fn := goFn("slow-start", "READY_DELAY=300ms")
	fn.Readiness.Path = "/healthz"
	p.Apply(fn)
	// The worker accepts connections at once but answers /healthz 503 for
	// 300ms; Deliver must hold the event until the HTTP probe passes.
	r := mustSend(t, p, "function:slow-start", map[string]any{})
	if !r.Ready {
		t.Error("event delivered before the instance was ready")
	}
}

func TestConcurrencyNeverExceeded(t *testing.T) {
	p := startPool(t, Config{})
	for name, fn := range map[string]*Function{"go": goFn("limit-go"), "python": pyFn(t, "limit-py")} {
		t.Run(name, func(t *testing.T) {
			fn.Concurrency = 2
			fn.Scale.Min = 2
			p.Apply(fn)
			waitFor(t, 20*time.Second, func() bool { return statusOf(t, p, fn.Name).Ready == 2 })
			const requests = 16
			var wg sync.WaitGroup
			replies := make(chan reply, requests)
			errs := make(chan error, requests)
			for range requests {
				wg.Go(func() {
					_, r, err := send(p, "function:"+fn.Name, map[string]any{"sleep_ms": 40})
					if err != nil {
						errs <- err
						return
					}
					replies <- r
				})
			}
			wg.Wait()
			close(replies)
			close(errs)
			for err := range errs {
				t.Error(err)
			}
			pids := map[int]bool{}
			peak := 0
			for r := range replies {
				pids[r.PID] = true
				peak = max(peak, r.MaxInflight)
			}
			if peak > 2 {
				t.Errorf("a worker held %d requests at once, concurrency is 2", peak)
			}
			if peak < 2 || len(pids) != 2 {
				t.Errorf("peak %d over %d instances, want 2 over 2: the limit should not serialise", peak, len(pids))
			}
		})
	}
}

func TestConcurrencyWaitIsBoundedByContext(t *testing.T) {
	p := startPool(t, Config{})
	fn := goFn("one-slot")
	fn.Concurrency = 1
	p.Apply(fn)
	release := filepath.Join(t.TempDir(), "release")
	first := make(chan error, 1)
	go func() {
		_, _, err := send(p, "function:one-slot", map[string]any{"wait_file": release})
		first <- err
	}()
	waitFor(t, 10*time.Second, func() bool { return statusOf(t, p, "one-slot").InFlight == 1 })

	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	if _, _, err := sendCtx(ctx, p, "function:one-slot", map[string]any{}); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("second request on a full instance: %v, want context.DeadlineExceeded", err)
	}
	if err := os.WriteFile(release, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := <-first; err != nil {
		t.Errorf("first request: %v", err)
	}
	mustSend(t, p, "function:one-slot", map[string]any{}) // the slot is free again
}

func TestApplyReplacesWithoutCuttingInFlight(t *testing.T) {
	p := startPool(t, Config{})
	p.Apply(goFn("roll", "VERSION=1"))
	old := mustSend(t, p, "function:roll", map[string]any{})
	if old.Version != "1" {
		t.Fatalf("version %q, want 1", old.Version)
	}

	release := filepath.Join(t.TempDir(), "release")
	type result struct {
		r   reply
		err error
	}
	inflight := make(chan result, 1)
	go func() {
		_, r, err := send(p, "function:roll", map[string]any{"wait_file": release})
		inflight <- result{r, err}
	}()
	waitFor(t, 10*time.Second, func() bool {
		in, ok := instanceOf(p, "roll", old.PID)
		return ok && in.InFlight == 1
	})

	p.Apply(goFn("roll", "VERSION=2"))
	// The new instance becomes ready, the old one drains: no new requests,
	// but its process lives on until the held request is answered.
	waitFor(t, 10*time.Second, func() bool {
		in, ok := instanceOf(p, "roll", old.PID)
		return ok && in.State == StateDraining && statusOf(t, p, "roll").Ready == 1
	})
	if r := mustSend(t, p, "function:roll", map[string]any{}); r.Version != "2" || r.PID == old.PID {
		t.Errorf("new request went to version %q pid %d, want the new instance", r.Version, r.PID)
	}
	if gone(old.PID) {
		t.Fatal("old process stopped with a request in flight")
	}
	if err := os.WriteFile(release, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	select {
	case res := <-inflight:
		if res.err != nil || res.r.PID != old.PID || res.r.Version != "1" {
			t.Errorf("in-flight request: %+v %v, want answered by the old instance", res.r, res.err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("in-flight request never answered")
	}
	waitFor(t, 10*time.Second, func() bool { return gone(old.PID) && len(p.Instances("roll")) == 1 })
	if s := statusOf(t, p, "roll"); s.State != StateReady {
		t.Errorf("after the rollout: %+v, want ready", s)
	}
}

func TestApplyUnchangedAndRescale(t *testing.T) {
	p := startPool(t, Config{})
	p.Apply(goFn("steady"))
	first := mustSend(t, p, "function:steady", map[string]any{})
	before := p.Instances("steady")

	p.Apply(goFn("steady")) // an equal Function, a different pointer
	after := p.Instances("steady")
	if len(after) != 1 || after[0].ID != before[0].ID || after[0].PID != first.PID {
		t.Errorf("re-applying an unchanged function touched its instances: %+v → %+v", before, after)
	}

	bigger := goFn("steady")
	bigger.Scale.Min = 2
	p.Apply(bigger)
	waitFor(t, 10*time.Second, func() bool { return statusOf(t, p, "steady").Ready == 2 })
	if _, ok := instanceOf(p, "steady", first.PID); !ok {
		t.Error("a scale-only change replaced the running instance")
	}

	// Lowering min leaves the count to the autoscaler (it shrinks once a
	// stable window shows no demand); lowering max takes effect at once.
	one := goFn("steady")
	one.Scale.Max = 1
	p.Apply(one)
	waitFor(t, 10*time.Second, func() bool { return len(p.Instances("steady")) == 1 })
	if _, ok := instanceOf(p, "steady", first.PID); !ok {
		t.Error("scaling down stopped the older instance rather than the newer")
	}
}

func TestRemoveStopsProcesses(t *testing.T) {
	p := startPool(t, Config{})
	p.Apply(goFn("doomed", "SPAWN_CHILD=1"))
	r := mustSend(t, p, "function:doomed", map[string]any{})
	if r.ChildPID == 0 {
		t.Fatal("worker reported no child")
	}
	p.Remove("doomed")
	waitFor(t, 10*time.Second, func() bool { return gone(r.PID) && dead(r.ChildPID) })
	if _, err := p.Deliver(t.Context(), "function:doomed", newEvent(nil)); !errors.Is(err, ErrUnknownFunction) {
		t.Errorf("Deliver after Remove: %v, want ErrUnknownFunction", err)
	}
	if len(p.Status()) != 0 || p.Instances("doomed") != nil || p.Logs("doomed") != nil {
		t.Error("a removed function is still listed")
	}
	p.Remove("doomed") // a no-op
}

func TestRemoveWakesWaitingDeliver(t *testing.T) {
	p := startPool(t, Config{})
	p.Apply(goFn("never-ready", "CRASH_ON_START=1"))
	got := make(chan error, 1)
	go func() {
		_, _, err := send(p, "function:never-ready", map[string]any{})
		got <- err
	}()
	waitFor(t, 10*time.Second, func() bool { return statusOf(t, p, "never-ready").Restarts > 0 })
	p.Remove("never-ready")
	select {
	case err := <-got:
		if !errors.Is(err, ErrUnknownFunction) {
			t.Errorf("waiting Deliver: %v, want ErrUnknownFunction", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Deliver kept waiting for a removed function")
	}
}

// TestDrainTurnsAwayWhatNoInstanceWillServe: once the pool drains, a request
// waiting for a function with no ready instance gives up at once with
// ErrStopping, and so does a new one; a request waiting for a busy ready
// instance still gets its slot when the request in flight ends, and nothing
// new is started (the function at zero gets no cold start).
func TestDrainTurnsAwayWhatNoInstanceWillServe(t *testing.T) {
	p := startPool(t, Config{})
	p.Apply(goFn("never-ready", "CRASH_ON_START=1"))
	busy := goFn("drain-busy")
	busy.Concurrency = 1
	p.Apply(busy)
	idle := goFn("drain-idle")
	idle.Scale.Min = 0
	p.Apply(idle)

	neverReady := make(chan error, 1)
	go func() {
		_, _, err := send(p, "function:never-ready", map[string]any{})
		neverReady <- err
	}()
	release := filepath.Join(t.TempDir(), "release")
	inFlight, queued := make(chan error, 1), make(chan error, 1)
	go func() {
		_, _, err := send(p, "function:drain-busy", map[string]any{"wait_file": release})
		inFlight <- err
	}()
	waitFor(t, 10*time.Second, func() bool { return statusOf(t, p, "drain-busy").InFlight == 1 })
	go func() {
		_, _, err := send(p, "function:drain-busy", map[string]any{})
		queued <- err
	}()
	waitFor(t, 10*time.Second, func() bool {
		return statusOf(t, p, "never-ready").Restarts > 0 && statusOf(t, p, "drain-busy").Waiting == 1
	})

	p.Drain()
	select {
	case err := <-neverReady:
		if !errors.Is(err, ErrStopping) {
			t.Errorf("request waiting for a function never ready: %v, want ErrStopping", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a request for a function with no ready instance kept waiting after Drain")
	}
	if _, _, err := send(p, "function:drain-idle", map[string]any{}); !errors.Is(err, ErrStopping) {
		t.Errorf("request for a function at zero while draining: %v, want ErrStopping", err)
	}
	if st := statusOf(t, p, "drain-idle"); st.Desired != 0 || len(p.Instances("drain-idle")) != 0 {
		t.Errorf("function at zero while draining: desired %d, %d instances; want no cold start", st.Desired, len(p.Instances("drain-idle")))
	}
	select {
	case err := <-queued:
		t.Fatalf("request queued behind a ready instance ended before its slot was free: %v", err)
	default:
	}
	if err := os.WriteFile(release, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for name, ch := range map[string]chan error{"in flight": inFlight, "queued": queued} {
		select {
		case err := <-ch:
			if err != nil {
				t.Errorf("%s request on a ready instance while draining: %v", name, err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("%s request on a ready instance did not end", name)
		}
	}
}

func TestRunStopsEveryProcess(t *testing.T) {
	const grace = 300 * time.Millisecond
	p := New(Config{StopGrace: grace}, testLogger())
	p.Apply(goFn("polite")) // applied before Run: starts when Run does
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	<-p.Ready()
	p.Apply(goFn("stubborn", "IGNORE_TERM=1", "SPAWN_CHILD=1"))
	polite := mustSend(t, p, "function:polite", map[string]any{})
	_ = p.Follow(ctx, "polite") // a follower must not outlive Run either
	stubborn := mustSend(t, p, "function:stubborn", map[string]any{})

	start := time.Now()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Run did not return")
	}
	// Every goroutine of the pool has ended; the AfterFunc of a Follow may
	// take a moment after its context, so poll.
	waitFor(t, 5*time.Second, func() bool { return poolGoroutines() == "" })
	if took := time.Since(start); took < grace {
		t.Errorf("Run returned after %v, before the stubborn worker's grace of %v", took, grace)
	}
	for _, pid := range []int{polite.PID, stubborn.PID} {
		if !gone(pid) {
			t.Errorf("pid %d outlived Run", pid)
		}
	}
	waitFor(t, 10*time.Second, func() bool { return dead(stubborn.ChildPID) })
	if _, err := p.Deliver(t.Context(), "function:polite", newEvent(nil)); !errors.Is(err, ErrStopped) {
		t.Errorf("Deliver after Run: %v, want ErrStopped", err)
	}
	if s := statusOf(t, p, "polite"); s.State != StateStopped {
		t.Errorf("state after Run: %s, want stopped", s.State)
	}
	if err := p.Run(context.Background()); err == nil {
		t.Error("a second Run succeeded")
	}
}

// poolGoroutines returns the stacks of live goroutines running code of a
// pool, or "" when there are none. (goleak is not a dependency of weft.)
func poolGoroutines() string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var out []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "workers.(*Pool)") || strings.Contains(g, "workers.(*process)") || strings.Contains(g, "workers.(*logBuffer)") {
			out = append(out, g)
		}
	}
	return strings.Join(out, "\n\n")
}

// TestAcquireForPlainHTTP: the router's path to a function holds a slot
// under the function's concurrency and gives a reachable address.
func TestAcquireForPlainHTTP(t *testing.T) {
	p := startPool(t, Config{})
	fn := goFn("plain")
	fn.Concurrency = 1
	p.Apply(fn)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	addr, release, err := p.Acquire(ctx, "plain")
	if err != nil {
		t.Fatal(err)
	}
	if st := statusOf(t, p, "plain"); st.InFlight != 1 {
		t.Fatalf("in flight %d while a slot is held", st.InFlight)
	}
	// The only slot is taken: a second Acquire waits until release.
	short, cancelShort := context.WithTimeout(ctx, 200*time.Millisecond)
	if _, _, err := p.Acquire(short, "plain"); err == nil {
		t.Fatal("a second request got a slot beyond concurrency 1")
	}
	cancelShort()
	resp, err := http.Get("http://" + addr + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	release(nil)
	release(nil) // a second call is harmless
	if st := statusOf(t, p, "plain"); st.InFlight != 0 {
		t.Fatalf("in flight %d after release", st.InFlight)
	}
}
