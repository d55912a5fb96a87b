package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/url"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/google/uuid"
	"github.com/spf13/cobra"
)

// weft bench measures a scenario against weft and against a reference that
// bounds it on the same machine, in one run, rounds interleaved (A B A B …),
// and reports medians over rounds and the ratio weft ÷ reference (issue 5:
// absolute figures mean little on shared machines, ratios do).

func newBenchCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Load generator: weft against a reference measured in the same run (throughput, latency percentiles, ratio)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withCode(exitUsage, errors.New("bench: name a scenario (ingest, nats, router, footprint, e2e, scale, load), or goals for all of issue 5's"))
		},
	}
	cmd.AddCommand(newBenchIngestCmd(g), newBenchNATSCmd(g), newBenchRouterCmd(g), newBenchFootprintCmd(g), newBenchNATSIdleCmd(), newBenchLoadCmd(g),
		newBenchE2ECmd(g), newBenchScaleCmd(g), newBenchGoalsCmd(g), newBenchWorkerCmd(), newBenchHTTPReferenceCmd())
	return cmd
}

// ingestConfig is one `weft bench ingest` run.
type ingestConfig struct {
	Server      string        // base URL of weft's ingress; events go to Server + "/"
	Duration    time.Duration // length of one round on one side
	Concurrency int           // closed-loop workers, one keep-alive connection each
	Size        int           // bytes of event data per event
	Rounds      int           // rounds; each runs weft then the reference
	Mode        string        // binary, structured or batch (CloudEvents HTTP binding)
	Batch       int           // events per request in batch mode
	JetStream   bool          // also measure JetStream alone (embedded, synced like weft)
	Relaxed     bool          // the JetStream reference fsyncs on an interval, as weft --relaxed-sync
	// RelaxedServer, when set, is a second node run with --relaxed-sync,
	// measured in the same rounds (goals 1b and 2a; with JetStream, a second
	// JetStream reference synced on an interval too).
	RelaxedServer string
	// Client is the HTTP client of every HTTP side: clientFastHTTP (also
	// when empty) or clientNetHTTP.
	Client string
	// OwnProcess also measures the HTTP ceiling in a process of its own,
	// run from Weft (this binary when empty).
	OwnProcess bool
	Weft       string
}

// validateClosedLoop checks the flags every closed-loop scenario has.
func validateClosedLoop(duration time.Duration, concurrency, size, rounds int) error {
	switch {
	case duration <= 0:
		return fmt.Errorf("--duration %s: want more than 0", duration)
	case concurrency < 1:
		return fmt.Errorf("--concurrency %d: want at least 1", concurrency)
	case size < 0:
		return fmt.Errorf("--size %d: want 0 or more", size)
	case rounds < 1:
		return fmt.Errorf("--rounds %d: want at least 1", rounds)
	}
	return nil
}

func (c ingestConfig) validate() error {
	if err := validateClosedLoop(c.Duration, c.Concurrency, c.Size, c.Rounds); err != nil {
		return err
	}
	switch {
	case c.Mode != "binary" && c.Mode != "structured" && c.Mode != "batch":
		return fmt.Errorf("--mode %q: want binary, structured or batch", c.Mode)
	case c.Mode == "batch" && c.Batch < 1:
		return fmt.Errorf("--batch %d: want at least 1", c.Batch)
	case c.Client != "" && c.Client != clientFastHTTP && c.Client != clientNetHTTP:
		return fmt.Errorf("--client %q: want %s or %s", c.Client, clientFastHTTP, clientNetHTTP)
	case c.RelaxedServer != "" && c.Relaxed:
		return fmt.Errorf("--relaxed-server with --relaxed-sync: --relaxed-sync says --server itself syncs on an interval; give one or the other")
	}
	return nil
}

// client is the HTTP client the load is sent with.
func (c ingestConfig) client() string {
	if c.Client == "" {
		return clientFastHTTP
	}
	return c.Client
}

// eventsPerRequest is how many events one 202 answer stores.
func (c ingestConfig) eventsPerRequest() int {
	if c.Mode == "batch" {
		return c.Batch
	}
	return 1
}

func newBenchIngestCmd(g *globals) *cobra.Command {
	c := ingestConfig{Duration: 10 * time.Second, Concurrency: 16, Size: 1024, Rounds: 3, Mode: "binary", Batch: 10, Client: clientFastHTTP}
	cmd := &cobra.Command{
		Use:   "ingest [--duration 10s] [--concurrency 16] [--size 1024] [--rounds 3] [--mode binary|structured|batch]",
		Short: "HTTP ingress throughput and POST→202 latency, against a bare Go HTTP server answering 202",
		Long: `Closed loop: --concurrency workers each POST CloudEvents (unique ids) to the node's
ingress over a keep-alive connection, as fast as answers come, for --duration.
The same client then drives a bare Go HTTP server started in this process on
127.0.0.1:0, which reads the body and answers 202: the HTTP ceiling of this
machine. Rounds interleave weft and the reference; the table shows medians over
rounds, the ratio weft ÷ reference and the machine's load.

With --reference-process (the default) each round also drives the same server
in a process of its own (weft bench http-reference, run from --weft), reached
over loopback as the node is. In this process one Go scheduler runs client and
server together; a node, like that child, shares the CPUs with the client
through the kernel. Goals 2a and 3 are checked against both.

The client is fasthttp's, which spends a third to a half of the CPU per request of
net/http's (--client net/http): the client shares the machine with the node,
and what it spends the node does not get.

Latency percentiles are of 202 answers. 429, 503, other statuses and transport
errors are counted apart. Exit 1 when weft answered nothing but errors, 6 when
it cannot be reached.`,
		Example: `  weft bench ingest --duration 5s --rounds 3 --concurrency 1
  weft bench ingest --mode batch --batch 100 -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c.Server = g.server
			ctx := cmd.Context()
			return runBench(g, c.validate,
				func(progress io.Writer) (*ingestReport, error) {
					// Reachability first, through the client every verb uses,
					// so an unreachable node exits 6 at once. Any answer will
					// do: the ingress is what is measured, not /healthz.
					if err := requireNode(ctx, g); err != nil {
						return nil, err
					}
					probes := ingestProbes{weft: nodeCPUProbe(g.client()), weftCommits: nodeCommitProbe(g.client())}
					if c.RelaxedServer != "" {
						probes.relaxed = nodeCPUProbe(&apiClient{base: strings.TrimRight(c.RelaxedServer, "/"), token: g.token, http: &http.Client{}})
					}
					return benchIngest(ctx, c, probes, progress)
				},
				func(rep *ingestReport) string { return rep.Weft.noneAccepted("weft answered no request with 202") })
		},
	}
	f := cmd.Flags()
	f.DurationVar(&c.Duration, "duration", c.Duration, "length of each round on each side")
	f.IntVar(&c.Concurrency, "concurrency", c.Concurrency, "concurrent closed-loop workers (connections)")
	f.IntVar(&c.Size, "size", c.Size, "bytes of event data per event")
	f.IntVar(&c.Rounds, "rounds", c.Rounds, "rounds; each measures weft then the reference")
	f.StringVar(&c.Mode, "mode", c.Mode, "CloudEvents HTTP mode: binary, structured or batch")
	f.IntVar(&c.Batch, "batch", c.Batch, "events per request with --mode batch")
	f.BoolVar(&c.JetStream, "jetstream", true, "also measure JetStream alone, embedded in this process, with the same publishers")
	f.BoolVar(&c.Relaxed, "relaxed-sync", false, "sync the JetStream reference on an interval, as a node run with --relaxed-sync")
	f.StringVar(&c.RelaxedServer, "relaxed-server", "", "URL of a second node run with --relaxed-sync, measured in the same rounds (durability tax, goals 1b and 2a)")
	f.StringVar(&c.Client, "client", c.Client, "HTTP client of the load: fasthttp or net/http")
	f.BoolVar(&c.OwnProcess, "reference-process", true, "also measure the bare HTTP server in a process of its own")
	f.StringVar(&c.Weft, "weft", "", "weft binary to run that process from (default: this one)")
	return cmd
}

// loadStats is one side of one round. Rates and latencies count only 202
// answers: requests_per_sec is 202 answers per second, events_per_sec the
// events they stored per second.
type loadStats struct {
	Requests       int64   `json:"requests"`
	Accepted       int64   `json:"accepted"`
	Events         int64   `json:"events"`
	Status429      int64   `json:"status_429"`
	Status503      int64   `json:"status_503"`
	StatusOther    int64   `json:"status_other"`
	Errors         int64   `json:"errors"`
	FirstError     string  `json:"first_error,omitempty"`
	Seconds        float64 `json:"seconds"`
	EventsPerSec   float64 `json:"events_per_sec"`
	RequestsPerSec float64 `json:"requests_per_sec"`
	P50ms          float64 `json:"p50_ms"`
	P90ms          float64 `json:"p90_ms"`
	P99ms          float64 `json:"p99_ms"`
	MaxMs          float64 `json:"max_ms"`
}

// benchSide is one target over all rounds: medians of the rates and
// percentiles, sums of the counts, and each round.
type benchSide struct {
	Target string `json:"target"`
	loadStats
	Rounds []loadStats `json:"rounds"`
}

// noneAccepted is runBench's nothing check for a side that must have
// something accepted: "" when it has, else what (the failure) with the
// counts of what went wrong.
func (s loadStats) noneAccepted(what string) string {
	if s.Accepted > 0 {
		return ""
	}
	return fmt.Sprintf("%s (%s)", what, s.failures())
}

func (s loadStats) failures() string {
	parts := []string{fmt.Sprintf("%d requests", s.Requests)}
	for _, c := range []struct {
		n    int64
		what string
	}{{s.Status429, "429"}, {s.Status503, "503"}, {s.StatusOther, "other statuses"}, {s.Errors, "transport errors"}} {
		if c.n > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", c.n, c.what))
		}
	}
	if s.FirstError != "" {
		parts = append(parts, "first error: "+s.FirstError)
	}
	return strings.Join(parts, ", ")
}

// ingestReport is what `weft bench ingest` prints, as a table or -o json.
type ingestReport struct {
	Scenario    string    `json:"scenario"`
	Date        time.Time `json:"date"`
	Mode        string    `json:"mode"`
	Size        int       `json:"size"`
	Batch       int       `json:"batch,omitempty"`
	Client      string    `json:"client"`
	Concurrency int       `json:"concurrency"`
	Duration    string    `json:"duration"`
	Rounds      int       `json:"rounds"`
	Weft        benchSide `json:"weft"`
	Reference   benchSide `json:"reference"`
	// ReferenceProcess is the same bare server in a process of its own.
	ReferenceProcess *benchSide `json:"reference_process,omitempty"`
	JetStream        *benchSide `json:"jetstream,omitempty"`
	// Relaxed is the --relaxed-server node, JetStreamRelaxed the JetStream
	// reference synced on an interval measured with it.
	Relaxed          *benchSide `json:"relaxed,omitempty"`
	JetStreamRelaxed *benchSide `json:"jetstream_relaxed,omitempty"`
	// Ratio is weft ÷ reference of the medians: above 1 is better for
	// throughput, below 1 is better for latency. Zero when undefined.
	Ratio struct {
		EventsPerSec float64 `json:"events_per_sec"`
		P50          float64 `json:"p50"`
		P99          float64 `json:"p99"`
		// EventsPerSecJetStream is weft ÷ the JetStream reference.
		EventsPerSecJetStream float64 `json:"events_per_sec_jetstream,omitempty"`
		// P50HopSum and P99HopSum are issue 5's goal-3 ratios: weft ÷
		// (reference + JetStream publish), at one connection, one event
		// per request, with the JetStream reference measured.
		P50HopSum float64 `json:"p50_hop_sum,omitempty"`
		P99HopSum float64 `json:"p99_hop_sum,omitempty"`
		// DurabilityTax is weft ÷ the --relaxed-server node (goal 1b).
		DurabilityTax float64 `json:"durability_tax,omitempty"`
		// RelaxedBound is the --relaxed-server node ÷ the additive bound
		// 1/(1/reference + 1/JetStream synced on an interval) (goal 2a).
		RelaxedBound float64 `json:"relaxed_bound,omitempty"`
		// The same three against the reference in a process of its own.
		EventsPerSecProcess float64 `json:"events_per_sec_process,omitempty"`
		P50HopSumProcess    float64 `json:"p50_hop_sum_process,omitempty"`
		P99HopSumProcess    float64 `json:"p99_hop_sum_process,omitempty"`
		RelaxedBoundProcess float64 `json:"relaxed_bound_process,omitempty"`
	} `json:"ratio"`
	// CPU is user+system time per stored event, medians over rounds; zero
	// where it was not measured (a node's /metrics out of reach).
	CPU struct {
		WeftNodeUs float64 `json:"weft_node_us_per_event"`
		// ClientUs is this process in weft's rounds: the client alone.
		ClientUs float64 `json:"client_us_per_event"`
		// ReferenceUs is this process in the HTTP reference's rounds: the
		// client and the bare server.
		ReferenceUs   float64 `json:"reference_us_per_event"`
		RelaxedNodeUs float64 `json:"relaxed_node_us_per_event,omitempty"`
		// ReferenceProcessUs is the bare server in its own process.
		ReferenceProcessUs float64 `json:"reference_process_us_per_event,omitempty"`
	} `json:"cpu"`
	// GroupCommit is how weft's node shared its fsyncs in its rounds
	// (weft_store_commit_events), medians over rounds; nil when it fsyncs on
	// an interval or its /metrics is out of reach.
	GroupCommit *groupCommitStats `json:"group_commit,omitempty"`
	// Goals holds the checks of issue 5's goals 1, 2a and 3 that the run
	// measured.
	Goals   []goalCheck `json:"goals,omitempty"`
	Machine machineInfo `json:"machine"`
}

// machineInfo is the load the figures were taken under.
type machineInfo struct {
	CPUs       int     `json:"cpus"`
	GOOS       string  `json:"goos"`
	GOARCH     string  `json:"goarch"`
	Load1Start float64 `json:"load1_start"` // 1-minute loadavg before the first round; -1 when unknown
	Load1End   float64 `json:"load1_end"`   // and after the last
}

// thisMachine describes the machine a scenario runs on, with its load now.
func thisMachine() machineInfo {
	return machineInfo{CPUs: runtime.NumCPU(), GOOS: runtime.GOOS, GOARCH: runtime.GOARCH, Load1Start: loadavg1()}
}

// ingestProbes read the CPU time of the nodes bench ingest measures, and
// the group commits of weft's node; a nil probe is one not measured.
type ingestProbes struct {
	weft, relaxed cpuProbe
	weftCommits   commitProbe
}

// benchIngest runs cfg's rounds against cfg.Server and a reference server it
// starts itself, interleaved, and summarizes them. progress, when not nil,
// gets a line rewritten in place (a terminal).
func benchIngest(ctx context.Context, cfg ingestConfig, probes ingestProbes, progress io.Writer) (*ingestReport, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	ref, stopRef, err := startReference()
	if err != nil {
		return nil, err
	}
	defer stopRef()
	rep := &ingestReport{Scenario: "ingest", Date: time.Now().UTC().Truncate(time.Second), Mode: cfg.Mode, Size: cfg.Size, Client: cfg.client(),
		Concurrency: cfg.Concurrency, Duration: cfg.Duration.String(), Rounds: cfg.Rounds,
		Machine: thisMachine()}
	if cfg.Mode == "batch" {
		rep.Batch = cfg.Batch
	}
	rep.Weft.Target = strings.TrimRight(cfg.Server, "/") + "/"
	rep.Reference.Target = ref + "/"
	// HTTP sides in the order each round measures them.
	type httpSide struct {
		name    string
		side    *benchSide
		node    cpuProbe
		cpu     []roundCPU // per round, when measured
		commits commitProbe
		grouped []groupCommitStats // per round, when it committed with fsyncs
	}
	weft := &httpSide{name: "weft", side: &rep.Weft, node: probes.weft, commits: probes.weftCommits}
	reference := &httpSide{name: "reference", side: &rep.Reference}
	sides := []*httpSide{weft, reference}
	var refProc *httpSide
	if cfg.OwnProcess {
		bin, err := weftExecutable(cfg.Weft)
		if err != nil {
			return nil, err
		}
		rp, err := startReferenceProcess(ctx, bin)
		if err != nil {
			return nil, err
		}
		defer rp.stop()
		rep.ReferenceProcess = &benchSide{Target: rp.url + "/"}
		refProc = &httpSide{name: "reference, own process", side: rep.ReferenceProcess, node: rp.cpu}
		sides = append(sides, refProc)
	}
	var relaxed *httpSide
	if cfg.RelaxedServer != "" {
		rep.Relaxed = &benchSide{Target: strings.TrimRight(cfg.RelaxedServer, "/") + "/"}
		relaxed = &httpSide{name: "weft --relaxed-sync", side: rep.Relaxed, node: probes.relaxed}
		sides = append(sides, relaxed)
	}
	type jsSide struct {
		ref  *jetStreamRef
		side *benchSide
	}
	var jsSides []jsSide
	if cfg.JetStream {
		js, err := startJetStreamRef(ctx, cfg.Relaxed, false)
		if err != nil {
			return nil, err
		}
		defer js.stop()
		mode := "fsync before every ack"
		if cfg.Relaxed {
			mode = "interval fsync"
		}
		rep.JetStream = &benchSide{Target: "embedded JetStream, " + mode}
		jsSides = append(jsSides, jsSide{js, rep.JetStream})
		if cfg.RelaxedServer != "" {
			jsr, err := startJetStreamRef(ctx, true, false)
			if err != nil {
				return nil, err
			}
			defer jsr.stop()
			rep.JetStreamRelaxed = &benchSide{Target: "embedded JetStream, interval fsync"}
			jsSides = append(jsSides, jsSide{jsr, rep.JetStreamRelaxed})
		}
	}
	for r := 1; r <= cfg.Rounds; r++ {
		for _, j := range jsSides {
			runID, err := uuid.NewV7()
			if err != nil {
				return nil, err
			}
			st, err := j.ref.run(ctx, cfg, runID.String())
			if err != nil {
				return nil, err
			}
			j.side.Rounds = append(j.side.Rounds, st)
		}
		for _, hs := range sides {
			name, side := hs.name, hs.side
			var (
				err     error
				st      loadStats
				cpu     roundCPU
				ok      bool
				grouped groupCommitStats
				gOK     bool
			)
			// The commits are read outside the CPU's window, so their
			// scrapes of /metrics do not count as the events' CPU.
			grouped, gOK = hs.commits.during(ctx, func() {
				st, cpu, ok = cpuPerEvent(ctx, hs.node, func() loadStats {
					var st loadStats
					st, err = runLoad(ctx, side.Target, cfg, func(sent int64, elapsed time.Duration) {
						if progress != nil {
							fmt.Fprintf(progress, "\r\033[Kbench ingest: round %d/%d, %s: %.1fs, %d requests", r, cfg.Rounds, name, elapsed.Seconds(), sent)
						}
					})
					return st
				})
			})
			if err != nil {
				return nil, err
			}
			side.Rounds = append(side.Rounds, st)
			if ok {
				hs.cpu = append(hs.cpu, cpu)
			}
			if gOK {
				hs.grouped = append(hs.grouped, grouped)
			}
		}
	}
	if progress != nil {
		fmt.Fprint(progress, "\r\033[K")
	}
	rep.Machine.Load1End = loadavg1()
	rep.Weft.summarize()
	rep.Reference.summarize()
	rep.Ratio.EventsPerSec = ratio(rep.Weft.EventsPerSec, rep.Reference.EventsPerSec)
	rep.Ratio.P50 = ratio(rep.Weft.P50ms, rep.Reference.P50ms)
	rep.Ratio.P99 = ratio(rep.Weft.P99ms, rep.Reference.P99ms)
	if rep.JetStream != nil {
		rep.JetStream.summarize()
		rep.Ratio.EventsPerSecJetStream = ratio(rep.Weft.EventsPerSec, rep.JetStream.EventsPerSec)
	}
	if rep.Relaxed != nil {
		rep.Relaxed.summarize()
		rep.Ratio.DurabilityTax = ratio(rep.Weft.EventsPerSec, rep.Relaxed.EventsPerSec)
	}
	if rep.JetStreamRelaxed != nil {
		rep.JetStreamRelaxed.summarize()
		rep.Ratio.RelaxedBound = additiveBoundRatio(rep.Relaxed, &rep.Reference, rep.JetStreamRelaxed)
	}
	if p := rep.ReferenceProcess; p != nil {
		p.summarize()
		rep.Ratio.EventsPerSecProcess = ratio(rep.Weft.EventsPerSec, p.EventsPerSec)
		if rep.JetStreamRelaxed != nil {
			rep.Ratio.RelaxedBoundProcess = additiveBoundRatio(rep.Relaxed, p, rep.JetStreamRelaxed)
		}
	}
	// The bench process's CPU is the client's alone in weft's rounds, and
	// the client's and the bare server's in the reference's.
	if c := weft.cpu; len(c) > 0 {
		rep.CPU.ClientUs = medianOf(c, func(c roundCPU) float64 { return c.self })
		rep.CPU.WeftNodeUs = medianOf(c, func(c roundCPU) float64 { return c.node })
	}
	if g := weft.grouped; len(g) > 0 {
		rep.GroupCommit = &groupCommitStats{
			EventsPerCommit: medianOf(g, func(g groupCommitStats) float64 { return g.EventsPerCommit }),
			LoneCommitsPct:  medianOf(g, func(g groupCommitStats) float64 { return g.LoneCommitsPct }),
		}
	}
	if c := reference.cpu; len(c) > 0 {
		rep.CPU.ReferenceUs = medianOf(c, func(c roundCPU) float64 { return c.self })
	}
	if relaxed != nil && len(relaxed.cpu) > 0 {
		rep.CPU.RelaxedNodeUs = medianOf(relaxed.cpu, func(c roundCPU) float64 { return c.node })
	}
	if refProc != nil && len(refProc.cpu) > 0 {
		rep.CPU.ReferenceProcessUs = medianOf(refProc.cpu, func(c roundCPU) float64 { return c.node })
	}
	rep.Goals = ingestGoals(cfg, rep)
	return rep, nil
}

// additiveBoundRatio is node ÷ 1/(1/http + 1/js): goal 2a's ratio, 0 when
// a side has no rate.
func additiveBoundRatio(node, http, js *benchSide) float64 {
	h, j := http.EventsPerSec, js.EventsPerSec
	if h <= 0 || j <= 0 {
		return 0
	}
	return ratio(node.EventsPerSec, 1/(1/h+1/j))
}

// ingestGoals checks the goals of issue 5 that rep measured: 1a (durable
// ingest ≥ 4 × JetStream's pipelined publisher with fsync per ack), 1b
// (durability tax ≥ 0.5), 2a (interval-fsync ingest ≥ 0.8 × the additive
// bound of the HTTP ceiling and JetStream) and, at one connection, 3.
func ingestGoals(cfg ingestConfig, rep *ingestReport) []goalCheck {
	var goals []goalCheck
	ok := func(sides ...*benchSide) bool {
		for _, s := range sides {
			if s == nil || s.Accepted == 0 {
				return false
			}
		}
		return true
	}
	if j := rep.JetStream; j != nil && !cfg.Relaxed {
		goals = append(goals, newGoalCheck("1a. events/s ≥ 4 × JetStream, fsync per ack", rep.Ratio.EventsPerSecJetStream, 4, "×", true, ok(&rep.Weft, j)))
	}
	if rep.Relaxed != nil {
		goals = append(goals, newGoalCheck("1b. fsync per ack ÷ interval fsync ≥ 0.5", rep.Ratio.DurabilityTax, 0.5, "×", true, ok(&rep.Weft, rep.Relaxed)))
	}
	if rep.JetStreamRelaxed != nil {
		goals = append(goals, newGoalCheck("2a. interval fsync ≥ 0.8 × 1/(1/http + 1/js)", rep.Ratio.RelaxedBound, 0.8, "×", true,
			ok(rep.Relaxed, &rep.Reference, rep.JetStreamRelaxed)))
		if p := rep.ReferenceProcess; p != nil {
			goals = append(goals, newGoalCheck("2a, http in a process of its own", rep.Ratio.RelaxedBoundProcess, 0.8, "×", true,
				ok(rep.Relaxed, p, rep.JetStreamRelaxed)))
		}
	}
	if j := rep.JetStream; j != nil && cfg.Concurrency == 1 && cfg.eventsPerRequest() == 1 {
		rep.Ratio.P50HopSum = ratio(rep.Weft.P50ms, rep.Reference.P50ms+j.P50ms)
		rep.Ratio.P99HopSum = ratio(rep.Weft.P99ms, rep.Reference.P99ms+j.P99ms)
		measured := ok(&rep.Weft, &rep.Reference, j)
		goals = append(goals,
			newGoalCheck("3. p50 ≤ 1.2 × (HTTP hop + fsynced publish)", rep.Weft.P50ms, 1.2*(rep.Reference.P50ms+j.P50ms), "ms", false, measured),
			newGoalCheck("3. p99 ≤ 1.5 × (sum of their p99s)", rep.Weft.P99ms, 1.5*(rep.Reference.P99ms+j.P99ms), "ms", false, measured))
		if p := rep.ReferenceProcess; p != nil {
			rep.Ratio.P50HopSumProcess = ratio(rep.Weft.P50ms, p.P50ms+j.P50ms)
			rep.Ratio.P99HopSumProcess = ratio(rep.Weft.P99ms, p.P99ms+j.P99ms)
			measured := ok(&rep.Weft, p, j)
			goals = append(goals,
				newGoalCheck("3. p50, hop to a process of its own", rep.Weft.P50ms, 1.2*(p.P50ms+j.P50ms), "ms", false, measured),
				newGoalCheck("3. p99, hop to a process of its own", rep.Weft.P99ms, 1.5*(p.P99ms+j.P99ms), "ms", false, measured))
		}
	}
	return goals
}

func (s *benchSide) summarize() {
	var m loadStats
	for _, r := range s.Rounds {
		m.Requests += r.Requests
		m.Accepted += r.Accepted
		m.Events += r.Events
		m.Status429 += r.Status429
		m.Status503 += r.Status503
		m.StatusOther += r.StatusOther
		m.Errors += r.Errors
		m.Seconds += r.Seconds
		if m.FirstError == "" {
			m.FirstError = r.FirstError
		}
	}
	med := func(f func(loadStats) float64) float64 { return medianOf(s.Rounds, f) }
	m.EventsPerSec = med(func(r loadStats) float64 { return r.EventsPerSec })
	m.RequestsPerSec = med(func(r loadStats) float64 { return r.RequestsPerSec })
	m.P50ms = med(func(r loadStats) float64 { return r.P50ms })
	m.P90ms = med(func(r loadStats) float64 { return r.P90ms })
	m.P99ms = med(func(r loadStats) float64 { return r.P99ms })
	m.MaxMs = med(func(r loadStats) float64 { return r.MaxMs })
	s.loadStats = m
}

// runLoad drives weft's ingress (or the reference) at target with
// cfg.Concurrency closed-loop workers posting CloudEvents for cfg.Duration;
// a 202 answer counts as accepted.
func runLoad(ctx context.Context, target string, cfg ingestConfig, tick func(sent int64, elapsed time.Duration)) (loadStats, error) {
	runID, err := uuid.NewV7()
	if err != nil {
		return loadStats{}, fmt.Errorf("generate run id: %w", err)
	}
	gen := newEventGen(cfg, runID.String())
	spec := loadSpec{
		Concurrency: cfg.Concurrency,
		Duration:    cfg.Duration,
		OK:          http.StatusAccepted,
		PerRequest:  cfg.eventsPerRequest(),
	}
	if cfg.client() == clientFastHTTP {
		client := newFastIngestClient(ctx, target, cfg.Concurrency, gen)
		defer client.close()
		spec.NewSender = client.sender
		return driveLoad(ctx, spec, tick)
	}
	spec.NewRequest = func(ctx context.Context, w, seq int) (*http.Request, error) {
		// A fresh buffer each time: the transport may still read
		// a body after Do returns (an early answer).
		buf := gen.body(make([]byte, 0, gen.sizeHint()), w, seq)
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, target, bytes.NewReader(buf))
		if err != nil {
			return nil, err
		}
		gen.httpHeader(req.Header, w, seq)
		return req, nil
	}
	return driveLoad(ctx, spec, tick)
}

// loadSpec is one closed-loop run: Concurrency workers, one keep-alive
// connection each, send requests one after the other for Duration.
type loadSpec struct {
	Concurrency int
	Duration    time.Duration
	// OK is the status that counts as a success (Accepted, latencies).
	OK int
	// PerRequest is the number of events one OK answer stands for.
	PerRequest int
	// Proxy, when set, is the forward proxy every request goes through, as
	// HTTP_PROXY would make it (absolute-form requests).
	Proxy *url.URL
	// NewRequest builds request seq of worker w, sent with net/http's client.
	NewRequest func(ctx context.Context, w, seq int) (*http.Request, error)
	// NewSender, when set, is used instead of NewRequest and net/http: it
	// returns worker w's sender and what to call when the worker is done.
	NewSender func(w int) (sendFunc, func())
}

// driveLoad runs spec. Requests in flight at the deadline are waited for
// and counted; the rates divide by the time until the last one answered.
// tick, when not nil, is called about twice a second from one goroutine.
func driveLoad(ctx context.Context, spec loadSpec, tick func(sent int64, elapsed time.Duration)) (loadStats, error) {
	tr := &http.Transport{
		Proxy:               nil, // measure the path to the target, not a proxy of the environment
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        spec.Concurrency,
		MaxIdleConnsPerHost: spec.Concurrency,
		MaxConnsPerHost:     spec.Concurrency,
		DisableCompression:  true,
		IdleConnTimeout:     90 * time.Second,
	}
	if spec.Proxy != nil {
		tr.Proxy = http.ProxyURL(spec.Proxy)
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	newSender := spec.NewSender
	if newSender == nil {
		newSender = func(w int) (sendFunc, func()) { return netHTTPSender(client, spec.NewRequest, w), func() {} }
	}

	type result struct {
		st  loadStats
		lat []time.Duration
	}
	results := make([]result, spec.Concurrency)
	var sent atomic.Int64
	start := time.Now()
	deadline := start.Add(spec.Duration)
	var wg sync.WaitGroup
	for w := range spec.Concurrency {
		wg.Go(func() {
			res := &results[w]
			res.lat = make([]time.Duration, 0, 1024)
			send, release := newSender(w)
			defer release()
			for seq := 0; ctx.Err() == nil && time.Now().Before(deadline); seq++ {
				status, d, err := send(ctx, seq)
				if errors.As(err, new(requestError)) {
					res.st.Errors++
					res.st.FirstError = err.Error()
					return
				}
				sent.Add(1)
				res.st.Requests++
				if err != nil {
					res.st.Errors++
					if res.st.FirstError == "" {
						res.st.FirstError = err.Error()
					}
					continue
				}
				switch status {
				case spec.OK:
					res.st.Accepted++
					res.lat = append(res.lat, d)
				case http.StatusTooManyRequests:
					res.st.Status429++
				case http.StatusServiceUnavailable:
					res.st.Status503++
				default:
					res.st.StatusOther++
					if res.st.FirstError == "" {
						res.st.FirstError = "status " + strconv.Itoa(status) + " " + http.StatusText(status)
					}
				}
			}
		})
	}
	if tick != nil {
		done := make(chan struct{})
		var tg sync.WaitGroup
		tg.Go(func() {
			t := time.NewTicker(500 * time.Millisecond)
			defer t.Stop()
			for {
				select {
				case <-done:
					return
				case <-t.C:
					tick(sent.Load(), time.Since(start))
				}
			}
		})
		defer tg.Wait()
		defer close(done)
	}
	wg.Wait()
	elapsed := time.Since(start)
	if err := ctx.Err(); err != nil {
		return loadStats{}, err
	}

	var st loadStats
	var lat []time.Duration
	for _, r := range results {
		st.Requests += r.st.Requests
		st.Accepted += r.st.Accepted
		st.Status429 += r.st.Status429
		st.Status503 += r.st.Status503
		st.StatusOther += r.st.StatusOther
		st.Errors += r.st.Errors
		if st.FirstError == "" {
			st.FirstError = r.st.FirstError
		}
		lat = append(lat, r.lat...)
	}
	st.Events = st.Accepted * int64(max(spec.PerRequest, 1))
	st.Seconds = elapsed.Seconds()
	st.EventsPerSec = float64(st.Events) / st.Seconds
	st.RequestsPerSec = float64(st.Accepted) / st.Seconds
	slices.Sort(lat)
	st.P50ms = ms(percentile(lat, 0.50))
	st.P90ms = ms(percentile(lat, 0.90))
	st.P99ms = ms(percentile(lat, 0.99))
	st.MaxMs = ms(percentile(lat, 1))
	return st, nil
}

// eventGen builds request bodies and headers with ids unique per run,
// worker and sequence number, so no event is dropped as a duplicate.
type eventGen struct {
	mode  string
	batch int
	runID string
	data  []byte // a JSON object of about the configured size
}

const (
	benchSource = "/weft/bench"
	benchType   = "dev.weft.bench"
)

func newEventGen(cfg ingestConfig, runID string) *eventGen {
	pad := max(cfg.Size-len(`{"pad":""}`), 0)
	data := make([]byte, 0, pad+16)
	data = append(data, `{"pad":"`...)
	data = append(data, strings.Repeat("x", pad)...)
	data = append(data, `"}`...)
	return &eventGen{mode: cfg.Mode, batch: cfg.eventsPerRequest(), runID: runID, data: data}
}

func (g *eventGen) sizeHint() int { return g.batch * (len(g.data) + 256) }

func (g *eventGen) id(b []byte, w, seq, i int) []byte {
	b = append(b, g.runID...)
	b = append(b, '-')
	b = strconv.AppendInt(b, int64(w), 10)
	b = append(b, '-')
	b = strconv.AppendInt(b, int64(seq), 10)
	if g.mode == "batch" {
		b = append(b, '-')
		b = strconv.AppendInt(b, int64(i), 10)
	}
	return b
}

func (g *eventGen) structured(b []byte, w, seq, i int) []byte {
	b = append(b, `{"specversion":"1.0","id":"`...)
	b = g.id(b, w, seq, i)
	b = append(b, `","source":"`+benchSource+`","type":"`+benchType+`","datacontenttype":"application/json","data":`...)
	b = append(b, g.data...)
	return append(b, '}')
}

// body appends the request body of request seq of worker w to b.
func (g *eventGen) body(b []byte, w, seq int) []byte {
	switch g.mode {
	case "structured":
		return g.structured(b, w, seq, 0)
	case "batch":
		b = append(b, '[')
		for i := range g.batch {
			if i > 0 {
				b = append(b, ',')
			}
			b = g.structured(b, w, seq, i)
		}
		return append(b, ']')
	}
	return append(b, g.data...)
}

// header calls set with each header of request seq of worker w: the
// content type and, in binary mode, the ce- attributes.
func (g *eventGen) header(w, seq int, set func(name, value string)) {
	switch g.mode {
	case "structured":
		set("Content-Type", "application/cloudevents+json")
	case "batch":
		set("Content-Type", "application/cloudevents-batch+json")
	default:
		set("Content-Type", "application/json")
		set("Ce-Specversion", "1.0")
		set("Ce-Id", string(g.id(nil, w, seq, 0)))
		set("Ce-Source", benchSource)
		set("Ce-Type", benchType)
	}
}

// httpHeader sets header's headers on h.
func (g *eventGen) httpHeader(h http.Header, w, seq int) {
	g.header(w, seq, func(name, value string) { h[name] = []string{value} })
}

// writeTable prints the report for people.
func (r *ingestReport) writeTable(w io.Writer) error {
	mode := r.Mode
	if r.Mode == "batch" {
		mode = fmt.Sprintf("batch of %d", r.Batch)
	}
	fmt.Fprintf(w, "ingest: %s, %d B data, concurrency %d, %d rounds of %s each, medians, %s client\n", mode, r.Size, r.Concurrency, r.Rounds, r.Duration, r.Client)
	fmt.Fprintf(w, "weft %s   reference: bare Go HTTP server answering 202 at %s\n\n", r.Weft.Target, r.Reference.Target)
	if err := writeSideBySide(w, r.Weft, r.Reference, sideBySideRows{requests: true, accepted: "202 (all rounds)", other: "other status"}); err != nil {
		return err
	}
	if p := r.ReferenceProcess; p != nil {
		fmt.Fprintf(w, "\nthe same server in a process of its own at %s, same rounds: %s requests/s, p50 %s, p99 %s; weft ÷ it %s\n",
			p.Target, fmtRate(p.RequestsPerSec), fmtMs(p.P50ms), fmtMs(p.P99ms), fmtRatio(r.Ratio.EventsPerSecProcess))
	}
	if j := r.JetStream; j != nil {
		fmt.Fprintf(w, "\n%s, same publishers, same rounds: %s events/s, p50 %s, p99 %s; weft ÷ JetStream %s\n",
			j.Target, fmtRate(j.EventsPerSec), fmtMs(j.P50ms), fmtMs(j.P99ms), fmtRatio(r.Ratio.EventsPerSecJetStream))
	}
	if x := r.Relaxed; x != nil {
		fmt.Fprintf(w, "weft --relaxed-sync at %s, same rounds: %s events/s, p50 %s, p99 %s; weft ÷ it %s (durability tax)\n",
			x.Target, fmtRate(x.EventsPerSec), fmtMs(x.P50ms), fmtMs(x.P99ms), fmtRatio(r.Ratio.DurabilityTax))
	}
	if j := r.JetStreamRelaxed; j != nil {
		fmt.Fprintf(w, "%s, same rounds: %s events/s; weft --relaxed-sync ÷ 1/(1/reference + 1/it) %s",
			j.Target, fmtRate(j.EventsPerSec), fmtRatio(r.Ratio.RelaxedBound))
		if r.ReferenceProcess != nil {
			fmt.Fprintf(w, ", with the reference in its own process %s", fmtRatio(r.Ratio.RelaxedBoundProcess))
		}
		fmt.Fprintln(w)
	}
	if c := r.CPU; c.ClientUs > 0 {
		us := func(v float64) string { return strconv.FormatFloat(v, 'f', 1, 64) + " µs" }
		parts := []string{"the " + r.Client + " client " + us(c.ClientUs)}
		if c.WeftNodeUs > 0 {
			parts = append([]string{"weft's node " + us(c.WeftNodeUs)}, parts...)
		}
		if c.ReferenceUs > 0 {
			parts = append(parts, "the reference, client and server, "+us(c.ReferenceUs))
		}
		if c.RelaxedNodeUs > 0 {
			parts = append(parts, "the --relaxed-sync node "+us(c.RelaxedNodeUs))
		}
		if c.ReferenceProcessUs > 0 {
			parts = append(parts, "the server in its own process "+us(c.ReferenceProcessUs))
		}
		fmt.Fprintf(w, "CPU per event: %s\n", strings.Join(parts, "; "))
	}
	if g := r.GroupCommit; g != nil {
		fmt.Fprintf(w, "group commit on weft's node: %.1f events per fsynced commit, %.0f %% of commits a lone event\n", g.EventsPerCommit, g.LoneCommitsPct)
	}
	if r.Ratio.P50HopSum > 0 {
		fmt.Fprintf(w, "weft ÷ (reference + JetStream): p50 %s, p99 %s\n", fmtRatio(r.Ratio.P50HopSum), fmtRatio(r.Ratio.P99HopSum))
		if r.ReferenceProcess != nil {
			fmt.Fprintf(w, "weft ÷ (reference in its own process + JetStream): p50 %s, p99 %s\n", fmtRatio(r.Ratio.P50HopSumProcess), fmtRatio(r.Ratio.P99HopSumProcess))
		}
	}
	if len(r.Goals) > 0 {
		writeGoals(w, "issue 5 goals:", r.Goals, 3)
	}
	if r.Weft.FirstError != "" {
		fmt.Fprintf(w, "\nweft's first failure: %s\n", r.Weft.FirstError)
	}
	return writeMachine(w, r.Machine, r.Date)
}

// sideBySideRows names what differs between the benches that print
// writeSideBySide's table.
type sideBySideRows struct {
	requests bool   // a requests/s row (when a request may carry several events)
	accepted string // the label of the successes' count
	other    string // the label of the other refusals' count
}

// writeSideBySide prints weft's and the reference's medians side by side,
// with the ratio weft ÷ reference, then their counts over all rounds.
func writeSideBySide(w io.Writer, weft, ref benchSide, rows sideBySideRows) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	row := func(name, a, b, ratio string) { fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t\n", name, a, b, ratio) }
	rates := func(name string, a, b float64) { row(name, fmtRate(a), fmtRate(b), fmtRatio(ratio(a, b))) }
	times := func(name string, a, b float64) { row(name, fmtMs(a), fmtMs(b), fmtRatio(ratio(a, b))) }
	counts := func(name string, a, b int64) { row(name, strconv.FormatInt(a, 10), strconv.FormatInt(b, 10), "") }
	row("", "weft", "reference", "weft/ref")
	rates("events/s", weft.EventsPerSec, ref.EventsPerSec)
	if rows.requests {
		rates("requests/s", weft.RequestsPerSec, ref.RequestsPerSec)
	}
	times("p50", weft.P50ms, ref.P50ms)
	times("p90", weft.P90ms, ref.P90ms)
	times("p99", weft.P99ms, ref.P99ms)
	times("max", weft.MaxMs, ref.MaxMs)
	counts(rows.accepted, weft.Accepted, ref.Accepted)
	counts("429", weft.Status429, ref.Status429)
	counts("503", weft.Status503, ref.Status503)
	counts(rows.other, weft.StatusOther, ref.StatusOther)
	counts("errors", weft.Errors, ref.Errors)
	return tw.Flush()
}

func fmtRate(v float64) string { return strconv.FormatFloat(v, 'f', 0, 64) }

func fmtMs(v float64) string { return strconv.FormatFloat(v, 'f', 3, 64) + " ms" }

// fmtRatio prints a ratio, or "-" when it is undefined (zero).
func fmtRatio(v float64) string {
	if v == 0 {
		return "-"
	}
	return strconv.FormatFloat(v, 'f', 3, 64)
}

// loadavg1 is the 1-minute load average from /proc/loadavg, or -1 where
// there is none.
func loadavg1() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return -1
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return -1
	}
	v, err := strconv.ParseFloat(f[0], 64)
	if err != nil {
		return -1
	}
	return v
}

// percentile is the nearest-rank percentile p (0 < p ≤ 1) of sorted d.
func percentile(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	i := int(math.Ceil(p*float64(len(d)))) - 1
	return d[min(max(i, 0), len(d)-1)]
}

// medianOf is the median of f over xs.
func medianOf[T any](xs []T, f func(T) float64) float64 {
	v := make([]float64, 0, len(xs))
	for _, x := range xs {
		v = append(v, f(x))
	}
	return median(v)
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

func ratio(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// checkBenchOutput refuses an -o the bench verbs cannot print.
func checkBenchOutput(g *globals) error {
	if g.output != "table" && g.output != "json" && g.output != "yaml" {
		return withCode(exitUsage, fmt.Errorf("-o %q: want table, json or yaml", g.output))
	}
	return nil
}

// benchProgress is where a bench writes its progress line: stderr when it
// is a terminal, else nowhere.
func benchProgress(g *globals) io.Writer {
	if f, ok := g.stderr.(*os.File); ok && isTerminal(f) {
		return f
	}
	return nil
}

// benchReport is a bench's result, printable as a table for people.
type benchReport interface{ writeTable(io.Writer) error }

// runBench is a bench subcommand's work once its flags are read: refuse
// bad flags (exit 2) and output formats, run it (with a progress line on a
// terminal), print its report, and exit 1 when weft's side measured
// nothing: nothing returns why, or "" when something was measured.
func runBench[R benchReport](g *globals, validate func() error, run func(progress io.Writer) (R, error), nothing func(R) string) error {
	if err := validate(); err != nil {
		return withCode(exitUsage, err)
	}
	if err := checkBenchOutput(g); err != nil {
		return err
	}
	rep, err := run(benchProgress(g))
	if err != nil {
		return err
	}
	if err := printReport(g, rep); err != nil {
		return err
	}
	if why := nothing(rep); why != "" {
		return withCode(exitError, errors.New(why))
	}
	return nil
}

// printReport prints rep as a table, or as JSON or YAML with -o.
func printReport(g *globals, rep benchReport) error {
	if g.output == "table" {
		return rep.writeTable(g.stdout)
	}
	return printOut(g.stdout, g.output, rep)
}

// requireNode fails with exit 6 at once when the node named by --server
// cannot be reached, through the client every verb uses. Any answer will do.
func requireNode(ctx context.Context, g *globals) error {
	resp, err := g.client().send(ctx, http.MethodGet, "/healthz", "", nil)
	if resp != nil {
		resp.Body.Close()
	}
	var ee *exitErr
	if errors.As(err, &ee) && ee.code == exitUnreachable {
		return err
	}
	return nil
}
