package router

// p2c is the "p2c-ewma" policy, Linkerd's default: power of two choices
// over peak-EWMA latency. Two distinct endpoints are drawn at random and
// the one with the lower cost (latency estimate × (in flight + 1)) wins.
//
// Comparing two random endpoints instead of scanning for the best one keeps
// Pick O(1), and keeps many balancers (one per node) from herding onto the
// same endpoint between updates, which is what a global minimum does
// (Mitzenmacher, "The Power of Two Choices in Randomized Load Balancing").
// The costliest endpoint is never chosen: a slow endpoint gets traffic
// again only once its estimate, decaying while it is idle, falls below a
// rival's cost, which is how it is probed.
type p2c struct {
	clk Clock
	rnd *lockedRand
}

// Pick implements Balancer.
func (b *p2c) Pick(eps []*Endpoint) *Endpoint {
	n := len(eps)
	switch n {
	case 0:
		return nil
	case 1:
		return eps[0]
	}
	// One draw over the n·(n-1) ordered pairs of distinct indexes.
	k := b.rnd.intN(n * (n - 1))
	i, j := k/(n-1), k%(n-1)
	if j >= i {
		j++
	}
	now := b.clk.Now() // both costs at the same instant
	a, c := eps[i], eps[j]
	if c.cost(now) < a.cost(now) {
		return c
	}
	return a
}
