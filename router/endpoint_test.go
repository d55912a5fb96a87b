package router

import (
	"math"
	"sync"
	"testing"
	"time"
)

// lbClock is a Clock that moves only when told to; the balancing, outlier
// and budget tests share it.
type lbClock struct {
	mu sync.Mutex
	t  time.Time
}

func newLBClock() *lbClock {
	return &lbClock{t: time.Date(2030, time.January, 2, 3, 4, 5, 0, time.UTC)}
}

func (c *lbClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *lbClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// lbAnswer runs one request to e that takes latency on clk.
func lbAnswer(clk *lbClock, e *Endpoint, latency time.Duration, ok bool) {
	e.Begin()
	clk.Advance(latency)
	e.End(latency, ok)
}

func lbScale(d time.Duration, f float64) time.Duration { return time.Duration(float64(d) * f) }

func lbNear(t *testing.T, what string, got, want, tol time.Duration) {
	t.Helper()
	if d := got - want; d < -tol || d > tol {
		t.Errorf("%s = %v, want %v ± %v", what, got, want, tol)
	}
}

func TestEndpointDefaultRTTDecaysUntilFirstAnswer(t *testing.T) {
	clk := newLBClock()
	e := NewEndpoint("10.0.0.1:80", clk)
	if got := e.EWMA(); got != DefaultRTT {
		t.Fatalf("new endpoint EWMA = %v, want DefaultRTT %v", got, DefaultRTT)
	}
	clk.Advance(DefaultEWMADecay) // one τ: e^-1 of the default is left
	lbNear(t, "EWMA after τ idle", e.EWMA(), lbScale(DefaultRTT, 1/math.E), time.Microsecond)

	// The first answer replaces the placeholder, even a faster one.
	lbAnswer(clk, e, 2*time.Millisecond, true)
	if got := e.EWMA(); got != 2*time.Millisecond {
		t.Errorf("EWMA after first answer = %v, want 2ms", got)
	}
}

func TestEndpointPeakEWMA(t *testing.T) {
	clk := newLBClock()
	e := NewEndpoint("a", clk)
	lbAnswer(clk, e, 10*time.Millisecond, true)

	// A slower sample is taken at once: the peak.
	lbAnswer(clk, e, 100*time.Millisecond, true)
	if got := e.EWMA(); got != 100*time.Millisecond {
		t.Fatalf("EWMA after a 100ms peak = %v, want 100ms", got)
	}

	// Faster samples pull it down smoothly, never below them.
	prev := e.EWMA()
	for i := range 300 { // 30 s of 10 ms answers every 100 ms
		clk.Advance(90 * time.Millisecond)
		lbAnswer(clk, e, 10*time.Millisecond, true)
		got := e.EWMA()
		if got > prev || got < 9*time.Millisecond {
			t.Fatalf("sample %d: EWMA %v after %v: want it falling toward 10ms", i, got, prev)
		}
		prev = got
	}
	lbNear(t, "EWMA after 30s of 10ms answers", prev, 10*time.Millisecond, time.Millisecond)

	// Idle, it decays toward zero with τ, so an avoided endpoint is probed.
	lbAnswer(clk, e, 100*time.Millisecond, true)
	clk.Advance(DefaultEWMADecay)
	lbNear(t, "EWMA τ after a 100ms peak", e.EWMA(), lbScale(100*time.Millisecond, 1/math.E), time.Microsecond)
}

func TestEndpointFailureNeverLowersEstimate(t *testing.T) {
	clk := newLBClock()
	e := NewEndpoint("a", clk)
	lbAnswer(clk, e, 100*time.Millisecond, true)

	e.Begin()
	e.End(time.Microsecond, false) // connection refused at once
	if got := e.EWMA(); got != 100*time.Millisecond {
		t.Errorf("EWMA after a fast failure = %v, want 100ms unchanged", got)
	}
	lbAnswer(clk, e, 2*time.Second, false) // a timeout is a peak
	if got := e.EWMA(); got != 2*time.Second {
		t.Errorf("EWMA after a 2s timeout = %v, want 2s", got)
	}

	// Failures before any success do not count as the first answer.
	f := NewEndpoint("b", clk)
	f.Begin()
	f.End(time.Microsecond, false)
	if got := f.EWMA(); got != DefaultRTT {
		t.Errorf("EWMA after only a fast failure = %v, want DefaultRTT", got)
	}
	lbAnswer(clk, f, 3*time.Millisecond, true)
	if got := f.EWMA(); got != 3*time.Millisecond {
		t.Errorf("EWMA after the first success = %v, want 3ms", got)
	}
}

func TestEndpointInFlight(t *testing.T) {
	e := NewEndpoint("a", nil) // SystemClock
	e.Begin()
	e.Begin()
	e.Begin()
	e.End(time.Millisecond, true)
	if got := e.InFlight(); got != 2 {
		t.Fatalf("InFlight = %d, want 2", got)
	}
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 1000 {
				e.Begin()
				_ = e.EWMA()
				e.End(time.Millisecond, true)
			}
		})
	}
	wg.Wait()
	if got := e.InFlight(); got != 2 {
		t.Errorf("InFlight after concurrent requests = %d, want 2", got)
	}
}

func TestEndpointEjectedByClock(t *testing.T) {
	clk := newLBClock()
	e := NewEndpoint("a", clk)
	if e.Ejected(clk.Now()) || !e.EjectedUntil().IsZero() {
		t.Fatal("a new endpoint is ejected")
	}
	until := clk.Now().Add(time.Second)
	e.ejectedUntil.Store(until.UnixNano())
	if !e.Ejected(clk.Now()) || !e.EjectedUntil().Equal(until) {
		t.Errorf("Ejected = false or EjectedUntil = %v, want until %v", e.EjectedUntil(), until)
	}
	if e.Ejected(until) {
		t.Error("still ejected when the ejection time is up")
	}
}
