package router

import (
	"math"
	"sync"
	"sync/atomic"
	"time"
)

// Peak-EWMA parameters. Both are linkerd2-proxy's (EWMA_DEFAULT_RTT and
// EWMA_DECAY in its outbound balancer); tower's PeakEwma, which that proxy
// uses, and Finagle's PeakEwma, which tower derives from, work the same way.
const (
	// DefaultRTT is the latency assumed for an endpoint that has answered
	// nothing yet: high enough that a new endpoint is not flooded before it
	// has shown its speed, low enough that it is tried. Like every estimate
	// it decays while the endpoint is idle, so a new endpoint is tried even
	// when the others are faster.
	DefaultRTT = 30 * time.Millisecond

	// DefaultEWMADecay is the time constant τ of the peak-EWMA: an old peak
	// weighs e^(-Δt/τ) after Δt.
	DefaultEWMADecay = 10 * time.Second
)

// Endpoint is one address of a Service (a function instance or an external
// server) with the live statistics that the balancers and the
// OutlierDetector share: requests in flight, a peak-EWMA of latency,
// consecutive failures and the end of the current ejection.
//
// An Endpoint is safe for concurrent use. Make it with NewEndpoint; the
// zero value is not usable. An Endpoint belongs to one Service's pool and
// one OutlierDetector: two Services that reach the same address get two
// Endpoints, so that one Service's failures do not eject the other's.
//
// Each request through an Endpoint calls Begin before it is sent and End
// with its latency and outcome when it completes (after the response
// headers or the error); the OutlierDetector is told separately through
// Observe.
type Endpoint struct {
	// Addr is host:port or a URL; the balancers do not read it.
	Addr string

	clk        Clock
	decay      float64 // τ in nanoseconds
	defaultRTT float64 // nanoseconds

	inFlight     atomic.Int64
	failures     atomic.Int64 // consecutive failures; reset by a success
	ejectedUntil atomic.Int64 // Unix nanoseconds by clk; 0 = never ejected

	mu   sync.Mutex // guards rtt, at and seen
	rtt  float64    // peak-EWMA in nanoseconds, as of at
	at   time.Time  // last update; the estimate decays from here
	seen bool       // a successful latency has been observed

	// ejections counts recent ejections for the back-off of the ejection
	// time; lastRelease is when the latest ejection ended. Both are guarded
	// by the mutex of the OutlierDetector that owns the endpoint.
	ejections   int
	lastRelease time.Time
}

// NewEndpoint returns an Endpoint for addr whose statistics read clk; a nil
// clk means SystemClock. The balancer and the OutlierDetector that use it
// should read the same clock. The latency estimate starts at DefaultRTT.
func NewEndpoint(addr string, clk Clock) *Endpoint {
	if clk == nil {
		clk = SystemClock{}
	}
	return &Endpoint{
		Addr:       addr,
		clk:        clk,
		decay:      float64(DefaultEWMADecay),
		defaultRTT: float64(DefaultRTT),
		rtt:        float64(DefaultRTT),
		at:         clk.Now(),
	}
}

// Begin records a request sent to the endpoint; End must follow.
func (e *Endpoint) Begin() { e.inFlight.Add(1) }

// End records the completion of a request started with Begin: latency is
// the time to the response headers or to the error, ok whether the attempt
// succeeded.
//
// A success feeds the peak-EWMA. A failure only ever raises it (a slow
// timeout counts as a peak), never lowers it: an endpoint that refuses
// connections in a microsecond must not look like the fastest one. Keeping
// failing endpoints out is the OutlierDetector's job.
func (e *Endpoint) End(latency time.Duration, ok bool) {
	e.inFlight.Add(-1)
	e.observe(latency, ok, e.clk.Now())
}

// InFlight returns the number of requests begun and not yet ended.
func (e *Endpoint) InFlight() int { return int(e.inFlight.Load()) }

// EWMA returns the current peak-EWMA latency estimate, DefaultRTT (decayed)
// before the first successful response.
func (e *Endpoint) EWMA() time.Duration {
	return time.Duration(e.ewmaAt(e.clk.Now()))
}

// ConsecutiveFailures returns the number of failures observed since the
// last success.
func (e *Endpoint) ConsecutiveFailures() int { return int(e.failures.Load()) }

// Ejected reports whether the endpoint is ejected at now. An ejection ends
// by itself when its time is up; nothing needs to run for it.
func (e *Endpoint) Ejected(now time.Time) bool {
	u := e.ejectedUntil.Load()
	return u != 0 && now.UnixNano() < u
}

// EjectedUntil returns when the latest ejection ends (or ended); the zero
// Time if the endpoint was never ejected.
func (e *Endpoint) EjectedUntil() time.Time {
	u := e.ejectedUntil.Load()
	if u == 0 {
		return time.Time{}
	}
	return time.Unix(0, u)
}

// cost is the load that p2c-ewma compares: the latency estimate times the
// requests in flight plus one (linkerd/tower/Finagle; Envoy's contrib
// peak_ewma uses the same formula). The +1 makes an idle endpoint's cost
// its latency, and makes every pending request to a new endpoint raise its
// cost before its first answer.
func (e *Endpoint) cost(now time.Time) float64 {
	return e.ewmaAt(now) * float64(e.inFlight.Load()+1)
}

// ewmaAt returns the estimate at now in nanoseconds. Between observations
// the estimate decays toward zero with time constant τ: Finagle and tower
// do the same by treating each read as a zero-latency sample. Because
// decays compose (e^-a·e^-b = e^-(a+b)), computing it here without writing
// it back gives the same value however often it is read, and an endpoint
// that has not been used for a while (a slow one the balancer avoided)
// looks cheap again and gets probed.
func (e *Endpoint) ewmaAt(now time.Time) float64 {
	e.mu.Lock()
	v, at := e.rtt, e.at
	e.mu.Unlock()
	return v * weight(now.Sub(at), e.decay)
}

// observe folds one latency sample taken at now into the estimate.
func (e *Endpoint) observe(latency time.Duration, ok bool, now time.Time) {
	s := float64(max(latency, 0))
	e.mu.Lock()
	defer e.mu.Unlock()
	if !e.seen && ok {
		// The default is a placeholder for "no data", not a measurement:
		// the first real answer replaces it.
		e.rtt, e.at, e.seen = s, now, true
		return
	}
	w := weight(now.Sub(e.at), e.decay)
	cur := e.rtt * w // the estimate as readers see it now
	switch {
	case s > cur:
		e.rtt = s // peak: take the worst recent latency at once
	case ok:
		e.rtt = cur*w + s*(1-w) // below the peak: move toward it by recency
	default:
		e.rtt = cur // a fast failure never makes the endpoint look faster
	}
	e.at = now
}

// weight is e^(-dt/τ), 1 when dt ≤ 0 (a clock read out of order).
func weight(dt time.Duration, tau float64) float64 {
	if dt <= 0 {
		return 1
	}
	return math.Exp(-float64(dt) / tau)
}
