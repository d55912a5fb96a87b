package workers

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// TestScaleFromZeroAndBack runs an elastic function with real processes: it
// has no process while idle; the first request starts one and is delivered
// once it is ready; a burst grows the pool to several instances (seen in the
// pool and as live OS processes), every request succeeds, and once demand is
// gone the pool drains back to zero.
func TestScaleFromZeroAndBack(t *testing.T) {
	p := startPool(t, Config{SampleEvery: 100 * time.Millisecond})
	fn := goFn("elastic")
	fn.Concurrency = 1
	fn.Scale = Scale{Min: 0, Max: 4, Target: 1, StableWindow: 6 * time.Second, ScaleToZeroGrace: 6 * time.Second}
	p.Apply(fn)

	if st := statusOf(t, p, "elastic"); st.State != StateIdle || len(p.Instances("elastic")) != 0 {
		t.Fatalf("an idle min-0 function runs processes: %+v", st)
	}

	// A cold start: the request waits for the first instance.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := p.Deliver(ctx, "function:elastic", newEvent(map[string]any{"sleep_ms": 10})); err != nil {
		t.Fatalf("cold start delivery: %v", err)
	}

	// A burst of slow requests: one in flight per instance, so the waiting
	// ones are demand the autoscaler sees and answers with more instances.
	var peak atomic.Int32
	pids := sync.Map{}
	stopWatch := make(chan struct{})
	var watch sync.WaitGroup
	watch.Go(func() {
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stopWatch:
				return
			case <-tick.C:
			}
			live := 0
			for _, in := range p.Instances("elastic") {
				if in.PID > 0 && syscall.Kill(in.PID, 0) == nil {
					live++
					pids.Store(in.PID, true)
				}
			}
			if int32(live) > peak.Load() {
				peak.Store(int32(live))
			}
		}
	})
	var wg sync.WaitGroup
	var failed atomic.Int32
	for range 24 {
		wg.Go(func() {
			if _, err := p.Deliver(ctx, "function:elastic", newEvent(map[string]any{"sleep_ms": 400})); err != nil {
				t.Logf("delivery: %v", err)
				failed.Add(1)
			}
		})
	}
	wg.Wait()
	close(stopWatch)
	watch.Wait()
	if failed.Load() > 0 {
		t.Fatalf("%d of 24 deliveries failed", failed.Load())
	}
	if peak.Load() < 2 {
		t.Fatalf("the pool never grew beyond %d live process(es) under a burst", peak.Load())
	}
	t.Logf("peak: %d live processes", peak.Load())

	// Idle again: back to zero after the stable window and the grace, with
	// every process gone.
	waitFor(t, 40*time.Second, func() bool { return len(p.Instances("elastic")) == 0 })
	pids.Range(func(k, _ any) bool {
		pid := k.(int)
		waitFor(t, 10*time.Second, func() bool { return syscall.Kill(pid, 0) == syscall.ESRCH })
		return true
	})
	st := statusOf(t, p, "elastic")
	if st.State != StateIdle || st.Desired != 0 {
		t.Fatalf("after idling: %+v", st)
	}
	var sawScaleUp, sawZero bool
	for _, d := range st.Decisions {
		sawScaleUp = sawScaleUp || d.Desired > 1
		sawZero = sawZero || (d.Desired == 0 && strings.Contains(d.Reason, "zero"))
	}
	if !sawScaleUp || !sawZero {
		t.Errorf("decisions do not show the way up and back to zero: %+v", st.Decisions)
	}
}

// TestBacklogScalesBeforeRequests: events waiting in the broker count as
// demand, so the pool starts instances with no request in flight.
func TestBacklogScalesBeforeRequests(t *testing.T) {
	var backlog atomic.Int32
	p := startPool(t, Config{SampleEvery: 100 * time.Millisecond, Backlog: backlogFunc(func(name string) int {
		if name == "queued" {
			return int(backlog.Load())
		}
		return 0
	})})
	fn := goFn("queued")
	fn.Concurrency = 1
	fn.Scale = Scale{Min: 0, Max: 3, Target: 1, StableWindow: 6 * time.Second, ScaleToZeroGrace: 6 * time.Second}
	p.Apply(fn)
	backlog.Store(10)
	waitFor(t, 15*time.Second, func() bool { return statusOf(t, p, "queued").Ready == 3 })
	if st := statusOf(t, p, "queued"); st.InFlight != 0 || st.Desired != 3 {
		t.Fatalf("status %+v, want 3 instances (capped by max) with nothing in flight", st)
	}
}

type backlogFunc func(string) int

func (f backlogFunc) Backlog(name string) int { return f(name) }

// TestBurstScalesBetweenTicks: a step in load starts instances as requests
// arrive, not at the autoscaler's next tick. The pool here never ticks (it
// samples once an hour), so only the arrivals can scale it.
func TestBurstScalesBetweenTicks(t *testing.T) {
	p := startPool(t, Config{SampleEvery: time.Hour})
	fn := goFn("stepped")
	fn.Scale = Scale{Min: 1, Max: 3, Target: 1}
	p.Apply(fn)
	waitFor(t, 15*time.Second, func() bool { return statusOf(t, p, "stepped").Ready == 1 })

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	for range 8 { // 8 × the target on one instance: over the panic threshold (2×)
		wg.Go(func() {
			if _, err := p.Deliver(ctx, "function:stepped", newEvent(map[string]any{"sleep_ms": 3000})); err != nil {
				t.Errorf("delivery: %v", err)
			}
		})
	}
	waitFor(t, 15*time.Second, func() bool { return statusOf(t, p, "stepped").Ready == 3 })
	st := statusOf(t, p, "stepped")
	if st.Desired != 3 || len(st.Decisions) == 0 || !strings.HasPrefix(st.Decisions[len(st.Decisions)-1].Reason, "panic") {
		t.Errorf("status %+v, want 3 instances (max) from a panic decision", st)
	}
	wg.Wait()
}
