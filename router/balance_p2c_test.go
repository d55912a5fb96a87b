package router

import (
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestP2CPrefersFastEndpoint: under a 10× latency skew nearly every pick
// goes to the fast endpoints, yet the slow one is still probed as its
// estimate decays.
func TestP2CPrefersFastEndpoint(t *testing.T) {
	clk := newLBClock()
	eps := lbEndpoints(3, clk)
	latency := []time.Duration{10 * time.Millisecond, 10 * time.Millisecond, 100 * time.Millisecond}
	b := lbMustBalancer(t, PolicyP2CEWMA, clk, lbSeeded(8))

	const picks = 10_000
	counts := make([]int, len(eps))
	var lateProbes int // picks of the slow one after it is known to be slow
	for i := range picks {
		e := b.Pick(eps)
		k := lbIndex(eps, e)
		counts[k]++
		if k == 2 && i >= 1000 {
			lateProbes++
		}
		lbAnswer(clk, e, latency[k], true)
	}
	slow := float64(counts[2]) / picks
	t.Logf("picks %v: slow share %.2f%%, %d probes after the first 1000", counts, 100*slow, lateProbes)
	if slow > 0.10 {
		t.Errorf("the 10× slower endpoint got %.1f%% of picks, want under 10%%", 100*slow)
	}
	if lateProbes < 2 {
		t.Errorf("the slow endpoint was probed %d times after the first 1000 picks, want it retried as its estimate decays", lateProbes)
	}
	if d := counts[0] - counts[1]; d < -picks/10 || d > picks/10 {
		t.Errorf("the fast endpoints split %d/%d, want about even", counts[0], counts[1])
	}
}

// TestP2CInFlightShiftsPicks: with equal latencies the requests in flight
// decide.
func TestP2CInFlightShiftsPicks(t *testing.T) {
	clk := newLBClock()
	eps := lbEndpoints(3, clk)
	for _, e := range eps {
		lbAnswer(clk, e, 10*time.Millisecond, true)
	}
	b := lbMustBalancer(t, PolicyP2CEWMA, clk, lbSeeded(9))

	for range 5 {
		eps[0].Begin() // ep0 is busy
	}
	counts := make([]int, len(eps))
	for range 1000 {
		counts[lbIndex(eps, b.Pick(eps))]++
	}
	if counts[0] != 0 {
		t.Errorf("the endpoint with 5 in flight got %d of 1000 picks, want 0: %v", counts[0], counts)
	}
	for range 5 {
		eps[0].End(10*time.Millisecond, true)
	}

	// Picks held in flight spread the load: two choices keep it level.
	for range 300 {
		b.Pick(eps).Begin()
	}
	lo, hi := eps[0].InFlight(), eps[0].InFlight()
	for _, e := range eps {
		lo, hi = min(lo, e.InFlight()), max(hi, e.InFlight())
	}
	if hi-lo > 3 {
		t.Errorf("300 held picks spread %d..%d in flight, want within 3", lo, hi)
	}
}

// TestP2CNewEndpointTriedNotFlooded: a new endpoint starts at DefaultRTT,
// above established 10 ms endpoints, so it gets no traffic at first; its
// estimate decays until it is tried, and its first answer sets its cost.
func TestP2CNewEndpointTriedNotFlooded(t *testing.T) {
	clk := newLBClock()
	eps := lbEndpoints(3, clk)
	for _, e := range eps {
		lbAnswer(clk, e, 10*time.Millisecond, true)
	}
	b := lbMustBalancer(t, PolicyP2CEWMA, clk, lbSeeded(10))
	eps = append(eps, NewEndpoint("new", clk))

	first := -1
	counts := make([]int, len(eps))
	for i := range 4000 { // 40 s at 10 ms a pick
		e := b.Pick(eps)
		k := lbIndex(eps, e)
		if k == 3 && first < 0 {
			first = i
		}
		counts[k]++
		lbAnswer(clk, e, 10*time.Millisecond, true)
	}
	t.Logf("new endpoint first picked at %d; picks %v", first, counts)
	if first < 0 {
		t.Fatal("the new endpoint was never tried")
	}
	if first < 500 {
		t.Errorf("the new endpoint was picked at pick %d, before its default RTT could decay below 10ms", first)
	}
	// Once it answered like the others it takes a fair share.
	if counts[3] < 4000/4/2 {
		t.Errorf("the new endpoint got %d of 4000 picks, want a fair share once known", counts[3])
	}
}

// TestP2CRealBackendsAvoidSlowOne drives real HTTP requests to three
// loopback backends, one 10× slower than the others.
func TestP2CRealBackendsAvoidSlowOne(t *testing.T) {
	delays := []time.Duration{5 * time.Millisecond, 5 * time.Millisecond, 50 * time.Millisecond}
	hits := make([]atomic.Int64, len(delays))
	eps := make([]*Endpoint, len(delays))
	for i, d := range delays {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			hits[i].Add(1)
			select { // the backend's own latency
			case <-time.After(d):
			case <-r.Context().Done():
			}
			_, _ = io.WriteString(w, "ok")
		}))
		t.Cleanup(srv.Close)
		eps[i] = NewEndpoint(srv.Listener.Addr().String(), SystemClock{})
	}
	tr := &http.Transport{MaxIdleConnsPerHost: 8}
	t.Cleanup(tr.CloseIdleConnections)
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	b := lbMustBalancer(t, PolicyP2CEWMA, SystemClock{}, nil)

	const workers, each = 4, 75
	errs := make(chan error, workers*each) // one slot per request: never blocks
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for range each {
				e := b.Pick(eps)
				e.Begin()
				start := time.Now()
				resp, err := client.Get("http://" + e.Addr + "/")
				if err == nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
				e.End(time.Since(start), err == nil && resp.StatusCode < 500)
				if err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("request: %v", err)
	}
	total := workers * each
	slow := hits[2].Load()
	t.Logf("hits fast %d, fast %d, slow %d of %d", hits[0].Load(), hits[1].Load(), slow, total)
	if slow > int64(total)/10 {
		t.Errorf("the 10× slower backend served %d of %d requests, want under 10%%", slow, total)
	}
	if sum := hits[0].Load() + hits[1].Load() + slow; sum != int64(total) {
		t.Errorf("backends served %d requests, want %d", sum, total)
	}
}
