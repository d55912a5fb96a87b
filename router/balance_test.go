package router

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
)

var lbPolicies = []string{PolicyP2CEWMA, PolicyRoundRobin, PolicyLeastRequest}

// lbSeeded returns a deterministic generator for one test.
func lbSeeded(seed uint64) *rand.Rand { return rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)) }

// lbEndpoints returns n endpoints on clk named ep0, ep1, ….
func lbEndpoints(n int, clk Clock) []*Endpoint {
	eps := make([]*Endpoint, n)
	for i := range eps {
		eps[i] = NewEndpoint(fmt.Sprintf("ep%d", i), clk)
	}
	return eps
}

func lbIndex(eps []*Endpoint, e *Endpoint) int {
	for i, x := range eps {
		if x == e {
			return i
		}
	}
	return -1
}

func lbMustBalancer(tb testing.TB, policy string, clk Clock, rnd *rand.Rand) Balancer {
	tb.Helper()
	b, err := NewBalancer(policy, clk, rnd)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

func TestNewBalancerPolicies(t *testing.T) {
	for _, p := range append([]string{""}, lbPolicies...) {
		if _, err := NewBalancer(p, nil, nil); err != nil {
			t.Errorf("NewBalancer(%q): %v", p, err)
		}
	}
	if b := lbMustBalancer(t, "", nil, nil); fmt.Sprintf("%T", b) != "*router.p2c" {
		t.Errorf(`NewBalancer("") = %T, want the p2c-ewma default`, b)
	}
	_, err := NewBalancer("random", nil, nil)
	if !errors.Is(err, ErrUnknownPolicy) {
		t.Fatalf(`NewBalancer("random") = %v, want ErrUnknownPolicy`, err)
	}
	for _, p := range lbPolicies { // the message names the valid ones
		if !strings.Contains(err.Error(), p) {
			t.Errorf("error %q does not name %q", err, p)
		}
	}
}

// TestBalancerConformance holds every policy to the Balancer contract.
func TestBalancerConformance(t *testing.T) {
	for _, policy := range lbPolicies {
		t.Run(policy, func(t *testing.T) {
			t.Parallel()
			clk := newLBClock()
			b := lbMustBalancer(t, policy, clk, lbSeeded(1))
			if got := b.Pick(nil); got != nil {
				t.Errorf("Pick(nil) = %v, want nil", got)
			}
			one := lbEndpoints(1, clk)
			if got := b.Pick(one); got != one[0] {
				t.Errorf("Pick of one endpoint = %v, want it", got)
			}
			// Equal endpoints: each is picked, and only candidates are.
			eps := lbEndpoints(5, clk)
			seen := make([]int, len(eps))
			for range 500 {
				i := lbIndex(eps, b.Pick(eps))
				if i < 0 {
					t.Fatal("Pick returned an endpoint outside eps")
				}
				seen[i]++
			}
			for i, n := range seen {
				if n == 0 {
					t.Errorf("endpoint %d never picked in 500: %v", i, seen)
				}
			}
		})
	}
}

func TestBalancerPickDoesNotAllocate(t *testing.T) {
	for _, policy := range lbPolicies {
		for _, seeded := range []bool{false, true} {
			var rnd *rand.Rand
			if seeded {
				rnd = lbSeeded(2)
			}
			b := lbMustBalancer(t, policy, SystemClock{}, rnd)
			eps := lbEndpoints(100, nil)
			if n := testing.AllocsPerRun(1000, func() { b.Pick(eps) }); n != 0 {
				t.Errorf("%s (seeded %v): %v allocations per Pick, want 0", policy, seeded, n)
			}
		}
	}
}

func TestBalancerAvailable(t *testing.T) {
	clk := newLBClock()
	eps := lbEndpoints(3, clk)
	now := clk.Now()
	eps[1].ejectedUntil.Store(now.Add(time.Minute).UnixNano())

	buf := make([]*Endpoint, 0, 8)
	got := Available(buf[:0], eps, now)
	if len(got) != 2 || got[0] != eps[0] || got[1] != eps[2] {
		t.Errorf("Available with ep1 ejected = %v, want ep0 and ep2", got)
	}
	if n := testing.AllocsPerRun(100, func() { Available(buf[:0], eps, now) }); n != 0 {
		t.Errorf("Available into a reused slice: %v allocations, want 0", n)
	}

	// Panic mode: all ejected, all are candidates.
	for _, e := range eps {
		e.ejectedUntil.Store(now.Add(time.Minute).UnixNano())
	}
	if got := Available(nil, eps, now); len(got) != 3 {
		t.Errorf("Available with all ejected = %d endpoints, want all 3 (panic mode)", len(got))
	}
	// Ejections end by the clock.
	if got := Available(nil, eps, now.Add(time.Minute)); len(got) != 3 || got[0].Ejected(now.Add(time.Minute)) {
		t.Errorf("Available after the ejection time = %v, want all 3 back", got)
	}
}

// BenchmarkPick measures one Pick per policy over 3 and 100 endpoints
// with mixed latencies and loads, with the global generator as in
// production.
func BenchmarkPick(b *testing.B) {
	for _, policy := range lbPolicies {
		for _, n := range []int{3, 100} {
			b.Run(fmt.Sprintf("policy=%s/endpoints=%d", policy, n), func(b *testing.B) {
				clk := SystemClock{}
				eps := lbEndpoints(n, clk)
				for i, e := range eps {
					e.observe(time.Duration(i%7+1)*time.Millisecond, true, clk.Now())
					for range i % 3 {
						e.Begin()
					}
				}
				bal := lbMustBalancer(b, policy, clk, nil)
				b.ReportAllocs()
				for b.Loop() {
					bal.Pick(eps)
				}
			})
		}
	}
}
