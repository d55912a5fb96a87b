package router

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// OutlierConfig configures an OutlierDetector: a Service's
// spec.outlierDetection.
type OutlierConfig struct {
	// ConsecutiveFailures is how many failures in a row eject an endpoint.
	// Zero means 5, DESIGN's example and Envoy's consecutive_5xx default
	// (Linkerd's failure accrual uses 7).
	ConsecutiveFailures int

	// EjectionTime is how long the first ejection lasts. Zero means 30 s
	// (DESIGN's example; Envoy's base_ejection_time).
	EjectionTime time.Duration

	// MaxEjectionTime caps the back-off of repeated ejections (see
	// OutlierDetector). Zero means 5 min (Envoy's max_ejection_time); set it
	// equal to EjectionTime for no back-off.
	MaxEjectionTime time.Duration

	// MaxEjectionPercent is the largest share of the endpoints, in percent,
	// that may be ejected at once, rounded down: with the default, 1 of 2 or
	// 3, 2 of 4 or 5, and a Service's only endpoint is never ejected. Zero
	// means 50; 100 allows ejecting all (the balancer then falls back to
	// panic mode, see Balancer). Envoy's default is 10 %, which at weft's
	// endpoint counts would forbid most ejections.
	MaxEjectionPercent int
}

func (c OutlierConfig) withDefaults() OutlierConfig {
	if c.ConsecutiveFailures == 0 {
		c.ConsecutiveFailures = 5
	}
	if c.EjectionTime == 0 {
		c.EjectionTime = 30 * time.Second
	}
	if c.MaxEjectionTime == 0 {
		c.MaxEjectionTime = max(5*time.Minute, c.EjectionTime)
	}
	if c.MaxEjectionPercent == 0 {
		c.MaxEjectionPercent = 50
	}
	return c
}

// Validate reports the first invalid field of c once defaults are applied
// (zero fields are valid: they take their defaults).
func (c OutlierConfig) Validate() error {
	c = c.withDefaults()
	switch {
	case c.ConsecutiveFailures < 1:
		return fmt.Errorf("outlierDetection.consecutiveFailures: %d is below 1", c.ConsecutiveFailures)
	case c.EjectionTime < 0:
		return fmt.Errorf("outlierDetection.ejectionTime: %v is negative", c.EjectionTime)
	case c.MaxEjectionTime < c.EjectionTime:
		return fmt.Errorf("outlierDetection.maxEjectionTime: %v is below ejectionTime %v", c.MaxEjectionTime, c.EjectionTime)
	case c.MaxEjectionPercent < 1 || c.MaxEjectionPercent > 100:
		return fmt.Errorf("outlierDetection.maxEjectionPercent: %d is not in 1..100", c.MaxEjectionPercent)
	}
	return nil
}

// OutlierDetector ejects the endpoints of one Service that fail
// ConsecutiveFailures times in a row (passive health checking, Envoy's
// consecutive-5xx detection, Linkerd's failure accrual). What counts as a
// failure is the caller's decision: connection errors, timeouts and 5xx
// responses, as Envoy's consecutive_5xx counts them.
//
// An ejection ends by itself when its time is up: nothing runs in the
// background, Endpoint.Ejected compares the deadline with the clock. The
// failure count is not reset by the ejection, only by a success, so a
// returning endpoint is on probation, as in Linkerd: its first answer
// decides, a failure ejects it again at once and a success clears it.
//
// Repeated ejections back off as Envoy's do: the n-th ejection in a row
// lasts n × EjectionTime, capped at MaxEjectionTime. The count n goes down
// by one for each EjectionTime the endpoint spent back in service since its
// last ejection ended (Envoy decrements it per healthy interval), so an
// endpoint that stayed healthy long enough starts again from the base time.
//
// An OutlierDetector is safe for concurrent use. Successes cost one atomic
// store; failures take the detector's mutex only when they reach the
// threshold. Its mutex is the only lock it holds, and it takes no
// Endpoint's mutex.
type OutlierDetector struct {
	cfg OutlierConfig
	clk Clock

	eps atomic.Pointer[[]*Endpoint] // the current pool, for MaxEjectionPercent

	mu sync.Mutex // serialises ejections; guards Endpoint.ejections and lastRelease
}

// NewOutlierDetector returns a detector with cfg (zero fields take their
// defaults) that reads clk (nil means SystemClock). It ejects nothing until
// SetEndpoints has given it the pool.
func NewOutlierDetector(cfg OutlierConfig, clk Clock) (*OutlierDetector, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("router: %w", err)
	}
	cfg = cfg.withDefaults()
	if clk == nil {
		clk = SystemClock{}
	}
	d := &OutlierDetector{cfg: cfg, clk: clk}
	d.eps.Store(&[]*Endpoint{})
	return d, nil
}

// Config returns the configuration in force, defaults applied.
func (d *OutlierDetector) Config() OutlierConfig { return d.cfg }

// SetEndpoints replaces the pool that MaxEjectionPercent is counted over;
// the registry calls it whenever the Service's endpoints change. eps is
// copied. Endpoints outside the pool are never ejected.
func (d *OutlierDetector) SetEndpoints(eps []*Endpoint) {
	cp := append([]*Endpoint(nil), eps...)
	d.eps.Store(&cp)
}

// Observe records the outcome of one request to ep.
func (d *OutlierDetector) Observe(ep *Endpoint, ok bool) {
	if ok {
		ep.failures.Store(0)
		return
	}
	if n := ep.failures.Add(1); n < int64(d.cfg.ConsecutiveFailures) {
		return
	}
	now := d.clk.Now()
	if ep.Ejected(now) {
		return // requests that were in flight when it was ejected
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if ep.Ejected(now) {
		return
	}
	pool := *d.eps.Load()
	ejected, member := 0, false
	for _, e := range pool {
		if e == ep {
			member = true
		} else if e.Ejected(now) {
			ejected++
		}
	}
	// (ejected+1)/len ≤ pct/100, in integers.
	if !member || (ejected+1)*100 > len(pool)*d.cfg.MaxEjectionPercent {
		return // it stays a candidate; the next failure tries again
	}
	d.eject(ep, now)
}

// eject ejects ep from now on; d.mu is held.
func (d *OutlierDetector) eject(ep *Endpoint, now time.Time) {
	base := d.cfg.EjectionTime
	if ep.ejections > 0 && base > 0 {
		healthy := now.Sub(ep.lastRelease)
		ep.ejections -= int(max(healthy, 0) / base)
		ep.ejections = max(ep.ejections, 0)
	}
	ep.ejections++
	dur := d.cfg.MaxEjectionTime
	if n := time.Duration(ep.ejections); base <= d.cfg.MaxEjectionTime/n {
		dur = base * n
	}
	until := now.Add(dur)
	ep.lastRelease = until
	ep.ejectedUntil.Store(until.UnixNano())
}
