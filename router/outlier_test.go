package router

import (
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"
)

func lbDetector(t *testing.T, cfg OutlierConfig, clk Clock, eps []*Endpoint) *OutlierDetector {
	t.Helper()
	d, err := NewOutlierDetector(cfg, clk)
	if err != nil {
		t.Fatal(err)
	}
	d.SetEndpoints(eps)
	return d
}

func lbFail(d *OutlierDetector, e *Endpoint, n int) {
	for range n {
		d.Observe(e, false)
	}
}

func TestOutlierConfigDefaults(t *testing.T) {
	d, err := NewOutlierDetector(OutlierConfig{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := OutlierConfig{ConsecutiveFailures: 5, EjectionTime: 30 * time.Second,
		MaxEjectionTime: 5 * time.Minute, MaxEjectionPercent: 50}
	if got := d.Config(); got != want {
		t.Errorf("defaults = %+v, want %+v", got, want)
	}
	for name, cfg := range map[string]OutlierConfig{
		"negative failures":    {ConsecutiveFailures: -1},
		"negative ejection":    {EjectionTime: -time.Second},
		"cap below ejection":   {EjectionTime: time.Minute, MaxEjectionTime: time.Second},
		"percent above 100":    {MaxEjectionPercent: 101},
		"percent below 0":      {MaxEjectionPercent: -5},
		"cap below default 30": {MaxEjectionTime: 10 * time.Second},
	} {
		if err := cfg.Validate(); err == nil {
			t.Errorf("%s: Validate(%+v) = nil, want an error", name, cfg)
		}
		if _, err := NewOutlierDetector(cfg, nil); err == nil {
			t.Errorf("%s: NewOutlierDetector accepted %+v", name, cfg)
		}
	}
}

func TestOutlierEjectsAfterConsecutiveFailures(t *testing.T) {
	clk := newLBClock()
	eps := lbEndpoints(4, clk)
	d := lbDetector(t, OutlierConfig{}, clk, eps) // 5 failures, 30 s
	e := eps[0]

	lbFail(d, e, 4)
	d.Observe(e, true) // a success resets the count
	lbFail(d, e, 4)
	if e.Ejected(clk.Now()) {
		t.Fatal("ejected after 4 failures in a row, want 5")
	}
	d.Observe(e, false)
	if !e.Ejected(clk.Now()) {
		t.Fatal("not ejected after 5 failures in a row")
	}
	if got, want := e.EjectedUntil(), clk.Now().Add(30*time.Second); !got.Equal(want) {
		t.Errorf("EjectedUntil = %v, want now+30s %v", got, want)
	}

	// It comes back by itself when the clock says so.
	clk.Advance(30*time.Second - time.Nanosecond)
	if !e.Ejected(clk.Now()) {
		t.Error("back before EjectionTime")
	}
	clk.Advance(time.Nanosecond)
	if e.Ejected(clk.Now()) {
		t.Error("still ejected after EjectionTime")
	}
	// On probation: a success clears it for good.
	d.Observe(e, true)
	lbFail(d, e, 4)
	if e.Ejected(clk.Now()) || e.ConsecutiveFailures() != 4 {
		t.Errorf("after success + 4 failures: ejected %v, count %d; want back, 4", e.Ejected(clk.Now()), e.ConsecutiveFailures())
	}
}

func TestOutlierNeverEjectsMoreThanMaxPercent(t *testing.T) {
	for _, tc := range []struct {
		endpoints, percent, want int
	}{
		{1, 0, 0}, // a lone endpoint stays
		{2, 0, 1},
		{3, 0, 1},
		{4, 0, 2},
		{10, 0, 5},
		{10, 10, 1},
		{3, 100, 3},
	} {
		clk := newLBClock()
		eps := lbEndpoints(tc.endpoints, clk)
		d := lbDetector(t, OutlierConfig{ConsecutiveFailures: 3, MaxEjectionPercent: tc.percent}, clk, eps)
		for range 10 {
			for _, e := range eps {
				d.Observe(e, false)
			}
		}
		ejected := 0
		for _, e := range eps {
			if e.Ejected(clk.Now()) {
				ejected++
			}
		}
		if ejected != tc.want {
			t.Errorf("%d endpoints all failing, max %d%%: %d ejected, want %d", tc.endpoints, tc.percent, ejected, tc.want)
		}
	}
}

func TestOutlierCapFreesAsEjectionsEnd(t *testing.T) {
	clk := newLBClock()
	eps := lbEndpoints(2, clk)
	d := lbDetector(t, OutlierConfig{ConsecutiveFailures: 2, EjectionTime: 10 * time.Second}, clk, eps)
	lbFail(d, eps[0], 2)
	lbFail(d, eps[1], 5) // held back by the 50 % cap
	if !eps[0].Ejected(clk.Now()) || eps[1].Ejected(clk.Now()) {
		t.Fatal("want ep0 ejected and ep1 kept by the cap")
	}
	clk.Advance(10 * time.Second) // ep0 returns
	d.Observe(eps[1], false)
	if !eps[1].Ejected(clk.Now()) {
		t.Error("ep1 still failing is not ejected once the cap allows")
	}
}

func TestOutlierRepeatedEjectionsBackOff(t *testing.T) {
	clk := newLBClock()
	eps := lbEndpoints(3, clk)
	d := lbDetector(t, OutlierConfig{ConsecutiveFailures: 3, EjectionTime: 30 * time.Second,
		MaxEjectionTime: 100 * time.Second}, clk, eps)
	e := eps[0]
	lbFail(d, e, 3)
	for _, want := range []time.Duration{60, 90, 100, 100} { // × 30 s, capped at 100 s
		clk.Advance(e.EjectedUntil().Sub(clk.Now()))
		d.Observe(e, false) // probation: the first failure back ejects again
		if got := e.EjectedUntil().Sub(clk.Now()); got != want*time.Second {
			t.Errorf("re-ejected for %v, want %v", got, want*time.Second)
		}
	}

	// Healthy for long enough, it starts again from the base time.
	clk.Advance(e.EjectedUntil().Sub(clk.Now()))
	d.Observe(e, true)
	clk.Advance(10 * time.Minute)
	lbFail(d, e, 3)
	if got := e.EjectedUntil().Sub(clk.Now()); got != 30*time.Second {
		t.Errorf("ejected for %v after 10 healthy minutes, want the base 30s", got)
	}
}

func TestOutlierIgnoresEndpointsOutsidePool(t *testing.T) {
	clk := newLBClock()
	eps := lbEndpoints(3, clk)
	d := lbDetector(t, OutlierConfig{ConsecutiveFailures: 1}, clk, eps[:2])
	lbFail(d, eps[2], 5)
	if eps[2].Ejected(clk.Now()) {
		t.Error("an endpoint outside the pool was ejected")
	}
	d.SetEndpoints(eps)
	d.Observe(eps[2], false)
	if !eps[2].Ejected(clk.Now()) {
		t.Error("not ejected once in the pool")
	}
}

func TestOutlierConcurrentFailuresRespectCap(t *testing.T) {
	clk := newLBClock()
	eps := lbEndpoints(6, clk)
	d := lbDetector(t, OutlierConfig{ConsecutiveFailures: 2}, clk, eps)
	var wg sync.WaitGroup
	for g := range 12 {
		wg.Go(func() {
			for i := range 200 {
				e := eps[(g+i)%len(eps)]
				d.Observe(e, i%7 == 0)
				_ = e.Ejected(clk.Now())
			}
		})
	}
	wg.Wait()
	ejected := 0
	for _, e := range eps {
		if e.Ejected(clk.Now()) {
			ejected++
		}
	}
	if ejected != 3 {
		t.Errorf("%d of 6 ejected under concurrent failures, want exactly the 50%% cap, 3", ejected)
	}
}

// TestOutlierEjectsClosedPort sends real requests round-robin to two
// loopback backends and a closed port: the closed one is ejected after its
// consecutive failures, gets nothing while ejected, and is re-ejected at
// once when it comes back still closed.
func TestOutlierEjectsClosedPort(t *testing.T) {
	clk := newLBClock()
	var eps []*Endpoint
	for range 2 {
		srv := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
		t.Cleanup(srv.Close)
		eps = append(eps, NewEndpoint(srv.Listener.Addr().String(), clk))
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := NewEndpoint(ln.Addr().String(), clk)
	ln.Close() // now refusing
	eps = append(eps, dead)

	d := lbDetector(t, OutlierConfig{ConsecutiveFailures: 3}, clk, eps)
	b := lbMustBalancer(t, PolicyRoundRobin, clk, lbSeeded(11))
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}

	buf := make([]*Endpoint, 0, len(eps))
	send := func() (*Endpoint, error) {
		e := b.Pick(Available(buf[:0], eps, clk.Now()))
		e.Begin()
		start := time.Now()
		resp, err := client.Get("http://" + e.Addr + "/")
		ok := err == nil && resp.StatusCode < 500
		if err == nil {
			resp.Body.Close()
		}
		e.End(time.Since(start), ok)
		d.Observe(e, ok)
		return e, err
	}

	deadHits, liveErrs := 0, 0
	for range 30 {
		e, err := send()
		switch {
		case e == dead:
			deadHits++
			if err == nil {
				t.Fatal("the closed port answered")
			}
			if !Retryable("POST", 0, err, RetryPolicy{}) {
				t.Errorf("connection refused is not retryable: %v", err)
			}
		case err != nil:
			liveErrs++
			t.Errorf("live backend: %v", err)
		}
	}
	if deadHits != 3 {
		t.Errorf("the closed port got %d requests, want exactly 3 (ejected after the 3rd)", deadHits)
	}
	if !dead.Ejected(clk.Now()) {
		t.Fatal("the closed port is not ejected")
	}
	for _, e := range eps[:2] {
		if e.Ejected(clk.Now()) {
			t.Errorf("live backend %s ejected", e.Addr)
		}
	}

	// After EjectionTime it is a candidate again; still closed, its first
	// request ejects it again, for twice as long.
	clk.Advance(30 * time.Second)
	for range 3 {
		if e, _ := send(); e == dead {
			break
		}
	}
	if !dead.Ejected(clk.Now()) {
		t.Fatal("the closed port is not re-ejected after coming back")
	}
	if got := dead.EjectedUntil().Sub(clk.Now()); got != 60*time.Second {
		t.Errorf("second ejection lasts %v, want 60s", got)
	}
}
