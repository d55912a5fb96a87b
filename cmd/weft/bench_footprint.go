package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/spf13/cobra"
)

// footprintConfig is one `weft bench footprint` run.
type footprintConfig struct {
	Rounds     int           // rounds; each starts weft serve, then the reference
	Settle     time.Duration // idle time before RSS is read
	Functions  int           // Functions at scale 0 applied to measure their cost
	Weft       string        // weft binary; "" = this one
	NATSServer string        // nats-server binary; "" = look it up, "embedded" = weft's own copy
}

func (c footprintConfig) validate() error {
	switch {
	case c.Rounds < 1:
		return fmt.Errorf("--rounds %d: want at least 1", c.Rounds)
	case c.Settle < 0:
		return fmt.Errorf("--settle %s: want 0 or more", c.Settle)
	case c.Functions < 0:
		return fmt.Errorf("--functions %d: want 0 or more", c.Functions)
	}
	return nil
}

func newBenchFootprintCmd(g *globals) *cobra.Command {
	c := footprintConfig{Rounds: 3, Settle: 3 * time.Second, Functions: 200}
	cmd := &cobra.Command{
		Use:   "footprint [--rounds 3] [--settle 3s] [--functions 200] [--nats-server PATH]",
		Short: "Idle memory of weft serve against an idle nats-server -js, and the cost of a Function at zero",
		Long: `Each round starts a fresh ` + "`weft serve`" + ` (temporary data folder, loopback ports,
no manifests), waits until it is ready and --settle more, and reads its RSS
(VmRSS, /proc/<pid>/status); then applies --functions Functions with scale
min 0, waits --settle, reads the RSS again and counts the processes under
weft. The same round then starts ` + "`nats-server -js`" + ` (temporary store, loopback)
and reads its RSS after --settle. The table shows medians over rounds.

--nats-server names the binary; without it nats-server is looked up on PATH,
and when there is none weft runs the nats-server it embeds (the same
version, in a process of its own: "embedded"). That process also carries
weft's own code, so its RSS is an upper bound of nats-server's and the ratio
flatters weft; the report says which was used. Build the real one with
  go build -o nats-server github.com/nats-io/nats-server/v2
inside weft's module.`,
		Example: `  weft bench footprint --nats-server ./nats-server --rounds 3`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runBench(g, c.validate,
				func(io.Writer) (*footprintReport, error) { return benchFootprint(cmd.Context(), c) },
				func(*footprintReport) string { return "" })
		},
	}
	f := cmd.Flags()
	f.IntVar(&c.Rounds, "rounds", c.Rounds, "rounds; each measures weft then nats-server")
	f.DurationVar(&c.Settle, "settle", c.Settle, "idle time before each RSS reading")
	f.IntVar(&c.Functions, "functions", c.Functions, "Functions at scale 0 to apply (0: skip the per-function cost)")
	f.StringVar(&c.Weft, "weft", "", "weft binary to run `weft serve` from (default: this one)")
	f.StringVar(&c.NATSServer, "nats-server", "", `nats-server binary (default: nats-server on PATH, else "embedded")`)
	return cmd
}

// newBenchNATSIdleCmd is the embedded reference of `bench footprint`, and of
// `bench nats` in a process of its own: a nats-server with JetStream until
// SIGTERM.
func newBenchNATSIdleCmd() *cobra.Command {
	var store, addr string
	var syncAlways bool
	cmd := &cobra.Command{
		Use:    "nats-idle --store DIR --listen HOST:PORT [--sync-always]",
		Short:  "Run the embedded nats-server with JetStream until SIGTERM (the footprint bench's reference, and bench nats's in a process of its own)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			host, port, err := net.SplitHostPort(addr)
			if err != nil {
				return withCode(exitUsage, fmt.Errorf("--listen %q: %w", addr, err))
			}
			p, err := strconv.Atoi(port)
			if err != nil {
				return withCode(exitUsage, fmt.Errorf("--listen %q: %w", addr, err))
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGTERM, os.Interrupt)
			defer stop()
			ns, err := server.NewServer(&server.Options{JetStream: true, StoreDir: store, Host: host, Port: p, NoSigs: true, NoLog: true, SyncAlways: syncAlways})
			if err != nil {
				return err
			}
			go ns.Start() // owned: Shutdown below, then WaitForShutdown
			if !ns.ReadyForConnections(30 * time.Second) {
				ns.Shutdown()
				return errors.New("nats-server not ready")
			}
			<-ctx.Done()
			ns.Shutdown()
			ns.WaitForShutdown()
			return nil
		},
	}
	cmd.Flags().StringVar(&store, "store", "", "JetStream store folder")
	cmd.Flags().StringVar(&addr, "listen", "127.0.0.1:4222", "client address")
	cmd.Flags().BoolVar(&syncAlways, "sync-always", false, "fsync every message before acknowledging it, as a node without --relaxed-sync")
	return cmd
}

// footprintRound is one side of one round, in bytes.
type footprintRound struct {
	IdleRSS int64 `json:"idle_rss_bytes"`
	PeakRSS int64 `json:"peak_rss_bytes"` // VmHWM when the idle RSS was read
	// With Functions applied (weft only).
	FunctionsRSS         int64   `json:"functions_rss_bytes,omitempty"`
	PerFunctionRSS       float64 `json:"per_function_rss_bytes,omitempty"`
	ProcessesAtZero      int     `json:"processes_at_zero"`
	FunctionsListedByAPI int     `json:"functions_listed,omitempty"`
}

// footprintSide is one program over all rounds, medians.
type footprintSide struct {
	Target         string           `json:"target"`
	IdleRSS        float64          `json:"idle_rss_bytes"`
	PeakRSS        float64          `json:"peak_rss_bytes"`
	PerFunctionRSS float64          `json:"per_function_rss_bytes,omitempty"`
	MaxProcesses   int              `json:"max_processes_at_zero"`
	Rounds         []footprintRound `json:"rounds"`
}

func (s *footprintSide) summarize() {
	med := func(f func(footprintRound) float64) float64 { return medianOf(s.Rounds, f) }
	s.IdleRSS = med(func(r footprintRound) float64 { return float64(r.IdleRSS) })
	s.PeakRSS = med(func(r footprintRound) float64 { return float64(r.PeakRSS) })
	s.PerFunctionRSS = med(func(r footprintRound) float64 { return r.PerFunctionRSS })
	for _, r := range s.Rounds {
		s.MaxProcesses = max(s.MaxProcesses, r.ProcessesAtZero)
	}
}

// footprintReport is what `weft bench footprint` prints.
type footprintReport struct {
	Scenario  string        `json:"scenario"`
	Date      time.Time     `json:"date"`
	Rounds    int           `json:"rounds"`
	Settle    string        `json:"settle"`
	Functions int           `json:"functions"`
	Weft      footprintSide `json:"weft"`
	NATS      footprintSide `json:"nats"`
	// Embedded is true when the reference was weft's embedded nats-server,
	// not a nats-server binary: an upper bound of its RSS.
	Embedded bool        `json:"embedded_reference"`
	Ratio    float64     `json:"ratio"` // weft idle RSS ÷ nats-server idle RSS
	Goals    []goalCheck `json:"goals"`
	Machine  machineInfo `json:"machine"`
}

func benchFootprint(ctx context.Context, cfg footprintConfig) (*footprintReport, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	weftBin, err := weftExecutable(cfg.Weft)
	if err != nil {
		return nil, err
	}
	natsBin, natsArgs, embedded, err := findNATSServer(cfg.NATSServer, weftBin)
	if err != nil {
		return nil, err
	}
	rep := &footprintReport{Scenario: "footprint", Date: time.Now().UTC().Truncate(time.Second), Rounds: cfg.Rounds,
		Settle: cfg.Settle.String(), Functions: cfg.Functions, Embedded: embedded,
		Machine: thisMachine()}
	rep.Weft.Target = weftBin + " serve (fresh data folder, no manifests)"
	rep.NATS.Target = natsBin + " " + strings.Join(natsArgs, " ")
	if embedded {
		rep.NATS.Target = "embedded nats-server (" + weftBin + " bench nats-idle): an upper bound"
	}
	for range cfg.Rounds {
		w, err := weftFootprint(ctx, weftBin, cfg)
		if err != nil {
			return nil, err
		}
		rep.Weft.Rounds = append(rep.Weft.Rounds, w)
		n, err := natsFootprint(ctx, natsBin, natsArgs, cfg.Settle)
		if err != nil {
			return nil, err
		}
		rep.NATS.Rounds = append(rep.NATS.Rounds, n)
	}
	rep.Machine.Load1End = loadavg1()
	rep.Weft.summarize()
	rep.NATS.summarize()
	rep.Ratio = ratio(rep.Weft.IdleRSS, rep.NATS.IdleRSS)
	const mib = 1 << 20
	rep.Goals = []goalCheck{
		newGoalCheck("idle weft serve ≤ 3 × idle nats-server -js (RSS)", rep.Weft.IdleRSS/mib, 3*rep.NATS.IdleRSS/mib, "MiB", false, true),
		newGoalCheck("per idle Function at zero < 1 MiB of RSS", rep.Weft.PerFunctionRSS/mib, 1, "MiB", false, cfg.Functions > 0),
		newGoalCheck("no process for a Function at zero", float64(rep.Weft.MaxProcesses), 0, "processes", false, cfg.Functions > 0),
	}
	return rep, nil
}

// findNATSServer returns how to run the reference: a nats-server binary
// with its arguments still to be completed (store and port), or weft's
// hidden nats-idle verb.
func findNATSServer(flag, weftBin string) (bin string, args []string, embedded bool, err error) {
	switch flag {
	case "embedded":
		return weftBin, nil, true, nil
	case "":
		p, err := exec.LookPath("nats-server")
		if err != nil {
			return weftBin, nil, true, nil
		}
		return p, []string{"-js"}, false, nil
	}
	if _, err := os.Stat(flag); err != nil {
		return "", nil, false, withCode(exitUsage, fmt.Errorf("--nats-server: %w", err))
	}
	return flag, []string{"-js"}, false, nil
}

// weftFootprint runs one weft round.
func weftFootprint(ctx context.Context, bin string, cfg footprintConfig) (footprintRound, error) {
	var r footprintRound
	dir, err := os.MkdirTemp("", "weft-bench-footprint")
	if err != nil {
		return r, err
	}
	defer os.RemoveAll(dir)
	addrs := make([]string, 3)
	for i := range addrs {
		if addrs[i], err = freeAddr(); err != nil {
			return r, err
		}
	}
	p, err := startProc("weft serve", bin, "serve", "--data", filepath.Join(dir, "data"), "--http", addrs[0],
		"--nats", addrs[1], "--router", addrs[2], "--log-level", "warn")
	if err != nil {
		return r, err
	}
	defer p.stop()
	base := "http://" + addrs[0]
	if err := p.waitUntil(ctx, 60*time.Second, "ready", func() bool { return httpOK(base + "/readyz") }); err != nil {
		return r, err
	}
	if err := settle(ctx, p, cfg.Settle); err != nil {
		return r, err
	}
	if r.IdleRSS, r.PeakRSS, err = procRSS(p.pid()); err != nil {
		return r, err
	}
	if cfg.Functions == 0 {
		return r, nil
	}
	g := &globals{server: base, output: "json", stdout: io.Discard, stderr: io.Discard}
	var manifest strings.Builder
	for i := range cfg.Functions {
		fmt.Fprintf(&manifest, "---\napiVersion: weft.dev/v1\nkind: Function\nmetadata: {name: bench-idle-%d}\nspec:\n  command: [\"/bin/true\"]\n  scale: {min: 0, max: 1}\n", i)
	}
	if err := g.client().do(ctx, "POST", "/api/v1/apply?file=bench-footprint.yaml", "application/yaml", strings.NewReader(manifest.String()), nil); err != nil {
		return r, fmt.Errorf("apply %d functions: %w", cfg.Functions, err)
	}
	var fns []struct {
		Name string `json:"name"`
	}
	if err := g.client().do(ctx, "GET", "/api/v1/functions", "", nil, &fns); err != nil {
		return r, fmt.Errorf("list functions: %w", err)
	}
	r.FunctionsListedByAPI = len(fns)
	if err := settle(ctx, p, cfg.Settle); err != nil {
		return r, err
	}
	if r.FunctionsRSS, _, err = procRSS(p.pid()); err != nil {
		return r, err
	}
	r.PerFunctionRSS = float64(r.FunctionsRSS-r.IdleRSS) / float64(cfg.Functions)
	r.ProcessesAtZero = len(descendants(p.pid()))
	return r, nil
}

// natsFootprint runs one reference round.
func natsFootprint(ctx context.Context, bin string, args []string, wait time.Duration) (footprintRound, error) {
	var r footprintRound
	dir, err := os.MkdirTemp("", "weft-bench-nats")
	if err != nil {
		return r, err
	}
	defer os.RemoveAll(dir)
	addr, err := freeAddr()
	if err != nil {
		return r, err
	}
	host, port, _ := net.SplitHostPort(addr)
	if args == nil { // weft's embedded copy
		args = []string{"bench", "nats-idle", "--store", dir, "--listen", addr}
	} else {
		args = append(args, "-sd", dir, "-a", host, "-p", port)
	}
	p, err := startProc("nats-server", bin, args...)
	if err != nil {
		return r, err
	}
	defer p.stop()
	if err := p.waitUntil(ctx, 30*time.Second, "listening", func() bool { return tcpOpen(addr) }); err != nil {
		return r, err
	}
	if err := settle(ctx, p, wait); err != nil {
		return r, err
	}
	r.IdleRSS, r.PeakRSS, err = procRSS(p.pid())
	return r, err
}

// settle waits d while p keeps running: the time an idle process is given
// before its memory is read.
func settle(ctx context.Context, p *benchProc, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-p.exited:
		return p.failed("exited while idle")
	case <-ctx.Done():
		return ctx.Err()
	}
}

// descendants lists every process below pid.
func descendants(pid int) []int {
	var out []int
	for _, c := range children(pid) {
		out = append(out, c)
		out = append(out, descendants(c)...)
	}
	return out
}

func (r *footprintReport) writeTable(w io.Writer) error {
	mib := func(v float64) string { return strconv.FormatFloat(v/(1<<20), 'f', 1, 64) + " MiB" }
	fmt.Fprintf(w, "footprint: %d rounds, %s idle before each reading, medians\n", r.Rounds, r.Settle)
	fmt.Fprintf(w, "  weft  %s\n  nats  %s\n\n", r.Weft.Target, r.NATS.Target)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "\tweft serve\tnats-server -js\tweft/nats\t\n")
	fmt.Fprintf(tw, "idle RSS\t%s\t%s\t%.2f\t\n", mib(r.Weft.IdleRSS), mib(r.NATS.IdleRSS), r.Ratio)
	fmt.Fprintf(tw, "peak RSS\t%s\t%s\t\t\n", mib(r.Weft.PeakRSS), mib(r.NATS.PeakRSS))
	if err := tw.Flush(); err != nil {
		return err
	}
	if r.Functions > 0 {
		fmt.Fprintf(w, "\n%d Functions at scale 0: %.1f KiB of RSS each, %d processes under weft\n",
			r.Functions, r.Weft.PerFunctionRSS/1024, r.Weft.MaxProcesses)
	}
	writeGoals(w, "goal 8 (issue 5):", r.Goals, 2)
	return writeMachine(w, r.Machine, r.Date)
}
