package router

import "sync/atomic"

// roundRobin is the "round-robin" policy: an atomic counter taken modulo
// the number of candidates. The counter starts at a random value so that
// the routers of several nodes do not all begin with the same endpoint.
//
// When the candidate list changes (an ejection, a new endpoint) the
// rotation carries on over the new list; each endpoint still gets its turn
// once per len(eps) picks.
type roundRobin struct {
	next atomic.Uint64
}

func newRoundRobin(rnd *lockedRand) *roundRobin {
	b := &roundRobin{}
	b.next.Store(rnd.uint64())
	return b
}

// Pick implements Balancer.
func (b *roundRobin) Pick(eps []*Endpoint) *Endpoint {
	if len(eps) == 0 {
		return nil
	}
	i := (b.next.Add(1) - 1) % uint64(len(eps))
	return eps[i]
}
