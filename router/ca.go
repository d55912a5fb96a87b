package router

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/weft-dev/weft/internal/store"
)

// Lifetimes and keys of weft's built-in CA. The SVID figures are Linkerd's:
// workload certificates live 24 h, are backdated 20 s so that a peer whose
// clock runs a little behind still accepts them, and are renewed at 70 % of
// their lifetime (see SVIDSource).
const (
	// DefaultSVIDLifetime is CA.Lifetime when it is zero.
	DefaultSVIDLifetime = 24 * time.Hour
	// ClockSkewAllowance is how far back an issued certificate's NotBefore
	// is set from the issuing clock's now.
	ClockSkewAllowance = 20 * time.Second
	// RootLifetime is how long a root created by LoadOrCreateCA is valid.
	RootLifetime = 10 * 365 * 24 * time.Hour

	// StoreKeyRootCert and StoreKeyRootKey are where LoadOrCreateCA keeps
	// the root certificate (PEM "CERTIFICATE") and its key (PEM "PRIVATE
	// KEY", PKCS #8) in the control-plane store.
	StoreKeyRootCert = "ca/root.crt"
	StoreKeyRootKey  = "ca/root.key"
)

// Errors of the CA. Check them with errors.Is.
var (
	// ErrForeignTrustDomain is returned by Issue for a SPIFFE ID outside the
	// CA's trust domain, and when a CA certificate names another one.
	ErrForeignTrustDomain = errors.New("router: spiffe id outside the trust domain")
	// ErrInvalidCA is returned when a CA certificate or key cannot sign
	// SVIDs: not a CA, no keyCertSign, key and certificate do not match,
	// expired, or a chain that does not verify.
	ErrInvalidCA = errors.New("router: invalid CA")
)

// CA is a certificate authority that issues X.509-SVIDs for one SPIFFE trust
// domain: the node's built-in CA (LoadOrCreateCA) or one the user gives
// (NewCAFromPEM). It signs with one certificate and key; the last
// certificate of its chain is the trust anchor that peers verify against
// (Bundle, RootPEM).
//
// A CA is safe for concurrent use once Lifetime is set; Issue needs no lock
// because every certificate gets a fresh random serial and key. The zero
// value is not usable.
type CA struct {
	// Lifetime is how long an issued SVID is valid, counted from the
	// issuing clock's now (the 20 s backdate comes on top). Zero means
	// DefaultSVIDLifetime. An SVID never outlives the CA's own chain:
	// NotAfter is clamped to the earliest NotAfter in it, as Linkerd does,
	// so that holders renew before any link of the chain expires. Set it
	// before the first Issue; it is read without a lock.
	Lifetime time.Duration

	td       spiffeid.TrustDomain
	clk      Clock
	signer   *x509.Certificate
	key      crypto.Signer
	chain    []*x509.Certificate // sent after the leaf: the signer and its intermediates, never the anchor
	anchor   *x509.Certificate
	chainEnd time.Time // earliest NotAfter of signer, chain and anchor
	bundle   *x509bundle.Bundle
	rootPEM  []byte
}

// LoadOrCreateCA returns the node's built-in CA for trustDomain ("weft.local"
// or "spiffe://weft.local"), reading its root certificate and key from st
// under StoreKeyRootCert and StoreKeyRootKey, or creating and storing them
// on first use: an ECDSA P-256 key and a self-signed root valid for
// RootLifetime whose one URI SAN is the trust domain's SPIFFE ID (the X509-
// SVID spec's advice for signing certificates). clk dates the root and every
// SVID the CA issues; nil means SystemClock.
//
// The key is written before the certificate, and a store holding a key but
// no certificate counts as empty. The Store has no compare-and-swap: nodes
// sharing a Redis store that start for the very first time at the same
// instant each write a root and then adopt whatever the store holds; if the
// writes interleaved so that the stored key and certificate do not match,
// the error says so and the operator deletes the "ca/" keys.
func LoadOrCreateCA(ctx context.Context, st store.Store, trustDomain string, clk Clock) (*CA, error) {
	if clk == nil {
		clk = SystemClock{}
	}
	td, err := spiffeid.TrustDomainFromString(trustDomain)
	if err != nil {
		return nil, fmt.Errorf("ca: trust domain %q: %w", trustDomain, err)
	}
	ca, err := loadCA(ctx, st, td, clk)
	if !errors.Is(err, store.ErrNotFound) {
		return ca, err
	}
	certPEM, keyPEM, err := newRoot(td, clk.Now())
	if err != nil {
		return nil, err
	}
	if err := st.Put(ctx, StoreKeyRootKey, keyPEM); err != nil {
		return nil, fmt.Errorf("ca: store root key: %w", err)
	}
	if err := st.Put(ctx, StoreKeyRootCert, certPEM); err != nil {
		return nil, fmt.Errorf("ca: store root certificate: %w", err)
	}
	// Read back rather than use what was just made, so that of two nodes
	// racing to create the root, both end up with the one that was stored.
	return loadCA(ctx, st, td, clk)
}

// loadCA reads the root from st; an error wrapping store.ErrNotFound means
// there is no root certificate yet.
func loadCA(ctx context.Context, st store.Store, td spiffeid.TrustDomain, clk Clock) (*CA, error) {
	certPEM, err := st.Get(ctx, StoreKeyRootCert)
	if err != nil {
		return nil, fmt.Errorf("ca: load %s: %w", StoreKeyRootCert, err)
	}
	keyPEM, err := st.Get(ctx, StoreKeyRootKey)
	if errors.Is(err, store.ErrNotFound) {
		// A certificate without its key cannot be repaired by making a new
		// key: every SVID and every peer's bundle trusts that certificate.
		return nil, fmt.Errorf("ca: %s present but %s missing: %w", StoreKeyRootCert, StoreKeyRootKey, ErrInvalidCA)
	}
	if err != nil {
		return nil, fmt.Errorf("ca: load %s: %w", StoreKeyRootKey, err)
	}
	ca, err := newCA(certPEM, keyPEM, td, clk)
	if err != nil {
		return nil, fmt.Errorf("ca: stored root: %w", err)
	}
	return ca, nil
}

// newRoot makes a self-signed root for td and returns it and its key as PEM.
func newRoot(td spiffeid.TrustDomain, now time.Time) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("ca: generate root key: %w", err)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{"weft"}, CommonName: "weft root CA " + td.Name()},
		URIs:                  []*url.URL{td.ID().URL()},
		NotBefore:             now.Add(-ClockSkewAllowance),
		NotAfter:              now.Add(RootLifetime),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, nil, fmt.Errorf("ca: sign root: %w", err)
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("ca: encode root key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8}), nil
}

// NewCAFromPEM returns a CA that signs with a user-given certificate and key.
// certPEM holds the signing certificate first, then optionally its chain up
// to and including the root; the last certificate is the trust anchor. When
// the signer is not itself the anchor, issued SVIDs carry the signer and any
// intermediates after the leaf. keyPEM is the signer's key as PKCS #8, SEC 1
// ("EC PRIVATE KEY") or PKCS #1 ("RSA PRIVATE KEY"); issued SVIDs always get
// ECDSA P-256 keys.
//
// The signer must be a CA with keyCertSign, match the key, chain to the
// anchor and be valid at clk's now; a SPIFFE ID in its URI SANs must belong
// to trustDomain. Errors wrap ErrInvalidCA or ErrForeignTrustDomain. nil clk
// means SystemClock.
func NewCAFromPEM(certPEM, keyPEM []byte, trustDomain string, clk Clock) (*CA, error) {
	if clk == nil {
		clk = SystemClock{}
	}
	td, err := spiffeid.TrustDomainFromString(trustDomain)
	if err != nil {
		return nil, fmt.Errorf("ca: trust domain %q: %w", trustDomain, err)
	}
	return newCA(certPEM, keyPEM, td, clk)
}

func newCA(certPEM, keyPEM []byte, td spiffeid.TrustDomain, clk Clock) (*CA, error) {
	certs, err := parseCertsPEM(certPEM)
	if err != nil {
		return nil, err
	}
	key, err := parseKeyPEM(keyPEM)
	if err != nil {
		return nil, err
	}
	signer, anchor := certs[0], certs[len(certs)-1]
	switch {
	case !signer.BasicConstraintsValid || !signer.IsCA:
		return nil, fmt.Errorf("ca: certificate %q is not a CA: %w", signer.Subject, ErrInvalidCA)
	case signer.KeyUsage != 0 && signer.KeyUsage&x509.KeyUsageCertSign == 0:
		return nil, fmt.Errorf("ca: certificate %q lacks keyCertSign: %w", signer.Subject, ErrInvalidCA)
	}
	if pub, ok := signer.PublicKey.(interface{ Equal(crypto.PublicKey) bool }); !ok || !pub.Equal(key.Public()) {
		return nil, fmt.Errorf("ca: key does not match certificate %q: %w", signer.Subject, ErrInvalidCA)
	}
	for _, u := range signer.URIs {
		id, err := spiffeid.FromURI(u)
		if err == nil && id.TrustDomain() != td {
			return nil, fmt.Errorf("ca: certificate names %s, not trust domain %s: %w", id, td, ErrForeignTrustDomain)
		}
	}
	now := clk.Now()
	if _, err := signer.Verify(x509.VerifyOptions{
		Roots:         certPool(anchor),
		Intermediates: certPool(certs[1:]...),
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	}); err != nil {
		return nil, fmt.Errorf("ca: certificate %q: %w: %w", signer.Subject, ErrInvalidCA, err)
	}
	ca := &CA{
		td:       td,
		clk:      clk,
		signer:   signer,
		key:      key,
		chain:    certs[:len(certs)-1],
		anchor:   anchor,
		chainEnd: anchor.NotAfter,
		bundle:   x509bundle.FromX509Authorities(td, []*x509.Certificate{anchor}),
		rootPEM:  pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: anchor.Raw}),
	}
	for _, c := range certs {
		if c.NotAfter.Before(ca.chainEnd) {
			ca.chainEnd = c.NotAfter
		}
	}
	return ca, nil
}

// TrustDomain returns the trust domain whose SVIDs the CA issues.
func (ca *CA) TrustDomain() spiffeid.TrustDomain { return ca.td }

// Bundle returns the CA's trust bundle: its trust anchor, for its trust
// domain. It is an x509bundle.Source for tlsconfig and x509svid.Verify. The
// bundle is shared and safe for concurrent use; callers must not modify it.
func (ca *CA) Bundle() *x509bundle.Bundle { return ca.bundle }

// RootPEM returns the trust anchor as PEM, the content of a worker's
// WEFT_CA_FILE. The caller may modify the returned slice.
func (ca *CA) RootPEM() []byte { return bytes.Clone(ca.rootPEM) }

// Issue returns a fresh X.509-SVID for id, which must be in the CA's trust
// domain (else an error wrapping ErrForeignTrustDomain) and have a path, as
// the X509-SVID spec requires of leaves. The SVID has a new ECDSA P-256 key
// and a certificate with exactly one URI SAN (id), basic constraints CA:false,
// the critical key usage digitalSignature only, the extended key usages
// serverAuth and clientAuth, a random 128-bit serial, NotBefore 20 s before
// the clock's now and NotAfter Lifetime after it (clamped to the CA chain's
// expiry). Its Certificates are the leaf followed by the CA's chain without
// the trust anchor.
func (ca *CA) Issue(id spiffeid.ID) (*x509svid.SVID, error) {
	switch {
	case id.IsZero():
		return nil, errors.New("ca: issue: empty spiffe id")
	case id.TrustDomain() != ca.td:
		return nil, fmt.Errorf("ca: issue %s: %w %s", id, ErrForeignTrustDomain, ca.td)
	case id.Path() == "":
		return nil, fmt.Errorf("ca: issue %s: an SVID's spiffe id needs a path", id)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("ca: issue %s: generate key: %w", id, err)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	lifetime := ca.Lifetime
	if lifetime <= 0 {
		lifetime = DefaultSVIDLifetime
	}
	now := ca.clk.Now()
	notAfter := now.Add(lifetime)
	if notAfter.After(ca.chainEnd) {
		notAfter = ca.chainEnd
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{"weft"}},
		URIs:                  []*url.URL{id.URL()},
		NotBefore:             now.Add(-ClockSkewAllowance),
		NotAfter:              notAfter,
		BasicConstraintsValid: true,
		IsCA:                  false,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.signer, key.Public(), ca.key)
	if err != nil {
		return nil, fmt.Errorf("ca: issue %s: sign: %w", id, err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("ca: issue %s: parse: %w", id, err)
	}
	certs := make([]*x509.Certificate, 0, 1+len(ca.chain))
	certs = append(append(certs, leaf), ca.chain...)
	return &x509svid.SVID{ID: id, Certificates: certs, PrivateKey: key}, nil
}

// randomSerial returns a uniformly random serial in [1, 2^128).
func randomSerial() (*big.Int, error) {
	limit := new(big.Int).Lsh(big.NewInt(1), 128)
	limit.Sub(limit, big.NewInt(1))
	n, err := rand.Int(rand.Reader, limit)
	if err != nil {
		return nil, fmt.Errorf("ca: serial: %w", err)
	}
	return n.Add(n, big.NewInt(1)), nil
}

func parseCertsPEM(b []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("ca: parse certificate: %w: %w", ErrInvalidCA, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("ca: no PEM CERTIFICATE block: %w", ErrInvalidCA)
	}
	return certs, nil
}

func parseKeyPEM(b []byte) (crypto.Signer, error) {
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return nil, fmt.Errorf("ca: no PEM private key block: %w", ErrInvalidCA)
		}
		var (
			k   any
			err error
		)
		switch blk.Type {
		case "PRIVATE KEY":
			k, err = x509.ParsePKCS8PrivateKey(blk.Bytes)
		case "EC PRIVATE KEY":
			k, err = x509.ParseECPrivateKey(blk.Bytes)
		case "RSA PRIVATE KEY":
			k, err = x509.ParsePKCS1PrivateKey(blk.Bytes)
		default:
			continue // "EC PARAMETERS" and the like
		}
		if err != nil {
			return nil, fmt.Errorf("ca: parse %s: %w: %w", blk.Type, ErrInvalidCA, err)
		}
		s, ok := k.(crypto.Signer)
		if !ok {
			return nil, fmt.Errorf("ca: %T cannot sign: %w", k, ErrInvalidCA)
		}
		return s, nil
	}
}

func certPool(certs ...*x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	for _, c := range certs {
		p.AddCert(c)
	}
	return p
}
