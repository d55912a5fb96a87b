package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"
)

// natsConfig is one `weft bench nats` run: issue 5's goal 2b, the node's
// NATS ingress against JetStream publishes of the same bytes.
type natsConfig struct {
	URL         string        // the node's NATS ingress (weft serve --nats)
	Subject     string        // where events are published, under weft.in.
	Duration    time.Duration // length of one round on one side
	Concurrency int           // closed-loop publishers sharing one connection
	Size        int           // bytes of event data per event
	Rounds      int           // rounds; each runs weft then the reference
	Relaxed     bool          // the reference syncs on an interval, as a node run with --relaxed-sync
	// OwnProcess also measures JetStream in a process of its own, run from
	// Weft (this binary when empty).
	OwnProcess bool
	Weft       string
}

func (c natsConfig) validate() error {
	return validateClosedLoop(c.Duration, c.Concurrency, c.Size, c.Rounds)
}

// natsRequestTimeout bounds one publish's wait for its acknowledgement.
const natsRequestTimeout = 10 * time.Second

func newBenchNATSCmd(g *globals) *cobra.Command {
	c := natsConfig{URL: "nats://127.0.0.1:4222", Subject: "weft.in.bench", Duration: 10 * time.Second, Concurrency: 16, Size: 1024, Rounds: 3}
	cmd := &cobra.Command{
		Use:   "nats [--url nats://127.0.0.1:4222] [--duration 10s] [--concurrency 16] [--size 1024] [--rounds 3] [--relaxed-sync]",
		Short: "NATS ingress throughput and publish→ack latency, against JetStream publishes of the same events",
		Long: `Closed loop: --concurrency publishers on one connection each publish a
structured CloudEvent (unique id) to the node's NATS ingress as a request, and
wait for its acknowledgement after storage, for --duration. The reference is
JetStream alone, embedded in this process and reached over loopback TCP as the
node is, synced as the node is (fsync before every ack, or on an interval with
--relaxed-sync): the same publishers publish the same bytes with a
Nats-Msg-Id and wait for each PubAck. Rounds interleave weft and the reference;
the table shows medians over rounds and the ratio weft ÷ reference (issue 5's
goal 2b asks at least 0.8 with interval fsync).

With --reference-process (the default) each round also publishes the same way
to JetStream in a process of its own (weft bench nats-idle, run from --weft),
as the node is one: in this process one Go scheduler runs the server and its
publishers together. Goal 2b is checked against both.

CPU per event is user+system time over the events a side stored: for weft
the node's (process_cpu_seconds_total from --server's /metrics) and this
process's publishers'; for the reference this process's, which holds its
server too. On a machine the two sides saturate, throughput follows it.

Answers {"code":429} and {"code":503} are counted apart, as are other refusals
and transport errors (a timeout, no responders). Exit 1 when weft acknowledged
nothing, 6 when its NATS port cannot be reached.`,
		Example: `  weft bench nats --relaxed-sync --concurrency 64 --duration 4s
  weft bench nats --url nats://10.0.0.5:4222 -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			node := g.client()
			return runBench(g, c.validate,
				func(progress io.Writer) (*natsReport, error) {
					return benchNATS(ctx, c, nodeCPUProbe(node), progress)
				},
				func(rep *natsReport) string { return rep.Weft.noneAccepted("weft acknowledged no event") })
		},
	}
	f := cmd.Flags()
	f.StringVar(&c.URL, "url", c.URL, "URL of the node's NATS ingress (weft serve --nats)")
	f.DurationVar(&c.Duration, "duration", c.Duration, "length of each round on each side")
	f.IntVar(&c.Concurrency, "concurrency", c.Concurrency, "concurrent closed-loop publishers")
	f.IntVar(&c.Size, "size", c.Size, "bytes of event data per event")
	f.IntVar(&c.Rounds, "rounds", c.Rounds, "rounds; each measures weft then the reference")
	f.BoolVar(&c.Relaxed, "relaxed-sync", false, "sync the JetStream reference on an interval, as a node run with --relaxed-sync (goal 2b)")
	f.BoolVar(&c.OwnProcess, "reference-process", true, "also measure JetStream in a process of its own")
	f.StringVar(&c.Weft, "weft", "", "weft binary to run that process from (default: this one)")
	return cmd
}

// natsReport is what `weft bench nats` prints, as a table or -o json.
type natsReport struct {
	Scenario    string    `json:"scenario"`
	Date        time.Time `json:"date"`
	Sync        string    `json:"sync"` // of the reference: "fsync before every ack" or "interval fsync"
	Size        int       `json:"size"`
	Concurrency int       `json:"concurrency"`
	Duration    string    `json:"duration"`
	Rounds      int       `json:"rounds"`
	Weft        benchSide `json:"weft"`
	Reference   benchSide `json:"reference"`
	// ReferenceProcess is JetStream in a process of its own.
	ReferenceProcess *benchSide `json:"reference_process,omitempty"`
	// Ratio is weft ÷ reference of the medians: above 1 is better for
	// throughput, below 1 for latency. Zero when undefined.
	Ratio struct {
		EventsPerSec float64 `json:"events_per_sec"`
		P50          float64 `json:"p50"`
		P99          float64 `json:"p99"`
		// EventsPerSecProcess is weft ÷ JetStream in a process of its own.
		EventsPerSecProcess float64 `json:"events_per_sec_process,omitempty"`
	} `json:"ratio"`
	// CPU is user+system time per stored event, medians over rounds; zero
	// where it was not measured (the node's /metrics out of reach).
	CPU struct {
		WeftNodeUs       float64 `json:"weft_node_us_per_event"`
		WeftPublishersUs float64 `json:"weft_publishers_us_per_event"`
		WeftUs           float64 `json:"weft_us_per_event"` // node and publishers
		ReferenceUs      float64 `json:"reference_us_per_event"`
		Ratio            float64 `json:"ratio"` // weft ÷ reference
		// ReferenceProcessUs is JetStream in its own process and this
		// process's publishers.
		ReferenceProcessUs float64 `json:"reference_process_us_per_event,omitempty"`
	} `json:"cpu"`
	Goals   []goalCheck `json:"goals,omitempty"`
	Machine machineInfo `json:"machine"`
}

// benchNATS runs cfg's rounds against the node's NATS ingress and a
// JetStream reference it starts itself, interleaved, and summarizes them.
func benchNATS(ctx context.Context, cfg natsConfig, node cpuProbe, progress io.Writer) (*natsReport, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	nc, err := nats.Connect(cfg.URL, nats.Name("weft bench nats"), nats.MaxReconnects(0))
	if err != nil {
		return nil, withCode(exitUnreachable, fmt.Errorf("bench nats: %s: %w", cfg.URL, err))
	}
	defer nc.Close()
	js, err := startJetStreamRef(ctx, cfg.Relaxed, true)
	if err != nil {
		return nil, err
	}
	defer js.stop()
	rep := &natsReport{Scenario: "nats", Date: time.Now().UTC().Truncate(time.Second), Sync: "fsync before every ack",
		Size: cfg.Size, Concurrency: cfg.Concurrency, Duration: cfg.Duration.String(), Rounds: cfg.Rounds,
		Machine: thisMachine()}
	if cfg.Relaxed {
		rep.Sync = "interval fsync"
	}
	rep.Weft.Target = cfg.URL + " " + cfg.Subject
	rep.Reference.Target = "embedded JetStream over TCP, " + rep.Sync
	var weftCPU, refCPU, ownCPU []roundCPU
	type natsSide struct {
		name    string
		side    *benchSide
		cpu     *[]roundCPU
		probe   cpuProbe
		publish natsPublish
	}
	sides := []natsSide{
		{"weft", &rep.Weft, &weftCPU, node, weftPublish(nc, cfg.Subject)},
		{"reference", &rep.Reference, &refCPU, nil, jetStreamPublish(js.js)},
	}
	if cfg.OwnProcess {
		bin, err := weftExecutable(cfg.Weft)
		if err != nil {
			return nil, err
		}
		jp, err := startJetStreamProcess(ctx, bin, cfg.Relaxed)
		if err != nil {
			return nil, err
		}
		defer jp.stop()
		rep.ReferenceProcess = &benchSide{Target: "JetStream in a process of its own (" + bin + " bench nats-idle) over TCP, " + rep.Sync}
		sides = append(sides, natsSide{"reference, own process", rep.ReferenceProcess, &ownCPU, jp.cpu, jetStreamPublish(jp.js)})
	}
	for r := 1; r <= cfg.Rounds; r++ {
		for _, s := range sides {
			runID, err := uuid.NewV7()
			if err != nil {
				return nil, fmt.Errorf("generate run id: %w", err)
			}
			st, cpu, ok := cpuPerEvent(ctx, s.probe, func() loadStats {
				return runNATSLoad(ctx, cfg, runID.String(), s.publish, func(sent int64, elapsed time.Duration) {
					if progress != nil {
						fmt.Fprintf(progress, "\r\033[Kbench nats: round %d/%d, %s: %.1fs, %d events", r, cfg.Rounds, s.name, elapsed.Seconds(), sent)
					}
				})
			})
			s.side.Rounds = append(s.side.Rounds, st)
			if ok {
				*s.cpu = append(*s.cpu, cpu)
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
	if len(weftCPU) > 0 && len(refCPU) > 0 && weftCPU[0].node > 0 {
		rep.CPU.WeftNodeUs = medianOf(weftCPU, func(c roundCPU) float64 { return c.node })
		rep.CPU.WeftPublishersUs = medianOf(weftCPU, func(c roundCPU) float64 { return c.self })
		rep.CPU.WeftUs = medianOf(weftCPU, func(c roundCPU) float64 { return c.node + c.self })
		rep.CPU.ReferenceUs = medianOf(refCPU, func(c roundCPU) float64 { return c.self })
		rep.CPU.Ratio = ratio(rep.CPU.WeftUs, rep.CPU.ReferenceUs)
	}
	if p := rep.ReferenceProcess; p != nil {
		p.summarize()
		rep.Ratio.EventsPerSecProcess = ratio(rep.Weft.EventsPerSec, p.EventsPerSec)
		if len(ownCPU) > 0 {
			rep.CPU.ReferenceProcessUs = medianOf(ownCPU, func(c roundCPU) float64 { return c.node + c.self })
		}
	}
	if cfg.Relaxed {
		rep.Goals = []goalCheck{newGoalCheck("2b. NATS ingress ≥ 0.8 × raw JetStream publish", rep.Ratio.EventsPerSec, 0.8, "×", true,
			rep.Weft.Accepted > 0 && rep.Reference.Accepted > 0)}
		if p := rep.ReferenceProcess; p != nil {
			rep.Goals = append(rep.Goals, newGoalCheck("2b, JetStream in a process of its own", rep.Ratio.EventsPerSecProcess, 0.8, "×", true,
				rep.Weft.Accepted > 0 && p.Accepted > 0))
		}
	}
	return rep, nil
}

// natsPublish publishes one event and waits for its acknowledgement.
type natsPublish func(ctx context.Context, id string, event []byte) natsOutcome

// natsOutcome classifies one publish as loadStats counts it.
type natsOutcome struct {
	code int   // 0 stored; else the refusal's code (429, 503, 400…)
	err  error // a refusal's message, or a transport error (code 0)
}

// weftPublish publishes to the node's NATS ingress as a request and reads
// its acknowledgement: {"stored":n} or {"error":…, "code":…}.
func weftPublish(nc *nats.Conn, subject string) natsPublish {
	return func(ctx context.Context, _ string, event []byte) natsOutcome {
		ctx, cancel := context.WithTimeout(ctx, natsRequestTimeout)
		defer cancel()
		reply, err := nc.RequestWithContext(ctx, subject, event)
		if err != nil {
			return natsOutcome{err: err}
		}
		var ack struct {
			Stored *int   `json:"stored"`
			Error  string `json:"error"`
			Code   int    `json:"code"`
		}
		switch err := json.Unmarshal(reply.Data, &ack); {
		case err != nil:
			return natsOutcome{err: fmt.Errorf("acknowledgement %q: %w", reply.Data, err)}
		case ack.Stored != nil && *ack.Stored == 1:
			return natsOutcome{}
		case ack.Code != 0:
			return natsOutcome{code: ack.Code, err: errors.New(ack.Error)}
		default:
			return natsOutcome{err: fmt.Errorf("unexpected acknowledgement %s", reply.Data)}
		}
	}
}

// jetStreamPublish publishes the same bytes to the reference's stream with
// the event's id as Nats-Msg-Id and waits for the PubAck.
func jetStreamPublish(js jetstream.JetStream) natsPublish {
	return func(ctx context.Context, id string, event []byte) natsOutcome {
		ctx, cancel := context.WithTimeout(ctx, natsRequestTimeout)
		defer cancel()
		if _, err := js.Publish(ctx, "bench.events", event, jetstream.WithMsgID(id)); err != nil {
			return natsOutcome{err: err}
		}
		return natsOutcome{}
	}
}

// runNATSLoad drives publish with cfg.Concurrency closed-loop publishers
// for cfg.Duration, each event a structured CloudEvent with a new id.
func runNATSLoad(ctx context.Context, cfg natsConfig, runID string, publish natsPublish, tick func(sent int64, elapsed time.Duration)) loadStats {
	gen := newEventGen(ingestConfig{Size: cfg.Size, Mode: "structured"}, runID)
	var (
		st                                           loadStats
		mu                                           sync.Mutex
		lat                                          []time.Duration
		sent                                         atomic.Int64
		firstErr                                     atomic.Value
		refused429, refused503, refusedOther, failed atomic.Int64
	)
	start := time.Now()
	deadline := start.Add(cfg.Duration)
	stopTicks := make(chan struct{})
	var ticker sync.WaitGroup
	ticker.Go(func() {
		t := time.NewTicker(250 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stopTicks:
				return
			case <-t.C:
				tick(sent.Load(), time.Since(start))
			}
		}
	})
	var wg sync.WaitGroup
	for w := range cfg.Concurrency {
		wg.Go(func() {
			var mine []time.Duration
			var buf []byte
			for seq := 0; time.Now().Before(deadline) && ctx.Err() == nil; seq++ {
				buf = gen.structured(buf[:0], w, seq, 0)
				id := string(gen.id(nil, w, seq, 0))
				t0 := time.Now()
				out := publish(ctx, id, buf)
				sent.Add(1)
				if out.err == nil {
					mine = append(mine, time.Since(t0))
					continue
				}
				switch out.code {
				case 429:
					refused429.Add(1)
				case 503:
					refused503.Add(1)
				case 0:
					failed.Add(1) // a transport error
				default:
					refusedOther.Add(1)
				}
				firstErr.CompareAndSwap(nil, out.err.Error())
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		})
	}
	wg.Wait()
	close(stopTicks)
	ticker.Wait()
	st.Requests = sent.Load()
	st.Status429, st.Status503, st.StatusOther, st.Errors = refused429.Load(), refused503.Load(), refusedOther.Load(), failed.Load()
	if e, ok := firstErr.Load().(string); ok {
		st.FirstError = e
	}
	return latencyStats(st, lat, time.Since(start))
}

// writeTable prints the report for people.
func (r *natsReport) writeTable(w io.Writer) error {
	fmt.Fprintf(w, "nats: structured events, %d B data, concurrency %d, %d rounds of %s each, medians\n", r.Size, r.Concurrency, r.Rounds, r.Duration)
	fmt.Fprintf(w, "weft %s   reference: %s\n\n", r.Weft.Target, r.Reference.Target)
	if err := writeSideBySide(w, r.Weft, r.Reference, sideBySideRows{accepted: "stored (all rounds)", other: "other refusal"}); err != nil {
		return err
	}
	if r.CPU.WeftUs > 0 {
		us := func(v float64) string { return strconv.FormatFloat(v, 'f', 1, 64) + " µs" }
		fmt.Fprintf(w, "\nCPU per stored event: weft %s (node %s, publishers %s), reference %s (server and publishers), weft/ref %s\n",
			us(r.CPU.WeftUs), us(r.CPU.WeftNodeUs), us(r.CPU.WeftPublishersUs), us(r.CPU.ReferenceUs), fmtRatio(r.CPU.Ratio))
	}
	if p := r.ReferenceProcess; p != nil {
		fmt.Fprintf(w, "\n%s, same rounds: %s events/s, p50 %s, p99 %s; weft ÷ it %s",
			p.Target, fmtRate(p.EventsPerSec), fmtMs(p.P50ms), fmtMs(p.P99ms), fmtRatio(r.Ratio.EventsPerSecProcess))
		if r.CPU.ReferenceProcessUs > 0 {
			fmt.Fprintf(w, "; CPU per stored event %s (server and publishers)", strconv.FormatFloat(r.CPU.ReferenceProcessUs, 'f', 1, 64)+" µs")
		}
		fmt.Fprintln(w)
	}
	if len(r.Goals) > 0 {
		writeGoals(w, "issue 5 goals:", r.Goals, 3)
	}
	if r.Weft.FirstError != "" {
		fmt.Fprintf(w, "\nweft's first failure: %s\n", r.Weft.FirstError)
	}
	return writeMachine(w, r.Machine, r.Date)
}
