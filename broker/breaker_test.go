package broker

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/weft-dev/weft/internal/ceclient"
)

// fakeClock is a test clock the breaker reads.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// scriptedSubscriber answers every call with the current outcome and counts
// the calls it saw.
type scriptedSubscriber struct {
	mu      sync.Mutex
	outcome error
	calls   map[string]int
}

func (s *scriptedSubscriber) set(err error) {
	s.mu.Lock()
	s.outcome = err
	s.mu.Unlock()
}

func (s *scriptedSubscriber) Deliver(_ context.Context, target string, _ event.Event) (*event.Event, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.calls == nil {
		s.calls = map[string]int{}
	}
	s.calls[circuitKey(target)]++
	return nil, s.outcome
}

func (s *scriptedSubscriber) count(key string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls[key]
}

func newTestBreakers(t *testing.T, sub Deliverer) (*breakers, *fakeClock, *Metrics) {
	t.Helper()
	clk := &fakeClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	m := NewMetrics()
	cfg := CircuitConfig{ConsecutiveFailures: 3, OpenTime: time.Second, MaxOpenTime: 3 * time.Second}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	return newBreakers(cfg, clk.now, m, sub).(*breakers), clk, m
}

func deliverOnce(b Deliverer, target string) error {
	ev := event.New()
	ev.SetID("1")
	_, err := b.Deliver(context.Background(), target, ev)
	return err
}

// TestCircuitOpensProbesAndCloses walks one circuit through its states: three
// 503s open it, attempts are refused without a call while open, one probe
// goes through after OpenTime, a failed probe doubles the open time (capped),
// a successful probe closes it.
func TestCircuitOpensProbesAndCloses(t *testing.T) {
	sub := &scriptedSubscriber{}
	b, clk, m := newTestBreakers(t, sub)
	const target, key = "function:orders/path", "function:orders"
	sub.set(&ceclient.StatusError{Code: http.StatusServiceUnavailable})

	for range 3 {
		if err := deliverOnce(b, target); !errors.As(err, new(*ceclient.StatusError)) {
			t.Fatalf("closed circuit: got %v, want the subscriber's 503", err)
		}
	}
	var open *CircuitOpenError
	for range 10 {
		if err := deliverOnce(b, target); !errors.As(err, &open) {
			t.Fatalf("open circuit: got %v, want a CircuitOpenError", err)
		}
	}
	if n := sub.count(key); n != 3 {
		t.Errorf("subscriber called %d times, want 3 (the threshold): an open circuit must not call it", n)
	}
	if got := testutil.ToFloat64(m.CircuitRejected.WithLabelValues(key)); got != 10 {
		t.Errorf("weft_circuit_rejected_total = %v, want 10", got)
	}
	if got := testutil.ToFloat64(m.CircuitState.WithLabelValues(key)); got != circuitOpen {
		t.Errorf("weft_circuit_state = %v, want open", got)
	}

	// The probe fails: open again for 2s, then 3s (the cap), not 4s.
	for _, wait := range []time.Duration{time.Second, 2 * time.Second, 3 * time.Second} {
		clk.advance(wait - time.Millisecond)
		if err := deliverOnce(b, target); !errors.As(err, &open) {
			t.Fatalf("before %s: got %v, want still open", wait, err)
		}
		clk.advance(time.Millisecond)
		before := sub.count(key)
		if err := deliverOnce(b, target); errors.As(err, &open) {
			t.Fatalf("after %s: the probe was refused: %v", wait, err)
		}
		if sub.count(key) != before+1 {
			t.Fatalf("after %s: the probe did not reach the subscriber", wait)
		}
	}
	if got := testutil.ToFloat64(m.CircuitProbes.WithLabelValues(key)); got != 3 {
		t.Errorf("weft_circuit_probes_total = %v, want 3", got)
	}

	sub.set(nil) // recovered
	clk.advance(3 * time.Second)
	if err := deliverOnce(b, target); err != nil {
		t.Fatalf("probe after recovery: %v", err)
	}
	for range 5 {
		if err := deliverOnce(b, target); err != nil {
			t.Fatalf("closed again: %v", err)
		}
	}
	if got := testutil.ToFloat64(m.CircuitState.WithLabelValues(key)); got != circuitClosed {
		t.Errorf("weft_circuit_state = %v, want closed", got)
	}
	if got := testutil.ToFloat64(m.CircuitOpened.WithLabelValues(key)); got != 4 {
		t.Errorf("weft_circuit_opened_total = %v, want 4 (the trip and three failed probes)", got)
	}
}

// TestCircuitOneProbeAtATime: while the half-open probe is in flight, other
// attempts are refused.
func TestCircuitOneProbeAtATime(t *testing.T) {
	release := make(chan struct{})
	entered := make(chan struct{}, 1)
	var mu sync.Mutex
	failing := true
	sub := DelivererFunc(func(ctx context.Context, _ string, _ event.Event) (*event.Event, error) {
		mu.Lock()
		f := failing
		mu.Unlock()
		if f {
			return nil, errors.New("connection refused")
		}
		entered <- struct{}{}
		<-release
		return nil, nil
	})
	b, clk, _ := newTestBreakers(t, sub)
	for range 3 {
		_ = deliverOnce(b, "http://svc/a")
	}
	mu.Lock()
	failing = false
	mu.Unlock()
	clk.advance(time.Second)
	probeDone := make(chan error, 1)
	go func() { probeDone <- deliverOnce(b, "http://svc/a") }()
	<-entered
	var open *CircuitOpenError
	if err := deliverOnce(b, "http://svc/a?x=1"); !errors.As(err, &open) {
		t.Fatalf("second attempt during the probe: got %v, want refused", err)
	}
	close(release)
	if err := <-probeDone; err != nil {
		t.Fatalf("probe: %v", err)
	}
	go func() { <-entered }() // the next call is let through and blocks no more
	if err := deliverOnce(b, "http://svc/a"); err != nil {
		t.Fatalf("after a good probe: %v", err)
	}
}

// TestCircuitCountsOnlySubscriberFailures: 4xx answers and replies the
// subscriber got wrong show it is up; a success resets the count; a
// cancelled context (weft stopping) counts for nothing; circuits are per
// subscriber.
func TestCircuitCountsOnlySubscriberFailures(t *testing.T) {
	sub := &scriptedSubscriber{}
	b, _, _ := newTestBreakers(t, sub)
	outcomes := []error{
		&ceclient.StatusError{Code: 500}, &ceclient.StatusError{Code: 502},
		&ceclient.StatusError{Code: 422}, &ceclient.StatusError{Code: 404}, &ceclient.StatusError{Code: 429},
		&ceclient.ReplyError{Err: errors.New("bad reply")},
		&ceclient.StatusError{Code: 500}, &ceclient.StatusError{Code: 503},
		nil,
		errors.New("dial tcp: connection refused"), context.DeadlineExceeded,
	}
	for i, o := range outcomes {
		sub.set(o)
		if err := deliverOnce(b, "http://a.example/x"); errors.As(err, new(*CircuitOpenError)) {
			t.Fatalf("outcome %d (%v): circuit opened, but no three failures were consecutive", i, o)
		}
	}
	// Two failures are counted now; a cancelled attempt adds none.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	sub.set(context.Canceled)
	if _, err := b.Deliver(ctx, "http://a.example/x", event.New()); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled attempt: %v", err)
	}
	sub.set(errors.New("connection reset"))
	if err := deliverOnce(b, "http://b.example/x"); errors.As(err, new(*CircuitOpenError)) {
		t.Fatal("another subscriber's circuit opened")
	}
	if err := deliverOnce(b, "http://a.example/x"); errors.As(err, new(*CircuitOpenError)) {
		t.Fatal("third failure refused: it should be let through and trip the circuit")
	}
	if err := deliverOnce(b, "http://a.example/x"); !errors.As(err, new(*CircuitOpenError)) {
		t.Fatalf("after three consecutive failures: got %v, want open", err)
	}
}

func TestCircuitConfig(t *testing.T) {
	if d := newBreakers(CircuitConfig{ConsecutiveFailures: -1}, time.Now, NewMetrics(), httpDeliverer); d == nil {
		t.Fatal("nil deliverer")
	} else if _, wrapped := d.(*breakers); wrapped {
		t.Error("a disabled breaker still wraps the deliverer")
	}
	for _, bad := range []CircuitConfig{
		{ConsecutiveFailures: 5, OpenTime: -time.Second, MaxOpenTime: time.Second},
		{ConsecutiveFailures: 5, OpenTime: 10 * time.Second, MaxOpenTime: time.Second},
	} {
		if err := bad.Validate(); err == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
	if err := (CircuitConfig{}).withDefaults().Validate(); err != nil {
		t.Errorf("defaults refused: %v", err)
	}
	for target, want := range map[string]string{
		"function:orders":              "function:orders",
		"function:orders/v1/x":         "function:orders",
		"http://u:p@svc:80/a?b=c#frag": "http://svc:80/a",
	} {
		if got := circuitKey(target); got != want {
			t.Errorf("circuitKey(%q) = %q, want %q", target, got, want)
		}
	}
}
