package router

// Shared helpers of the identity tests (ca_test.go, svid_test.go,
// authz_test.go): a fake clock, throwaway PKIs and a TLS echo server on
// loopback. Names carry an "id" prefix so they do not collide with other
// router tests' helpers.

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// idT0 is the fake clocks' starting time. It is not the real time, so a test
// passes only if every validity check reads the injected clock.
var idT0 = time.Date(2031, time.March, 4, 12, 0, 0, 0, time.UTC)

// idClock is a Clock whose time moves only by Advance. After returns a
// channel that fires once the clock reaches now+d, and reports d on waits.
type idClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []idTimer
	// waits receives the duration of every After call; buffered so that
	// After never blocks on a test that does not read it.
	waits chan time.Duration
}

type idTimer struct {
	at time.Time
	ch chan time.Time
}

func newIDClock(t time.Time) *idClock {
	return &idClock{now: t, waits: make(chan time.Duration, 64)}
}

func (c *idClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *idClock) After(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	ch := make(chan time.Time, 1) // fired at most once, by Advance
	if d <= 0 {
		ch <- c.now
	} else {
		c.timers = append(c.timers, idTimer{at: c.now.Add(d), ch: ch})
	}
	c.mu.Unlock()
	select {
	case c.waits <- d:
	default:
	}
	return ch
}

func (c *idClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	kept := c.timers[:0]
	for _, tm := range c.timers {
		if tm.at.After(c.now) {
			kept = append(kept, tm)
			continue
		}
		tm.ch <- c.now
	}
	c.timers = kept
}

// nextWait returns the duration of the next After call, failing the test if
// none comes within 10 s of real time.
func (c *idClock) nextWait(t *testing.T) time.Duration {
	t.Helper()
	select {
	case d := <-c.waits:
		return d
	case <-time.After(10 * time.Second):
		t.Fatal("no After call within 10s")
		return 0
	}
}

// idPKI is a throwaway root for one trust domain, created a year before
// idT0 so that CAs over it can issue at any fake time near idT0.
type idPKI struct {
	td              spiffeid.TrustDomain
	certPEM, keyPEM []byte
}

func newIDPKI(t *testing.T, trustDomain string) idPKI {
	t.Helper()
	td := spiffeid.RequireTrustDomainFromString(trustDomain)
	certPEM, keyPEM, err := newRoot(td, idT0.Add(-365*24*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	return idPKI{td: td, certPEM: certPEM, keyPEM: keyPEM}
}

// ca returns a CA over the PKI's root that dates certificates by clk.
func (p idPKI) ca(t *testing.T, clk Clock) *CA {
	t.Helper()
	ca, err := NewCAFromPEM(p.certPEM, p.keyPEM, p.td.Name(), clk)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func idMust(t *testing.T, s string) spiffeid.ID {
	t.Helper()
	id, err := spiffeid.FromString(s)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// idServer accepts TLS connections on 127.0.0.1:0. Each connection's
// handshake result goes to hs, then the server answers each line with the
// client's SPIFFE ID and the line, until the client closes.
type idServer struct {
	addr string
	hs   chan error
}

func startIDServer(t *testing.T, cfg *tls.Config) *idServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	// hs is buffered so that a handler never blocks on a test that has
	// stopped reading results.
	s := &idServer{addr: ln.Addr().String(), hs: make(chan error, 16)}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() { s.handle(c, cfg) })
		}
	})
	t.Cleanup(func() {
		_ = ln.Close()
		wg.Wait()
	})
	return s
}

func (s *idServer) handle(c net.Conn, cfg *tls.Config) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	tc := tls.Server(c, cfg)
	err := tc.HandshakeContext(context.Background())
	s.hs <- err
	if err != nil {
		return
	}
	peer, _ := PeerID(tc.ConnectionState())
	r := bufio.NewReader(tc)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		if _, err := fmt.Fprintf(tc, "%s %s", peer, line); err != nil {
			return
		}
	}
}

// handshakeResult returns the server side's result for the next connection.
func (s *idServer) handshakeResult(t *testing.T) error {
	t.Helper()
	select {
	case err := <-s.hs:
		return err
	case <-time.After(10 * time.Second):
		t.Fatal("server handshake did not finish within 10s")
		return nil
	}
}

// idDial connects to addr with cfg and completes the client's handshake.
func idDial(t *testing.T, addr string, cfg *tls.Config) (*tls.Conn, error) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	tc := tls.Client(c, cfg)
	if err := tc.HandshakeContext(context.Background()); err != nil {
		_ = tc.Close()
		return nil, err
	}
	t.Cleanup(func() { _ = tc.Close() })
	return tc, nil
}

// idEcho sends msg and returns the server's answer ("<client id> <msg>").
func idEcho(tc *tls.Conn, msg string) (string, error) {
	if _, err := fmt.Fprintf(tc, "%s\n", msg); err != nil {
		return "", err
	}
	line, err := bufio.NewReader(tc).ReadString('\n')
	if err != nil {
		return "", err
	}
	return strings.TrimSuffix(line, "\n"), nil
}

// idConnect dials and exchanges one message, returning the client-side
// error of either step: under TLS 1.3 a server's refusal of the client
// certificate reaches the client only at its first read.
func idConnect(t *testing.T, addr string, cfg *tls.Config) (*tls.Conn, string, error) {
	t.Helper()
	tc, err := idDial(t, addr, cfg)
	if err != nil {
		return nil, "", err
	}
	got, err := idEcho(tc, "ping")
	if err != nil {
		return nil, "", err
	}
	return tc, got, nil
}
