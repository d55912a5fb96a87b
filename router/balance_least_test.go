package router

import (
	"testing"
	"time"
)

func TestLeastRequestSpreadsEvenly(t *testing.T) {
	clk := newLBClock()

	t.Run("held in flight", func(t *testing.T) {
		eps := lbEndpoints(3, clk)
		b := lbMustBalancer(t, PolicyLeastRequest, clk, lbSeeded(5))
		for range 999 {
			b.Pick(eps).Begin() // never ended: each pick adds load
		}
		for _, e := range eps {
			if e.InFlight() != 333 {
				t.Errorf("%s holds %d of 999, want 333", e.Addr, e.InFlight())
			}
		}
	})

	t.Run("answered at once", func(t *testing.T) {
		// Every endpoint idle at each pick: all tie, ties are random.
		eps := lbEndpoints(3, clk)
		b := lbMustBalancer(t, PolicyLeastRequest, clk, lbSeeded(6))
		counts := make([]int, len(eps))
		for range 1000 {
			e := b.Pick(eps)
			lbAnswer(clk, e, time.Millisecond, true)
			counts[lbIndex(eps, e)]++
		}
		for i, n := range counts {
			if n < 300 || n > 367 { // 1000/3 ± 5 % of the picks
				t.Errorf("ep%d got %d of 1000, want 333 ± 50: %v", i, n, counts)
			}
		}
	})
}

func TestLeastRequestAvoidsLoadedEndpoint(t *testing.T) {
	clk := newLBClock()
	eps := lbEndpoints(3, clk)
	b := lbMustBalancer(t, PolicyLeastRequest, clk, lbSeeded(7))
	eps[0].Begin() // one request in flight on ep0
	counts := make([]int, len(eps))
	for range 600 {
		counts[lbIndex(eps, b.Pick(eps))]++
	}
	if counts[0] != 0 {
		t.Errorf("the loaded endpoint got %d of 600 picks, want 0", counts[0])
	}
	if counts[1] < 250 || counts[2] < 250 { // the tie is split at random
		t.Errorf("the tie between ep1 and ep2 split %d/%d, want about even", counts[1], counts[2])
	}
}
