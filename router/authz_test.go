package router

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	promtest "github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

func TestAuthorizer(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("weft.test")
	thumb := idMust(t, "spiffe://weft.test/fn/thumbnailer")
	other := idMust(t, "spiffe://weft.test/fn/other")
	foreign := idMust(t, "spiffe://other.test/fn/thumbnailer")

	denied := prometheus.NewCounter(prometheus.CounterOpts{Name: "weft_router_authz_denied_total"})
	a, err := NewAuthorizer(td, []string{thumb.String()}, denied)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Authorize(thumb); err != nil {
		t.Errorf("allowed ID refused: %v", err)
	}
	for _, id := range []spiffeid.ID{other, foreign, {}} {
		if err := a.Authorize(id); !errors.Is(err, ErrNotAllowed) {
			t.Errorf("Authorize(%q) = %v, want ErrNotAllowed", id, err)
		}
	}
	if a.Denied() != 3 || promtest.ToFloat64(denied) != 3 {
		t.Errorf("denials counted %d and %v, want 3", a.Denied(), promtest.ToFloat64(denied))
	}
	if err := a.TLSAuthorizer()(other, nil); !errors.Is(err, ErrNotAllowed) {
		t.Errorf("TLS adapter: %v", err)
	}

	anyone, err := NewAuthorizer(td, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := anyone.Authorize(other); err != nil {
		t.Errorf("empty allow list refused a member of the trust domain: %v", err)
	}
	if err := anyone.Authorize(foreign); !errors.Is(err, ErrNotAllowed) {
		t.Errorf("empty allow list let in another trust domain: %v", err)
	}
	if anyone.Denied() != 1 || anyone.String() != "any of spiffe://weft.test" {
		t.Errorf("Denied %d, String %q", anyone.Denied(), anyone.String())
	}

	for _, bad := range []string{"weft.test/fn/x", "spiffe://weft.test", "spiffe://other.test/fn/x", "spiffe://weft.test/fn/X Y", ""} {
		if _, err := NewAuthorizer(td, []string{bad}, nil); err == nil {
			t.Errorf("allow entry %q was accepted", bad)
		}
	}
}

// TestMTLSHandshake runs ServerTLS and ClientTLS against each other over
// real loopback connections: an allowed caller gets through, every other is
// refused during the handshake, and the side that refuses says why.
func TestMTLSHandshake(t *testing.T) {
	clk := newIDClock(idT0)
	pki := newIDPKI(t, "weft.test")
	ca := pki.ca(t, clk)
	payments := idMust(t, "spiffe://weft.test/fn/payments")
	thumb := idMust(t, "spiffe://weft.test/fn/thumbnailer")

	serverSVID, err := ca.Issue(payments)
	if err != nil {
		t.Fatal(err)
	}
	issueAt := func(ca *CA, id spiffeid.ID) *x509svid.SVID {
		s, err := ca.Issue(id)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	strangerCA := newIDPKI(t, "weft.test").ca(t, clk) // same trust domain name, another root
	foreignCA := newIDPKI(t, "other.test").ca(t, clk)
	pastCA := pki.ca(t, newIDClock(idT0.Add(-48*time.Hour)))
	futureCA := pki.ca(t, newIDClock(idT0.Add(time.Hour)))

	isExpiry := func(err error) bool {
		var ce x509.CertificateInvalidError
		return errors.As(err, &ce) && ce.Reason == x509.Expired
	}
	isUnknownCA := func(err error) bool {
		var ua x509.UnknownAuthorityError
		return errors.As(err, &ua)
	}
	cases := map[string]struct {
		client     *x509svid.SVID
		server     *x509svid.SVID   // nil: serverSVID
		expect     spiffeid.ID      // the server ID the client accepts; zero: payments
		serverErr  func(error) bool // nil: the handshake must succeed
		clientSide bool             // the client refuses, not the server
	}{
		"allowed ID": {client: issueAt(ca, thumb)},
		"ID not in allow": {client: issueAt(ca, idMust(t, "spiffe://weft.test/fn/other")),
			serverErr: func(err error) bool { return errors.Is(err, ErrNotAllowed) }},
		"certificate from another CA": {client: issueAt(strangerCA, thumb), serverErr: isUnknownCA},
		"expired certificate":         {client: issueAt(pastCA, thumb), serverErr: isExpiry},
		"not yet valid certificate":   {client: issueAt(futureCA, thumb), serverErr: isExpiry},
		"wrong trust domain": {client: issueAt(foreignCA, idMust(t, "spiffe://other.test/fn/thumbnailer")),
			serverErr: func(err error) bool { return err != nil && strings.Contains(err.Error(), "other.test") }},
		"server is not the expected ID": {client: issueAt(ca, thumb), expect: thumb, clientSide: true},
		"server from another CA":        {client: issueAt(ca, thumb), server: issueAt(strangerCA, payments), clientSide: true},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			authz, err := NewAuthorizer(ca.TrustDomain(), []string{thumb.String()}, nil)
			if err != nil {
				t.Fatal(err)
			}
			server := serverSVID
			if tc.server != nil {
				server = tc.server
			}
			expect := payments
			if !tc.expect.IsZero() {
				expect = tc.expect
			}
			srv := startIDServer(t, ServerTLS(server, ca.Bundle(), authz, WithTLSClock(clk)))
			conn, answer, clientErr := idConnect(t, srv.addr, ClientTLS(tc.client, ca.Bundle(), spiffeid.MatchID(expect), WithTLSClock(clk)))
			serverErr := srv.handshakeResult(t)

			switch {
			case tc.clientSide:
				if clientErr == nil || serverErr == nil {
					t.Fatalf("client %v, server %v: want both to fail", clientErr, serverErr)
				}
				if !strings.Contains(clientErr.Error(), "x509svid") && !strings.Contains(clientErr.Error(), "unexpected ID") {
					t.Errorf("client error %v does not come from SPIFFE verification", clientErr)
				}
			case tc.serverErr == nil:
				if clientErr != nil || serverErr != nil {
					t.Fatalf("client %v, server %v: want a connection", clientErr, serverErr)
				}
				if want := tc.client.ID.String() + " ping"; answer != want {
					t.Errorf("server saw %q, want %q", answer, want)
				}
				if got, err := PeerID(conn.ConnectionState()); err != nil || got != payments {
					t.Errorf("client sees server %s, %v", got, err)
				}
				if v := conn.ConnectionState().Version; v != tls.VersionTLS13 {
					t.Errorf("TLS version %x, want 1.3", v)
				}
			default:
				if !tc.serverErr(serverErr) {
					t.Errorf("server error %v is not the expected refusal", serverErr)
				}
				if clientErr == nil {
					t.Error("the client's connection worked though the server refused it")
				}
				wantDenied := uint64(0) // a failed authentication is not a denial
				if errors.Is(serverErr, ErrNotAllowed) {
					wantDenied = 1
				}
				if authz.Denied() != wantDenied {
					t.Errorf("Denied() = %d, want %d", authz.Denied(), wantDenied)
				}
			}
		})
	}
}

// TestMTLSNilAuthorizerAcceptsAnyVerifiedPeer: ServerTLS without an
// Authorizer still requires a certificate that verifies against the bundle.
func TestMTLSNilAuthorizerAcceptsAnyVerifiedPeer(t *testing.T) {
	clk := newIDClock(idT0)
	ca := newIDPKI(t, "weft.test").ca(t, clk)
	server, err := ca.Issue(idMust(t, "spiffe://weft.test/node/n1"))
	if err != nil {
		t.Fatal(err)
	}
	client, err := ca.Issue(idMust(t, "spiffe://weft.test/fn/anyone"))
	if err != nil {
		t.Fatal(err)
	}
	srv := startIDServer(t, ServerTLS(server, ca.Bundle(), nil, WithTLSClock(clk)))
	member := spiffeid.MatchMemberOf(ca.TrustDomain())
	if _, got, err := idConnect(t, srv.addr, ClientTLS(client, ca.Bundle(), member, WithTLSClock(clk))); err != nil || got != "spiffe://weft.test/fn/anyone ping" {
		t.Fatalf("got %q, %v", got, err)
	}
	if err := srv.handshakeResult(t); err != nil {
		t.Fatal(err)
	}

	// No client certificate at all: refused.
	noCert := ClientTLS(client, ca.Bundle(), member, WithTLSClock(clk))
	noCert.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &tls.Certificate{}, nil }
	if _, _, err := idConnect(t, srv.addr, noCert); err == nil {
		t.Error("a client without a certificate got through")
	}
	if err := srv.handshakeResult(t); err == nil {
		t.Error("the server accepted a client without a certificate")
	}
}

// TestMTLSResumedSessionIsReverified: a resumed TLS session is checked
// again, so once the server stops trusting a root, a client holding a
// session ticket from before is refused. go-spiffe's tlsconfig verifies in
// VerifyPeerCertificate, which crypto/tls skips on resumption (and its own
// resumption checks look at expiry only); ServerTLS verifies in
// VerifyConnection, which runs on every connection.
func TestMTLSResumedSessionIsReverified(t *testing.T) {
	clk := newIDClock(idT0)
	ca := newIDPKI(t, "weft.test").ca(t, clk)
	server, err := ca.Issue(idMust(t, "spiffe://weft.test/fn/payments"))
	if err != nil {
		t.Fatal(err)
	}
	client, err := ca.Issue(idMust(t, "spiffe://weft.test/fn/thumbnailer"))
	if err != nil {
		t.Fatal(err)
	}
	trusted := ca.Bundle().Clone() // the server's view, changed below
	srv := startIDServer(t, ServerTLS(server, trusted, nil, WithTLSClock(clk)))
	cfg := ClientTLS(client, ca.Bundle(), spiffeid.MatchID(server.ID), WithTLSClock(clk))
	cfg.ClientSessionCache = tls.NewLRUClientSessionCache(4)

	for i, wantResume := range []bool{false, true} {
		conn, _, err := idConnect(t, srv.addr, cfg) // the echo also reads the session ticket
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		if err := srv.handshakeResult(t); err != nil {
			t.Fatalf("connection %d: server: %v", i, err)
		}
		if got := conn.ConnectionState().DidResume; got != wantResume {
			t.Fatalf("connection %d resumed=%v, want %v", i, got, wantResume)
		}
	}
	trusted.RemoveX509Authority(ca.Bundle().X509Authorities()[0])
	if _, _, err := idConnect(t, srv.addr, cfg); err == nil {
		t.Error("a client of a no longer trusted root got through on a session ticket")
	}
	var ua x509.UnknownAuthorityError
	if err := srv.handshakeResult(t); !errors.As(err, &ua) {
		t.Errorf("server: %v, want an unknown-authority refusal", err)
	}
}
