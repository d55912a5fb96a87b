package router

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"
)

// Load-balancing policies, as a Service's spec.loadBalancer names them.
const (
	PolicyP2CEWMA      = "p2c-ewma" // the default
	PolicyRoundRobin   = "round-robin"
	PolicyLeastRequest = "least-request"
)

// ErrUnknownPolicy is returned by NewBalancer for a policy it does not know.
var ErrUnknownPolicy = errors.New("unknown load-balancing policy")

// Balancer chooses the endpoint for the next request.
//
// The caller passes the candidates already cleared of ejected endpoints
// (Available does that). When every endpoint is ejected the caller passes
// them all: in this panic mode, as Envoy's balancer below its panic
// threshold, trying an ejected endpoint beats failing every request, and
// the OutlierDetector's MaxEjectionPercent keeps it rare.
//
// Pick returns nil only when eps is empty. Implementations are safe for
// concurrent use, keep no reference to eps and do not allocate.
type Balancer interface {
	Pick(eps []*Endpoint) *Endpoint
}

// NewBalancer returns the Balancer for policy: "p2c-ewma" (also for ""),
// "round-robin" or "least-request"; any other name is an error wrapping
// ErrUnknownPolicy that lists the valid ones.
//
// clk is the clock p2c-ewma reads latency estimates at (nil means
// SystemClock; give it the endpoints' clock). rnd drives the random
// choices: nil means math/rand/v2's global generator, which is safe for
// concurrent use and needs no lock; a non-nil rnd (a seeded one, for tests)
// is used under a mutex, since *rand.Rand is not safe for concurrent use.
func NewBalancer(policy string, clk Clock, rnd *rand.Rand) (Balancer, error) {
	if clk == nil {
		clk = SystemClock{}
	}
	r := &lockedRand{r: rnd}
	switch policy {
	case PolicyP2CEWMA, "":
		return &p2c{clk: clk, rnd: r}, nil
	case PolicyRoundRobin:
		return newRoundRobin(r), nil
	case PolicyLeastRequest:
		return &leastRequest{rnd: r}, nil
	}
	return nil, fmt.Errorf("%w %q (valid: %s, %s, %s)", ErrUnknownPolicy, policy,
		PolicyP2CEWMA, PolicyRoundRobin, PolicyLeastRequest)
}

// Available appends to dst the endpoints of eps that are not ejected at now
// and returns it. If every endpoint is ejected it appends them all (panic
// mode, see Balancer). Passing dst[:0] of a reused slice makes it
// allocation-free.
func Available(dst, eps []*Endpoint, now time.Time) []*Endpoint {
	start := len(dst)
	for _, e := range eps {
		if !e.Ejected(now) {
			dst = append(dst, e)
		}
	}
	if len(dst) == start {
		dst = append(dst, eps...)
	}
	return dst
}

// lockedRand is the balancers' source of randomness: the global generator
// when r is nil, else r under mu.
type lockedRand struct {
	mu sync.Mutex
	r  *rand.Rand
}

// intN returns a uniform int in [0, n); n > 0.
func (l *lockedRand) intN(n int) int {
	if l.r == nil {
		return rand.IntN(n)
	}
	l.mu.Lock()
	v := l.r.IntN(n)
	l.mu.Unlock()
	return v
}

func (l *lockedRand) uint64() uint64 {
	if l.r == nil {
		return rand.Uint64()
	}
	l.mu.Lock()
	v := l.r.Uint64()
	l.mu.Unlock()
	return v
}
