package router

import (
	"sync"
	"testing"
)

func TestRoundRobinSpreadsEvenly(t *testing.T) {
	eps := lbEndpoints(3, nil)
	b := lbMustBalancer(t, PolicyRoundRobin, nil, lbSeeded(3))

	counts := make([]int, len(eps))
	prev := -1
	for range 1000 {
		i := lbIndex(eps, b.Pick(eps))
		if prev >= 0 && i != (prev+1)%len(eps) {
			t.Fatalf("picked ep%d after ep%d, want the next in turn", i, prev)
		}
		prev = i
		counts[i]++
	}
	for i, n := range counts {
		if n < 333 || n > 334 {
			t.Errorf("ep%d got %d of 1000 picks, want 333 or 334: %v", i, n, counts)
		}
	}
}

func TestRoundRobinConcurrentPicksStayExact(t *testing.T) {
	eps := lbEndpoints(3, nil)
	b := lbMustBalancer(t, PolicyRoundRobin, nil, nil)
	var (
		mu     sync.Mutex
		counts = make([]int, len(eps))
		wg     sync.WaitGroup
	)
	for range 8 {
		wg.Go(func() {
			local := make([]int, len(eps))
			for range 300 {
				local[lbIndex(eps, b.Pick(eps))]++
			}
			mu.Lock()
			for i, n := range local {
				counts[i] += n
			}
			mu.Unlock()
		})
	}
	wg.Wait()
	for i, n := range counts {
		if n != 800 {
			t.Errorf("ep%d got %d of 2400 concurrent picks, want exactly 800: %v", i, n, counts)
		}
	}
}

func TestRoundRobinFollowsChangingCandidates(t *testing.T) {
	all := lbEndpoints(4, nil)
	b := lbMustBalancer(t, PolicyRoundRobin, nil, lbSeeded(4))
	// ep2 ejected for a while: the rotation carries on over the rest.
	cands := []*Endpoint{all[0], all[1], all[3]}
	counts := make(map[*Endpoint]int)
	for range 300 {
		counts[b.Pick(cands)]++
	}
	if counts[all[2]] != 0 {
		t.Errorf("a non-candidate was picked %d times", counts[all[2]])
	}
	for _, e := range cands {
		if counts[e] != 100 {
			t.Errorf("%s got %d of 300, want 100", e.Addr, counts[e])
		}
	}
}
