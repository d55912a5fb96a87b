package router

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// runIDSource runs src until the test ends and fails the test if Run errs.
func runIDSource(t *testing.T, src *SVIDSource) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("SVIDSource.Run: %v", err)
		}
	})
}

func leafSerial(s *x509svid.SVID) string { return s.Certificates[0].SerialNumber.Text(16) }

// TestSVIDRotationKeepsTraffic: the server's SVID is renewed at 70 % of its
// 24 h lifetime by the fake clock; the connection made before the renewal
// keeps working on the old certificate, and a new connection gets the new
// one.
func TestSVIDRotationKeepsTraffic(t *testing.T) {
	clk := newIDClock(idT0)
	ca := newIDPKI(t, "weft.test").ca(t, clk)
	payments := idMust(t, "spiffe://weft.test/fn/payments")
	thumb := idMust(t, "spiffe://weft.test/fn/thumbnailer")
	src, err := NewSVIDSource(ca, payments, clk, slog.New(slog.DiscardHandler), WithAfter(clk.After))
	if err != nil {
		t.Fatal(err)
	}
	first, _ := src.GetX509SVID()
	if want := idT0.Add(16*time.Hour + 48*time.Minute); !src.RenewAt().Equal(want) {
		t.Fatalf("RenewAt %v, want %v (70%% of 24 h)", src.RenewAt(), want)
	}
	filesDir := filepath.Join(t.TempDir(), "svid")
	if err := src.WriteFiles(filesDir); err != nil {
		t.Fatal(err)
	}
	runIDSource(t, src)
	if d := clk.nextWait(t); d != 16*time.Hour+48*time.Minute {
		t.Fatalf("Run waits %v, want 16h48m", d)
	}

	client, err := NewSVIDSource(ca, thumb, clk, nil)
	if err != nil {
		t.Fatal(err)
	}
	authz, err := NewAuthorizer(ca.TrustDomain(), []string{thumb.String()}, nil)
	if err != nil {
		t.Fatal(err)
	}
	srv := startIDServer(t, ServerTLS(src, ca.Bundle(), authz, WithTLSClock(clk)))
	clientCfg := ClientTLS(client, ca.Bundle(), spiffeid.MatchID(payments), WithTLSClock(clk))
	clientCfg.SessionTicketsDisabled = true // each connection must show the server's current certificate

	old, got, err := idConnect(t, srv.addr, clientCfg)
	if err != nil || got != thumb.String()+" ping" {
		t.Fatalf("before rotation: %q, %v", got, err)
	}
	if err := srv.handshakeResult(t); err != nil {
		t.Fatal(err)
	}
	if s := old.ConnectionState().PeerCertificates[0].SerialNumber.Text(16); s != leafSerial(first) {
		t.Fatalf("server presented %s, want its first SVID %s", s, leafSerial(first))
	}

	clk.Advance(16 * time.Hour) // not due yet
	if src.Renewals() != 0 {
		t.Fatal("renewed before 70 % of the lifetime")
	}
	clk.Advance(48 * time.Minute)
	// Run asks for its next wait only after the renewal is in place.
	if d := clk.nextWait(t); d != 16*time.Hour+48*time.Minute {
		t.Fatalf("after renewal Run waits %v, want 16h48m", d)
	}
	if src.Renewals() != 1 {
		t.Fatalf("Renewals() = %d, want 1", src.Renewals())
	}
	second, _ := src.GetX509SVID()
	if leafSerial(second) == leafSerial(first) || second.PrivateKey.Public().(*ecdsa.PublicKey).Equal(first.PrivateKey.Public()) {
		t.Fatal("the renewed SVID has the old serial or key")
	}
	if want := clk.Now().Add(-20 * time.Second); !second.Certificates[0].NotBefore.Equal(want) {
		t.Errorf("renewed NotBefore %v, want %v", second.Certificates[0].NotBefore, want)
	}

	// The old connection still carries traffic, on the old certificate.
	if got, err := idEcho(old, "still there"); err != nil || got != thumb.String()+" still there" {
		t.Fatalf("old connection after rotation: %q, %v", got, err)
	}
	// A new connection gets the new certificate.
	fresh, got, err := idConnect(t, srv.addr, clientCfg)
	if err != nil || got != thumb.String()+" ping" {
		t.Fatalf("after rotation: %q, %v", got, err)
	}
	if err := srv.handshakeResult(t); err != nil {
		t.Fatal(err)
	}
	if s := fresh.ConnectionState().PeerCertificates[0].SerialNumber.Text(16); s != leafSerial(second) {
		t.Errorf("new connection got %s, want the renewed %s", s, leafSerial(second))
	}

	// The files followed the renewal.
	onDisk, err := x509svid.Load(filepath.Join(filesDir, CertFileName), filepath.Join(filesDir, KeyFileName))
	if err != nil {
		t.Fatal(err)
	}
	if onDisk.ID != payments || leafSerial(onDisk) != leafSerial(second) {
		t.Errorf("files hold %s serial %s, want %s", onDisk.ID, leafSerial(onDisk), leafSerial(second))
	}
}

// TestSVIDFiles: WriteFiles lays out cert.pem, key.pem and ca.pem that a
// worker can load, with a private key file, and swaps all three at once on
// renewal, leaving no old directories behind.
func TestSVIDFiles(t *testing.T) {
	clk := newIDClock(idT0)
	ca := newIDPKI(t, "weft.test").ca(t, clk)
	id := idMust(t, "spiffe://weft.test/fn/thumbnailer")
	src, err := NewSVIDSource(ca, id, clk, nil)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "svid")
	if err := src.WriteFiles(dir); err != nil {
		t.Fatal(err)
	}
	check := func(want *x509svid.SVID) {
		t.Helper()
		got, err := x509svid.Load(filepath.Join(dir, CertFileName), filepath.Join(dir, KeyFileName))
		if err != nil {
			t.Fatal(err)
		}
		if got.ID != id || leafSerial(got) != leafSerial(want) {
			t.Errorf("files hold %s %s, want %s %s", got.ID, leafSerial(got), id, leafSerial(want))
		}
		caPEM, err := os.ReadFile(filepath.Join(dir, CAFileName))
		if err != nil || !bytes.Equal(caPEM, ca.RootPEM()) {
			t.Errorf("ca.pem does not hold the root: %v", err)
		}
		fi, err := os.Stat(filepath.Join(dir, KeyFileName))
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("key.pem mode %v, %v; want 0600", fi.Mode(), err)
		}
		entries, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		if len(entries) != 5 { // ..data, its directory and three links
			t.Errorf("%d entries in %s, want 5", len(entries), dir)
		}
	}
	first, _ := src.GetX509SVID()
	check(first)
	for range 2 {
		if err := src.Renew(); err != nil {
			t.Fatal(err)
		}
		cur, _ := src.GetX509SVID()
		check(cur)
	}
	if src.Renewals() != 2 {
		t.Errorf("Renewals() = %d, want 2", src.Renewals())
	}
}

// failingIssuer fails every Issue after the first.
type failingIssuer struct {
	ca    *CA
	calls int
}

func (f *failingIssuer) Issue(id spiffeid.ID) (*x509svid.SVID, error) {
	f.calls++
	if f.calls > 1 {
		return nil, errors.New("issuer down")
	}
	return f.ca.Issue(id)
}

// TestSVIDRenewalFailureKeepsTheCurrentSVID: when the issuer fails, Run
// keeps the SVID it has and retries every 30 s.
func TestSVIDRenewalFailureKeepsTheCurrentSVID(t *testing.T) {
	clk := newIDClock(idT0)
	ca := newIDPKI(t, "weft.test").ca(t, clk)
	iss := &failingIssuer{ca: ca}
	src, err := newSVIDSource(iss, ca, idMust(t, "spiffe://weft.test/fn/x"), clk, nil, WithAfter(clk.After))
	if err != nil {
		t.Fatal(err)
	}
	first, _ := src.GetX509SVID()
	runIDSource(t, src)
	clk.Advance(clk.nextWait(t))
	if d := clk.nextWait(t); d != renewRetry {
		t.Fatalf("after a failed renewal Run waits %v, want %v", d, renewRetry)
	}
	clk.Advance(renewRetry)
	if d := clk.nextWait(t); d != renewRetry {
		t.Fatalf("after a second failure Run waits %v, want %v", d, renewRetry)
	}
	if cur, _ := src.GetX509SVID(); cur != first || src.Renewals() != 0 {
		t.Error("a failed renewal replaced the SVID")
	}
}
