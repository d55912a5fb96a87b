package workers

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"time"
)

// The autoscaler follows Knative Serving's KPA (pkg/autoscaler/scaling and
// pkg/autoscaler/aggregation): demand is averaged over a stable window and a
// shorter panic window, bucketed by second; desired = ceil(demand / target);
// a burst in the panic window switches to panic mode, which only scales up
// and lasts until a whole stable window passed without a burst; every step is
// bounded by a scale-up and a scale-down rate. Where weft departs from KPA the
// comment says so and why.

// AutoscaleTick is how often the pool is meant to call Autoscaler.Decide
// (Knative's tick-interval). Observations may come more or less often.
const AutoscaleTick = 2 * time.Second

// Defaults and bounds of AutoscaleConfig, Knative's config-autoscaler values.
const (
	defaultStableWindow       = 60 * time.Second
	minStableWindow           = 6 * time.Second
	maxStableWindow           = time.Hour
	defaultPanicWindowPercent = 10.0
	defaultPanicThreshold     = 2.0
	minPanicThreshold         = 1.1 // Knative: panic-threshold-percentage 110..1000
	maxPanicThreshold         = 10.0
	defaultScaleToZeroGrace   = 30 * time.Second
	minScaleToZeroGrace       = 6 * time.Second
	defaultMaxScaleUpRate     = 1000.0
	defaultMaxScaleDownRate   = 2.0
)

// Weighted averages (Knative's weightedExponential aggregation): the newest
// second has weight 1, each older one (1-α) times the next; α is chosen so
// the window holds 99.99 % of the weight, but never below 0.2.
const (
	weightPrecision = 0.9999
	minSmoothing    = 0.2
)

// ErrInvalidAutoscale is wrapped by AutoscaleConfig.Validate for each
// invalid field; check with errors.Is.
var ErrInvalidAutoscale = errors.New("workers: invalid autoscale config")

// AutoscaleConfig tunes an Autoscaler. The zero value of every field except
// Min and Max means "the default": use WithDefaults, then Validate.
type AutoscaleConfig struct {
	// Min is the fewest instances (scale.min); 0 allows scale to zero.
	Min int
	// Max is the most instances (scale.max); 0 = unbounded.
	Max int
	// Target is the in-flight requests (plus waiting events) per instance the
	// autoscaler aims for (scale.target); must be > 0. Default DefaultTarget.
	Target float64
	// StableWindow is the averaging window of stable mode; whole seconds,
	// 6s..1h. Default 60s. It also bounds panic mode and gates scale to zero.
	StableWindow time.Duration
	// PanicWindowPercent sizes the panic window as a percentage of
	// StableWindow, rounded up to whole seconds; 1..100. Default 10 (6s).
	PanicWindowPercent float64
	// PanicThreshold is a ratio: panic begins when the instances the panic
	// window asks for are at least PanicThreshold × max(current, 1);
	// 1.1..10. Default 2.0 (Knative's 200 %).
	PanicThreshold float64
	// ScaleToZeroGrace is how long demand must have been zero before the
	// last instance goes (with Min 0); at least 6s. Default 30s.
	ScaleToZeroGrace time.Duration
	// MaxScaleUpRate bounds one decision to ceil(rate × max(current, 1))
	// instances; > 1. Default 1000.
	MaxScaleUpRate float64
	// MaxScaleDownRate bounds one decision to at least
	// floor(max(current, 1) / rate) instances; > 1. Default 2 (halving).
	MaxScaleDownRate float64
	// WeightedAverage selects Knative's "weightedExponential" aggregation,
	// where recent seconds count more, for both windows. false (the default)
	// is Knative's plain average ("linear").
	WeightedAverage bool
}

// WithDefaults returns c with each zero field (except Min, Max and
// WeightedAverage, whose zero is meaningful) set to its default.
func (c AutoscaleConfig) WithDefaults() AutoscaleConfig {
	if c.Target == 0 {
		c.Target = DefaultTarget
	}
	if c.StableWindow == 0 {
		c.StableWindow = defaultStableWindow
	}
	if c.PanicWindowPercent == 0 {
		c.PanicWindowPercent = defaultPanicWindowPercent
	}
	if c.PanicThreshold == 0 {
		c.PanicThreshold = defaultPanicThreshold
	}
	if c.ScaleToZeroGrace == 0 {
		c.ScaleToZeroGrace = defaultScaleToZeroGrace
	}
	if c.MaxScaleUpRate == 0 {
		c.MaxScaleUpRate = defaultMaxScaleUpRate
	}
	if c.MaxScaleDownRate == 0 {
		c.MaxScaleDownRate = defaultMaxScaleDownRate
	}
	return c
}

// Validate reports every invalid field of c, each wrapping
// ErrInvalidAutoscale. It checks c as given: call WithDefaults first.
func (c AutoscaleConfig) Validate() error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: "+format, append([]any{ErrInvalidAutoscale}, args...)...))
	}
	if c.Min < 0 {
		bad("min %d is negative", c.Min)
	}
	if c.Max < 0 {
		bad("max %d is negative", c.Max)
	}
	if c.Max > 0 && c.Min > c.Max {
		bad("min %d is greater than max %d", c.Min, c.Max)
	}
	if !(c.Target > 0) || math.IsInf(c.Target, 0) {
		bad("target %v must be a positive number", c.Target)
	}
	if c.StableWindow < minStableWindow || c.StableWindow > maxStableWindow {
		bad("stable window %v must be within %v..%v", c.StableWindow, minStableWindow, maxStableWindow)
	} else if c.StableWindow%time.Second != 0 {
		bad("stable window %v must be whole seconds", c.StableWindow)
	}
	if !(c.PanicWindowPercent >= 1 && c.PanicWindowPercent <= 100) {
		bad("panic window percent %v must be within 1..100", c.PanicWindowPercent)
	}
	if !(c.PanicThreshold >= minPanicThreshold && c.PanicThreshold <= maxPanicThreshold) {
		bad("panic threshold %v must be within %v..%v", c.PanicThreshold, minPanicThreshold, maxPanicThreshold)
	}
	if c.ScaleToZeroGrace < minScaleToZeroGrace {
		bad("scale-to-zero grace %v must be at least %v", c.ScaleToZeroGrace, minScaleToZeroGrace)
	}
	if !(c.MaxScaleUpRate > 1) || math.IsInf(c.MaxScaleUpRate, 0) {
		bad("max scale-up rate %v must be a number greater than 1", c.MaxScaleUpRate)
	}
	if !(c.MaxScaleDownRate > 1) || math.IsInf(c.MaxScaleDownRate, 0) {
		bad("max scale-down rate %v must be a number greater than 1", c.MaxScaleDownRate)
	}
	return errors.Join(errs...)
}

// panicSeconds is the panic window in whole seconds (at least 1), as
// Knative sizes its panic buckets: ceil(StableWindow × percent / 100 / 1s).
func (c AutoscaleConfig) panicSeconds() int {
	w := time.Duration(float64(c.StableWindow) * c.PanicWindowPercent / 100)
	return max(1, int(math.Ceil(float64(w)/float64(time.Second))))
}

// Decision is one answer of Autoscaler.Decide.
type Decision struct {
	// Time is the now given to Decide.
	Time time.Time `json:"time"`
	// Desired is the instance count to run, within [Min, Max].
	Desired int `json:"desired"`
	// Panic reports whether the autoscaler is in panic mode after this
	// decision.
	Panic bool `json:"panic"`
	// StableDemand and PanicDemand are the average demand (in-flight
	// requests plus backlog) over the stable and the panic window.
	StableDemand float64 `json:"stableDemand"`
	PanicDemand  float64 `json:"panicDemand"`
	// Reason says in one short sentence, with the numbers, why Desired is
	// what it is; for logs and `weft describe`.
	Reason string `json:"reason"`
}

// bucket is one second of observations.
type bucket struct {
	sec int64   // Unix second this bucket holds
	sum float64 // sum of the demands observed in that second
	n   float64 // how many observations; 1 for a carried-forward second
}

// Autoscaler decides how many instances one function should have. It is a
// pure, deterministic state machine: time comes in as arguments (Record's
// and Decide's now), it starts no goroutine and reads no clock, so tests
// drive it with a simulated time. It is not safe for concurrent use: one
// goroutine (the pool's tick) owns it. Create it with NewAutoscaler; a
// re-applied Function with new scale settings gets a new one.
//
// Demand is in-flight requests plus backlog (see Record). Both windows end
// at the newest second and are averaged per second: the observations within
// one second are averaged, and a second without an observation holds the
// last observed value. Knative counts such a second as 0 instead, because
// its scrapers report every second; weft's callers sample a gauge at their
// own pace (typically AutoscaleTick), and counting the unsampled seconds as
// idle would halve the demand of a pool that samples every 2s. Seconds
// before the first observation are left out, so a young window averages
// what it has (as Knative does).
type Autoscaler struct {
	cfg          AutoscaleConfig
	stableSecs   int
	panicSecs    int
	stableAlpha  float64 // decay of the weighted stable average
	panicAlpha   float64 // decay of the weighted panic average
	ring         []bucket
	seen         bool      // any observation yet
	first        time.Time // first observation
	firstSec     int64
	lastSec      int64     // newest second with an observation
	lastAt       time.Time // newest observation
	last         float64   // its demand
	zeroSince    time.Time // first zero observation since the last non-zero one; zero while demand > 0
	panicTime    time.Time // last decision over the panic threshold; zero = not panicking
	maxPanicPods int       // highest desire since panic began
}

// NewAutoscaler returns an Autoscaler for cfg.WithDefaults(). It panics if
// that config fails Validate: validate configs at load time (Parse already
// checks a Function's scale bounds).
func NewAutoscaler(cfg AutoscaleConfig) *Autoscaler {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		panic(fmt.Sprintf("workers.NewAutoscaler: %v", err))
	}
	n := int(cfg.StableWindow / time.Second)
	p := min(cfg.panicSeconds(), n)
	return &Autoscaler{
		cfg:         cfg,
		stableSecs:  n,
		panicSecs:   p,
		stableAlpha: smoothing(n),
		panicAlpha:  smoothing(p),
		ring:        make([]bucket, n),
	}
}

// smoothing is Knative's decay coefficient for a window of n buckets.
func smoothing(n int) float64 {
	return max(1-math.Pow(1-weightPrecision, 1/float64(n)), minSmoothing)
}

// Record adds one observation at now: inFlight is the function's in-flight
// requests, including those the activator holds while no instance is ready;
// backlog is the events of the function's triggers waiting in JetStream, not
// yet handed to any instance. Demand is their sum, so a queue of waiting
// events scales the pool before any request is in flight (Knative knows only
// requests; weft also sees its broker's queue). Negative or NaN values count
// as 0. Observations older than the newest one only add to their second's
// average, and those older than the stable window are dropped. Record does
// not allocate.
func (a *Autoscaler) Record(now time.Time, inFlight float64, backlog int) {
	v := inFlight + float64(backlog)
	if !(v > 0) {
		v = 0
	}
	sec := now.Unix()
	n := int64(a.stableSecs)
	switch {
	case !a.seen:
		a.seen, a.first, a.firstSec = true, now, sec
		a.lastSec = sec
		a.ring[a.index(sec)] = bucket{sec: sec, sum: v, n: 1}
	case sec > a.lastSec:
		// Carry the last value through the seconds nobody observed.
		from := max(a.lastSec+1, sec-n+1)
		for s := from; s < sec; s++ {
			a.ring[a.index(s)] = bucket{sec: s, sum: a.last, n: 1}
		}
		a.ring[a.index(sec)] = bucket{sec: sec, sum: v, n: 1}
		a.lastSec = sec
	case sec > a.lastSec-n && a.ring[a.index(sec)].sec == sec:
		b := &a.ring[a.index(sec)]
		b.sum += v
		b.n++
	default:
		return // older than the window
	}
	if now.Before(a.lastAt) {
		return
	}
	a.lastAt, a.last = now, v
	switch {
	case v > 0:
		a.zeroSince = time.Time{}
	case a.zeroSince.IsZero():
		a.zeroSince = now
	}
}

func (a *Autoscaler) index(sec int64) int {
	return int(sec % int64(a.stableSecs))
}

// average is the demand over the k seconds ending at nowSec.
func (a *Autoscaler) average(nowSec int64, k int, alpha float64) float64 {
	from := max(nowSec-int64(k)+1, a.firstSec)
	var sum, weights float64
	w := 1.0
	for s := nowSec; s >= from; s-- {
		v := a.last
		if s <= a.lastSec {
			if b := a.ring[a.index(s)]; b.sec == s {
				v = b.sum / b.n
			}
		}
		if a.cfg.WeightedAverage {
			sum += w * v
			weights += w
			w *= 1 - alpha
		} else {
			sum += v
			weights++
		}
	}
	if weights == 0 {
		return a.last
	}
	return sum / weights
}

// Decide returns the desired instance count given current, the instances
// ready or starting, at now; call it every AutoscaleTick. It updates the
// panic state and nothing else, so it answers the same for the same
// history. The rules, in order:
//
//   - No observation yet: keep current, within [Min, Max] (Knative makes no
//     decision without data).
//   - Stable and panic desire: ceil(average demand / Target) over each
//     window, each clamped to the rate limits [floor(max(current,1) /
//     MaxScaleDownRate), ceil(MaxScaleUpRate × max(current,1))].
//   - Panic begins (or is extended) when the unclamped panic desire /
//     max(current,1) ≥ PanicThreshold, and ends at the first decision that
//     is below the threshold more than a StableWindow after the last one
//     above it. While panicking the desire is the larger of the two windows'
//     and never falls below the highest desire since panic began: no
//     scale-down. All of this is Knative's Scale.
//   - Cold start: at 0 instances with demand now (the activator holds a
//     request), at least ceil(demand / Target), and at least 1, at once.
//   - Warm-up: until a whole StableWindow has been observed, never below
//     current. Knative starts a fresh autoscaler in panic mode for the same
//     reason (history is lost on restart, so a young window must not shrink
//     a busy pool); weft holds without reporting a panic.
//   - Scale to zero: a desire of 0 from a running pool is honoured only when
//     Min is 0 and demand has been 0 for at least max(StableWindow,
//     ScaleToZeroGrace); until then 1 instance stays. Knative waits a stable
//     window and then the grace (for its activator to take over the route);
//     weft's activator is always in the path, so the grace runs from the
//     last demand.
//   - Min and Max bound the result last (Knative's applyBounds).
func (a *Autoscaler) Decide(now time.Time, current int) Decision {
	c := &a.cfg
	current = max(current, 0)
	d := Decision{Time: now}
	if !a.seen {
		d.Desired, d.Reason = a.bound(current, "no data yet: keeping "+strconv.Itoa(current))
		return d
	}
	nowSec := max(now.Unix(), a.lastSec)
	stable := a.average(nowSec, a.stableSecs, a.stableAlpha)
	burst := a.average(nowSec, a.panicSecs, a.panicAlpha)
	d.StableDemand, d.PanicDemand = stable, burst

	ready := float64(max(current, 1))
	maxUp := math.Ceil(c.MaxScaleUpRate * ready)
	maxDown := math.Floor(ready / c.MaxScaleDownRate)
	dspc := math.Ceil(stable / c.Target)
	dppc := math.Ceil(burst / c.Target)
	wantStable := int(min(max(dspc, maxDown), maxUp))
	wantPanic := int(min(max(dppc, maxDown), maxUp))

	over := dppc/ready >= c.PanicThreshold
	switch {
	case over:
		a.panicTime = now
	case !a.panicTime.IsZero() && a.panicTime.Add(c.StableWindow).Before(now):
		a.panicTime, a.maxPanicPods = time.Time{}, 0
	}

	desired := wantStable
	reason := fmt.Sprintf("stable: demand %s over %s / target %s → %s",
		num(stable), secs(c.StableWindow), num(c.Target), num(dspc))
	reason += limited(dspc, maxDown, maxUp, current, c)
	if !a.panicTime.IsZero() {
		a.maxPanicPods = max(a.maxPanicPods, wantStable, wantPanic)
		window := secs(time.Duration(a.panicSecs) * time.Second)
		if over {
			reason = fmt.Sprintf("panic: demand %s over %s needs %s ≥ %s× capacity %d → %d",
				num(burst), window, num(dppc), num(c.PanicThreshold), int(ready), a.maxPanicPods)
			reason += limited(max(dspc, dppc), maxDown, maxUp, current, c)
		} else if want := max(wantStable, wantPanic); want < a.maxPanicPods {
			reason = fmt.Sprintf("panic: demand %s over %s → %d; holding %d, no scale-down until %s without a burst",
				num(burst), window, want, a.maxPanicPods, secs(c.StableWindow))
		} else {
			reason = fmt.Sprintf("panic: demand %s over %s → %d; no scale-down until %s without a burst",
				num(burst), window, want, secs(c.StableWindow))
		}
		desired = a.maxPanicPods
	}

	if current == 0 && a.last > 0 {
		need := int(min(max(math.Ceil(a.last/c.Target), 1), maxUp))
		if desired < need {
			desired = need
			reason = fmt.Sprintf("cold start: demand %s held at 0 instances / target %s → %d",
				num(a.last), num(c.Target), need)
		}
	}

	if observed := now.Sub(a.first); desired < current && observed < c.StableWindow && a.panicTime.IsZero() {
		reason = fmt.Sprintf("warming up: %s of %s observed, holding %d (wanted %d)",
			secs(observed), secs(c.StableWindow), current, desired)
		desired = current
	}

	if desired == 0 && current > 0 && c.Min == 0 {
		idle := a.idleFor(now)
		need := max(c.StableWindow, c.ScaleToZeroGrace)
		if idle >= need && stable == 0 {
			reason = fmt.Sprintf("idle for %s → 0 (scale to zero)", secs(idle))
		} else {
			desired = 1
			reason = fmt.Sprintf("idle for %s of %s: keeping 1 before scale to zero", secs(idle), secs(need))
		}
	}

	d.Desired, d.Reason = a.bound(desired, reason)
	d.Panic = !a.panicTime.IsZero()
	return d
}

// idleFor is how long demand has been zero at now; 0 while it is not.
func (a *Autoscaler) idleFor(now time.Time) time.Duration {
	if a.zeroSince.IsZero() || a.last > 0 {
		return 0
	}
	return max(now.Sub(a.zeroSince), 0)
}

// bound applies Min and Max to desired and says so in the reason.
func (a *Autoscaler) bound(desired int, reason string) (int, string) {
	switch c := &a.cfg; {
	case desired < c.Min:
		return c.Min, fmt.Sprintf("%s; raised to min %d", reason, c.Min)
	case c.Max > 0 && desired > c.Max:
		return c.Max, fmt.Sprintf("%s; capped by max %d", reason, c.Max)
	}
	return desired, reason
}

// limited explains a rate limit that bound raw, or returns "".
func limited(raw, maxDown, maxUp float64, current int, c *AutoscaleConfig) string {
	switch {
	case raw > maxUp:
		return fmt.Sprintf("; scale-up limited to %s× %d → %s", num(c.MaxScaleUpRate), max(current, 1), num(maxUp))
	case raw < maxDown:
		return fmt.Sprintf("; scale-down limited to %d / %s → %s", max(current, 1), num(c.MaxScaleDownRate), num(maxDown))
	}
	return ""
}

// num formats v with at most two decimals and no trailing zeros.
func num(v float64) string {
	return strconv.FormatFloat(math.Round(v*100)/100, 'f', -1, 64)
}

// secs formats d in seconds ("60s", "0.5s"), as the KPA docs write windows.
func secs(d time.Duration) string {
	return num(d.Seconds()) + "s"
}
