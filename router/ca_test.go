package router

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"log/slog"
	"math/big"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/weft-dev/weft/internal/store"
)

var oidKeyUsage = asn1.ObjectIdentifier{2, 5, 29, 15}

// TestCAIssueFollowsX509SVIDRules checks a leaf against the SPIFFE X509-SVID
// spec and Linkerd's lifetimes, with crypto/x509 and go-spiffe both.
func TestCAIssueFollowsX509SVIDRules(t *testing.T) {
	clk := newIDClock(idT0)
	ca := newIDPKI(t, "weft.test").ca(t, clk)
	id := idMust(t, "spiffe://weft.test/fn/thumbnailer")
	svid, err := ca.Issue(id)
	if err != nil {
		t.Fatal(err)
	}
	if svid.ID != id || len(svid.Certificates) != 1 {
		t.Fatalf("svid %s with %d certificates, want %s with the leaf alone", svid.ID, len(svid.Certificates), id)
	}
	leaf := svid.Certificates[0]
	roots := x509.NewCertPool()
	for _, r := range ca.Bundle().X509Authorities() {
		roots.AddCert(r)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{
		Roots:       roots,
		CurrentTime: idT0,
		KeyUsages:   []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}); err != nil {
		t.Fatalf("crypto/x509 verify: %v", err)
	}
	if got, _, err := x509svid.Verify(svid.Certificates, ca.Bundle(), x509svid.WithTime(idT0)); err != nil || got != id {
		t.Fatalf("x509svid.Verify = %s, %v", got, err)
	}

	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != id.String() {
		t.Errorf("URI SANs %v, want exactly [%s]", leaf.URIs, id)
	}
	if len(leaf.DNSNames)+len(leaf.IPAddresses)+len(leaf.EmailAddresses) != 0 {
		t.Errorf("extra SANs: %v %v %v", leaf.DNSNames, leaf.IPAddresses, leaf.EmailAddresses)
	}
	if !leaf.BasicConstraintsValid || leaf.IsCA {
		t.Errorf("basic constraints valid=%v CA=%v, want valid and not a CA", leaf.BasicConstraintsValid, leaf.IsCA)
	}
	if leaf.KeyUsage != x509.KeyUsageDigitalSignature {
		t.Errorf("key usage %b, want digitalSignature alone", leaf.KeyUsage)
	}
	critical := false
	for _, ext := range leaf.Extensions {
		if ext.Id.Equal(oidKeyUsage) {
			critical = ext.Critical
		}
	}
	if !critical {
		t.Error("key usage extension is not critical")
	}
	if len(leaf.ExtKeyUsage) != 2 || leaf.ExtKeyUsage[0] != x509.ExtKeyUsageServerAuth || leaf.ExtKeyUsage[1] != x509.ExtKeyUsageClientAuth {
		t.Errorf("extended key usage %v, want serverAuth, clientAuth", leaf.ExtKeyUsage)
	}
	if want := idT0.Add(-20 * time.Second); !leaf.NotBefore.Equal(want) {
		t.Errorf("NotBefore %v, want %v (20 s backdate)", leaf.NotBefore, want)
	}
	if want := idT0.Add(24 * time.Hour); !leaf.NotAfter.Equal(want) {
		t.Errorf("NotAfter %v, want %v (24 h)", leaf.NotAfter, want)
	}
	pub, ok := leaf.PublicKey.(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() {
		t.Errorf("public key %T, want ECDSA P-256", leaf.PublicKey)
	}
	if leaf.SerialNumber.Sign() <= 0 || leaf.SerialNumber.BitLen() > 128 {
		t.Errorf("serial %x is not a positive 128-bit number", leaf.SerialNumber)
	}
	again, err := ca.Issue(id)
	if err != nil {
		t.Fatal(err)
	}
	if again.Certificates[0].SerialNumber.Cmp(leaf.SerialNumber) == 0 {
		t.Error("two SVIDs share a serial")
	}
	if again.PrivateKey.Public().(*ecdsa.PublicKey).Equal(pub) {
		t.Error("two SVIDs share a key")
	}

	ca.Lifetime = time.Hour
	short, err := ca.Issue(id)
	if err != nil {
		t.Fatal(err)
	}
	if want := idT0.Add(time.Hour); !short.Certificates[0].NotAfter.Equal(want) {
		t.Errorf("with Lifetime 1h, NotAfter %v, want %v", short.Certificates[0].NotAfter, want)
	}
}

func TestCAIssueRefusesIDsOutsideTheTrustDomain(t *testing.T) {
	ca := newIDPKI(t, "weft.test").ca(t, newIDClock(idT0))
	if _, err := ca.Issue(idMust(t, "spiffe://other.test/fn/x")); !errors.Is(err, ErrForeignTrustDomain) {
		t.Errorf("foreign trust domain: %v, want ErrForeignTrustDomain", err)
	}
	if _, err := ca.Issue(spiffeid.RequireTrustDomainFromString("weft.test").ID()); err == nil {
		t.Error("an ID without a path was issued")
	}
	if _, err := ca.Issue(spiffeid.ID{}); err == nil {
		t.Error("the zero ID was issued")
	}
}

// TestCAClampsToRootExpiry: an SVID never outlives its root (Linkerd clamps
// to the first expiry in the chain), so holders renew before the root dies.
func TestCAClampsToRootExpiry(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("weft.test")
	certPEM, keyPEM, err := newRoot(td, idT0.Add(-RootLifetime+time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	ca, err := NewCAFromPEM(certPEM, keyPEM, "weft.test", newIDClock(idT0))
	if err != nil {
		t.Fatal(err)
	}
	svid, err := ca.Issue(idMust(t, "spiffe://weft.test/fn/x"))
	if err != nil {
		t.Fatal(err)
	}
	if want := idT0.Add(time.Hour); !svid.Certificates[0].NotAfter.Equal(want) {
		t.Errorf("NotAfter %v, want the root's %v", svid.Certificates[0].NotAfter, want)
	}
}

// TestCAPersistsInBadger: the built-in CA's root survives closing and
// reopening a real Badger store, and SVIDs issued after the reopen verify
// against the bundle from before it.
func TestCAPersistsInBadger(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	clk := newIDClock(idT0)
	st, err := store.OpenBadger(dir, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ca1, err := LoadOrCreateCA(ctx, st, "weft.test", clk)
	if err != nil {
		t.Fatal(err)
	}
	root := ca1.Bundle().X509Authorities()[0]
	if !root.IsCA || !root.BasicConstraintsValid || root.KeyUsage != x509.KeyUsageCertSign|x509.KeyUsageCRLSign {
		t.Errorf("root CA=%v key usage %b", root.IsCA, root.KeyUsage)
	}
	if len(root.URIs) != 1 || root.URIs[0].String() != "spiffe://weft.test" {
		t.Errorf("root URI SANs %v, want [spiffe://weft.test]", root.URIs)
	}
	if err := root.CheckSignatureFrom(root); err != nil {
		t.Errorf("root is not self-signed: %v", err)
	}
	if !root.NotBefore.Equal(idT0.Add(-20*time.Second)) || !root.NotAfter.Equal(idT0.Add(RootLifetime)) {
		t.Errorf("root valid %v to %v", root.NotBefore, root.NotAfter)
	}
	for _, k := range []string{"ca/root.crt", "ca/root.key"} {
		v, err := st.Get(ctx, k)
		if err != nil {
			t.Fatalf("%s: %v", k, err)
		}
		if blk, _ := pem.Decode(v); blk == nil {
			t.Errorf("%s is not PEM", k)
		}
	}
	again, err := LoadOrCreateCA(ctx, st, "weft.test", clk)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(again.RootPEM(), ca1.RootPEM()) {
		t.Error("a second LoadOrCreateCA on the same store made a new root")
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}

	st, err = store.OpenBadger(dir, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ca2, err := LoadOrCreateCA(ctx, st, "weft.test", clk)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(ca2.RootPEM(), ca1.RootPEM()) {
		t.Fatal("the root changed across a reopen")
	}
	svid, err := ca2.Issue(idMust(t, "spiffe://weft.test/node/n1"))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := x509svid.Verify(svid.Certificates, ca1.Bundle(), x509svid.WithTime(idT0)); err != nil {
		t.Errorf("an SVID from the reopened CA does not verify against the first bundle: %v", err)
	}
	if _, err := LoadOrCreateCA(ctx, st, "other.test", clk); !errors.Is(err, ErrForeignTrustDomain) {
		t.Errorf("a stored root of weft.test loaded for other.test: %v", err)
	}
}

// TestNewCAFromPEMWithIntermediate: a user-given CA may be an intermediate
// followed by its root; SVIDs then carry the intermediate, and peers trust
// the root.
func TestNewCAFromPEMWithIntermediate(t *testing.T) {
	pki := newIDPKI(t, "weft.test")
	rootCA := pki.ca(t, newIDClock(idT0))
	root := rootCA.Bundle().X509Authorities()[0]

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(2),
		Subject:               pkix.Name{CommonName: "weft intermediate"},
		NotBefore:             idT0.Add(-time.Hour),
		NotAfter:              idT0.Add(48 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, root, key.Public(), rootCA.key)
	if err != nil {
		t.Fatal(err)
	}
	sec1, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	chainPEM := append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pki.certPEM...)
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: sec1})

	ca, err := NewCAFromPEM(chainPEM, keyPEM, "spiffe://weft.test", newIDClock(idT0))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(ca.RootPEM(), pki.certPEM) {
		t.Error("the trust anchor is not the root")
	}
	svid, err := ca.Issue(idMust(t, "spiffe://weft.test/fn/x"))
	if err != nil {
		t.Fatal(err)
	}
	if len(svid.Certificates) != 2 || !bytes.Equal(svid.Certificates[1].Raw, der) {
		t.Fatalf("SVID chain has %d certificates, want leaf and intermediate", len(svid.Certificates))
	}
	if want := idT0.Add(24 * time.Hour); !svid.Certificates[0].NotAfter.Equal(want) {
		t.Errorf("NotAfter %v, want %v", svid.Certificates[0].NotAfter, want)
	}
	if _, _, err := x509svid.Verify(svid.Certificates, ca.Bundle(), x509svid.WithTime(idT0)); err != nil {
		t.Errorf("verify through the intermediate: %v", err)
	}
	// The intermediate ends at idT0+48h: an SVID issued at idT0+40h is cut
	// short there instead of lasting 24 h.
	late, err := NewCAFromPEM(chainPEM, keyPEM, "weft.test", newIDClock(idT0.Add(40*time.Hour)))
	if err != nil {
		t.Fatal(err)
	}
	svid, err = late.Issue(idMust(t, "spiffe://weft.test/fn/x"))
	if err != nil {
		t.Fatal(err)
	}
	if want := idT0.Add(48 * time.Hour); !svid.Certificates[0].NotAfter.Equal(want) {
		t.Errorf("NotAfter %v, want the intermediate's %v", svid.Certificates[0].NotAfter, want)
	}
}

func TestNewCAFromPEMRefusesUnusableCAs(t *testing.T) {
	pki := newIDPKI(t, "weft.test")
	other := newIDPKI(t, "weft.test")
	leaf, err := pki.ca(t, newIDClock(idT0)).Issue(idMust(t, "spiffe://weft.test/fn/x"))
	if err != nil {
		t.Fatal(err)
	}
	leafCert, leafKey, err := leaf.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	cases := map[string]struct {
		cert, key []byte
		td        string
		now       time.Time
		want      error
	}{
		"key of another CA":  {pki.certPEM, other.keyPEM, "weft.test", idT0, ErrInvalidCA},
		"a leaf, not a CA":   {leafCert, leafKey, "weft.test", idT0, ErrInvalidCA},
		"other trust domain": {pki.certPEM, pki.keyPEM, "other.test", idT0, ErrForeignTrustDomain},
		"expired root":       {pki.certPEM, pki.keyPEM, "weft.test", idT0.Add(RootLifetime), ErrInvalidCA},
		"no certificate":     {nil, pki.keyPEM, "weft.test", idT0, ErrInvalidCA},
		"no key":             {pki.certPEM, nil, "weft.test", idT0, ErrInvalidCA},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			_, err := NewCAFromPEM(tc.cert, tc.key, tc.td, newIDClock(tc.now))
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
}
