package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"log/slog"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/weft-dev/weft/internal/store"
)

// TestNodeIdentityWithUserCA: --ca-cert/--ca-key make the node issue its
// identities from the given CA rather than the built-in one.
func TestNodeIdentityWithUserCA(t *testing.T) {
	dir := t.TempDir()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	td, _ := url.Parse("spiffe://example.org")
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "user CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		URIs: []*url.URL{td},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "ca.key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	st, err := store.OpenBadger(filepath.Join(dir, "store"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	o := serveOptions{trustDomain: "example.org", caCert: certFile, caKey: keyFile, node: "n1"}
	id, src, _, err := nodeIdentity(context.Background(), st, o, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	svid, err := src.GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}
	if svid.ID.String() != "spiffe://example.org/node/n1" || svid.Certificates[0].Issuer.CommonName != "user CA" {
		t.Fatalf("node SVID %s issued by %q", svid.ID, svid.Certificates[0].Issuer.CommonName)
	}
	if id.Domain.Name() != "example.org" {
		t.Fatalf("trust domain %s", id.Domain)
	}
	if kvs, _ := st.List(context.Background(), "ca/"); len(kvs) != 0 {
		t.Fatalf("a user CA must not create the built-in one: %v", kvs)
	}
	o.caKey = filepath.Join(dir, "missing.key")
	if _, _, _, err := nodeIdentity(context.Background(), st, o, slog.New(slog.DiscardHandler)); err == nil {
		t.Fatal("a missing --ca-key was accepted")
	}
}
