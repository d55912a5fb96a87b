package main

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// jetStreamRef is the second reference of `weft bench ingest`: JetStream
// alone, embedded in this process under a temporary folder and synced as
// weft's broker is (SyncAlways unless --relaxed-sync), fed by the same number
// of closed-loop publishers, each publishing one request's events with a
// Nats-Msg-Id and waiting for the acks. It is what weft's ingest does minus
// HTTP, validation and the broker's work around the store.
type jetStreamRef struct {
	dir string
	ns  *server.Server
	nc  *nats.Conn
	js  jetstream.JetStream
}

// startJetStreamRef starts the reference, reached in-process or, with
// overTCP, over a loopback TCP connection (as a node's NATS ingress is).
func startJetStreamRef(ctx context.Context, relaxed, overTCP bool) (*jetStreamRef, error) {
	dir, err := os.MkdirTemp("", "weft-bench-js")
	if err != nil {
		return nil, fmt.Errorf("jetstream reference: %w", err)
	}
	opts := &server.Options{JetStream: true, StoreDir: dir, DontListen: !overTCP, NoSigs: true, NoLog: true, SyncAlways: !relaxed}
	if overTCP {
		opts.Host, opts.Port = "127.0.0.1", server.RANDOM_PORT
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("jetstream reference: %w", err)
	}
	go ns.Start() // owned: stop shuts it down and waits
	ref := &jetStreamRef{dir: dir, ns: ns}
	if !ns.ReadyForConnections(30 * time.Second) {
		ref.stop()
		return nil, fmt.Errorf("jetstream reference: server not ready")
	}
	if overTCP {
		ref.nc, err = nats.Connect(ns.ClientURL())
	} else {
		ref.nc, err = nats.Connect("", nats.InProcessServer(ns))
	}
	if err != nil {
		ref.stop()
		return nil, fmt.Errorf("jetstream reference: %w", err)
	}
	if ref.js, err = openBenchStream(ctx, ref.nc); err != nil {
		ref.stop()
		return nil, err
	}
	return ref, nil
}

// openBenchStream creates the references' stream over nc: file storage, a
// two-minute dedup window, as the node's events stream has.
func openBenchStream(ctx context.Context, nc *nats.Conn) (jetstream.JetStream, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("jetstream reference: %w", err)
	}
	_, err = js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name: "BENCH", Subjects: []string{"bench.events"}, Storage: jetstream.FileStorage,
		Duplicates: 2 * time.Minute, MaxMsgSize: 1 << 20,
	})
	if err != nil {
		return nil, fmt.Errorf("jetstream reference: stream: %w", err)
	}
	return js, nil
}

// jetStreamProcess is the JetStream reference in a process of its own
// (`weft bench nats-idle`), reached over loopback TCP as a node is.
type jetStreamProcess struct {
	dir  string
	proc *benchProc
	nc   *nats.Conn
	js   jetstream.JetStream
}

// startJetStreamProcess runs `bin bench nats-idle` on a free port under a
// temporary folder, synced as a node is (SyncAlways unless relaxed), and
// creates the reference's stream on it.
func startJetStreamProcess(ctx context.Context, bin string, relaxed bool) (*jetStreamProcess, error) {
	dir, err := os.MkdirTemp("", "weft-bench-js")
	if err != nil {
		return nil, fmt.Errorf("jetstream reference process: %w", err)
	}
	addr, err := freeAddr()
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	args := []string{"bench", "nats-idle", "--store", dir, "--listen", addr}
	if !relaxed {
		args = append(args, "--sync-always")
	}
	p, err := startProc("jetstream reference", bin, args...)
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	j := &jetStreamProcess{dir: dir, proc: p}
	if err := p.waitUntil(ctx, 30*time.Second, "listening", func() bool { return tcpOpen(addr) }); err != nil {
		j.stop()
		return nil, fmt.Errorf("jetstream reference process: %w", err)
	}
	if j.nc, err = nats.Connect("nats://"+addr, nats.MaxReconnects(0)); err != nil {
		j.stop()
		return nil, fmt.Errorf("jetstream reference process: %w", err)
	}
	if j.js, err = openBenchStream(ctx, j.nc); err != nil {
		j.stop()
		return nil, err
	}
	return j, nil
}

// cpu reads the child's CPU time.
func (j *jetStreamProcess) cpu(context.Context) (time.Duration, bool) {
	d, err := procCPU(j.proc.pid())
	return d, err == nil
}

func (j *jetStreamProcess) stop() {
	if j.nc != nil {
		j.nc.Close()
	}
	j.proc.stop()
	_ = os.RemoveAll(j.dir)
}

func (j *jetStreamRef) stop() {
	if j.nc != nil {
		j.nc.Close()
	}
	j.ns.Shutdown()
	j.ns.WaitForShutdown()
	_ = os.RemoveAll(j.dir)
}

// run publishes for cfg.Duration from cfg.Concurrency closed-loop
// publishers and measures as runLoad does (a "request" is one publisher's
// round of cfg.eventsPerRequest() acknowledged publishes).
func (j *jetStreamRef) run(ctx context.Context, cfg ingestConfig, runID string) (loadStats, error) {
	data := []byte(`{"data":"` + strings.Repeat("x", max(cfg.Size-11, 0)) + `"}`)
	per := cfg.eventsPerRequest()
	deadline := time.Now().Add(cfg.Duration)
	var mu sync.Mutex
	var lat []time.Duration
	var st loadStats
	var failures atomic.Int64
	var firstErr atomic.Value
	start := time.Now()
	var wg sync.WaitGroup
	for w := range cfg.Concurrency {
		wg.Go(func() {
			var mine []time.Duration
			for seq := 0; time.Now().Before(deadline) && ctx.Err() == nil; seq++ {
				t0 := time.Now()
				futures := make([]jetstream.PubAckFuture, 0, per)
				var err error
				for i := range per {
					msg := nats.NewMsg("bench.events")
					msg.Data = data
					id := runID + "-" + strconv.Itoa(w) + "-" + strconv.Itoa(seq) + "-" + strconv.Itoa(i)
					var f jetstream.PubAckFuture
					if f, err = j.js.PublishMsgAsync(msg, jetstream.WithMsgID(id)); err != nil {
						break
					}
					futures = append(futures, f)
				}
				for _, f := range futures {
					select {
					case <-f.Ok():
					case e := <-f.Err():
						err = e
					case <-ctx.Done():
						err = ctx.Err()
					}
				}
				if err != nil || len(futures) < per {
					if err == nil {
						err = fmt.Errorf("only %d of %d published", len(futures), per)
					}
					failures.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
					continue
				}
				mine = append(mine, time.Since(t0))
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		})
	}
	wg.Wait()
	st.Seconds = time.Since(start).Seconds()
	st.Accepted = int64(len(lat))
	st.Requests = st.Accepted + failures.Load()
	st.Errors = failures.Load()
	if e, ok := firstErr.Load().(string); ok {
		st.FirstError = e
	}
	st.Events = st.Accepted * int64(per)
	st.EventsPerSec = float64(st.Events) / st.Seconds
	st.RequestsPerSec = float64(st.Accepted) / st.Seconds
	slices.Sort(lat)
	if len(lat) > 0 {
		st.P50ms, st.P90ms, st.P99ms = ms(percentile(lat, 0.50)), ms(percentile(lat, 0.90)), ms(percentile(lat, 0.99))
		st.MaxMs = ms(lat[len(lat)-1])
	}
	return st, nil
}
