package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"text/tabwriter"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"
)

// e2eConfig is one `weft bench e2e` run.
type e2eConfig struct {
	Duration time.Duration // length of one round on each side
	Rounds   int           // rounds; each measures weft, then every hop
	Size     int           // bytes of event data per event
	Weft     string        // weft binary to run serve and the worker from; "" = this one
	Worker   string        // worker binary (serves $PORT, reports arrivals); "" = the weft binary's bench worker
}

func (c e2eConfig) validate() error {
	switch {
	case c.Duration <= 0:
		return fmt.Errorf("--duration %s: want more than 0", c.Duration)
	case c.Rounds < 1:
		return fmt.Errorf("--rounds %d: want at least 1", c.Rounds)
	case c.Size < 0:
		return fmt.Errorf("--size %d: want 0 or more", c.Size)
	}
	return nil
}

// benchWorkerReportEnv names the UDP address the bench worker reports each
// event it receives to ("<ce-id> <unix ns>"), when set.
const benchWorkerReportEnv = "BENCH_REPORT_ADDR"

// benchWorkerHoldEnv, when set to a duration, makes the bench worker hold
// each request that long and answer with a reply event whose source is
// benchWorkerSource + its process id, so a caller can tell instances apart
// (`bench scale`'s step).
const benchWorkerHoldEnv = "BENCH_HOLD"

const benchWorkerSource = "/bench/worker/"

const e2eType = "dev.weft.bench.e2e"

func newBenchE2ECmd(g *globals) *cobra.Command {
	c := e2eConfig{Duration: 5 * time.Second, Rounds: 3, Size: 1024}
	cmd := &cobra.Command{
		Use:   "e2e [--duration 5s] [--rounds 3] [--size 1024]",
		Short: "End-to-end latency at one connection, POST → a warm worker receiving the event, against the sum of its hops",
		Long: `Starts a ` + "`weft serve`" + ` (temporary data folder, loopback ports, default
durability: fsync before each 202) with a Function of one warm instance
(this binary's hidden ` + "`bench worker`" + `: a bare HTTP server) and a Trigger
sending it every event of type ` + e2eType + `. One client posts an event,
waits until the worker says it received it (a UDP datagram with the event's
id and the time it arrived, taken in the worker), then posts the next.
Latency is POST sent → event received by the worker process.

The reference is the sum of the hops, each measured alone at one connection
in the same round (rounds interleave weft and the hops):

  http     POST to a bare Go HTTP server answering 202 (the ingress hop)
  publish  one JetStream publish, fsynced before its ack (embedded server)
  consume  one JetStream pull of a stored message, then its ack
  worker   POST of the same event straight to a warm worker process of the
           same binary (the delivery hop)

Issue 5's goal 4 is checked: p50 ≤ 1.5 × the sum of the hops' p50s, p99 ≤
2 × the sum of their p99s.`,
		Example: `  weft bench e2e --duration 5s --rounds 3
  weft bench e2e -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runBench(g, c.validate,
				func(progress io.Writer) (*e2eReport, error) { return benchE2E(cmd.Context(), c, progress) },
				func(rep *e2eReport) string { return rep.Weft.noneAccepted("no event reached the worker") })
		},
	}
	f := cmd.Flags()
	f.DurationVar(&c.Duration, "duration", c.Duration, "length of each round on each side")
	f.IntVar(&c.Rounds, "rounds", c.Rounds, "rounds; each measures weft then every hop")
	f.IntVar(&c.Size, "size", c.Size, "bytes of event data per event")
	f.StringVar(&c.Weft, "weft", "", "weft binary to run `weft serve` and the worker from (default: this one)")
	f.StringVar(&c.Worker, "worker", "", "worker binary: serves HTTP on 127.0.0.1:$PORT and reports arrivals to $"+benchWorkerReportEnv+" as `bench worker` does (default: the weft binary's hidden `bench worker`)")
	return cmd
}

// newBenchWorkerCmd is the worker of `bench e2e` and `bench scale`: a bare
// HTTP server on 127.0.0.1:$PORT answering 200 with no body (no reply
// event). With $BENCH_REPORT_ADDR it sends one UDP datagram per request to
// that address, "<ce-id> <unix ns of arrival>", before answering; with
// $BENCH_HOLD it holds each request and replies (see benchWorkerHoldEnv).
func newBenchWorkerCmd() *cobra.Command {
	return &cobra.Command{
		Use:    "worker",
		Short:  "A bare HTTP worker on $PORT (the e2e and scale benches' Function)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			port := os.Getenv("PORT")
			if port == "" {
				return withCode(exitUsage, errors.New("bench worker: $PORT is not set"))
			}
			var report net.Conn
			if addr := os.Getenv(benchWorkerReportEnv); addr != "" {
				c, err := net.Dial("udp", addr)
				if err != nil {
					return fmt.Errorf("bench worker: %w", err)
				}
				defer c.Close()
				report = c
			}
			ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", port))
			if err != nil {
				return fmt.Errorf("bench worker: %w", err)
			}
			var hold time.Duration
			if v := os.Getenv(benchWorkerHoldEnv); v != "" {
				if hold, err = time.ParseDuration(v); err != nil {
					return withCode(exitUsage, fmt.Errorf("bench worker: $%s: %w", benchWorkerHoldEnv, err))
				}
			}
			source := benchWorkerSource + strconv.Itoa(os.Getpid())
			var replies atomic.Int64
			var mu sync.Mutex // one datagram at a time on the shared socket
			srv := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if report != nil {
					b := make([]byte, 0, 96)
					b = append(b, r.Header.Get("Ce-Id")...)
					b = append(b, ' ')
					b = strconv.AppendInt(b, time.Now().UnixNano(), 10)
					mu.Lock()
					_, _ = report.Write(b)
					mu.Unlock()
				}
				_, _ = io.Copy(io.Discard, r.Body)
				if hold > 0 {
					select {
					case <-time.After(hold):
					case <-r.Context().Done():
						return
					}
					h := w.Header()
					h.Set("Ce-Specversion", "1.0")
					h.Set("Ce-Id", strconv.FormatInt(replies.Add(1), 10))
					h.Set("Ce-Source", source)
					h.Set("Ce-Type", "dev.weft.bench.reply")
				}
				w.WriteHeader(http.StatusOK)
			})}
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGTERM, os.Interrupt)
			defer stop()
			var wg sync.WaitGroup
			wg.Go(func() {
				<-ctx.Done()
				sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				_ = srv.Shutdown(sctx)
			})
			err = srv.Serve(ln)
			stop()
			wg.Wait()
			if errors.Is(err, http.ErrServerClosed) {
				return nil
			}
			return err
		},
	}
}

// e2eReport is what `weft bench e2e` prints.
type e2eReport struct {
	Scenario string    `json:"scenario"`
	Date     time.Time `json:"date"`
	Size     int       `json:"size"`
	Duration string    `json:"duration"`
	Rounds   int       `json:"rounds"`
	// Weft is POST sent → the worker received the event.
	Weft benchSide `json:"weft"`
	// The hops, each alone.
	HTTP    benchSide `json:"http"`
	Publish benchSide `json:"publish"`
	Consume benchSide `json:"consume"`
	Worker  benchSide `json:"worker"`
	// Sum is the sum of the hops' medians, in ms.
	Sum struct {
		P50ms float64 `json:"p50_ms"`
		P90ms float64 `json:"p90_ms"`
		P99ms float64 `json:"p99_ms"`
	} `json:"sum"`
	// Ratio is weft ÷ the sum of the hops.
	Ratio struct {
		P50 float64 `json:"p50"`
		P90 float64 `json:"p90"`
		P99 float64 `json:"p99"`
	} `json:"ratio"`
	Goals   []goalCheck `json:"goals"`
	Machine machineInfo `json:"machine"`
}

func benchE2E(ctx context.Context, cfg e2eConfig, progress io.Writer) (*e2eReport, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	exe, err := weftExecutable(cfg.Weft)
	if err != nil {
		return nil, err
	}
	rep := &e2eReport{Scenario: "e2e", Date: time.Now().UTC().Truncate(time.Second), Size: cfg.Size,
		Duration: cfg.Duration.String(), Rounds: cfg.Rounds,
		Machine: thisMachine()}

	argv := workerArgv(exe, cfg.Worker)
	reports, err := newArrivals()
	if err != nil {
		return nil, err
	}
	defer reports.close()
	dir, err := os.MkdirTemp("", "weft-bench-e2e")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	manifest := fmt.Sprintf(`apiVersion: weft.dev/v1
kind: Function
metadata: {name: bench-e2e}
spec:
  command: %s
  env: [{name: %s, value: %q}]
  scale: {min: 1, max: 1}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: bench-e2e}
spec:
  filters: [{exact: {type: %s}}]
  subscriber: {ref: {apiVersion: weft.dev/v1, kind: Function, name: bench-e2e}}
`, yamlList(argv), benchWorkerReportEnv, reports.addr, e2eType)
	node, base, err := startWeftNode(ctx, exe, dir, manifest)
	if err != nil {
		return nil, err
	}
	defer node.stop()
	rep.Weft.Target = base + "/ → trigger bench-e2e → function bench-e2e (" + strings.Join(argv, " ") + ")"

	ref, stopRef, err := startReference()
	if err != nil {
		return nil, err
	}
	defer stopRef()
	rep.HTTP.Target = ref + "/ (bare Go HTTP server answering 202)"
	js, err := startJetStreamRef(ctx, false, false)
	if err != nil {
		return nil, err
	}
	defer js.stop()
	rep.Publish.Target = "embedded JetStream, fsync before every ack, one publisher"
	rep.Consume.Target = "embedded JetStream, pull consumer: Next of a stored message, then Ack"
	cons, err := js.consumeSetup(ctx)
	if err != nil {
		return nil, err
	}
	wport, err := freeAddr()
	if err != nil {
		return nil, err
	}
	_, port, _ := net.SplitHostPort(wport)
	worker, err := startWorkerProc(argv, port, benchWorkerReportEnv+"="+reports.addr)
	if err != nil {
		return nil, err
	}
	defer worker.stop()
	if err := worker.waitUntil(ctx, 30*time.Second, "listening", func() bool { return tcpOpen(wport) }); err != nil {
		return nil, err
	}
	rep.Worker.Target = "http://" + wport + "/ (" + strings.Join(argv, " ") + ", started by hand, warm)"

	runID, err := uuid.NewV7()
	if err != nil {
		return nil, err
	}
	gen := newEventGen(ingestConfig{Size: cfg.Size, Mode: "binary"}, runID.String())
	// Warm-up: the instance must be ready and the trigger's consumer made
	// before anything is timed.
	if err := e2eWarmUp(ctx, node, base, gen, reports); err != nil {
		return nil, err
	}
	one := ingestConfig{Duration: cfg.Duration, Concurrency: 1, Size: cfg.Size, Rounds: 1, Mode: "binary", Client: clientNetHTTP} // as e2eClient, which measures weft
	for r := 1; r <= cfg.Rounds; r++ {
		say := func(what string) {
			if progress != nil {
				fmt.Fprintf(progress, "\r\033[Kbench e2e: round %d/%d, %s", r, cfg.Rounds, what)
			}
		}
		say("weft")
		st, err := e2eWeftRound(ctx, base, cfg.Duration, gen, r, reports)
		if err != nil {
			return nil, err
		}
		rep.Weft.Rounds = append(rep.Weft.Rounds, st)
		say("http")
		if st, err = runLoad(ctx, ref+"/", one, nil); err != nil {
			return nil, err
		}
		rep.HTTP.Rounds = append(rep.HTTP.Rounds, st)
		say("publish")
		id, err := uuid.NewV7()
		if err != nil {
			return nil, err
		}
		if st, err = js.run(ctx, one, id.String()); err != nil {
			return nil, err
		}
		rep.Publish.Rounds = append(rep.Publish.Rounds, st)
		say("consume")
		if st, err = js.consumeRound(ctx, cons, cfg.Duration, cfg.Size); err != nil {
			return nil, err
		}
		rep.Consume.Rounds = append(rep.Consume.Rounds, st)
		say("worker")
		wgen := newEventGen(ingestConfig{Size: cfg.Size, Mode: "binary"}, runID.String()+"-direct-"+strconv.Itoa(r))
		if st, err = driveLoad(ctx, loadSpec{Concurrency: 1, Duration: cfg.Duration, OK: http.StatusOK, PerRequest: 1,
			NewRequest: func(ctx context.Context, w, seq int) (*http.Request, error) {
				req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+wport+"/", bytes.NewReader(wgen.body(nil, w, seq)))
				if err != nil {
					return nil, err
				}
				wgen.httpHeader(req.Header, w, seq)
				req.Header.Set("Ce-Type", e2eType)
				return req, nil
			}}, nil); err != nil {
			return nil, err
		}
		rep.Worker.Rounds = append(rep.Worker.Rounds, st)
	}
	if progress != nil {
		fmt.Fprint(progress, "\r\033[K")
	}
	rep.Machine.Load1End = loadavg1()
	for _, s := range []*benchSide{&rep.Weft, &rep.HTTP, &rep.Publish, &rep.Consume, &rep.Worker} {
		s.summarize()
	}
	for _, s := range []*benchSide{&rep.HTTP, &rep.Publish, &rep.Consume, &rep.Worker} {
		rep.Sum.P50ms += s.P50ms
		rep.Sum.P90ms += s.P90ms
		rep.Sum.P99ms += s.P99ms
	}
	rep.Ratio.P50 = ratio(rep.Weft.P50ms, rep.Sum.P50ms)
	rep.Ratio.P90 = ratio(rep.Weft.P90ms, rep.Sum.P90ms)
	rep.Ratio.P99 = ratio(rep.Weft.P99ms, rep.Sum.P99ms)
	measured := rep.Weft.Accepted > 0
	for _, s := range []*benchSide{&rep.HTTP, &rep.Publish, &rep.Consume, &rep.Worker} {
		measured = measured && s.Accepted > 0
	}
	rep.Goals = []goalCheck{
		newGoalCheck("e2e p50 ≤ 1.5 × sum of the hops' p50s", rep.Weft.P50ms, 1.5*rep.Sum.P50ms, "ms", false, measured),
		newGoalCheck("e2e p99 ≤ 2 × sum of the hops' p99s", rep.Weft.P99ms, 2*rep.Sum.P99ms, "ms", false, measured),
	}
	return rep, nil
}

// startWeftNode runs `weft serve` in dir with manifest applied from a file
// (none when ""), loopback ports, no NATS ingress unless flags give one,
// default durability unless flags change it, and waits until it is ready.
// It returns the process and the base URL of its ingress and API.
func startWeftNode(ctx context.Context, exe, dir, manifest string, flags ...string) (*benchProc, string, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, "", err
	}
	var args []string
	if manifest != "" {
		file := filepath.Join(dir, "bench.yaml")
		if err := os.WriteFile(file, []byte(manifest), 0o600); err != nil {
			return nil, "", err
		}
		args = []string{"-f", file}
	}
	addrs := make([]string, 2)
	for i := range addrs {
		var err error
		if addrs[i], err = freeAddr(); err != nil {
			return nil, "", err
		}
	}
	args = append(args, "--data", filepath.Join(dir, "weft"), "--http", addrs[0], "--router", addrs[1], "--log-level", "warn")
	if !slices.Contains(flags, "--nats") {
		args = append(args, "--nats", "")
	}
	args = append(args, flags...)
	p, err := startProc("weft serve", exe, append([]string{"serve"}, args...)...)
	if err != nil {
		return nil, "", err
	}
	base := "http://" + addrs[0]
	if err := p.waitUntil(ctx, 60*time.Second, "ready", func() bool { return httpOK(base + "/readyz") }); err != nil {
		p.stop()
		return nil, "", err
	}
	return p, base, nil
}

// startWorkerProc starts the worker argv on 127.0.0.1:port by hand, with
// PATH, PORT and env only.
func startWorkerProc(argv []string, port string, env ...string) (*benchProc, error) {
	p := &benchProc{name: "bench worker", out: &lockedBuffer{}, exited: make(chan struct{})}
	p.cmd = workerCommand(argv, port, env...)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start bench worker: %w", err)
	}
	go func() { _ = p.cmd.Wait(); close(p.exited) }() // owned: stop waits on exited
	return p, nil
}

// arrivals collects the worker's UDP reports: event id → arrival time.
type arrivals struct {
	addr string
	conn net.PacketConn
	ch   chan arrival // buffered: the reader never blocks on a slow sampler
	wg   sync.WaitGroup
}

type arrival struct {
	id string
	at time.Time
}

func newArrivals() (*arrivals, error) {
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("arrivals listener: %w", err)
	}
	a := &arrivals{addr: c.LocalAddr().String(), conn: c, ch: make(chan arrival, 1024)}
	a.wg.Go(func() {
		buf := make([]byte, 512)
		for {
			n, _, err := c.ReadFrom(buf)
			if err != nil {
				return // closed
			}
			id, ns, ok := strings.Cut(string(buf[:n]), " ")
			v, err := strconv.ParseInt(ns, 10, 64)
			if !ok || err != nil {
				continue
			}
			a.push(arrival{id: id, at: time.Unix(0, v)})
		}
	})
	return a, nil
}

// push queues r; when the queue is full of reports nobody waited for (the
// hand-started worker's, thousands a round, report to the same address), the
// oldest goes, not r: dropping the newest once lost the first event of a
// round, which then counted as an error after a 10 s wait.
func (a *arrivals) push(r arrival) {
	for {
		select {
		case a.ch <- r:
			return
		default:
		}
		select {
		case <-a.ch: // a stale report
		default:
		}
	}
}

func (a *arrivals) close() {
	_ = a.conn.Close()
	a.wg.Wait()
}

// wait returns when the event id arrived, skipping reports of earlier ones.
func (a *arrivals) wait(ctx context.Context, id string, timeout time.Duration) (time.Time, error) {
	t := time.NewTimer(timeout)
	defer t.Stop()
	for {
		select {
		case r := <-a.ch:
			if r.id == id {
				return r.at, nil
			}
		case <-t.C:
			return time.Time{}, fmt.Errorf("event %s did not reach the worker within %s", id, timeout)
		case <-ctx.Done():
			return time.Time{}, ctx.Err()
		}
	}
}

// e2eClient is the bench's one keep-alive connection to the node.
func e2eClient() *http.Client {
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 1, DisableCompression: true}}
}

// e2ePost posts event seq of worker w and returns when the 202 is read.
func e2ePost(ctx context.Context, c *http.Client, base string, gen *eventGen, w, seq int) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/", bytes.NewReader(gen.body(nil, w, seq)))
	if err != nil {
		return err
	}
	gen.httpHeader(req.Header, w, seq)
	req.Header.Set("Ce-Type", e2eType)
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		return fmt.Errorf("ingress answered %s", resp.Status)
	}
	return nil
}

// e2eWarmUp posts events until one reaches the worker (up to 60 s) and then
// a few more, so the instance, the consumers and the connections are warm.
func e2eWarmUp(ctx context.Context, node *benchProc, base string, gen *eventGen, a *arrivals) error {
	c := e2eClient()
	defer c.CloseIdleConnections()
	deadline := time.Now().Add(60 * time.Second)
	warm := 0
	for seq := 0; warm < 20; seq++ {
		if time.Now().After(deadline) {
			return fmt.Errorf("warm-up: no event reached the worker within 60s\n%s", strings.TrimSpace(node.out.String()))
		}
		if err := e2ePost(ctx, c, base, gen, 0, seq); err != nil {
			return fmt.Errorf("warm-up: %w", err)
		}
		if _, err := a.wait(ctx, string(gen.id(nil, 0, seq, 0)), time.Second); err == nil {
			warm++
		} else if ctx.Err() != nil {
			return ctx.Err()
		}
	}
	return nil
}

// e2eWeftRound is one round of the weft side: post, wait for the worker's
// report of that event, repeat, for d. Latency is POST sent → the worker's
// arrival time (wall clocks of one machine).
func e2eWeftRound(ctx context.Context, base string, d time.Duration, gen *eventGen, round int, a *arrivals) (loadStats, error) {
	c := e2eClient()
	defer c.CloseIdleConnections()
	var st loadStats
	var lat []time.Duration
	start := time.Now()
	for seq := 0; time.Since(start) < d; seq++ {
		if ctx.Err() != nil {
			return st, ctx.Err()
		}
		st.Requests++
		t0 := time.Now()
		err := e2ePost(ctx, c, base, gen, round, seq)
		var at time.Time
		if err == nil {
			at, err = a.wait(ctx, string(gen.id(nil, round, seq, 0)), 10*time.Second)
		}
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
		lat = append(lat, at.Sub(t0.Round(0)))
	}
	return latencyStats(st, lat, time.Since(start)), nil
}

// latencyStats fills st's rates and percentiles from the latencies of its
// successes.
func latencyStats(st loadStats, lat []time.Duration, elapsed time.Duration) loadStats {
	st.Accepted = int64(len(lat))
	st.Events = st.Accepted
	st.Seconds = elapsed.Seconds()
	st.EventsPerSec = float64(st.Events) / st.Seconds
	st.RequestsPerSec = st.EventsPerSec
	slices.Sort(lat)
	st.P50ms = ms(percentile(lat, 0.50))
	st.P90ms = ms(percentile(lat, 0.90))
	st.P99ms = ms(percentile(lat, 0.99))
	st.MaxMs = ms(percentile(lat, 1))
	return st
}

// consumeSetup makes the stream and pull consumer the consume hop reads.
func (j *jetStreamRef) consumeSetup(ctx context.Context) (jetstream.Consumer, error) {
	if _, err := j.js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name: "BENCHCONSUME", Subjects: []string{"bench.consume"}, Storage: jetstream.FileStorage,
	}); err != nil {
		return nil, fmt.Errorf("jetstream reference: consume stream: %w", err)
	}
	cons, err := j.js.CreateOrUpdateConsumer(ctx, "BENCHCONSUME", jetstream.ConsumerConfig{
		Durable: "bench", AckPolicy: jetstream.AckExplicitPolicy,
	})
	if err != nil {
		return nil, fmt.Errorf("jetstream reference: consumer: %w", err)
	}
	return cons, nil
}

// consumeRound times, for d, the pull of one stored message and its ack
// (a plain ack, as weft's runners send): each sample first publishes a
// message and waits for it to be stored, untimed.
func (j *jetStreamRef) consumeRound(ctx context.Context, cons jetstream.Consumer, d time.Duration, size int) (loadStats, error) {
	data := bytes.Repeat([]byte("x"), size)
	var st loadStats
	var lat []time.Duration
	start := time.Now()
	var timed time.Duration
	for time.Since(start) < d {
		if ctx.Err() != nil {
			return st, ctx.Err()
		}
		st.Requests++
		err := func() error {
			if _, err := j.js.PublishMsg(ctx, &nats.Msg{Subject: "bench.consume", Data: data}); err != nil {
				return err
			}
			t0 := time.Now()
			msg, err := cons.Next(jetstream.FetchMaxWait(5 * time.Second))
			if err != nil {
				return err
			}
			if err := msg.Ack(); err != nil {
				return err
			}
			dt := time.Since(t0)
			timed += dt
			lat = append(lat, dt)
			return nil
		}()
		if err != nil {
			st.Errors++
			if st.FirstError == "" {
				st.FirstError = err.Error()
			}
		}
	}
	return latencyStats(st, lat, timed), nil
}

// writeTable prints the report for people.
func (r *e2eReport) writeTable(w io.Writer) error {
	fmt.Fprintf(w, "e2e: one connection, POST → warm worker received the event, %d B data, %d rounds of %s per side, medians\n", r.Size, r.Rounds, r.Duration)
	fmt.Fprintf(w, "  weft     %s\n  http     %s\n  publish  %s\n  consume  %s\n  worker   %s\n\n",
		r.Weft.Target, r.HTTP.Target, r.Publish.Target, r.Consume.Target, r.Worker.Target)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	lat := func(v float64) string { return strconv.FormatFloat(v, 'f', 3, 64) + " ms" }
	fmt.Fprintf(tw, "\tp50\tp90\tp99\tmax\tsamples\terrors\t\n")
	for _, s := range []struct {
		name string
		b    *benchSide
	}{{"weft", &r.Weft}, {"http", &r.HTTP}, {"publish", &r.Publish}, {"consume", &r.Consume}, {"worker", &r.Worker}} {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%d\t\n", s.name, lat(s.b.P50ms), lat(s.b.P90ms), lat(s.b.P99ms), lat(s.b.MaxMs), s.b.Accepted, s.b.Errors+s.b.StatusOther+s.b.Status429+s.b.Status503)
	}
	fmt.Fprintf(tw, "sum of hops\t%s\t%s\t%s\t\t\t\t\n", lat(r.Sum.P50ms), lat(r.Sum.P90ms), lat(r.Sum.P99ms))
	fmt.Fprintf(tw, "weft ÷ sum\t%.2f\t%.2f\t%.2f\t\t\t\t\n", r.Ratio.P50, r.Ratio.P90, r.Ratio.P99)
	if err := tw.Flush(); err != nil {
		return err
	}
	if r.Weft.FirstError != "" {
		fmt.Fprintf(w, "\nweft's first failure: %s\n", r.Weft.FirstError)
	}
	writeGoals(w, "goal 4 (issue 5):", r.Goals, 3)
	return writeMachine(w, r.Machine, r.Date)
}

// writeGoals prints goal checks under title, figures with prec decimals.
func writeGoals(w io.Writer, title string, goals []goalCheck, prec int) {
	fmt.Fprintln(w, "\n"+title)
	width := 0
	for _, g := range goals {
		width = max(width, utf8.RuneCountInString(g.Criterion))
	}
	for _, g := range goals {
		verdict := "not measured"
		if g.Measured {
			verdict = "not met"
			if g.Met {
				verdict = "met"
			}
			cmp := "≤"
			if g.AtLeast {
				cmp = "≥"
			}
			verdict = fmt.Sprintf("%.*f %s %s %.*f: %s", prec, g.Got, g.Unit, cmp, prec, g.Bound, verdict)
		}
		fmt.Fprintf(w, "  %-*s %s\n", width, g.Criterion, verdict)
	}
}
