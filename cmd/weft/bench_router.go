package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/weft-dev/weft/router"
)

// routerConfig is one `weft bench router` run.
type routerConfig struct {
	Duration     time.Duration // length of one round on one side
	Concurrency  int           // closed-loop workers, one keep-alive connection each
	Rounds       int           // rounds; each measures every side once, in the same order
	Size         int           // bytes of the backend's answer
	MTLS         bool          // also measure the router speaking mutual TLS to the backend
	Weft         string        // weft binary to run `weft serve` from; "" = this one
	Nginx        string        // nginx binary; "" = look it up; "none" = do not measure nginx
	NginxWorkers string        // nginx's worker_processes
}

func (c routerConfig) validate() error {
	if err := validateClosedLoop(c.Duration, c.Concurrency, c.Size, c.Rounds); err != nil {
		return err
	}
	if c.NginxWorkers != "auto" {
		if n, err := strconv.Atoi(c.NginxWorkers); err != nil || n < 1 {
			return fmt.Errorf("--nginx-workers %q: want auto or a number of processes", c.NginxWorkers)
		}
	}
	return nil
}

func newBenchRouterCmd(g *globals) *cobra.Command {
	c := routerConfig{Duration: 5 * time.Second, Concurrency: 16, Rounds: 3, Size: 64, MTLS: true, NginxWorkers: "auto"}
	cmd := &cobra.Command{
		Use:   "router [--duration 5s] [--concurrency 16] [--rounds 3] [--size 64] [--mtls] [--nginx PATH]",
		Short: "Latency the router adds, its throughput and CPU per request, against nginx as a reverse proxy",
		Long: `Starts a backend (a bare Go HTTP server in this process answering 200 with
--size bytes), a real ` + "`weft serve`" + ` whose Services point at it, and nginx as a
reverse proxy with a keep-alive upstream (when installed), each proxy in a
process of its own. The same closed-loop client (--concurrency workers, one
keep-alive connection each) then sends GETs for --duration to each side in
turn, round after round:

  direct     straight to the backend (the baseline)
  weft       through weft's router, as a worker calls it (HTTP_PROXY)
  weft-mtls  the same, with mutual TLS (weft's SVIDs) from router to backend
  nginx      through nginx (proxy_pass to an upstream with keepalive)

Added latency is a side's percentile minus the direct one of the same round;
the table shows medians over rounds. CPU per request is the proxy process's
user+system CPU time over the round (/proc/<pid>/stat; nginx's master and
workers together) divided by the answers; the client and backend run in this
process and are not counted. Issue 5's goal 6 is checked against nginx.`,
		Example: `  weft bench router --duration 5s --rounds 3 --concurrency 16
  weft bench router --concurrency 1 -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runBench(g, c.validate,
				func(progress io.Writer) (*routerReport, error) { return benchRouter(cmd.Context(), c, progress) },
				func(rep *routerReport) string {
					return rep.Weft.noneAccepted("weft's router answered no request with 200")
				})
		},
	}
	f := cmd.Flags()
	f.DurationVar(&c.Duration, "duration", c.Duration, "length of each round on each side")
	f.IntVar(&c.Concurrency, "concurrency", c.Concurrency, "concurrent closed-loop workers (connections)")
	f.IntVar(&c.Rounds, "rounds", c.Rounds, "rounds; each measures every side once")
	f.IntVar(&c.Size, "size", c.Size, "bytes of the backend's answer")
	f.BoolVar(&c.MTLS, "mtls", c.MTLS, "also measure the router with mutual TLS to the backend")
	f.StringVar(&c.Weft, "weft", "", "weft binary to run `weft serve` from (default: this one)")
	f.StringVar(&c.Nginx, "nginx", "", `nginx binary (default: nginx on PATH or /usr/sbin/nginx; "none" skips nginx)`)
	f.StringVar(&c.NginxWorkers, "nginx-workers", c.NginxWorkers, "nginx's worker_processes: auto (one per CPU, as weft's router may use every CPU) or a number")
	return cmd
}

// routerRound is one side of one round.
type routerRound struct {
	loadStats
	// AddedP50us and AddedP99us are this side's percentile minus the direct
	// side's in the same round, in microseconds.
	AddedP50us float64 `json:"added_p50_us"`
	AddedP99us float64 `json:"added_p99_us"`
	// CPUSeconds is the proxy process's user+system time during the round,
	// CPUPerRequestUs that divided by the 200 answers.
	CPUSeconds      float64 `json:"cpu_seconds"`
	CPUPerRequestUs float64 `json:"cpu_us_per_request"`
	// ClientCPUPerRequestUs is this process's CPU time per answer during
	// the round: the client and the backend, the same work for every side.
	ClientCPUPerRequestUs float64 `json:"client_cpu_us_per_request"`
}

// routerSide is one path over all rounds: medians and sums as benchSide's,
// medians of the added latencies and CPU per request.
type routerSide struct {
	Name    string `json:"name"`
	Target  string `json:"target"`
	Skipped string `json:"skipped,omitempty"` // why the side was not measured
	routerRound
	Rounds []routerRound `json:"rounds"`
}

func (s *routerSide) measured() bool { return s.Skipped == "" && len(s.Rounds) > 0 }

func (s *routerSide) summarize() {
	if len(s.Rounds) == 0 {
		return
	}
	b := benchSide{}
	for _, r := range s.Rounds {
		b.Rounds = append(b.Rounds, r.loadStats)
	}
	b.summarize()
	s.loadStats = b.loadStats
	med := func(f func(routerRound) float64) float64 { return medianOf(s.Rounds, f) }
	s.AddedP50us = med(func(r routerRound) float64 { return r.AddedP50us })
	s.AddedP99us = med(func(r routerRound) float64 { return r.AddedP99us })
	s.CPUSeconds = med(func(r routerRound) float64 { return r.CPUSeconds })
	s.CPUPerRequestUs = med(func(r routerRound) float64 { return r.CPUPerRequestUs })
	s.ClientCPUPerRequestUs = med(func(r routerRound) float64 { return r.ClientCPUPerRequestUs })
}

// goalCheck is one criterion of an issue-5 goal: Got against Bound.
type goalCheck struct {
	Criterion string  `json:"criterion"`
	Got       float64 `json:"got"`
	Bound     float64 `json:"bound"`
	Unit      string  `json:"unit"`
	AtLeast   bool    `json:"at_least,omitempty"` // Got must be ≥ Bound (else ≤)
	Measured  bool    `json:"measured"`
	Met       bool    `json:"met"`
}

func newGoalCheck(criterion string, got, bound float64, unit string, atLeast, measured bool) goalCheck {
	g := goalCheck{Criterion: criterion, Got: got, Bound: bound, Unit: unit, AtLeast: atLeast, Measured: measured}
	if measured {
		g.Met = got <= bound
		if atLeast {
			g.Met = got >= bound
		}
	}
	return g
}

// routerReport is what `weft bench router` prints.
type routerReport struct {
	Scenario    string     `json:"scenario"`
	Date        time.Time  `json:"date"`
	Concurrency int        `json:"concurrency"`
	Duration    string     `json:"duration"`
	Rounds      int        `json:"rounds"`
	Size        int        `json:"size"`
	Direct      routerSide `json:"direct"`
	Weft        routerSide `json:"weft"`
	WeftMTLS    routerSide `json:"weft_mtls"`
	Nginx       routerSide `json:"nginx"`
	// Ratio is weft ÷ nginx of the medians (added latencies, requests/s,
	// CPU per request); zero when nginx was not measured.
	Ratio struct {
		AddedP50      float64 `json:"added_p50"`
		AddedP99      float64 `json:"added_p99"`
		Throughput    float64 `json:"throughput"`
		CPUPerRequest float64 `json:"cpu_per_request"`
	} `json:"ratio"`
	// MTLSExtraP50us and MTLSExtraP99us are weft-mtls's added latency minus
	// weft's (plain), in microseconds.
	MTLSExtraP50us float64     `json:"mtls_extra_p50_us"`
	MTLSExtraP99us float64     `json:"mtls_extra_p99_us"`
	Goals          []goalCheck `json:"goals"`
	Machine        machineInfo `json:"machine"`
}

// benchRouter runs cfg's rounds over every side and summarizes them.
func benchRouter(ctx context.Context, cfg routerConfig, progress io.Writer) (*routerReport, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "weft-bench-router")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	// nginx's workers may run as nobody; they only need to reach the folder.
	if err := os.Chmod(dir, 0o755); err != nil {
		return nil, err
	}
	rep := &routerReport{Scenario: "router", Date: time.Now().UTC().Truncate(time.Second), Concurrency: cfg.Concurrency,
		Duration: cfg.Duration.String(), Rounds: cfg.Rounds, Size: cfg.Size,
		Machine: thisMachine()}
	rep.Direct.Name, rep.Weft.Name, rep.WeftMTLS.Name, rep.Nginx.Name = "direct", "weft", "weft-mtls", "nginx"

	backend, stopBackend, err := startBackend(cfg.Size, nil)
	if err != nil {
		return nil, err
	}
	defer stopBackend()
	rep.Direct.Target = "http://" + backend + "/"

	// weft's own CA, so the TLS backend can present an SVID weft trusts.
	const td = "weft.local"
	caCert, caKey, err := benchCA(td)
	if err != nil {
		return nil, err
	}
	var tlsBackend string
	if cfg.MTLS {
		ca, err := router.NewCAFromPEM(caCert, caKey, td, nil)
		if err != nil {
			return nil, err
		}
		svid, err := ca.Issue(spiffeid.RequireFromPath(ca.TrustDomain(), "/svc/bench"))
		if err != nil {
			return nil, err
		}
		var stop func()
		if tlsBackend, stop, err = startBackend(cfg.Size, router.ServerTLS(svid, ca.Bundle(), nil)); err != nil {
			return nil, err
		}
		defer stop()
	} else {
		rep.WeftMTLS.Skipped = "--mtls=false"
	}

	weft, routerAddr, err := startWeftRouter(ctx, cfg.Weft, dir, backend, tlsBackend, caCert, caKey)
	if err != nil {
		return nil, err
	}
	defer weft.stop()
	routerURL := &url.URL{Scheme: "http", Host: routerAddr}
	rep.Weft.Target = fmt.Sprintf("http://bench/ through weft serve's router at %s (pid %d)", routerAddr, weft.pid())
	if cfg.MTLS {
		rep.WeftMTLS.Target = fmt.Sprintf("http://bench-mtls/ through the same router, mutual TLS to https://%s", tlsBackend)
	}

	var nginx *benchProc
	var nginxAddr string
	nginxBin, why := findNginx(cfg.Nginx)
	if nginxBin == "" {
		rep.Nginx.Skipped = why
	} else {
		var version string
		nginx, nginxAddr, version, err = startNginx(ctx, nginxBin, cfg.NginxWorkers, dir, backend)
		if err != nil {
			return nil, err
		}
		defer nginx.stop()
		rep.Nginx.Target = fmt.Sprintf("http://%s/ through %s (worker_processes %s, upstream keepalive 64)", nginxAddr, version, cfg.NginxWorkers)
	}

	get := func(target string) func(ctx context.Context, w, seq int) (*http.Request, error) {
		return func(ctx context.Context, _, _ int) (*http.Request, error) {
			return http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
		}
	}
	type side struct {
		s    *routerSide
		spec loadSpec
		pid  int // the proxy process, 0 for none
	}
	spec := func(target string, proxy *url.URL) loadSpec {
		return loadSpec{Concurrency: cfg.Concurrency, Duration: cfg.Duration, OK: http.StatusOK, PerRequest: 1, Proxy: proxy, NewRequest: get(target)}
	}
	sides := []side{
		{&rep.Direct, spec("http://"+backend+"/", nil), 0},
		{&rep.Weft, spec("http://bench/", routerURL), weft.pid()},
	}
	if cfg.MTLS {
		sides = append(sides, side{&rep.WeftMTLS, spec("http://bench-mtls/", routerURL), weft.pid()})
	}
	if nginx != nil {
		sides = append(sides, side{&rep.Nginx, spec("http://"+nginxAddr+"/", nil), nginx.pid()})
	}
	// One short warm-up per side: connections, TLS sessions and the
	// proxies' pools are set up before anything is measured.
	for _, sd := range sides {
		warm := sd.spec
		warm.Duration = min(cfg.Duration/4, 500*time.Millisecond)
		if _, err := driveLoad(ctx, warm, nil); err != nil {
			return nil, err
		}
	}
	for r := 1; r <= cfg.Rounds; r++ {
		var direct routerRound
		for _, sd := range sides {
			var cpu0 time.Duration
			if sd.pid != 0 {
				cpu0 = treeCPU(sd.pid)
			}
			self0, _ := procCPU(os.Getpid())
			st, err := driveLoad(ctx, sd.spec, func(sent int64, elapsed time.Duration) {
				if progress != nil {
					fmt.Fprintf(progress, "\r\033[Kbench router: round %d/%d, %s: %.1fs, %d requests", r, cfg.Rounds, sd.s.Name, elapsed.Seconds(), sent)
				}
			})
			if err != nil {
				return nil, err
			}
			rr := routerRound{loadStats: st}
			if self1, err := procCPU(os.Getpid()); err == nil && st.Accepted > 0 {
				rr.ClientCPUPerRequestUs = float64((self1 - self0).Microseconds()) / float64(st.Accepted)
			}
			if sd.pid != 0 {
				rr.CPUSeconds = (treeCPU(sd.pid) - cpu0).Seconds()
				if st.Accepted > 0 {
					rr.CPUPerRequestUs = rr.CPUSeconds * 1e6 / float64(st.Accepted)
				}
			}
			if sd.s == &rep.Direct {
				direct = rr
			} else {
				rr.AddedP50us = (rr.P50ms - direct.P50ms) * 1000
				rr.AddedP99us = (rr.P99ms - direct.P99ms) * 1000
			}
			sd.s.Rounds = append(sd.s.Rounds, rr)
		}
	}
	if progress != nil {
		fmt.Fprint(progress, "\r\033[K")
	}
	rep.Machine.Load1End = loadavg1()
	for _, s := range []*routerSide{&rep.Direct, &rep.Weft, &rep.WeftMTLS, &rep.Nginx} {
		s.summarize()
	}
	rep.judge()
	return rep, nil
}

// judge fills the ratios and issue 5's goal 6.
func (r *routerReport) judge() {
	n, w := &r.Nginx, &r.Weft
	withNginx := n.measured() && w.measured()
	if withNginx {
		r.Ratio.AddedP50 = ratio(w.AddedP50us, n.AddedP50us)
		r.Ratio.AddedP99 = ratio(w.AddedP99us, n.AddedP99us)
		r.Ratio.Throughput = ratio(w.RequestsPerSec, n.RequestsPerSec)
		r.Ratio.CPUPerRequest = ratio(w.CPUPerRequestUs, n.CPUPerRequestUs)
	}
	withMTLS := r.WeftMTLS.measured() && w.measured()
	if withMTLS {
		r.MTLSExtraP50us = r.WeftMTLS.AddedP50us - w.AddedP50us
		r.MTLSExtraP99us = r.WeftMTLS.AddedP99us - w.AddedP99us
	}
	r.Goals = []goalCheck{
		newGoalCheck("added p50 ≤ nginx's added p50", w.AddedP50us, n.AddedP50us, "µs", false, withNginx),
		newGoalCheck("added p99 ≤ 1.5 × nginx's added p99", w.AddedP99us, 1.5*n.AddedP99us, "µs", false, withNginx),
		newGoalCheck("throughput ≥ 0.9 × nginx's", w.RequestsPerSec, 0.9*n.RequestsPerSec, "requests/s", true, withNginx),
		newGoalCheck("CPU per request ≤ 1.5 × nginx's", w.CPUPerRequestUs, 1.5*n.CPUPerRequestUs, "µs", false, withNginx),
		newGoalCheck("mutual TLS to the backend adds ≤ 50 µs at p50 over plain", r.MTLSExtraP50us, 50, "µs", false, withMTLS),
	}
}

// startBackend starts the backend every side reaches: a bare net/http
// server on 127.0.0.1:0 answering 200 with size bytes, over TLS when tc is
// set. It returns host:port and a function that stops it.
func startBackend(size int, tc *tls.Config) (string, func(), error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, fmt.Errorf("backend: %w", err)
	}
	body := []byte(strings.Repeat("x", size))
	clen := strconv.Itoa(size)
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.Copy(io.Discard, r.Body)
			w.Header()["Content-Type"] = []string{"text/plain"}
			w.Header()["Content-Length"] = []string{clen}
			_, _ = w.Write(body)
		}),
		ReadHeaderTimeout: 10 * time.Second,
		TLSConfig:         tc,
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		if tc != nil {
			_ = srv.ServeTLS(ln, "", "") // the certificate comes from tc
			return
		}
		_ = srv.Serve(ln) // returns ErrServerClosed on Close
	})
	return ln.Addr().String(), func() { _ = srv.Close(); wg.Wait() }, nil
}

// benchCA makes a throwaway root CA for trust domain td, as PEM, for
// `weft serve --ca-cert/--ca-key` and the TLS backend's SVID.
func benchCA(td string) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	id, err := spiffeid.TrustDomainFromString(td)
	if err != nil {
		return nil, nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(now.UnixNano()),
		Subject:               pkix.Name{CommonName: "weft bench CA"},
		URIs:                  []*url.URL{id.ID().URL()},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, nil, fmt.Errorf("bench CA: %w", err)
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("bench CA: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8}), nil
}

// startWeftRouter runs `weft serve` in dir with the Services bench (plain,
// to backend) and, when tlsBackend is set, bench-mtls (mutual TLS with the
// node's SVID from caCert), and waits until it is ready. It returns the
// process and its router's address.
func startWeftRouter(ctx context.Context, bin, dir, backend, tlsBackend string, caCert, caKey []byte) (*benchProc, string, error) {
	exe, err := weftExecutable(bin)
	if err != nil {
		return nil, "", err
	}
	manifest := fmt.Sprintf("apiVersion: weft.dev/v1\nkind: Service\nmetadata: {name: bench}\nspec:\n  endpoints: [\"http://%s\"]\n", backend)
	if tlsBackend != "" {
		manifest += fmt.Sprintf("---\napiVersion: weft.dev/v1\nkind: Service\nmetadata: {name: bench-mtls}\nspec:\n  endpoints: [\"https://%s\"]\n  tls: {mode: mutual}\n", tlsBackend)
	}
	files := map[string][]byte{"services.yaml": []byte(manifest), "ca.pem": caCert, "ca.key": caKey}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			return nil, "", err
		}
	}
	httpAddr, err := freeAddr()
	if err != nil {
		return nil, "", err
	}
	routerAddr, err := freeAddr()
	if err != nil {
		return nil, "", err
	}
	p, err := startProc("weft serve", exe, "serve", "-f", filepath.Join(dir, "services.yaml"),
		"--data", filepath.Join(dir, "weft"), "--http", httpAddr, "--nats", "", "--router", routerAddr,
		"--ca-cert", filepath.Join(dir, "ca.pem"), "--ca-key", filepath.Join(dir, "ca.key"), "--log-level", "warn")
	if err != nil {
		return nil, "", err
	}
	if err := p.waitUntil(ctx, 60*time.Second, "ready", func() bool { return httpOK("http://" + httpAddr + "/readyz") }); err != nil {
		p.stop()
		return nil, "", err
	}
	return p, routerAddr, nil
}

// writeTable prints the report for people.
func (r *routerReport) writeTable(w io.Writer) error {
	fmt.Fprintf(w, "router: GET, %d B answers, concurrency %d, %d rounds of %s per side, medians\n", r.Size, r.Concurrency, r.Rounds, r.Duration)
	for _, s := range []*routerSide{&r.Direct, &r.Weft, &r.WeftMTLS, &r.Nginx} {
		what := s.Target
		if s.Skipped != "" {
			what = "not measured: " + s.Skipped
		}
		fmt.Fprintf(w, "  %-9s %s\n", s.Name, what)
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	sides := []*routerSide{&r.Direct, &r.Weft, &r.WeftMTLS, &r.Nginx}
	row := func(name string, cell func(*routerSide) string, rat string) {
		fmt.Fprintf(tw, "%s\t", name)
		for _, s := range sides {
			if !s.measured() {
				fmt.Fprint(tw, "-\t")
				continue
			}
			fmt.Fprintf(tw, "%s\t", cell(s))
		}
		fmt.Fprintf(tw, "%s\t\n", rat)
	}
	us := func(v float64) string { return strconv.FormatFloat(v, 'f', 1, 64) + " µs" }
	rat := func(v float64) string {
		if v == 0 {
			return "-"
		}
		return strconv.FormatFloat(v, 'f', 2, 64)
	}
	fmt.Fprintf(tw, "\tdirect\tweft\tweft-mtls\tnginx\tweft/nginx\t\n")
	row("requests/s", func(s *routerSide) string { return strconv.FormatFloat(s.RequestsPerSec, 'f', 0, 64) }, rat(r.Ratio.Throughput))
	row("p50", func(s *routerSide) string { return us(s.P50ms * 1000) }, "")
	row("p99", func(s *routerSide) string { return us(s.P99ms * 1000) }, "")
	direct := func(f func(*routerSide) string) func(*routerSide) string {
		return func(s *routerSide) string {
			if s == &r.Direct {
				return ""
			}
			return f(s)
		}
	}
	row("added p50", direct(func(s *routerSide) string { return us(s.AddedP50us) }), rat(r.Ratio.AddedP50))
	row("added p99", direct(func(s *routerSide) string { return us(s.AddedP99us) }), rat(r.Ratio.AddedP99))
	row("CPU/request", direct(func(s *routerSide) string { return us(s.CPUPerRequestUs) }), rat(r.Ratio.CPUPerRequest))
	row("client CPU/req", func(s *routerSide) string { return us(s.ClientCPUPerRequestUs) }, "")
	row("errors", func(s *routerSide) string {
		return strconv.FormatInt(s.Errors+s.Status429+s.Status503+s.StatusOther, 10)
	}, "")
	if err := tw.Flush(); err != nil {
		return err
	}
	writeGoals(w, "goal 6 (issue 5):", r.Goals, 1)
	for _, s := range sides {
		if s.FirstError != "" {
			fmt.Fprintf(w, "%s's first failure: %s\n", s.Name, s.FirstError)
		}
	}
	return writeMachine(w, r.Machine, r.Date)
}

// writeMachine prints the machine line that ends every bench's table.
func writeMachine(w io.Writer, m machineInfo, date time.Time) error {
	_, err := fmt.Fprintf(w, "\nmachine: %d CPUs %s/%s, 1-min load %s before, %s after; %s\n", m.CPUs, m.GOOS, m.GOARCH,
		loadString(m.Load1Start), loadString(m.Load1End), date.Format(time.RFC3339))
	return err
}

func loadString(v float64) string {
	if v < 0 {
		return "unknown"
	}
	return strconv.FormatFloat(v, 'f', 2, 64)
}
