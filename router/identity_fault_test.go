package router

// Identity faults (hardening scenario 9): weft's mutual TLS, through the
// Inbound listener other nodes call, refuses every certificate that is not a
// valid X.509-SVID of its trust domain, in both directions. The bad
// certificates are made with crypto/x509 from a template that copies what
// CA.Issue makes, so each case differs from a good SVID in the one property
// it tests; the connections are real TLS over loopback.

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/weft-dev/weft/internal/testutil"
)

// idForger signs crafted certificates with parent's key; a zero idForger
// makes self-signed ones.
type idForger struct {
	parent *x509.Certificate
	key    crypto.Signer
	chain  []*x509.Certificate // sent after the leaf
}

func forgerOf(ca *CA) idForger { return idForger{parent: ca.signer, key: ca.key} }

// forge returns an SVID-shaped certificate with a fresh key, one URI SAN per
// entry of uris, valid for an hour around idT0, and CA.Issue's constraints
// and key usages, after edit has changed the template.
func (f idForger) forge(t *testing.T, uris []string, edit func(*x509.Certificate)) *x509svid.SVID {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, err := randomSerial()
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{"weft"}},
		NotBefore:             idT0.Add(-ClockSkewAllowance),
		NotAfter:              idT0.Add(time.Hour),
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	for _, s := range uris {
		u, err := url.Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		tmpl.URIs = append(tmpl.URIs, u)
	}
	if edit != nil {
		edit(tmpl)
	}
	parent, signer := f.parent, f.key
	if parent == nil {
		parent, signer = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, key.Public(), signer)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &x509svid.SVID{Certificates: append([]*x509.Certificate{leaf}, f.chain...), PrivateKey: key}
}

// idLog records the messages of a logger, such as the TLS handshake errors
// that an Inbound's http.Server logs.
type idLog struct {
	mu   sync.Mutex
	msgs []string
}

func (l *idLog) Enabled(context.Context, slog.Level) bool { return true }
func (l *idLog) WithAttrs([]slog.Attr) slog.Handler       { return l }
func (l *idLog) WithGroup(string) slog.Handler            { return l }
func (l *idLog) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.msgs = append(l.msgs, r.Message)
	return nil
}

// handshakeError returns the first TLS handshake error logged, or nil.
func (l *idLog) handshakeError() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, m := range l.msgs {
		if _, reason, ok := strings.Cut(m, "TLS handshake error from "); ok {
			_, reason, _ = strings.Cut(reason, ": ")
			return errors.New(reason)
		}
	}
	return nil
}

// idNode is an Inbound listener configured as `weft serve --inbound`
// configures it, in front of one local function, "hello", that answers
// "hello" and counts its calls. It records the result of ServerTLS's
// verification of every connection, resumed ones included.
type idNode struct {
	addr  string
	calls atomic.Int64
	log   idLog

	mu       sync.Mutex
	verified []idVerification
}

type idVerification struct {
	err     error
	serial  string // the client leaf's serial, hex
	resumed bool
}

// idFunction stands in for a node's worker pool running one function, at
// addr (registry_test.go's localFunctions does the same; this file keeps its
// own so that it does not depend on another test's helper).
type idFunction struct{ name, addr string }

func (f idFunction) Has(name string) bool { return name == f.name }
func (f idFunction) Acquire(context.Context, string) (string, func(error), error) {
	return f.addr, func(error) {}, nil
}

// startIDNode serves with cfg, from ServerTLS, whose VerifyConnection it
// wraps to record each result, until the test ends.
func startIDNode(t *testing.T, cfg *tls.Config) *idNode {
	t.Helper()
	n := &idNode{}
	verify := cfg.VerifyConnection
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		err := verify(cs)
		v := idVerification{err: err, resumed: cs.DidResume}
		if len(cs.PeerCertificates) > 0 {
			v.serial = cs.PeerCertificates[0].SerialNumber.Text(16)
		}
		n.mu.Lock()
		n.verified = append(n.verified, v)
		n.mu.Unlock()
		return err
	}
	hello := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		n.calls.Add(1)
		_, _ = io.WriteString(w, "hello")
	}))
	t.Cleanup(hello.Close)
	rtr := New(Config{}, idFunction{"hello", hello.Listener.Addr().String()}, nil)
	in := NewInbound("127.0.0.1:0", rtr, cfg, slog.New(&n.log))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- in.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Inbound.Run: %v", err)
		}
	})
	select {
	case <-in.Ready():
	case err := <-done:
		t.Fatalf("inbound exited before ready: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("inbound not ready after 10s")
	}
	n.addr = in.Addr()
	return n
}

func (n *idNode) verifications() []idVerification {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]idVerification(nil), n.verified...)
}

// serverRefusal returns why the server refused the connection: the error of
// ServerTLS's verification, or, when crypto/tls refused before it ran, the
// handshake error the Inbound logged; nil while it has neither.
func (n *idNode) serverRefusal() error {
	for _, v := range n.verifications() {
		if v.err != nil {
			return v.err
		}
	}
	return n.log.handshakeError()
}

// idTransport is an HTTP client transport over cfg (from ClientTLS). The
// tests build their own rather than use the router's, which is not what
// they test.
func idTransport(cfg *tls.Config, keepAlive bool) *http.Transport {
	return &http.Transport{TLSClientConfig: cfg, DisableKeepAlives: !keepAlive, TLSHandshakeTimeout: 5 * time.Second}
}

// idGet calls the function "hello" through the Inbound at addr over tr.
func idGet(tr *http.Transport, addr string) (*http.Response, string, error) {
	req, err := http.NewRequest(http.MethodGet, "https://"+addr+"/", nil)
	if err != nil {
		return nil, "", err
	}
	req.Host = "hello"
	resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp, string(body), err
}

// Refusal predicates. go-spiffe's verification errors have no types, so
// its refusals are recognised by their text, and so are crypto/tls's own.
func isUnknownAuthority(err error) bool {
	var ua x509.UnknownAuthorityError
	return errors.As(err, &ua)
}

func isExpiredAt(now time.Time) func(error) bool {
	return func(err error) bool {
		var ce x509.CertificateInvalidError
		return errors.As(err, &ce) && ce.Reason == x509.Expired && ce.Cert.NotAfter.Before(now)
	}
}

func isNotYetValidAt(now time.Time) func(error) bool {
	return func(err error) bool {
		var ce x509.CertificateInvalidError
		return errors.As(err, &ce) && ce.Reason == x509.Expired && ce.Cert.NotBefore.After(now)
	}
}

func says(text string) func(error) bool {
	return func(err error) bool { return err != nil && strings.Contains(err.Error(), text) }
}

func isErr(target error) func(error) bool {
	return func(err error) bool { return errors.Is(err, target) }
}

type idSide int

const (
	accepted      idSide = iota
	serverRefuses        // the Inbound refuses the caller's certificate
	clientRefuses        // the caller refuses the Inbound's certificate
)

// TestIdentityFaults: an Inbound listener with ServerTLS and an Authorizer,
// and a caller with ClientTLS, over loopback. A good SVID on both sides
// gets through; every bad certificate is refused during the handshake by
// the side that receives it, for the reason the case names, and no request
// reaches the function.
func TestIdentityFaults(t *testing.T) {
	clk := newIDClock(idT0)
	ca := newIDPKI(t, "weft.test").ca(t, clk)
	td := ca.TrustDomain()
	const (
		node   = "spiffe://weft.test/node/a"
		caller = "spiffe://weft.test/fn/caller"
	)
	issue := func(id string) *x509svid.SVID {
		s, err := ca.Issue(idMust(t, id))
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	root := forgerOf(ca)
	stranger := forgerOf(newIDPKI(t, "weft.test").ca(t, clk)) // same trust domain name, another root
	foreign := forgerOf(newIDPKI(t, "other.test").ca(t, clk))
	workload := issue("spiffe://weft.test/fn/other") // a genuine SVID whose key tries to act as a CA
	byWorkload := idForger{parent: workload.Certificates[0], key: workload.PrivateKey, chain: workload.Certificates}
	stolen := func(s *x509svid.SVID) *x509svid.SVID {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return &x509svid.SVID{ID: s.ID, Certificates: s.Certificates, PrivateKey: key}
	}
	expired := func(c *x509.Certificate) { c.NotBefore, c.NotAfter = idT0.Add(-2*time.Hour), idT0.Add(-time.Hour) }
	notYet := func(c *x509.Certificate) { c.NotBefore, c.NotAfter = idT0.Add(time.Hour), idT0.Add(2*time.Hour) }
	noURI := func(c *x509.Certificate) { c.DNSNames = []string{"caller.weft.test"} }
	asCA := func(c *x509.Certificate) {
		c.IsCA, c.KeyUsage = true, x509.KeyUsageCertSign|x509.KeyUsageDigitalSignature
	}
	keyCertSign := func(c *x509.Certificate) { c.KeyUsage |= x509.KeyUsageCertSign }
	crlSign := func(c *x509.Certificate) { c.KeyUsage |= x509.KeyUsageCRLSign }
	noDigitalSignature := func(c *x509.Certificate) { c.KeyUsage = x509.KeyUsageKeyEncipherment }
	noKeyUsage := func(c *x509.Certificate) { c.KeyUsage = 0 }
	noEKU := func(c *x509.Certificate) { c.ExtKeyUsage = nil }
	serverAuthOnly := func(c *x509.Certificate) { c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth} }
	clientAuthOnly := func(c *x509.Certificate) { c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth} }

	cases := map[string]struct {
		client       *x509svid.SVID   // what the caller presents; nil: a genuine SVID of caller
		noClientCert bool             // the caller presents no certificate at all
		server       *x509svid.SVID   // what the Inbound presents; nil: a genuine SVID of node
		allow        []string         // the Inbound's allow list; nil: any ID of the trust domain, as `weft serve --inbound`
		expect       string           // the server ID the caller wants; "": any of the trust domain, as the router's remote calls
		side         idSide           // who refuses
		refusal      func(error) bool // the refusing side's error
	}{
		// The controls: without them a broken harness would pass every case.
		"valid: issued by the CA":               {},
		"valid: crafted like CA.Issue":          {client: root.forge(t, []string{caller}, nil), server: root.forge(t, []string{node}, nil)},
		"valid: no extended key usage":          {client: root.forge(t, []string{caller}, noEKU), server: root.forge(t, []string{node}, noEKU)},
		"valid: on the allow list":              {allow: []string{caller}},
		"valid: the expected server ID":         {expect: node},
		"client forged: another root, same td":  {client: stranger.forge(t, []string{caller}, nil), side: serverRefuses, refusal: isUnknownAuthority},
		"client forged: self-signed":            {client: idForger{}.forge(t, []string{caller}, nil), side: serverRefuses, refusal: isUnknownAuthority},
		"client forged: signed by an SVID":      {client: byWorkload.forge(t, []string{caller}, nil), side: serverRefuses, refusal: isUnknownAuthority},
		"client stolen: certificate, other key": {client: stolen(issue(caller)), side: serverRefuses, refusal: says("invalid signature by the client certificate")},
		"client: no certificate":                {noClientCert: true, side: serverRefuses, refusal: says("client didn't provide a certificate")},
		"client: expired":                       {client: root.forge(t, []string{caller}, expired), side: serverRefuses, refusal: isExpiredAt(idT0)},
		"client: not yet valid":                 {client: root.forge(t, []string{caller}, notYet), side: serverRefuses, refusal: isNotYetValidAt(idT0)},
		"client: another trust domain":          {client: foreign.forge(t, []string{"spiffe://other.test/fn/caller"}, nil), side: serverRefuses, refusal: says(`no X.509 bundle found for trust domain: "other.test"`)},
		"client: another td's ID, our root":     {client: root.forge(t, []string{"spiffe://other.test/fn/caller"}, nil), side: serverRefuses, refusal: says(`no X.509 bundle found for trust domain: "other.test"`)},
		"client: no URI SAN":                    {client: root.forge(t, nil, noURI), side: serverRefuses, refusal: says("certificate contains no URI SAN")},
		"client: two URI SANs":                  {client: root.forge(t, []string{caller, "spiffe://weft.test/fn/other"}, nil), side: serverRefuses, refusal: says("certificate contains more than one URI SAN")},
		"client: https URI":                     {client: root.forge(t, []string{"https://weft.test/fn/caller"}, nil), side: serverRefuses, refusal: says("scheme is missing or invalid")},
		"client: CA certificate as leaf":        {client: root.forge(t, []string{caller}, asCA), side: serverRefuses, refusal: says("leaf certificate with CA flag set to true")},
		"client: keyCertSign":                   {client: root.forge(t, []string{caller}, keyCertSign), side: serverRefuses, refusal: says("leaf certificate with KeyCertSign key usage")},
		"client: cRLSign":                       {client: root.forge(t, []string{caller}, crlSign), side: serverRefuses, refusal: says("leaf certificate with KeyCrlSign key usage")},
		// Regression: the cases that want ErrMalformedSVID, here and for the
		// server, were accepted before verifySVID checked what go-spiffe's
		// x509svid.Verify (v2.9.0) does not: a leaf whose SPIFFE ID is the bare
		// trust domain, one without digitalSignature or without a key usage
		// extension, and one whose extended key usage excludes its role.
		"client: ID without a path":             {client: root.forge(t, []string{"spiffe://weft.test"}, nil), side: serverRefuses, refusal: isErr(ErrMalformedSVID)},
		"client: no digitalSignature":           {client: root.forge(t, []string{caller}, noDigitalSignature), side: serverRefuses, refusal: isErr(ErrMalformedSVID)},
		"client: no key usage extension":        {client: root.forge(t, []string{caller}, noKeyUsage), side: serverRefuses, refusal: isErr(ErrMalformedSVID)},
		"client: serverAuth only":               {client: root.forge(t, []string{caller}, serverAuthOnly), side: serverRefuses, refusal: isErr(ErrMalformedSVID)},
		"client: not on the allow list":         {client: issue("spiffe://weft.test/fn/other"), allow: []string{caller}, side: serverRefuses, refusal: isErr(ErrNotAllowed)},
		"server forged: another root, same td":  {server: stranger.forge(t, []string{node}, nil), side: clientRefuses, refusal: isUnknownAuthority},
		"server forged: signed by an SVID":      {server: byWorkload.forge(t, []string{node}, nil), side: clientRefuses, refusal: isUnknownAuthority},
		"server stolen: certificate, other key": {server: stolen(issue(node)), side: clientRefuses, refusal: says("invalid signature by the server certificate")},
		"server: expired":                       {server: root.forge(t, []string{node}, expired), side: clientRefuses, refusal: isExpiredAt(idT0)},
		"server: not yet valid":                 {server: root.forge(t, []string{node}, notYet), side: clientRefuses, refusal: isNotYetValidAt(idT0)},
		"server: another trust domain":          {server: foreign.forge(t, []string{"spiffe://other.test/node/a"}, nil), side: clientRefuses, refusal: says(`no X.509 bundle found for trust domain: "other.test"`)},
		"server: no URI SAN":                    {server: root.forge(t, nil, noURI), side: clientRefuses, refusal: says("certificate contains no URI SAN")},
		"server: two URI SANs":                  {server: root.forge(t, []string{node, "spiffe://weft.test/node/b"}, nil), side: clientRefuses, refusal: says("certificate contains more than one URI SAN")},
		"server: ID without a path":             {server: root.forge(t, []string{"spiffe://weft.test"}, nil), side: clientRefuses, refusal: isErr(ErrMalformedSVID)},
		"server: CA certificate as leaf":        {server: root.forge(t, []string{node}, asCA), side: clientRefuses, refusal: says("leaf certificate with CA flag set to true")},
		"server: no digitalSignature":           {server: root.forge(t, []string{node}, noDigitalSignature), side: clientRefuses, refusal: isErr(ErrMalformedSVID)},
		"server: clientAuth only":               {server: root.forge(t, []string{node}, clientAuthOnly), side: clientRefuses, refusal: isErr(ErrMalformedSVID)},
		"server: not the expected ID":           {server: issue("spiffe://weft.test/node/b"), expect: node, side: clientRefuses, refusal: says(`unexpected ID "spiffe://weft.test/node/b"`)},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			client, server := tc.client, tc.server
			if client == nil {
				client = issue(caller)
			}
			if server == nil {
				server = issue(node)
			}
			authz, err := NewAuthorizer(td, tc.allow, nil)
			if err != nil {
				t.Fatal(err)
			}
			expect := spiffeid.MatchMemberOf(td)
			if tc.expect != "" {
				expect = spiffeid.MatchID(idMust(t, tc.expect))
			}
			n := startIDNode(t, ServerTLS(server, ca.Bundle(), authz, WithTLSClock(clk)))
			cfg := ClientTLS(client, ca.Bundle(), expect, WithTLSClock(clk))
			if tc.noClientCert {
				cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &tls.Certificate{}, nil }
			}
			tr := idTransport(cfg, false)
			defer tr.CloseIdleConnections()
			resp, body, clientErr := idGet(tr, n.addr)

			switch tc.side {
			case accepted:
				t.Logf("accepted")
				if clientErr != nil || resp.StatusCode != http.StatusOK || body != "hello" {
					t.Fatalf("want the call through: %v %v %q; server: %v", clientErr, resp, body, n.serverRefusal())
				}
				if got, want := resp.TLS.PeerCertificates[0].SerialNumber, server.Certificates[0].SerialNumber; got.Cmp(want) != 0 {
					t.Errorf("caller saw server certificate %x, want %x", got, want)
				}
				v := n.verifications()
				if len(v) != 1 || v[0].err != nil || v[0].serial != client.Certificates[0].SerialNumber.Text(16) {
					t.Errorf("server verifications %+v, want one success for the caller's certificate", v)
				}
				if c := n.calls.Load(); c != 1 {
					t.Errorf("function called %d times, want 1", c)
				}
			case serverRefuses:
				if clientErr == nil {
					t.Fatalf("the call went through (%d %q) though the server should refuse it", resp.StatusCode, body)
				}
				testutil.WaitFor(t, 10*time.Second, func() bool { return n.serverRefusal() != nil }, "the server never refused")
				err := n.serverRefusal()
				if !tc.refusal(err) {
					t.Errorf("server refused with %v; not the expected refusal", err)
				}
				t.Logf("server refused: %v (caller: %v)", err, clientErr)
			case clientRefuses:
				if clientErr == nil {
					t.Fatalf("the call went through (%d %q) though the caller should refuse the server", resp.StatusCode, body)
				}
				if !tc.refusal(clientErr) {
					t.Errorf("caller: %v; not the expected refusal", clientErr)
				}
				t.Logf("caller refused: %v", clientErr)
				// The caller refuses the server before it sends its own
				// certificate, so the server never gets to verify one.
				testutil.WaitFor(t, 10*time.Second, func() bool { return n.log.handshakeError() != nil }, "the server saw no failed handshake")
				if v := n.verifications(); len(v) != 0 {
					t.Errorf("server verified %+v, want nothing", v)
				}
			}
			if tc.side != accepted {
				if c := n.calls.Load(); c != 0 {
					t.Errorf("a refused connection reached the function %d times", c)
				}
			}
			wantDenied := uint64(0) // an authentication failure is not a denial
			if tc.side == serverRefuses && errors.Is(n.serverRefusal(), ErrNotAllowed) {
				wantDenied = 1
			}
			if got := authz.Denied(); got != wantDenied {
				t.Errorf("Denied() = %d, want %d", got, wantDenied)
			}
		})
	}
}
