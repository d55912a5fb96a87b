package router

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/weft-dev/weft/internal/testutil"
)

// idLoad is what the callers of TestIdentityRotationUnderLoad saw. The test
// publishes each generation of certificates (0: the first SVIDs, k: after
// the k-th renewal) once both sides hold it; a caller notes the generation
// current when it starts a request. Requests are judged at the end, when
// every generation is known: a request that began before a publication may
// already have seen the renewed certificate.
type idLoad struct {
	mu        sync.Mutex
	gen       int
	serverGen map[string]int // the server's leaf serial → its generation
	clientGen map[string]int // the caller's leaf serial → its generation
	done      map[int]map[int]int
	seen      []idRequest
}

// idRequest is one request a caller made.
type idRequest struct {
	caller, gen int    // gen: the generation current when it began
	err         error  // nil: answered "hello"
	serial      string // the server's leaf serial
	reused      bool   // on a kept-alive connection
	resumed     bool   // on a new connection, resuming a TLS session
}

func (l *idLoad) publish(gen int, serverSerial, clientSerial string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.serverGen[serverSerial], l.clientGen[clientSerial] = gen, gen
	l.gen = gen
}

func (l *idLoad) generation() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.gen
}

// minDone returns the fewest requests begun in generation gen that one of
// the callers has completed.
func (l *idLoad) minDone(callers, gen int) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	least := -1
	for c := range callers {
		if n := l.done[c][gen]; least < 0 || n < least {
			least = n
		}
	}
	return least
}

// failed returns how many requests failed.
func (l *idLoad) failed() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, r := range l.seen {
		if r.err != nil {
			n++
		}
	}
	return n
}

func (l *idLoad) record(caller, gen int, cs *tls.ConnectionState, reused bool, err error) {
	r := idRequest{caller: caller, gen: gen, err: err, reused: reused}
	if err == nil {
		r.serial, r.resumed = cs.PeerCertificates[0].SerialNumber.Text(16), cs.DidResume
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.seen = append(l.seen, r)
	if err == nil {
		if l.done[caller] == nil {
			l.done[caller] = map[int]int{}
		}
		l.done[caller][gen]++
	}
}

// idCall calls the function "hello" through the Inbound at addr and
// returns the connection's TLS state and whether the connection was reused.
func idCall(tr *http.Transport, addr string) (*tls.ConnectionState, bool, error) {
	var reused bool
	trace := &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) { reused = info.Reused }}
	req, err := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), http.MethodGet, "https://"+addr+"/", nil)
	if err != nil {
		return nil, false, err
	}
	req.Host = "hello"
	resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		return nil, false, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	switch {
	case err != nil:
		return nil, false, err
	case resp.StatusCode != http.StatusOK || string(body) != "hello":
		return nil, false, fmt.Errorf("answer %d %q", resp.StatusCode, body)
	}
	return resp.TLS, reused, nil
}

// TestIdentityRotationUnderLoad: callers keep calling a function through
// an Inbound listener over mutual TLS, on kept-alive connections, on a new
// connection per request and on new connections that resume TLS sessions,
// while SVIDSource.Run renews both the node's and the caller's SVID at 70 %
// of their lifetime, driven by the fake clock, several times. No request
// fails; every full handshake begun after a renewal shows the renewed
// server certificate, the server sees every renewed caller certificate, and
// connections and sessions from before a renewal keep working.
//
// The fake clock jumps 16h48m at once, which real time never does: a
// handshake straddling the jump would see its certificates age by that much
// mid-flight, and those of two generations back expire. The jump therefore
// waits for the requests in flight (fence); the renewals themselves, which
// Run makes after the jump, happen under load.
func TestIdentityRotationUnderLoad(t *testing.T) {
	const (
		rotations = 4
		perRound  = 10 // requests each caller completes on each generation
	)
	clk := newIDClock(idT0)
	ca := newIDPKI(t, "weft.test").ca(t, clk)
	node, caller := idMust(t, "spiffe://weft.test/node/a"), idMust(t, "spiffe://weft.test/fn/caller")
	nodeSrc, err := NewSVIDSource(ca, node, clk, nil, WithAfter(clk.After))
	if err != nil {
		t.Fatal(err)
	}
	callerSrc, err := NewSVIDSource(ca, caller, clk, nil, WithAfter(clk.After))
	if err != nil {
		t.Fatal(err)
	}
	if !nodeSrc.RenewAt().Equal(callerSrc.RenewAt()) {
		t.Fatalf("the two SVIDs renew at %v and %v; the test advances the clock for both at once", nodeSrc.RenewAt(), callerSrc.RenewAt())
	}
	authz, err := NewAuthorizerIDs(ca.TrustDomain(), []spiffeid.ID{caller}, nil)
	if err != nil {
		t.Fatal(err)
	}
	n := startIDNode(t, ServerTLS(nodeSrc, ca.Bundle(), authz, WithTLSClock(clk)))
	runIDSource(t, nodeSrc)
	runIDSource(t, callerSrc)

	load := &idLoad{serverGen: map[string]int{}, clientGen: map[string]int{}, done: map[int]map[int]int{}}
	current := func() (string, string) {
		s, _ := nodeSrc.GetX509SVID()
		c, _ := callerSrc.GetX509SVID()
		return leafSerial(s), leafSerial(c)
	}
	s0, c0 := current()
	load.publish(0, s0, c0)

	transport := func(keepAlive, resume bool) *http.Transport {
		cfg := ClientTLS(callerSrc, ca.Bundle(), spiffeid.MatchID(node), WithTLSClock(clk))
		if resume {
			cfg.ClientSessionCache = tls.NewLRUClientSessionCache(8)
		}
		tr := idTransport(cfg, keepAlive)
		t.Cleanup(tr.CloseIdleConnections)
		return tr
	}
	callers := []*http.Transport{
		transport(true, false),  // kept-alive connection
		transport(false, false), // a new connection and full handshake per request
		transport(false, false),
		transport(false, true), // a new connection per request, resuming TLS sessions
	}
	var (
		fence sync.RWMutex // held for reading by each request, for writing by a clock jump
		stop  atomic.Bool
		wg    sync.WaitGroup
	)
	for i, tr := range callers {
		wg.Go(func() {
			for !stop.Load() {
				fence.RLock()
				gen := load.generation()
				cs, reused, err := idCall(tr, n.addr)
				fence.RUnlock()
				load.record(i, gen, cs, reused, err)
			}
		})
	}
	t.Cleanup(func() { stop.Store(true); wg.Wait() }) // on an early failure

	// round waits until each caller has completed perRound requests begun
	// in generation gen, or one request failed; it reports which.
	round := func(gen int) bool {
		testutil.WaitFor(t, 30*time.Second, func() bool { return load.minDone(len(callers), gen) >= perRound || load.failed() > 0 },
			"each caller completing %d requests in generation %d", perRound, gen)
		return load.failed() == 0
	}
	for k := 1; k <= rotations && round(k-1); k++ {
		// Both Run loops wait on the clock for their renewal time; once
		// they have asked, jump to it.
		clk.nextWait(t)
		clk.nextWait(t)
		fence.Lock()
		clk.Advance(nodeSrc.RenewAt().Sub(clk.Now()))
		fence.Unlock()
		testutil.WaitFor(t, 10*time.Second, func() bool { return nodeSrc.Renewals() == k && callerSrc.Renewals() == k },
			"renewal %d of both SVIDs", k)
		s, c := current()
		load.publish(k, s, c)
		if k == rotations {
			round(k)
		}
	}
	stop.Store(true)
	wg.Wait()

	load.mu.Lock()
	defer load.mu.Unlock()
	var failed, full, resumed, resumedOld, reused, reusedOld int
	fullSeen := map[int]bool{} // generations of server certificates shown in full handshakes
	for _, r := range load.seen {
		if r.err != nil {
			if failed++; failed <= 5 {
				t.Errorf("caller %d, generation %d: request failed: %v", r.caller, r.gen, r.err)
			}
			continue
		}
		got, ok := load.serverGen[r.serial]
		switch {
		case !ok:
			t.Errorf("caller %d saw an unknown server certificate %s", r.caller, r.serial)
		case r.reused:
			reused++
			if got < r.gen {
				reusedOld++
			}
		case r.resumed:
			resumed++
			if got < r.gen {
				resumedOld++
			}
		default:
			full++
			fullSeen[got] = true
			if got < r.gen {
				t.Errorf("caller %d: a full handshake begun in generation %d showed the server certificate of generation %d", r.caller, r.gen, got)
			}
		}
	}
	t.Logf("%d requests over %d rotations: %d failed; %d full handshakes, %d resumed (%d on a session from an earlier generation), %d on kept-alive connections (%d on one from an earlier generation)",
		len(load.seen), nodeSrc.Renewals(), failed, full, resumed, resumedOld, reused, reusedOld)
	if failed > 0 {
		t.Errorf("%d of %d requests failed during rotation, want 0", failed, len(load.seen))
	}
	for k := 0; k <= rotations; k++ {
		if !fullSeen[k] {
			t.Errorf("no full handshake showed the server certificate of generation %d", k)
		}
	}
	if reusedOld == 0 {
		t.Error("no request went over a connection made before a renewal; the kept-alive caller did not keep its connection")
	}
	if resumed == 0 {
		t.Error("no TLS session was resumed")
	}

	// The server side: every handshake passed verification, and each
	// generation of the caller's certificate was presented in a full one.
	clientSeen := map[int]bool{}
	for _, v := range n.verifications() {
		if v.err != nil {
			t.Errorf("server refused the caller's certificate %s: %v", v.serial, v.err)
			continue
		}
		gen, ok := load.clientGen[v.serial]
		if !ok {
			t.Errorf("server saw an unknown caller certificate %s", v.serial)
		}
		if !v.resumed {
			clientSeen[gen] = true
		}
	}
	for k := 0; k <= rotations; k++ {
		if !clientSeen[k] {
			t.Errorf("the server never saw the caller's certificate of generation %d in a full handshake", k)
		}
	}
	if err := n.log.handshakeError(); err != nil {
		t.Errorf("the server logged a failed handshake: %v", err)
	}
	if d := authz.Denied(); d != 0 {
		t.Errorf("Denied() = %d, want 0", d)
	}
}
