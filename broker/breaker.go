package broker

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"

	"github.com/weft-dev/weft/internal/ceclient"
)

// CircuitConfig configures the circuit breaker every delivery goes through,
// one circuit per subscriber (a function, or a URL without its query). After
// ConsecutiveFailures failed attempts in a row the circuit opens: attempts
// fail at once, without reaching the subscriber, for OpenTime; then one probe
// is let through (half-open). A successful probe closes the circuit; a failed
// one opens it again for twice as long, up to MaxOpenTime. Failures are
// transport errors, per-attempt timeouts and 5xx answers; any other answer
// shows the subscriber is up. An attempt refused by an open circuit counts
// against the trigger's retry policy like any failure, so during a long
// outage events reach the DLQ instead of piling up, and a replay delivers
// them after recovery.
type CircuitConfig struct {
	// ConsecutiveFailures trips the circuit. Zero means 5; negative disables
	// the breaker.
	ConsecutiveFailures int
	// OpenTime is how long a circuit stays open before its first probe.
	// Zero means 5s.
	OpenTime time.Duration
	// MaxOpenTime caps the doubling after failed probes. Zero means 30s.
	MaxOpenTime time.Duration
}

func (c CircuitConfig) withDefaults() CircuitConfig {
	if c.ConsecutiveFailures == 0 {
		c.ConsecutiveFailures = 5
	}
	if c.OpenTime == 0 {
		c.OpenTime = 5 * time.Second
	}
	if c.MaxOpenTime == 0 {
		c.MaxOpenTime = 30 * time.Second
	}
	return c
}

// Validate reports a configuration the breaker cannot honour.
func (c CircuitConfig) Validate() error {
	if c.ConsecutiveFailures < 0 {
		return nil // disabled: the times do not matter
	}
	if c.OpenTime <= 0 || c.MaxOpenTime < c.OpenTime {
		return fmt.Errorf("broker: circuit open time %s must be positive and at most the maximum %s", c.OpenTime, c.MaxOpenTime)
	}
	return nil
}

// CircuitOpenError is an attempt refused by an open circuit: the subscriber
// was not called.
type CircuitOpenError struct {
	Target string
	Until  time.Time // when the next probe may go through
}

func (e *CircuitOpenError) Error() string {
	return fmt.Sprintf("circuit open for %s after consecutive failures: not called (next probe at %s)",
		e.Target, e.Until.UTC().Format(time.RFC3339Nano))
}

// Circuit states, as the weft_circuit_state gauge reports them.
const (
	circuitClosed   = 0
	circuitOpen     = 1
	circuitHalfOpen = 2
)

type circuit struct {
	state     int
	failures  int           // consecutive, while closed
	openUntil time.Time     // while open
	openFor   time.Duration // of the current or last opening
	probing   bool          // a half-open probe is in flight
}

// breakers holds one circuit per subscriber.
type breakers struct {
	cfg  CircuitConfig
	now  func() time.Time
	m    *Metrics
	next Deliverer

	keys sync.Map // target → circuitKey(target): parsed once, not per delivery

	mu       sync.Mutex
	circuits map[string]*circuit
}

// newBreakers wraps next with a circuit per subscriber; cfg must have passed
// Validate after withDefaults. A disabled configuration returns next.
func newBreakers(cfg CircuitConfig, now func() time.Time, m *Metrics, next Deliverer) Deliverer {
	if cfg.ConsecutiveFailures < 0 {
		return next
	}
	return &breakers{cfg: cfg, now: now, m: m, next: next, circuits: map[string]*circuit{}}
}

// circuitKey names the subscriber a target reaches: the function, or the URL
// without query and fragment.
func circuitKey(target string) string {
	if fn, ok := strings.CutPrefix(target, "function:"); ok {
		name, _, _ := strings.Cut(fn, "/")
		return "function:" + name
	}
	u, err := url.Parse(target)
	if err != nil {
		return target
	}
	u.RawQuery, u.Fragment, u.User = "", "", nil
	return u.String()
}

func (b *breakers) Deliver(ctx context.Context, target string, ev event.Event) (*event.Event, error) {
	k, ok := b.keys.Load(target)
	if !ok {
		k, _ = b.keys.LoadOrStore(target, circuitKey(target))
	}
	key := k.(string)
	probe, err := b.admit(key)
	if err != nil {
		b.m.CircuitRejected.WithLabelValues(key).Inc()
		return nil, err
	}
	reply, err := b.next.Deliver(ctx, target, ev)
	if errors.Is(err, context.Canceled) && ctx.Err() != nil {
		b.abandon(key, probe) // weft is stopping: says nothing about the subscriber
		return reply, err
	}
	b.record(key, probe, isSubscriberFailure(err))
	return reply, err
}

// admit lets an attempt through, reporting whether it is the half-open probe,
// or refuses it with a *CircuitOpenError.
func (b *breakers) admit(key string) (probe bool, err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	c := b.circuits[key]
	if c == nil {
		c = &circuit{}
		b.circuits[key] = c
	}
	switch c.state {
	case circuitClosed:
		return false, nil
	case circuitOpen:
		if b.now().Before(c.openUntil) {
			return false, &CircuitOpenError{Target: key, Until: c.openUntil}
		}
		b.setState(key, c, circuitHalfOpen)
	}
	if c.probing { // half-open: one probe at a time
		return false, &CircuitOpenError{Target: key, Until: c.openUntil}
	}
	c.probing = true
	b.m.CircuitProbes.WithLabelValues(key).Inc()
	return true, nil
}

func (b *breakers) record(key string, probe, failed bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	c := b.circuits[key]
	if probe {
		c.probing = false
		if failed {
			b.open(key, c, min(2*c.openFor, b.cfg.MaxOpenTime))
		} else {
			c.failures = 0
			b.setState(key, c, circuitClosed)
		}
		return
	}
	if c.state != circuitClosed {
		return // an attempt admitted before the circuit opened
	}
	if !failed {
		c.failures = 0
		return
	}
	c.failures++
	if c.failures >= b.cfg.ConsecutiveFailures {
		b.open(key, c, b.cfg.OpenTime)
	}
}

func (b *breakers) abandon(key string, probe bool) {
	if !probe {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.circuits[key].probing = false
}

func (b *breakers) open(key string, c *circuit, d time.Duration) {
	c.failures = 0
	c.openFor = d
	c.openUntil = b.now().Add(d)
	b.setState(key, c, circuitOpen)
	b.m.CircuitOpened.WithLabelValues(key).Inc()
}

func (b *breakers) setState(key string, c *circuit, s int) {
	c.state = s
	b.m.CircuitState.WithLabelValues(key).Set(float64(s))
}

// isSubscriberFailure tells whether an attempt's outcome counts against the
// subscriber's circuit: no answer, a timeout, or a 5xx. Other answers,
// including 4xx about the event, show the subscriber is up.
func isSubscriberFailure(err error) bool {
	if err == nil {
		return false
	}
	if se, ok := ceclient.IsStatus(err); ok {
		return se.Code >= 500
	}
	var re *ceclient.ReplyError
	return !errors.As(err, &re)
}
