package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
)

// weft bench goals runs every scenario issue 5's goals are measured with,
// one after the other, against nodes and references it starts itself, and
// prints each goal's check: the whole Goals table of docs/performance.md in
// one command.

// goalScenarios are the scenarios bench goals can run, in the order it runs
// them. Goal 5 (dispatch) is measured by BenchmarkDispatch in the broker's
// tests, which a binary cannot run.
var goalScenarios = []string{"ingest", "nats", "e2e", "scale", "router", "footprint"}

// goalsConfig is one `weft bench goals` run.
type goalsConfig struct {
	Duration time.Duration // length of one round on one side of the throughput and latency scenarios
	Rounds   int           // rounds of every scenario
	Only     []string      // scenarios to run, from goalScenarios
	// Connections of each scenario that takes a concurrency.
	Ingest, NATS, Router []int
	Samples, Steps       int           // bench scale's
	Settle               time.Duration // bench footprint's
	Functions            int           // bench footprint's
	Weft                 string        // weft binary of every node and child; "" = this one
	Worker               string        // bench e2e's and scale's worker; "" = the weft binary's bench worker
	Nginx                string        // bench router's nginx
	NATSServer           string        // bench footprint's nats-server
}

func (c goalsConfig) validate() error {
	switch {
	case c.Duration <= 0:
		return fmt.Errorf("--duration %s: want more than 0", c.Duration)
	case c.Rounds < 1:
		return fmt.Errorf("--rounds %d: want at least 1", c.Rounds)
	case len(c.Only) == 0:
		return errors.New("--only: name at least one scenario")
	}
	for _, s := range c.Only {
		if !slices.Contains(goalScenarios, s) {
			return fmt.Errorf("--only %q: want some of %s", s, strings.Join(goalScenarios, ", "))
		}
	}
	for flag, cs := range map[string][]int{"--ingest-concurrency": c.Ingest, "--nats-concurrency": c.NATS, "--router-concurrency": c.Router} {
		if len(cs) == 0 {
			return fmt.Errorf("%s: name at least one concurrency", flag)
		}
		for _, n := range cs {
			if n < 1 {
				return fmt.Errorf("%s %d: want at least 1", flag, n)
			}
		}
	}
	return nil
}

func (c goalsConfig) runs(scenario string) bool { return slices.Contains(c.Only, scenario) }

// concurrencies are the runs of a scenario that takes a concurrency, none
// when it is not to run or takes none.
func (c goalsConfig) concurrencies(scenario string) []int {
	if !c.runs(scenario) {
		return nil
	}
	return map[string][]int{"ingest": c.Ingest, "nats": c.NATS, "router": c.Router}[scenario]
}

func newBenchGoalsCmd(g *globals) *cobra.Command {
	c := goalsConfig{Duration: 4 * time.Second, Rounds: 3, Only: goalScenarios,
		Ingest: []int{1, 16, 64, 256}, NATS: []int{16, 64}, Router: []int{1, 16},
		Samples: 20, Steps: 2, Settle: 3 * time.Second, Functions: 200}
	cmd := &cobra.Command{
		Use:   "goals [--duration 4s] [--rounds 3] [--only ingest,nats,e2e,scale,router,footprint]",
		Short: "Every goal of issue 5 against its reference, in one run: each scenario in turn, on nodes it starts itself",
		Long: `Runs, one after the other, every scenario issue 5's goals are measured with,
each against its reference in interleaved rounds, and prints every goal's check
(weft's figure, its bound, met or not) under the command that measures it alone:

  ingest     goals 1a, 1b, 2a (and 3 at one connection), at each --ingest-concurrency
  nats       goal 2b, at each --nats-concurrency
  e2e        goal 4
  scale      goal 7
  router     goal 6, at each --router-concurrency
  footprint  goal 8

For ingest and nats it starts two fresh nodes from --weft in a temporary folder,
one with weft's default durability (fsync before every 202) and one with
--relaxed-sync and its NATS ingress, and stops them before the other scenarios,
which start their own. Goal 5 (dispatch) is measured by BenchmarkDispatch in
the broker's tests (./task bench runs both).

A scenario that fails is reported and the others still run; the exit status
is then 1.`,
		Example: `  weft bench goals
  weft bench goals --only ingest --ingest-concurrency 64,256 -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runBench(g, c.validate,
				func(progress io.Writer) (*goalsReport, error) { return benchGoals(cmd.Context(), c, g.token, progress) },
				func(rep *goalsReport) string { return rep.failed() })
		},
	}
	f := cmd.Flags()
	f.DurationVar(&c.Duration, "duration", c.Duration, "length of each round on each side (ingest, nats, e2e, router)")
	f.IntVar(&c.Rounds, "rounds", c.Rounds, "rounds of every scenario")
	f.StringSliceVar(&c.Only, "only", c.Only, "scenarios to run: "+strings.Join(goalScenarios, ", "))
	f.IntSliceVar(&c.Ingest, "ingest-concurrency", c.Ingest, "connections of each ingest run")
	f.IntSliceVar(&c.NATS, "nats-concurrency", c.NATS, "publishers of each nats run")
	f.IntSliceVar(&c.Router, "router-concurrency", c.Router, "connections of each router run")
	f.IntVar(&c.Samples, "samples", c.Samples, "scale: cold starts per side per round")
	f.IntVar(&c.Steps, "steps", c.Steps, "scale: scale-up steps per round")
	f.DurationVar(&c.Settle, "settle", c.Settle, "footprint: idle time before each RSS reading")
	f.IntVar(&c.Functions, "functions", c.Functions, "footprint: Functions at scale 0 to apply")
	f.StringVar(&c.Weft, "weft", "", "weft binary of every node and child process (default: this one)")
	f.StringVar(&c.Worker, "worker", "", "e2e and scale: worker binary (default: the weft binary's hidden `bench worker`)")
	f.StringVar(&c.Nginx, "nginx", "", `router: nginx binary (default: nginx on PATH or /usr/sbin/nginx; "none" skips nginx)`)
	f.StringVar(&c.NATSServer, "nats-server", "", `footprint: nats-server binary (default: nats-server on PATH, else "embedded")`)
	return cmd
}

// goalsReport is what `weft bench goals` prints.
type goalsReport struct {
	Scenario string      `json:"scenario"`
	Date     time.Time   `json:"date"`
	Weft     string      `json:"weft"`
	Duration string      `json:"duration"`
	Rounds   int         `json:"rounds"`
	Runs     []goalsRun  `json:"runs"`
	Checked  int         `json:"checked"` // goal checks measured
	Met      int         `json:"met"`     // of them, met
	Machine  machineInfo `json:"machine"`
}

// goalReport is a scenario's report with the goal checks it made.
type goalReport interface{ goalChecks() []goalCheck }

func (r *ingestReport) goalChecks() []goalCheck    { return r.Goals }
func (r *natsReport) goalChecks() []goalCheck      { return r.Goals }
func (r *e2eReport) goalChecks() []goalCheck       { return r.Goals }
func (r *scaleReport) goalChecks() []goalCheck     { return r.Goals }
func (r *routerReport) goalChecks() []goalCheck    { return r.Goals }
func (r *footprintReport) goalChecks() []goalCheck { return r.Goals }

// goalsRun is one scenario run: its goal checks and its whole report.
type goalsRun struct {
	Name    string      `json:"name"`
	Command string      `json:"command"` // the same measurement on its own
	Goals   []goalCheck `json:"goals"`
	Error   string      `json:"error,omitempty"`
	Report  any         `json:"report,omitempty"`
}

// failed is runBench's nothing check: the runs that failed, or "".
func (r *goalsReport) failed() string {
	var names []string
	for _, run := range r.Runs {
		if run.Error != "" {
			names = append(names, run.Name)
		}
	}
	if len(names) == 0 {
		return ""
	}
	return fmt.Sprintf("%d of %d runs failed: %s", len(names), len(r.Runs), strings.Join(names, "; "))
}

// goalsNodes are the two nodes ingest and nats measure.
type goalsNodes struct {
	durable, relaxed       *benchProc
	durableURL, relaxedURL string
	natsAddr               string // the relaxed node's NATS ingress
}

// stop stops the nodes still running.
func (n *goalsNodes) stop() {
	for _, p := range []**benchProc{&n.durable, &n.relaxed} {
		if *p != nil {
			(*p).stop()
			*p = nil
		}
	}
}

// startGoalsNodes starts a node with weft's default durability and one with
// --relaxed-sync and a NATS ingress, both fresh, under dir.
func startGoalsNodes(ctx context.Context, exe, dir string) (*goalsNodes, error) {
	n := &goalsNodes{}
	var err error
	if n.durable, n.durableURL, err = startWeftNode(ctx, exe, filepath.Join(dir, "durable"), ""); err != nil {
		return nil, fmt.Errorf("start the durable node: %w", err)
	}
	if n.natsAddr, err = freeAddr(); err != nil {
		n.stop()
		return nil, err
	}
	if n.relaxed, n.relaxedURL, err = startWeftNode(ctx, exe, filepath.Join(dir, "relaxed"), "", "--relaxed-sync", "--nats", n.natsAddr); err != nil {
		n.stop()
		return nil, fmt.Errorf("start the --relaxed-sync node: %w", err)
	}
	return n, nil
}

// benchGoals runs cfg's scenarios in turn and gathers their goal checks. A
// scenario's failure is recorded in its run; only a cancelled ctx or nodes
// that will not start end the whole run early.
func benchGoals(ctx context.Context, cfg goalsConfig, token string, progress io.Writer) (*goalsReport, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	exe, err := weftExecutable(cfg.Weft)
	if err != nil {
		return nil, err
	}
	rep := &goalsReport{Scenario: "goals", Date: time.Now().UTC().Truncate(time.Second), Weft: exe,
		Duration: cfg.Duration.String(), Rounds: cfg.Rounds,
		Machine: thisMachine()}
	step, total := 0, cfg.count()
	// run measures one scenario and records its checks, or its failure.
	// Once ctx ends nothing more is run.
	run := func(name, command string, measure func() (goalReport, error)) {
		if ctx.Err() != nil {
			return
		}
		step++
		if progress != nil {
			fmt.Fprintf(progress, "\r\033[Kgoals %d/%d: %s\n", step, total, name)
		}
		r := goalsRun{Name: name, Command: command}
		report, err := measure()
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			r.Error = err.Error()
		default:
			r.Goals, r.Report = report.goalChecks(), report
		}
		rep.Runs = append(rep.Runs, r)
	}
	flagIf := func(flag, v string) string {
		if v == "" {
			return ""
		}
		return " " + flag + " " + v
	}
	rounds := fmt.Sprintf("--duration %s --rounds %d", cfg.Duration, cfg.Rounds)

	if cfg.runs("ingest") || cfg.runs("nats") {
		dir, err := os.MkdirTemp("", "weft-bench-goals")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(dir)
		nodes, err := startGoalsNodes(ctx, exe, dir)
		if err != nil {
			return nil, err
		}
		defer nodes.stop()
		client := func(url string) *apiClient { return &apiClient{base: url, token: token, http: &http.Client{}} }
		for _, c := range cfg.concurrencies("ingest") {
			ic := ingestConfig{Server: nodes.durableURL, RelaxedServer: nodes.relaxedURL, Duration: cfg.Duration, Concurrency: c,
				Size: 1024, Rounds: cfg.Rounds, Mode: "binary", JetStream: true, Client: clientFastHTTP, OwnProcess: true, Weft: exe}
			run(fmt.Sprintf("goals 1-3: ingest, %s", plural(c, "connection")),
				fmt.Sprintf("weft bench ingest --server %s --relaxed-server %s --concurrency %d %s", nodes.durableURL, nodes.relaxedURL, c, rounds),
				func() (goalReport, error) {
					durable, relaxed := client(nodes.durableURL), client(nodes.relaxedURL)
					return benchIngest(ctx, ic, ingestProbes{weft: nodeCPUProbe(durable), relaxed: nodeCPUProbe(relaxed), weftCommits: nodeCommitProbe(durable)}, progress)
				})
		}
		for _, c := range cfg.concurrencies("nats") {
			nc := natsConfig{URL: "nats://" + nodes.natsAddr, Subject: "weft.in.bench", Duration: cfg.Duration, Concurrency: c,
				Size: 1024, Rounds: cfg.Rounds, Relaxed: true, OwnProcess: true, Weft: exe}
			run(fmt.Sprintf("goal 2b: nats, %s", plural(c, "publisher")),
				fmt.Sprintf("weft bench nats --server %s --url %s --relaxed-sync --concurrency %d %s", nodes.relaxedURL, nc.URL, c, rounds),
				func() (goalReport, error) {
					return benchNATS(ctx, nc, nodeCPUProbe(client(nodes.relaxedURL)), progress)
				})
		}
		nodes.stop() // the scenarios below start nodes of their own
	}
	if cfg.runs("e2e") {
		ec := e2eConfig{Duration: cfg.Duration, Rounds: cfg.Rounds, Size: 1024, Weft: exe, Worker: cfg.Worker}
		run("goal 4: e2e, one connection", "weft bench e2e "+rounds+flagIf("--worker", cfg.Worker),
			func() (goalReport, error) { return benchE2E(ctx, ec, progress) })
	}
	if cfg.runs("scale") {
		sc := scaleConfig{Samples: cfg.Samples, Steps: cfg.Steps, Rounds: cfg.Rounds, Weft: exe, Worker: cfg.Worker}
		run("goal 7: scale from zero",
			fmt.Sprintf("weft bench scale --samples %d --steps %d --rounds %d%s", cfg.Samples, cfg.Steps, cfg.Rounds, flagIf("--worker", cfg.Worker)),
			func() (goalReport, error) { return benchScale(ctx, sc, progress) })
	}
	for _, c := range cfg.concurrencies("router") {
		rc := routerConfig{Duration: cfg.Duration, Concurrency: c, Rounds: cfg.Rounds, Size: 64, MTLS: true, Weft: exe,
			Nginx: cfg.Nginx, NginxWorkers: "auto"}
		run(fmt.Sprintf("goal 6: router, %s", plural(c, "connection")),
			fmt.Sprintf("weft bench router --concurrency %d %s%s", c, rounds, flagIf("--nginx", cfg.Nginx)),
			func() (goalReport, error) { return benchRouter(ctx, rc, progress) })
	}
	if cfg.runs("footprint") {
		fc := footprintConfig{Rounds: cfg.Rounds, Settle: cfg.Settle, Functions: cfg.Functions, Weft: exe, NATSServer: cfg.NATSServer}
		run("goal 8: footprint",
			fmt.Sprintf("weft bench footprint --rounds %d --settle %s --functions %d%s", cfg.Rounds, cfg.Settle, cfg.Functions, flagIf("--nats-server", cfg.NATSServer)),
			func() (goalReport, error) { return benchFootprint(ctx, fc) })
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	for _, r := range rep.Runs {
		for _, g := range r.Goals {
			if g.Measured {
				rep.Checked++
				if g.Met {
					rep.Met++
				}
			}
		}
	}
	rep.Machine.Load1End = loadavg1()
	return rep, nil
}

// count is the number of runs cfg asks for.
func (c goalsConfig) count() int {
	n := 0
	for _, s := range c.Only {
		n += max(len(c.concurrencies(s)), 1) // one run per concurrency, or one
	}
	return n
}

func plural(n int, unit string) string {
	if n == 1 {
		return "one " + unit
	}
	return fmt.Sprintf("%d %ss", n, unit)
}

func (r *goalsReport) writeTable(w io.Writer) error {
	fmt.Fprintf(w, "issue 5 goals: %s rounds, %d per scenario, medians; weft %s\n", r.Duration, r.Rounds, r.Weft)
	for _, run := range r.Runs {
		title := run.Name + "   (" + run.Command + ")"
		if run.Error != "" {
			fmt.Fprintf(w, "\n%s\n  failed: %s\n", title, run.Error)
			continue
		}
		writeGoals(w, title, run.Goals, 3)
	}
	fmt.Fprintf(w, "\n%d of %d measured checks met\n", r.Met, r.Checked)
	// Not met, one line per criterion naming the runs.
	var criteria []string
	runsOf := map[string][]string{}
	for _, run := range r.Runs {
		for _, g := range run.Goals {
			if g.Measured && !g.Met {
				if _, ok := runsOf[g.Criterion]; !ok {
					criteria = append(criteria, g.Criterion)
				}
				runsOf[g.Criterion] = append(runsOf[g.Criterion], run.Name)
			}
		}
	}
	if len(criteria) > 0 {
		fmt.Fprintln(w, "not met:")
		for _, c := range criteria {
			fmt.Fprintf(w, "  %-48s %s\n", c, strings.Join(runsOf[c], "; "))
		}
	}
	if why := r.failed(); why != "" {
		fmt.Fprintln(w, why)
	}
	return writeMachine(w, r.Machine, r.Date)
}
