package workers

import (
	"errors"
	"fmt"
	"math"
	"testing"
	"time"
)

// t0 is the simulated clock's start; no test reads the real clock or waits.
var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// sim drives an Autoscaler with a simulated clock: it records the demand
// every second, decides every AutoscaleTick, and the pool follows each
// decision at once.
type sim struct {
	a       *Autoscaler
	now     time.Time
	current int
	log     []Decision
}

func newSim(cfg AutoscaleConfig, current int) *sim {
	return &sim{a: NewAutoscaler(cfg), now: t0, current: current}
}

// run keeps the demand at (inFlight, backlog) for d and returns the last
// decision.
func (s *sim) run(d time.Duration, inFlight float64, backlog int) Decision {
	for end := s.now.Add(d); s.now.Before(end); {
		s.now = s.now.Add(time.Second)
		s.a.Record(s.now, inFlight, backlog)
		if s.now.Sub(t0)%AutoscaleTick == 0 {
			dec := s.a.Decide(s.now, s.current)
			s.current = dec.Desired
			s.log = append(s.log, dec)
		}
	}
	return s.log[len(s.log)-1]
}

// since returns the decisions made after t.
func (s *sim) since(t time.Time) []Decision {
	for i, d := range s.log {
		if d.Time.After(t) {
			return s.log[i:]
		}
	}
	return nil
}

func TestAutoscalerSteadyLoad(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name     string
		cfg      AutoscaleConfig
		start    int
		inFlight float64
		want     int
	}{
		{"fractional demand", AutoscaleConfig{Target: 2}, 1, 7.5, 4},
		{"exact multiple", AutoscaleConfig{Target: 10}, 1, 100, 10},
		{"below one target", AutoscaleConfig{Target: 5}, 1, 0.5, 1},
		{"scale down to fit", AutoscaleConfig{Target: 5}, 12, 20, 4},
		{"from zero", AutoscaleConfig{Target: 3}, 0, 9, 3},
		{"weighted average", AutoscaleConfig{Target: 2, WeightedAverage: true}, 1, 7.5, 4},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := newSim(tc.cfg, tc.start)
			s.run(4*time.Minute, tc.inFlight, 0)
			for _, d := range s.since(s.now.Add(-time.Minute)) {
				if d.Desired != tc.want || d.Panic {
					t.Fatalf("at %v: desired %d panic %v (%s); want %d, no panic",
						d.Time.Sub(t0), d.Desired, d.Panic, d.Reason, tc.want)
				}
			}
			if d := s.log[len(s.log)-1]; math.Abs(d.StableDemand-tc.inFlight) > 1e-9 {
				t.Errorf("stable demand %v, want %v", d.StableDemand, tc.inFlight)
			}
		})
	}
}

func TestAutoscalerBurstPanics(t *testing.T) {
	t.Parallel()
	cfg := AutoscaleConfig{Target: 2}
	s := newSim(cfg, 2)
	if d := s.run(3*time.Minute, 4, 0); d.Desired != 2 || d.Panic {
		t.Fatalf("before the burst: %+v", d)
	}
	burst := s.now
	s.run(20*time.Second, 40, 0)
	s.run(4*time.Minute, 4, 0)

	var (
		panicStart, panicEnd time.Time
		reached20            time.Time
		prev                 Decision
	)
	for _, d := range s.since(burst) {
		if d.Panic && panicStart.IsZero() {
			panicStart = d.Time
		}
		if d.Desired >= 20 && reached20.IsZero() {
			reached20 = d.Time
		}
		if prev.Panic && d.Panic && d.Desired < prev.Desired {
			t.Errorf("scaled down from %d to %d while panicking at %v (%s)",
				prev.Desired, d.Desired, d.Time.Sub(burst), d.Reason)
		}
		if prev.Panic && !d.Panic && panicEnd.IsZero() {
			panicEnd = d.Time
		}
		prev = d
	}
	switch {
	case panicStart.IsZero() || panicStart.Sub(burst) > AutoscaleTick:
		t.Fatalf("panic began %v after the burst, want within %v", panicStart.Sub(burst), AutoscaleTick)
	case reached20.IsZero() || reached20.Sub(burst) > 6*time.Second+AutoscaleTick:
		t.Fatalf("reached 20 instances %v after the burst, want within the 6s panic window", reached20.Sub(burst))
	case panicEnd.IsZero():
		t.Fatal("never left panic mode")
	case panicEnd.Sub(panicStart) < cfg.WithDefaults().StableWindow:
		t.Fatalf("left panic after %v, want at least a stable window", panicEnd.Sub(panicStart))
	case panicEnd.Sub(panicStart) > cfg.WithDefaults().StableWindow+3*AutoscaleTick:
		t.Fatalf("left panic only after %v", panicEnd.Sub(panicStart))
	}
	if d := s.log[len(s.log)-1]; d.Desired != 2 || d.Panic {
		t.Errorf("after the burst settled: %+v, want 2 instances", d)
	}
}

func TestAutoscalerScaleToZero(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name     string
		cfg      AutoscaleConfig
		zeroIdle time.Duration // how long idle until 0; 0 = never
		floor    int           // desired never below this before zeroIdle
	}{
		{"window longer than grace", AutoscaleConfig{Target: 1}, 60 * time.Second, 1},
		{"grace longer than window", AutoscaleConfig{Target: 1, StableWindow: 10 * time.Second, ScaleToZeroGrace: 45 * time.Second}, 45 * time.Second, 1},
		{"min 2 stays", AutoscaleConfig{Target: 1, Min: 2}, 0, 2},
		{"min 1 stays", AutoscaleConfig{Target: 1, Min: 1, StableWindow: 6 * time.Second}, 0, 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := newSim(tc.cfg, 1)
			s.run(3*time.Minute, 1, 0)
			drop := s.now.Add(time.Second) // the first zero observation
			s.run(5*time.Minute, 0, 0)
			var zeroAt time.Time
			for _, d := range s.since(drop) {
				if d.Desired == 0 {
					zeroAt = d.Time
					break
				}
				if d.Desired < tc.floor {
					t.Fatalf("desired %d at %v idle, want ≥ %d (%s)", d.Desired, d.Time.Sub(drop), tc.floor, d.Reason)
				}
			}
			if tc.zeroIdle == 0 {
				if !zeroAt.IsZero() {
					t.Fatalf("scaled to zero after %v with min %d", zeroAt.Sub(drop), tc.cfg.Min)
				}
				return
			}
			if idle := zeroAt.Sub(drop); zeroAt.IsZero() || idle < tc.zeroIdle || idle > tc.zeroIdle+AutoscaleTick {
				t.Fatalf("scaled to zero after %v idle, want %v..%v", idle, tc.zeroIdle, tc.zeroIdle+AutoscaleTick)
			}
			if d := s.log[len(s.log)-1]; d.Desired != 0 {
				t.Errorf("did not stay at zero: %+v", d)
			}
		})
	}
}

func TestAutoscalerFlappingLoad(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name      string
		target    float64
		high, low float64
		period    time.Duration // each of high and low lasts period/2
		want      int
	}{
		{"12/4 every 3s", 2, 12, 4, 6 * time.Second, 4},
		{"12/4 every 4s", 5, 12, 4, 8 * time.Second, 2},
		{"30/0 every 2s", 10, 30, 0, 4 * time.Second, 2},
		{"50/10 every 5s", 10, 50, 10, 10 * time.Second, 3},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := newSim(AutoscaleConfig{Target: tc.target}, 1)
			for range 10 * time.Minute / tc.period {
				s.run(tc.period/2, tc.high, 0)
				s.run(tc.period/2, tc.low, 0)
			}
			for _, d := range s.since(t0.Add(4 * time.Minute)) {
				if d.Desired != tc.want || d.Panic {
					t.Fatalf("at %v: desired %d panic %v (%s); want a steady %d",
						d.Time.Sub(t0), d.Desired, d.Panic, d.Reason, tc.want)
				}
			}
		})
	}
}

func TestAutoscalerBacklog(t *testing.T) {
	t.Parallel()
	for _, start := range []int{0, 1, 8} {
		t.Run(fmt.Sprintf("from %d", start), func(t *testing.T) {
			t.Parallel()
			s := newSim(AutoscaleConfig{Target: 5}, start)
			first := s.run(AutoscaleTick, 0, 20)
			if start == 0 && first.Desired != 4 {
				t.Errorf("first decision from 0: %+v, want 4 at once", first)
			}
			if d := s.run(3*time.Minute, 0, 20); d.Desired != 4 || d.StableDemand != 20 {
				t.Errorf("steady backlog of 20: %+v, want 4 instances", d)
			}
		})
	}
}

func TestAutoscalerBounds(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name     string
		cfg      AutoscaleConfig
		start    int
		inFlight float64 // < 0: no observation at all
		want     int
	}{
		{"capped by max", AutoscaleConfig{Target: 2, Max: 5}, 1, 40, 5},
		{"max 1", AutoscaleConfig{Target: 1, Max: 1}, 0, 100, 1},
		{"held at min", AutoscaleConfig{Target: 2, Min: 3}, 1, 0, 3},
		{"min above demand", AutoscaleConfig{Target: 2, Min: 3}, 3, 2, 3},
		{"no data keeps current", AutoscaleConfig{Target: 2}, 3, -1, 3},
		{"no data at zero", AutoscaleConfig{Target: 2}, 0, -1, 0},
		{"no data raised to min", AutoscaleConfig{Target: 2, Min: 2}, 0, -1, 2},
		{"no data capped by max", AutoscaleConfig{Target: 2, Max: 4}, 7, -1, 4},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := newSim(tc.cfg, tc.start)
			var d Decision
			if tc.inFlight < 0 {
				d = s.a.Decide(t0, tc.start)
			} else {
				d = s.run(3*time.Minute, tc.inFlight, 0)
			}
			if d.Desired != tc.want || d.Reason == "" {
				t.Errorf("got %d (%q), want %d", d.Desired, d.Reason, tc.want)
			}
		})
	}
}

func TestAutoscalerRateLimits(t *testing.T) {
	t.Parallel()
	t.Run("scale-down halves", func(t *testing.T) {
		t.Parallel()
		a := NewAutoscaler(AutoscaleConfig{Target: 2, StableWindow: 6 * time.Second})
		now := t0
		for range 120 {
			now = now.Add(time.Second)
			a.Record(now, 20, 0) // 10 instances' worth
		}
		for range 10 {
			now = now.Add(time.Second)
			a.Record(now, 1, 0) // 1 instance's worth, for longer than the window
		}
		current := 10
		for _, want := range []int{5, 2, 1, 1} {
			d := a.Decide(now, current)
			if d.Desired != want {
				t.Fatalf("from %d: desired %d (%s), want %d", current, d.Desired, d.Reason, want)
			}
			current = d.Desired
		}
	})
	t.Run("scale-up rate", func(t *testing.T) {
		t.Parallel()
		a := NewAutoscaler(AutoscaleConfig{Target: 1, MaxScaleUpRate: 2})
		a.Record(t0, 100, 0)
		current := 1
		for _, want := range []int{2, 4, 8, 16, 32, 64, 100, 100} {
			d := a.Decide(t0, current)
			if d.Desired != want || !d.Panic {
				t.Fatalf("from %d: desired %d panic %v (%s), want %d in panic", current, d.Desired, d.Panic, d.Reason, want)
			}
			current = d.Desired
		}
	})
}

func TestAutoscalerColdStart(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name string
		cfg  AutoscaleConfig
		idle time.Duration // observed zero demand at 0 instances before the request
		held float64
		want int
	}{
		{"first request", AutoscaleConfig{Target: 5}, 0, 1, 1},
		{"after a long idle", AutoscaleConfig{Target: 5}, 10 * time.Minute, 1, 1},
		{"a burst sizes at once", AutoscaleConfig{Target: 5}, 10 * time.Minute, 20, 4},
		{"burst capped by max", AutoscaleConfig{Target: 5, Max: 2}, time.Minute, 20, 2},
		{"weighted", AutoscaleConfig{Target: 100, WeightedAverage: true}, time.Hour, 1, 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := newSim(tc.cfg, 0)
			if tc.idle > 0 {
				if d := s.run(tc.idle, 0, 0); d.Desired != 0 {
					t.Fatalf("idle at zero: %+v", d)
				}
			}
			now := s.now.Add(300 * time.Millisecond) // between ticks
			s.a.Record(now, tc.held, 0)
			if d := s.a.Decide(now, 0); d.Desired != tc.want {
				t.Errorf("desired %d (%s), want %d at once", d.Desired, d.Reason, tc.want)
			}
		})
	}
}

func TestAutoscalerWarmUpHoldsCurrent(t *testing.T) {
	t.Parallel()
	// A new Autoscaler (weft restarted, or the Function re-applied) has no
	// history: it must not shrink a busy pool on a young window.
	s := newSim(AutoscaleConfig{Target: 1}, 10)
	s.run(58*time.Second, 2, 0)
	for _, d := range s.log {
		if d.Desired != 10 {
			t.Fatalf("at %v: desired %d (%s), want 10 while warming up", d.Time.Sub(t0), d.Desired, d.Reason)
		}
	}
	if d := s.run(4*time.Second, 2, 0); d.Desired != 5 {
		t.Errorf("after a window: %+v, want 5 (halving toward 2)", d)
	}
}

func TestAutoscalerSparseObservations(t *testing.T) {
	t.Parallel()
	// A caller that samples every 5s sees the same demand as one that
	// samples every second: unobserved seconds hold the last value.
	a := NewAutoscaler(AutoscaleConfig{Target: 4})
	now := t0
	for range 30 {
		now = now.Add(5 * time.Second)
		a.Record(now, 10, 0)
		a.Record(now.Add(100*time.Millisecond), 14, 0) // averaged within the second
	}
	d := a.Decide(now.Add(4*time.Second), 3)
	// Each 5s: one second averaging 12, then four carrying the last 14.
	if math.Abs(d.StableDemand-13.6) > 1e-9 || math.Abs(d.PanicDemand-82.0/6) > 1e-9 || d.Desired != 4 {
		t.Errorf("got %+v, want stable 13.6, panic 13.67, 4 instances", d)
	}
}

func TestAutoscalerWeightedAverage(t *testing.T) {
	t.Parallel()
	linear := NewAutoscaler(AutoscaleConfig{Target: 1})
	weighted := NewAutoscaler(AutoscaleConfig{Target: 1, WeightedAverage: true})
	now := t0
	feed := func(n int, v float64) {
		for range n {
			now = now.Add(time.Second)
			linear.Record(now, v, 0)
			weighted.Record(now, v, 0)
		}
	}
	feed(120, 10)
	if l, w := linear.Decide(now, 10), weighted.Decide(now, 10); l.StableDemand != 10 || math.Abs(w.StableDemand-10) > 1e-9 {
		t.Fatalf("constant 10: linear %v, weighted %v", l.StableDemand, w.StableDemand)
	}
	feed(6, 0)
	l, w := linear.Decide(now, 10), weighted.Decide(now, 10)
	if l.StableDemand != 9 {
		t.Errorf("linear stable %v, want 9", l.StableDemand)
	}
	if w.StableDemand > 3 {
		t.Errorf("weighted stable %v, want recent zeros to weigh most (< 3)", w.StableDemand)
	}
}

func TestAutoscaleConfigDefaults(t *testing.T) {
	t.Parallel()
	got := AutoscaleConfig{}.WithDefaults()
	want := AutoscaleConfig{
		Target:             DefaultTarget,
		StableWindow:       60 * time.Second,
		PanicWindowPercent: 10,
		PanicThreshold:     2,
		ScaleToZeroGrace:   30 * time.Second,
		MaxScaleUpRate:     1000,
		MaxScaleDownRate:   2,
	}
	if got != want {
		t.Fatalf("defaults:\n got %+v\nwant %+v", got, want)
	}
	if err := got.Validate(); err != nil {
		t.Fatalf("defaults invalid: %v", err)
	}
	if p := got.panicSeconds(); p != 6 {
		t.Errorf("panic window %ds, want 6", p)
	}
	set := AutoscaleConfig{Min: 1, Max: 3, Target: 7, StableWindow: 10 * time.Second, PanicWindowPercent: 50,
		PanicThreshold: 3, ScaleToZeroGrace: time.Minute, MaxScaleUpRate: 5, MaxScaleDownRate: 4, WeightedAverage: true}
	if set.WithDefaults() != set {
		t.Errorf("WithDefaults changed set fields: %+v", set.WithDefaults())
	}
	if p := (AutoscaleConfig{StableWindow: 7 * time.Second, PanicWindowPercent: 1}).panicSeconds(); p != 1 {
		t.Errorf("tiny panic window %ds, want 1", p)
	}
}

func TestAutoscaleConfigValidate(t *testing.T) {
	t.Parallel()
	cases := map[string]func(*AutoscaleConfig){
		"negative min":          func(c *AutoscaleConfig) { c.Min = -1 },
		"negative max":          func(c *AutoscaleConfig) { c.Max = -1 },
		"min above max":         func(c *AutoscaleConfig) { c.Min, c.Max = 5, 3 },
		"negative target":       func(c *AutoscaleConfig) { c.Target = -1 },
		"NaN target":            func(c *AutoscaleConfig) { c.Target = math.NaN() },
		"infinite target":       func(c *AutoscaleConfig) { c.Target = math.Inf(1) },
		"window too short":      func(c *AutoscaleConfig) { c.StableWindow = 5 * time.Second },
		"window too long":       func(c *AutoscaleConfig) { c.StableWindow = time.Hour + time.Second },
		"fractional window":     func(c *AutoscaleConfig) { c.StableWindow = 6500 * time.Millisecond },
		"panic percent low":     func(c *AutoscaleConfig) { c.PanicWindowPercent = 0.5 },
		"panic percent high":    func(c *AutoscaleConfig) { c.PanicWindowPercent = 101 },
		"panic threshold low":   func(c *AutoscaleConfig) { c.PanicThreshold = 1 },
		"panic threshold high":  func(c *AutoscaleConfig) { c.PanicThreshold = 11 },
		"grace too short":       func(c *AutoscaleConfig) { c.ScaleToZeroGrace = time.Second },
		"scale-up rate 1":       func(c *AutoscaleConfig) { c.MaxScaleUpRate = 1 },
		"scale-up rate NaN":     func(c *AutoscaleConfig) { c.MaxScaleUpRate = math.NaN() },
		"scale-down rate 0.5":   func(c *AutoscaleConfig) { c.MaxScaleDownRate = 0.5 },
		"scale-down rate +Inf":  func(c *AutoscaleConfig) { c.MaxScaleDownRate = math.Inf(1) },
		"negative window":       func(c *AutoscaleConfig) { c.StableWindow = -time.Minute },
		"negative panic window": func(c *AutoscaleConfig) { c.PanicWindowPercent = -10 },
	}
	for name, mutate := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			c := AutoscaleConfig{}.WithDefaults()
			mutate(&c)
			err := c.Validate()
			if !errors.Is(err, ErrInvalidAutoscale) {
				t.Fatalf("Validate() = %v, want ErrInvalidAutoscale", err)
			}
			defer func() {
				if recover() == nil {
					t.Error("NewAutoscaler accepted an invalid config")
				}
			}()
			NewAutoscaler(c)
		})
	}
	t.Run("several fields", func(t *testing.T) {
		t.Parallel()
		err := AutoscaleConfig{Min: -1, Target: -1}.Validate()
		var joined interface{ Unwrap() []error }
		if !errors.As(err, &joined) || len(joined.Unwrap()) < 3 {
			t.Errorf("want every invalid field reported, got %v", err)
		}
	})
}

func TestAutoscalerRecordAllocs(t *testing.T) {
	a := NewAutoscaler(AutoscaleConfig{Target: 2})
	now := t0
	if n := testing.AllocsPerRun(1000, func() {
		now = now.Add(700 * time.Millisecond)
		a.Record(now, 3, 1)
	}); n != 0 {
		t.Errorf("Record allocates %v times, want 0", n)
	}
}

func BenchmarkAutoscalerDecide(b *testing.B) {
	for _, bc := range []struct {
		window   time.Duration
		weighted bool
	}{{time.Minute, false}, {time.Minute, true}, {time.Hour, false}} {
		b.Run(fmt.Sprintf("window=%v/weighted=%v", bc.window, bc.weighted), func(b *testing.B) {
			a := NewAutoscaler(AutoscaleConfig{Target: 5, StableWindow: bc.window, WeightedAverage: bc.weighted})
			now := t0
			for i := range int(bc.window / time.Second) { // a full window, outside the timed loop
				now = now.Add(time.Second)
				a.Record(now, float64(i%20), i%7)
			}
			current := 4
			b.ReportAllocs()
			for b.Loop() {
				now = now.Add(time.Second)
				a.Record(now, 17, 3)
				current = a.Decide(now, current).Desired
			}
		})
	}
}
