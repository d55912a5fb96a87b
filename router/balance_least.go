package router

// leastRequest is the "least-request" policy: the candidate with the fewest
// requests in flight, ties broken uniformly at random (reservoir sampling
// over the tied endpoints, one draw per tie).
//
// It scans every candidate, O(n); that is cheap for the endpoint counts of
// one Service. (Envoy's LEAST_REQUEST samples two by default instead; that
// is what p2c-ewma does, with latency folded in.)
type leastRequest struct {
	rnd *lockedRand
}

// Pick implements Balancer.
func (b *leastRequest) Pick(eps []*Endpoint) *Endpoint {
	var (
		best  *Endpoint
		least int64
		ties  int
	)
	for _, e := range eps {
		n := e.inFlight.Load()
		switch {
		case best == nil || n < least:
			best, least, ties = e, n, 1
		case n == least:
			ties++
			if b.rnd.intN(ties) == 0 {
				best = e
			}
		}
	}
	return best
}
