package router

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// ErrNotAllowed is returned by Authorizer.Authorize, and fails a handshake
// through ServerTLS, when a peer's SPIFFE ID may not call the service; the
// router's HTTP edge answers 403 for it.
var ErrNotAllowed = errors.New("router: spiffe id not allowed")

// ErrMalformedSVID fails a handshake through ServerTLS or ClientTLS when the
// peer's certificate chains to the bundle but is not shaped as the X509-SVID
// spec requires of a leaf, on points go-spiffe's verification leaves open:
// its SPIFFE ID has no path (§5.2), it lacks the digitalSignature key usage
// (§4.3, and RFC 8446 §4.4.2.2 for a TLS 1.3 signing key), or it has an
// extended key usage that excludes its role in the handshake, clientAuth for
// a caller or serverAuth for a server (§4.4, RFC 5280 §4.2.1.12).
var ErrMalformedSVID = errors.New("router: peer certificate is not a well-formed X.509-SVID")

// Authorizer decides which SPIFFE IDs may call one Service, from the
// Service's allow list. With an empty list any ID of the trust domain may;
// with one, exactly the listed IDs may. Authorization looks at the SPIFFE ID
// only, never at DNS names (SPIFFE X509-SVID §5).
//
// An Authorizer is immutable apart from its denial count, and safe for
// concurrent use. To change the list, build a new one and swap it in.
type Authorizer struct {
	td      spiffeid.TrustDomain
	allow   map[spiffeid.ID]struct{} // nil or empty: the whole trust domain
	denials atomic.Uint64
	counter prometheus.Counter // nil: not exported
}

// NewAuthorizer returns an Authorizer for td from allow, a manifest's
// `allow` list of SPIFFE ID strings, each of which must parse; see
// NewAuthorizerIDs for the rest of the rules and for denied.
func NewAuthorizer(td spiffeid.TrustDomain, allow []string, denied prometheus.Counter) (*Authorizer, error) {
	ids := make([]spiffeid.ID, 0, len(allow))
	for i, s := range allow {
		id, err := spiffeid.FromString(s)
		if err != nil {
			return nil, fmt.Errorf("allow[%d] %q: %w", i, s, err)
		}
		ids = append(ids, id)
	}
	return NewAuthorizerIDs(td, ids, denied)
}

// NewAuthorizerIDs returns an Authorizer for td from allow, the parsed form
// of a Service's allow list (Service.Allow). Each ID must have a path and be
// in td: an ID of another trust domain could never authenticate against
// weft's CA, so it is refused as a configuration error rather than ignored.
// Every denial increments denied, if it is not nil (the caller owns its
// registration, so router keeps no global registry), as well as Denied.
func NewAuthorizerIDs(td spiffeid.TrustDomain, allow []spiffeid.ID, denied prometheus.Counter) (*Authorizer, error) {
	if td.IsZero() {
		return nil, errors.New("authorizer: empty trust domain")
	}
	a := &Authorizer{td: td, counter: denied}
	if len(allow) > 0 {
		a.allow = make(map[spiffeid.ID]struct{}, len(allow))
	}
	for i, id := range allow {
		switch {
		case id.IsZero():
			return nil, fmt.Errorf("allow[%d]: empty spiffe id", i)
		case id.TrustDomain() != td:
			return nil, fmt.Errorf("allow[%d] %q: %w %s", i, id, ErrForeignTrustDomain, td)
		case id.Path() == "":
			return nil, fmt.Errorf("allow[%d] %q: a workload's spiffe id needs a path", i, id)
		}
		a.allow[id] = struct{}{}
	}
	return a, nil
}

// Authorize returns nil if id may call, or an error wrapping ErrNotAllowed
// after counting the denial.
func (a *Authorizer) Authorize(id spiffeid.ID) error {
	var err error
	switch {
	case id.TrustDomain() != a.td:
		err = fmt.Errorf("%w: %s is not in trust domain %s", ErrNotAllowed, id, a.td)
	case len(a.allow) == 0:
		return nil
	default:
		if _, ok := a.allow[id]; ok {
			return nil
		}
		err = fmt.Errorf("%w: %s is not in the allow list", ErrNotAllowed, id)
	}
	a.deny()
	return err
}

// deny counts one refused call.
func (a *Authorizer) deny() {
	a.denials.Add(1)
	if a.counter != nil {
		a.counter.Inc()
	}
}

// TLSAuthorizer adapts a to go-spiffe's tlsconfig.Authorizer, which is called
// with the peer's verified SPIFFE ID during a handshake.
func (a *Authorizer) TLSAuthorizer() tlsconfig.Authorizer {
	return func(id spiffeid.ID, _ [][]*x509.Certificate) error { return a.Authorize(id) }
}

// Denied returns how many calls Authorize has refused.
func (a *Authorizer) Denied() uint64 { return a.denials.Load() }

// String describes the policy, for logs and `weft describe`.
func (a *Authorizer) String() string {
	if len(a.allow) == 0 {
		return "any of " + a.td.IDString()
	}
	ids := make([]string, 0, len(a.allow))
	for id := range a.allow {
		ids = append(ids, id.String())
	}
	slices.Sort(ids)
	return strings.Join(ids, ",")
}

// TLSOption configures ServerTLS and ClientTLS.
type TLSOption func(*tlsOptions)

type tlsOptions struct {
	clk Clock
}

// WithTLSClock makes the peer's certificate be verified at clk's time (and
// sets tls.Config.Time to it) instead of the system's, so that expiry is
// judged by the same clock that issues and rotates SVIDs.
func WithTLSClock(clk Clock) TLSOption {
	return func(o *tlsOptions) { o.clk = clk }
}

// ServerTLS returns a server config for mutual TLS between weft identities:
// it presents src's current SVID (so a renewal takes effect at the next
// handshake) and requires a client certificate that verifies as an
// X.509-SVID against bundle, is shaped as one with a clientAuth-capable key
// (else the handshake fails with ErrMalformedSVID) and that authz accepts.
// A nil authz accepts any SPIFFE ID that verifies, that is any of a trust
// domain bundle knows.
//
// Verification runs in VerifyConnection, which crypto/tls calls on every
// connection, resumed ones included; go-spiffe's tlsconfig puts it in
// VerifyPeerCertificate, which resumption skips, so a session resumed after
// an allow list shrank would pass unchecked.
func ServerTLS(src x509svid.Source, bundle x509bundle.Source, authz *Authorizer, opts ...TLSOption) *tls.Config {
	authorize := tlsconfig.AuthorizeAny()
	if authz != nil {
		authorize = authz.TLSAuthorizer()
	}
	o := tlsOpts(opts)
	cfg := &tls.Config{
		MinVersion:       tls.VersionTLS12,
		ClientAuth:       tls.RequireAnyClientCert, // verified below, on SPIFFE terms
		GetCertificate:   tlsconfig.GetCertificate(src),
		VerifyConnection: verifySVID(bundle, authorize, o.clk, x509.ExtKeyUsageClientAuth),
	}
	if o.clk != nil {
		cfg.Time = o.clk.Now
	}
	return cfg
}

// ClientTLS returns a client config for mutual TLS between weft identities:
// it presents src's current SVID and accepts a server whose certificate
// verifies as an X.509-SVID against bundle, is shaped as one with a
// serverAuth-capable key (else ErrMalformedSVID), and whose SPIFFE ID server
// matches (spiffeid.MatchID for one service, MatchMemberOf for any in the
// trust domain). Host names play no part: InsecureSkipVerify only turns off
// crypto/tls's WebPKI name check, which VerifyConnection replaces.
func ClientTLS(src x509svid.Source, bundle x509bundle.Source, server spiffeid.Matcher, opts ...TLSOption) *tls.Config {
	o := tlsOpts(opts)
	cfg := &tls.Config{
		MinVersion:           tls.VersionTLS12,
		InsecureSkipVerify:   true, //nolint:gosec // replaced by SPIFFE verification in VerifyConnection
		GetClientCertificate: tlsconfig.GetClientCertificate(src),
		VerifyConnection:     verifySVID(bundle, tlsconfig.AdaptMatcher(server), o.clk, x509.ExtKeyUsageServerAuth),
	}
	if o.clk != nil {
		cfg.Time = o.clk.Now
	}
	return cfg
}

func tlsOpts(opts []TLSOption) tlsOptions {
	var o tlsOptions
	for _, f := range opts {
		f(&o)
	}
	return o
}

// verifySVID verifies the peer's chain as an X.509-SVID against bundle, at
// clk's time (nil: now), checks that its leaf is shaped as one and may act
// in role (clientAuth for a caller, serverAuth for a server), and then
// authorizes its SPIFFE ID.
func verifySVID(bundle x509bundle.Source, authorize tlsconfig.Authorizer, clk Clock, role x509.ExtKeyUsage) func(tls.ConnectionState) error {
	return func(cs tls.ConnectionState) error {
		var opts []x509svid.VerifyOption
		if clk != nil {
			opts = append(opts, x509svid.WithTime(clk.Now()))
		}
		id, chains, err := x509svid.Verify(cs.PeerCertificates, bundle, opts...)
		if err != nil {
			return err
		}
		if err := checkLeaf(id, cs.PeerCertificates[0], role); err != nil {
			return err
		}
		return authorize(id, chains)
	}
}

// checkLeaf applies the X509-SVID rules for leaves that x509svid.Verify
// leaves out (it checks the CA flag, keyCertSign and cRLSign, and the single
// spiffe URI SAN); an error wraps ErrMalformedSVID. weft's CA issues no
// certificate that fails them, but other tools may issue certificates under
// a root given with --ca-cert.
func checkLeaf(id spiffeid.ID, leaf *x509.Certificate, role x509.ExtKeyUsage) error {
	switch {
	case id.Path() == "":
		// The trust domain's own ID names signing certificates, never a
		// workload; an empty allow list would otherwise admit it.
		return fmt.Errorf("%w: %s has no path", ErrMalformedSVID, id)
	case leaf.KeyUsage&x509.KeyUsageDigitalSignature == 0:
		// Zero when the key usage extension is absent, which the spec
		// forbids as well.
		return fmt.Errorf("%w: %s lacks the digitalSignature key usage", ErrMalformedSVID, id)
	case !allowsUsage(leaf, role):
		return fmt.Errorf("%w: the extended key usage of %s excludes %s", ErrMalformedSVID, id, usageName(role))
	}
	return nil
}

// allowsUsage reports whether leaf may be used for u: it has no extended key
// usage extension (any use, RFC 5280 §4.2.1.12), or the extension lists u or
// anyExtendedKeyUsage.
func allowsUsage(leaf *x509.Certificate, u x509.ExtKeyUsage) bool {
	if len(leaf.ExtKeyUsage) == 0 && len(leaf.UnknownExtKeyUsage) == 0 {
		return true
	}
	return slices.ContainsFunc(leaf.ExtKeyUsage, func(e x509.ExtKeyUsage) bool { return e == u || e == x509.ExtKeyUsageAny })
}

func usageName(u x509.ExtKeyUsage) string {
	if u == x509.ExtKeyUsageClientAuth {
		return "clientAuth"
	}
	return "serverAuth"
}

// PeerID returns the SPIFFE ID of a connection's peer, as verified by
// ServerTLS or ClientTLS during the handshake.
func PeerID(cs tls.ConnectionState) (spiffeid.ID, error) {
	if len(cs.PeerCertificates) == 0 {
		return spiffeid.ID{}, errors.New("router: peer presented no certificate")
	}
	return x509svid.IDFromCert(cs.PeerCertificates[0])
}
