package router

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	promtest "github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/weft-dev/weft/internal/testutil"
)

// TestWorkloadIdentityThroughProxy: each function gets its own SVID in
// files and proxy credentials in HTTP_PROXY; a call through the proxy to a
// Service with tls.mode mutual presents the calling function's SVID, so the
// Service's allow list admits one function and refuses another, and a
// forged token gets the node's identity, not the function's.
func TestWorkloadIdentityThroughProxy(t *testing.T) {
	ca := testCA(t)
	td := ca.TrustDomain()
	nodeSrc := testSVID(t, ca, "/node/test")
	srvSrc := testSVID(t, ca, "/svc/vault")
	authz, err := NewAuthorizerIDs(td, []spiffeid.ID{spiffeid.RequireFromPath(td, "/fn/trusted")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, _ := PeerID(*r.TLS)
		_, _ = io.WriteString(w, id.String())
	}), TLSConfig: ServerTLS(srvSrc, ca.Bundle(), authz)}
	var wg sync.WaitGroup
	wg.Go(func() { _ = srv.Serve(tls.NewListener(ln, srv.TLSConfig)) })
	defer func() { _ = srv.Close(); wg.Wait() }()

	proxyAddr := testutil.FreeAddr(t)
	wl, err := NewWorkloads(ca, t.TempDir(), proxyAddr, nil)
	if err != nil {
		t.Fatal(err)
	}
	denied := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "denied"}, []string{"service"})
	r := New(Config{Identity: &Identity{SVID: nodeSrc, Bundle: ca.Bundle(), Domain: td}, Workloads: wl, Denied: denied}, nil, nil)
	plain := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "guarded") }))
	defer plain.Close()
	err = r.SetServices([]*Service{
		serviceYAML(t, fmt.Sprintf("metadata: {name: vault}\nspec:\n  endpoints: [\"https://%s\"]\n  tls: {mode: mutual}\n", ln.Addr())),
		serviceYAML(t, fmt.Sprintf("metadata: {name: guarded}\nspec:\n  endpoints: [%q]\n  allow: [\"spiffe://weft.local/fn/trusted\"]\n", plain.URL)),
	})
	if err != nil {
		t.Fatal(err)
	}
	p := NewProxy(proxyAddr, r, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	defer func() { cancel(); <-done }()
	<-p.Ready()

	callVia := func(t *testing.T, proxyURL, target string) (int, string) {
		t.Helper()
		u, err := url.Parse(proxyURL)
		if err != nil {
			t.Fatal(err)
		}
		c := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(u)}}
		resp, err := c.Get(target)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	call := func(proxyURL string) (int, string) { return callVia(t, proxyURL, "http://vault/") }
	trusted, err := wl.Env("trusted", -1, -1)
	if err != nil {
		t.Fatal(err)
	}
	other, err := wl.Env("other", -1, -1)
	if err != nil {
		t.Fatal(err)
	}
	if code, body := call(trusted["HTTP_PROXY"]); code != 200 || body != "spiffe://weft.local/fn/trusted" {
		t.Fatalf("the allowed function: %d %q", code, body)
	}
	if code, _ := call(other["HTTP_PROXY"]); code == 200 {
		t.Fatal("a function outside the allow list got in")
	}
	forged := strings.Replace(trusted["HTTP_PROXY"], "trusted:", "trusted:0000", 1)
	if code, _ := call(forged); code == 200 {
		t.Fatal("a forged token passed as the trusted function")
	}

	// The router enforces a Service's allow list itself: 403, counted.
	if code, body := callVia(t, trusted["HTTP_PROXY"], "http://guarded/"); code != 200 || body != "guarded" {
		t.Fatalf("allowed caller: %d %q", code, body)
	}
	if code, _ := callVia(t, other["HTTP_PROXY"], "http://guarded/"); code != http.StatusForbidden {
		t.Fatalf("a function outside the allow list: %d, want 403", code)
	}
	if code, _ := callVia(t, "http://"+proxyAddr, "http://guarded/"); code != http.StatusForbidden {
		t.Fatalf("a call without identity: %d, want 403", code)
	}
	if n := promtest.ToFloat64(denied.WithLabelValues("guarded")); n != 2 {
		t.Fatalf("denials counted %v, want 2", n)
	}

	// The files hold the function's SVID, verifiable with the CA file.
	certPEM, err := os.ReadFile(trusted["WEFT_CERT_FILE"])
	if err != nil {
		t.Fatal(err)
	}
	caPEM, err := os.ReadFile(trusted["WEFT_CA_FILE"])
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tls.LoadX509KeyPair(trusted["WEFT_CERT_FILE"], trusted["WEFT_KEY_FILE"]); err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	cert, err := tls.X509KeyPair(certPEM, mustRead(t, trusted["WEFT_KEY_FILE"]))
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatalf("the function's certificate does not verify with its CA file: %v", err)
	}
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != "spiffe://weft.local/fn/trusted" {
		t.Fatalf("URI SANs %v", leaf.URIs)
	}
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestWorkloadForget: a removed function's proxy credentials no longer name
// a caller and its SVID is no longer renewed; applied again, it gets a new
// SVID. Forgetting an unknown function does nothing.
func TestWorkloadForget(t *testing.T) {
	wl, err := NewWorkloads(testCA(t), t.TempDir(), "127.0.0.1:1", nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- wl.Run(ctx) }()
	defer func() { cancel(); <-done }()

	caller := func(env map[string]string) (*SVIDSource, bool) {
		u, err := url.Parse(env["HTTP_PROXY"])
		if err != nil {
			t.Fatal(err)
		}
		pass, _ := u.User.Password()
		r := httptest.NewRequest(http.MethodGet, "http://svc/", nil)
		r.SetBasicAuth(u.User.Username(), pass)
		r.Header.Set("Proxy-Authorization", r.Header.Get("Authorization"))
		return wl.Caller(r)
	}
	env, err := wl.Env("gone", -1, -1)
	if err != nil {
		t.Fatal(err)
	}
	first, ok := caller(env)
	if !ok {
		t.Fatal("the function's credentials name no caller")
	}
	wl.Forget("gone")
	wl.Forget("never-applied")
	if _, ok := caller(env); ok {
		t.Fatal("a forgotten function still names a caller")
	}
	if _, err := wl.Env("gone", -1, -1); err != nil {
		t.Fatal(err)
	}
	again, ok := caller(env)
	if !ok || again == first {
		t.Fatalf("applied again: caller %v (%v), want a new identity", again, ok)
	}
}
