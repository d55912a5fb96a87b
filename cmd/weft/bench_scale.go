package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
)

// scaleConfig is one `weft bench scale` run.
type scaleConfig struct {
	Samples int    // cold starts per side per round
	Steps   int    // scale-up steps per round (0 = none)
	Rounds  int    // rounds; each measures weft, then by hand
	Weft    string // weft binary to run serve and the worker from; "" = this one
	Worker  string // worker binary (serves $PORT); "" = the weft binary's bench worker
}

func (c scaleConfig) validate() error {
	switch {
	case c.Samples < 1:
		return fmt.Errorf("--samples %d: want at least 1", c.Samples)
	case c.Rounds < 1:
		return fmt.Errorf("--rounds %d: want at least 1", c.Rounds)
	case c.Steps < 0:
		return fmt.Errorf("--steps %d: want 0 or more", c.Steps)
	}
	return nil
}

// The scale-up step of goal 7: a Function with scale target stepTarget runs
// one warm instance whose requests each take stepHold; then stepFactor ×
// stepTarget callers invoke it at once, in closed loops, until one answer
// comes from a second instance.
const (
	stepTarget = 2
	stepFactor = 8
	stepHold   = 50 * time.Millisecond
)

func newBenchScaleCmd(g *globals) *cobra.Command {
	c := scaleConfig{Samples: 10, Rounds: 3, Steps: 3}
	cmd := &cobra.Command{
		Use:   "scale [--samples 10] [--steps 3] [--rounds 3]",
		Short: "Scale from zero: a call to a Function with no instance → its answer, against the same worker spawned by hand",
		Long: `Starts a ` + "`weft serve`" + ` (temporary data folder, loopback ports). Each weft
sample applies a new Function with scale min 0 (no process), then times a
synchronous call through the router (POST /api/v1/invoke/NAME, over a warm
connection) until its answer, then deletes the Function and waits until its
process is gone. Each by-hand sample times the same worker binary (this
binary's hidden ` + "`bench worker`" + `) from exec, its port polled as tightly as
possible, to the answer of the same kind of request sent straight to it.
Rounds interleave weft and by hand; the table shows medians over rounds of
each round's percentiles.

Scale-up (--steps per round): a Function with scale {min: 1, target: 2} has one
warm instance that holds each request 50 ms; then 16 callers (8 × the target)
invoke it at once, in closed loops, and the time from the step to the first
answer from a second instance is taken.

Issue 5's goal 7 is checked: p50 ≤ 1.2 × by hand + 3 ms, p90 ≤ 1.5 × by hand;
a step's second instance answering within 200 ms + 1.5 × by hand (p50, p90).`,
		Example: `  weft bench scale --samples 20 --rounds 3`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runBench(g, c.validate,
				func(progress io.Writer) (*scaleReport, error) { return benchScale(cmd.Context(), c, progress) },
				func(rep *scaleReport) string { return rep.Weft.noneAccepted("no cold call answered") })
		},
	}
	f := cmd.Flags()
	f.IntVar(&c.Samples, "samples", c.Samples, "cold starts per side per round")
	f.IntVar(&c.Steps, "steps", c.Steps, "scale-up steps per round (0 = none)")
	f.IntVar(&c.Rounds, "rounds", c.Rounds, "rounds; each measures weft then by hand")
	f.StringVar(&c.Weft, "weft", "", "weft binary to run `weft serve` and the worker from (default: this one)")
	f.StringVar(&c.Worker, "worker", "", "worker binary: any program serving HTTP on 127.0.0.1:$PORT, holding and replying as `bench worker` does with $BENCH_HOLD for --steps (default: the weft binary's hidden `bench worker`)")
	return cmd
}

// scaleReport is what `weft bench scale` prints.
type scaleReport struct {
	Scenario string    `json:"scenario"`
	Date     time.Time `json:"date"`
	Samples  int       `json:"samples"`
	Rounds   int       `json:"rounds"`
	Worker   string    `json:"worker"`
	// Weft is invoke sent → answer read, for a Function at zero.
	Weft benchSide `json:"weft"`
	// ByHand is exec → port open → the same request answered.
	ByHand benchSide `json:"by_hand"`
	// Step is a load step to 8 × the target concurrency on one warm
	// instance → the first answer from a second instance.
	Step  *benchSide `json:"step,omitempty"`
	Ratio struct {
		P50 float64 `json:"p50"`
		P90 float64 `json:"p90"`
	} `json:"ratio"`
	Goals   []goalCheck `json:"goals"`
	Machine machineInfo `json:"machine"`
}

func benchScale(ctx context.Context, cfg scaleConfig, progress io.Writer) (*scaleReport, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	exe, err := weftExecutable(cfg.Weft)
	if err != nil {
		return nil, err
	}
	rep := &scaleReport{Scenario: "scale", Date: time.Now().UTC().Truncate(time.Second), Samples: cfg.Samples, Rounds: cfg.Rounds,
		Worker:  strings.Join(workerArgv(exe, cfg.Worker), " "),
		Machine: thisMachine()}
	dir, err := os.MkdirTemp("", "weft-bench-scale")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	node, base, err := startWeftNode(ctx, exe, dir, "")
	if err != nil {
		return nil, err
	}
	defer node.stop()
	rep.Weft.Target = base + "/api/v1/invoke/NAME, a new Function at scale 0 per sample"
	argv := workerArgv(exe, cfg.Worker)
	rep.ByHand.Target = "exec the worker, poll its port every " + byHandPoll.String() + ", POST"
	c := e2eClient()
	defer c.CloseIdleConnections()
	g := &globals{server: base, output: "json", stdout: io.Discard, stderr: io.Discard}
	// samples runs n samples of one side and summarizes them as a round.
	samples := func(r, n int, side string, sample func(i int) (time.Duration, error)) (loadStats, error) {
		var st loadStats
		var lat []time.Duration
		start := time.Now()
		for i := range n {
			if progress != nil {
				fmt.Fprintf(progress, "\r\033[Kbench scale: round %d/%d, %s %d/%d", r, cfg.Rounds, side, i+1, n)
			}
			st.Requests++
			d, err := sample(i)
			if err != nil {
				if ctx.Err() != nil {
					return st, ctx.Err()
				}
				st.Errors++
				if st.FirstError == "" {
					st.FirstError = err.Error()
				}
				continue
			}
			lat = append(lat, d)
		}
		return latencyStats(st, lat, time.Since(start)), nil
	}
	for r := 1; r <= cfg.Rounds; r++ {
		st, err := samples(r, cfg.Samples, "weft", func(i int) (time.Duration, error) {
			return scaleWeftSample(ctx, g, c, node, argv, fmt.Sprintf("bench-cold-%d-%d", r, i))
		})
		if err != nil {
			return nil, err
		}
		rep.Weft.Rounds = append(rep.Weft.Rounds, st)
		if st, err = samples(r, cfg.Samples, "by hand", func(int) (time.Duration, error) { return scaleByHandSample(ctx, argv) }); err != nil {
			return nil, err
		}
		rep.ByHand.Rounds = append(rep.ByHand.Rounds, st)
		if cfg.Steps == 0 {
			continue
		}
		if rep.Step == nil {
			rep.Step = &benchSide{Target: fmt.Sprintf("%d callers at once on one warm instance (target %d, %s per request) → an answer from a second",
				stepFactor*stepTarget, stepTarget, stepHold)}
		}
		if st, err = samples(r, cfg.Steps, "step", func(i int) (time.Duration, error) {
			return scaleStepSample(ctx, g, node, argv, fmt.Sprintf("bench-step-%d-%d", r, i))
		}); err != nil {
			return nil, err
		}
		rep.Step.Rounds = append(rep.Step.Rounds, st)
	}
	if progress != nil {
		fmt.Fprint(progress, "\r\033[K")
	}
	rep.Machine.Load1End = loadavg1()
	rep.Weft.summarize()
	rep.ByHand.summarize()
	rep.Ratio.P50 = ratio(rep.Weft.P50ms, rep.ByHand.P50ms)
	rep.Ratio.P90 = ratio(rep.Weft.P90ms, rep.ByHand.P90ms)
	measured := rep.Weft.Accepted > 0 && rep.ByHand.Accepted > 0
	rep.Goals = []goalCheck{
		newGoalCheck("p50 ≤ 1.2 × by hand + 3 ms", rep.Weft.P50ms, 1.2*rep.ByHand.P50ms+3, "ms", false, measured),
		newGoalCheck("p90 ≤ 1.5 × by hand", rep.Weft.P90ms, 1.5*rep.ByHand.P90ms, "ms", false, measured),
	}
	if s := rep.Step; s != nil {
		s.summarize()
		measured := s.Accepted > 0 && rep.ByHand.Accepted > 0
		rep.Goals = append(rep.Goals,
			newGoalCheck("step: p50 ≤ 200 ms + 1.5 × by hand", s.P50ms, 200+1.5*rep.ByHand.P50ms, "ms", false, measured),
			newGoalCheck("step: p90 ≤ 200 ms + 1.5 × by hand", s.P90ms, 200+1.5*rep.ByHand.P90ms, "ms", false, measured))
	}
	return rep, nil
}

// scaleStepSample applies Function name with one warm instance, steps the
// load to stepFactor × stepTarget concurrent invokes and times the step →
// the first answer from another instance; then deletes the function and
// waits until no process is left under the node (untimed).
func scaleStepSample(ctx context.Context, g *globals, node *benchProc, argv []string, name string) (time.Duration, error) {
	manifest := fmt.Sprintf("apiVersion: weft.dev/v1\nkind: Function\nmetadata: {name: %s}\nspec:\n  command: %s\n"+
		"  env: [{name: %s, value: %q}]\n  scale: {min: 1, max: 4, target: %d}\n",
		name, yamlList(argv), benchWorkerHoldEnv, stepHold.String(), stepTarget)
	if err := g.client().do(ctx, http.MethodPost, "/api/v1/apply?file=bench-step.yaml", "application/yaml", strings.NewReader(manifest), nil); err != nil {
		return 0, fmt.Errorf("apply %s: %w", name, err)
	}
	defer func() {
		_ = g.client().do(context.WithoutCancel(ctx), http.MethodDelete, "/api/v1/resources/functions/"+name, "", nil, nil)
		_ = node.waitUntil(context.WithoutCancel(ctx), 30*time.Second, "rid of "+name+"'s processes", func() bool { return len(descendants(node.pid())) == 0 })
	}()
	callers := stepFactor * stepTarget
	c := &http.Client{Transport: &http.Transport{Proxy: nil, MaxIdleConnsPerHost: callers}}
	defer c.CloseIdleConnections()
	url := strings.TrimRight(g.server, "/") + "/api/v1/invoke/" + name
	first, err := invokeSource(ctx, c, url) // waits for the instance min 1 starts
	if err != nil {
		return 0, err
	}
	if n := len(descendants(node.pid())); n != 1 {
		return 0, fmt.Errorf("%s: %d processes under the node before the step, want 1", name, n)
	}
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	second := make(chan time.Duration, 1)
	failed := make(chan error, callers)
	var wg sync.WaitGroup
	t0 := time.Now()
	for range callers {
		wg.Go(func() {
			for sctx.Err() == nil {
				src, err := invokeSource(sctx, c, url)
				switch {
				case sctx.Err() != nil:
					return
				case err != nil:
					failed <- err
					cancel()
					return
				case src != first:
					select {
					case second <- time.Since(t0):
					default:
					}
					cancel()
					return
				}
			}
		})
	}
	wg.Wait()
	select {
	case d := <-second:
		return d, nil
	case err := <-failed:
		return 0, err
	default:
		return 0, fmt.Errorf("%s: no answer from a second instance within 30s of the step", name)
	}
}

// invokeSource invokes url once and returns the source of the bench
// worker's reply event (its process).
func invokeSource(ctx context.Context, c *http.Client, url string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(`{"n":1}`))
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("invoke: %s: %s", resp.Status, bytes.TrimSpace(body))
	}
	var reply struct {
		Source string `json:"source"`
	}
	if err := json.Unmarshal(body, &reply); err != nil || !strings.HasPrefix(reply.Source, benchWorkerSource) {
		return "", fmt.Errorf("invoke: reply %q is not the bench worker's", body)
	}
	return reply.Source, nil
}

// scaleWeftSample applies Function name at scale 0, times one invoke until
// its answer, then deletes the function and waits until no process is left
// under the node (untimed).
func scaleWeftSample(ctx context.Context, g *globals, c *http.Client, node *benchProc, argv []string, name string) (time.Duration, error) {
	manifest := fmt.Sprintf("apiVersion: weft.dev/v1\nkind: Function\nmetadata: {name: %s}\nspec:\n  command: %s\n  scale: {min: 0, max: 1}\n", name, yamlList(argv))
	if err := g.client().do(ctx, http.MethodPost, "/api/v1/apply?file=bench-scale.yaml", "application/yaml", strings.NewReader(manifest), nil); err != nil {
		return 0, fmt.Errorf("apply %s: %w", name, err)
	}
	defer func() {
		_ = g.client().do(context.WithoutCancel(ctx), http.MethodDelete, "/api/v1/resources/functions/"+name, "", nil, nil)
		_ = node.waitUntil(context.WithoutCancel(ctx), 30*time.Second, "rid of "+name+"'s process", func() bool { return len(descendants(node.pid())) == 0 })
	}()
	if n := len(descendants(node.pid())); n != 0 {
		return 0, fmt.Errorf("%s: %d processes under the node before the call, want none", name, n)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimRight(g.server, "/")+"/api/v1/invoke/"+name, strings.NewReader(`{"n":1}`))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	t0 := time.Now()
	resp, err := c.Do(req)
	if err != nil {
		return 0, err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	d := time.Since(t0)
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusNoContent {
		return 0, fmt.Errorf("invoke %s: %s", name, resp.Status)
	}
	return d, nil
}

// byHandPoll is the pause between two connection attempts to a worker
// started by hand: the reference's resolution.
const byHandPoll = 100 * time.Microsecond

// workerArgv is the worker's command line: worker, or this weft's hidden
// bench worker.
func workerArgv(exe, worker string) []string {
	if worker != "" {
		// A relative path is the bench's, not that of the manifest folder
		// the node resolves a Function's command against.
		if strings.ContainsRune(worker, filepath.Separator) {
			if abs, err := filepath.Abs(worker); err == nil {
				worker = abs
			}
		}
		return []string{worker}
	}
	return []string{exe, "bench", "worker"}
}

// yamlList renders argv as a YAML flow sequence of quoted strings.
func yamlList(argv []string) string {
	q := make([]string, len(argv))
	for i, a := range argv {
		q[i] = strconv.Quote(a)
	}
	return "[" + strings.Join(q, ", ") + "]"
}

// workerCommand is the worker argv on 127.0.0.1:port in a process group of
// its own, with PATH, PORT and env only; killed if the bench dies first (see
// startProc).
func workerCommand(argv []string, port string, env ...string) *exec.Cmd {
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "PORT=" + port}, env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	return cmd
}

// scaleByHandSample times exec → the port accepts → one CloudEvent POSTed
// and answered, polling the port every byHandPoll (the idea of workers'
// BenchmarkColdStart), then kills the process (untimed).
func scaleByHandSample(ctx context.Context, argv []string) (time.Duration, error) {
	addr, err := freeAddr()
	if err != nil {
		return 0, err
	}
	_, port, _ := net.SplitHostPort(addr)
	cmd := workerCommand(argv, port)
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("start bench worker: %w", err)
	}
	defer func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		_ = cmd.Wait()
	}()
	deadline := t0.Add(30 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return 0, fmt.Errorf("bench worker: port %s not open after 30s", port)
		}
		// A short pause, not a spin: on two cores a spinning poller
		// takes the CPU the starting worker needs (measured: a spin made
		// the spawn about 1.8 times slower than 50–200 µs pauses).
		time.Sleep(byHandPoll)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+addr+"/", bytes.NewReader([]byte(`{"n":1}`)))
	if err != nil {
		return 0, err
	}
	req.Header = http.Header{"Content-Type": {"application/json"}, "Ce-Specversion": {"1.0"}, "Ce-Id": {"by-hand"},
		"Ce-Source": {benchSource}, "Ce-Type": {"dev.weft.invoke"}}
	resp, err := client.Do(req)
	if err != nil {
		return 0, err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	d := time.Since(t0)
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("bench worker answered %s", resp.Status)
	}
	return d, nil
}

// writeTable prints the report for people.
func (r *scaleReport) writeTable(w io.Writer) error {
	fmt.Fprintf(w, "scale from zero: %d samples per side per round, %d rounds, medians of each round's percentiles\n", r.Samples, r.Rounds)
	fmt.Fprintf(w, "  weft     %s\n  by hand  %s\n  worker   %s\n\n", r.Weft.Target, r.ByHand.Target, r.Worker)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	lat := func(v float64) string { return strconv.FormatFloat(v, 'f', 2, 64) + " ms" }
	fmt.Fprintf(tw, "\tp50\tp90\tmax\tsamples\terrors\t\n")
	for _, s := range []struct {
		name string
		b    *benchSide
	}{{"weft", &r.Weft}, {"by hand", &r.ByHand}, {"step", r.Step}} {
		if s.b == nil {
			continue
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\t\n", s.name, lat(s.b.P50ms), lat(s.b.P90ms), lat(s.b.MaxMs), s.b.Accepted, s.b.Errors)
	}
	fmt.Fprintf(tw, "weft ÷ by hand\t%.2f\t%.2f\t\t\t\t\n", r.Ratio.P50, r.Ratio.P90)
	if err := tw.Flush(); err != nil {
		return err
	}
	if r.Weft.FirstError != "" {
		fmt.Fprintf(w, "\nweft's first failure: %s\n", r.Weft.FirstError)
	}
	if r.Step != nil {
		fmt.Fprintf(w, "  step     %s\n", r.Step.Target)
		if r.Step.FirstError != "" {
			fmt.Fprintf(w, "step's first failure: %s\n", r.Step.FirstError)
		}
	}
	writeGoals(w, "goal 7 (issue 5):", r.Goals, 3)
	return writeMachine(w, r.Machine, r.Date)
}
