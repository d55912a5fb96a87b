package router

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// BenchmarkRouterOverhead reports the latency (p50, p99) and throughput of
// a GET through the router next to the same GET sent directly to the same
// backend, in the same run, over plain HTTP and over mutual TLS with weft's
// certificates. Compare the direct and routed rows as ratios; the routed
// rows also report what they add to the direct row's percentiles. The
// proxy rows go through the same listener workers reach via HTTP_PROXY.
// For the comparison with nginx, CPU per request included, see
// `weft bench router`.
func BenchmarkRouterOverhead(b *testing.B) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "ok")
	}))
	defer backend.Close()

	ca := testCA(b)
	td := ca.TrustDomain()
	nodeSrc, srvSrc := testSVID(b, ca, "/node/bench"), testSVID(b, ca, "/svc/bench")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	tlsSrv := &http.Server{Handler: backend.Config.Handler, TLSConfig: ServerTLS(srvSrc, ca.Bundle(), nil)}
	go func() { _ = tlsSrv.Serve(tls.NewListener(ln, tlsSrv.TLSConfig)) }() // owned: closed below
	defer tlsSrv.Close()
	tlsURL := "https://" + ln.Addr().String()

	r := New(Config{Identity: &Identity{SVID: nodeSrc, Bundle: ca.Bundle(), Domain: td}}, nil, nil)
	var svcs []*Service
	for _, doc := range []string{
		fmt.Sprintf("metadata: {name: plain}\nspec: {endpoints: [%q]}\n", backend.URL),
		fmt.Sprintf("metadata: {name: mtls}\nspec:\n  endpoints: [%q]\n  tls: {mode: mutual}\n", tlsURL),
	} {
		svcs = append(svcs, serviceYAML(&testing.T{}, doc))
	}
	if err := r.SetServices(svcs); err != nil {
		b.Fatal(err)
	}
	proxy := NewProxy("127.0.0.1:0", r, nil)
	pctx, stopProxy := context.WithCancel(context.Background())
	proxyDone := make(chan error, 1)
	go func() { proxyDone <- proxy.Run(pctx) }()
	defer func() { stopProxy(); <-proxyDone }()
	<-proxy.Ready()
	viaProxy := newTransport(nil)
	viaProxy.Proxy = http.ProxyURL(&url.URL{Scheme: "http", Host: proxy.Addr()})

	direct := &http.Client{Transport: newTransport(nil)}
	directTLS := &http.Client{Transport: newTransport(ClientTLS(nodeSrc, ca.Bundle(), spiffeid.MatchMemberOf(td)))}
	routed := &http.Client{Transport: r}

	cases := []struct {
		name   string
		client *http.Client
		url    string
	}{
		{"plain/direct", direct, backend.URL + "/"},
		{"plain/router", routed, "http://plain/"},
		{"plain/proxy", &http.Client{Transport: viaProxy}, "http://plain/"}, // as a worker through HTTP_PROXY
		{"mtls/direct", directTLS, tlsURL + "/"},
		{"mtls/router", routed, "http://mtls/"},
		{"mtls/proxy", &http.Client{Transport: viaProxy}, "http://mtls/"},
	}
	// The direct case of each mode runs first; the routed ones report
	// their percentiles minus its (the latency the hop adds).
	directP50, directP99 := map[string]time.Duration{}, map[string]time.Duration{}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			lat := make([]time.Duration, 0, 1<<16)
			b.ReportAllocs()
			for b.Loop() {
				start := time.Now()
				resp, err := c.client.Get(c.url)
				if err != nil {
					b.Fatal(err)
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				lat = append(lat, time.Since(start))
			}
			slices.Sort(lat)
			p50, p99 := lat[len(lat)/2], lat[len(lat)*99/100]
			b.ReportMetric(float64(p50.Microseconds()), "p50-µs")
			b.ReportMetric(float64(p99.Microseconds()), "p99-µs")
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "req/s")
			mode, path, _ := strings.Cut(c.name, "/")
			if path == "direct" {
				directP50[mode], directP99[mode] = p50, p99
			} else if d, ok := directP50[mode]; ok {
				b.ReportMetric(float64((p50 - d).Microseconds()), "added-p50-µs")
				b.ReportMetric(float64((p99 - directP99[mode]).Microseconds()), "added-p99-µs")
			}
		})
	}
}
