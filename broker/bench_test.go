package broker

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// BenchmarkStore measures acknowledged publishes of 1 KiB events through
// Broker.Store (what the ingress calls), with JetStream's default SyncAlways
// and with --relaxed-sync, in the same run so the two compare as a ratio.
// batch is how many events one Store call carries (an HTTP batch request).
func BenchmarkStore(b *testing.B) {
	data := strings.Repeat("x", 1024)
	for _, relaxed := range []bool{false, true} {
		for _, batch := range []int{1, 100} {
			name := fmt.Sprintf("sync=%s/batch=%d", map[bool]string{false: "always", true: "relaxed"}[relaxed], batch)
			b.Run(name, func(b *testing.B) {
				br, err := New(Config{DataDir: b.TempDir(), RelaxedSync: relaxed, BatchStaging: DefaultBatchStaging(), DrainTimeout: time.Second}, nil, nil, slog.New(slog.DiscardHandler))
				if err != nil {
					b.Fatal(err)
				}
				ctx, cancel := context.WithCancel(context.Background())
				done := make(chan error, 1)
				go func() { done <- br.Run(ctx) }()
				defer func() { cancel(); <-done }()
				<-br.Ready()
				evs := make([]event.Event, batch)
				n := 0
				b.ReportAllocs()
				b.ResetTimer()
				for b.Loop() {
					for i := range evs {
						evs[i] = event.New()
						evs[i].SetID(fmt.Sprint(n))
						evs[i].SetSource("/bench")
						evs[i].SetType("bench")
						_ = evs[i].SetData("text/plain", data)
						n++
					}
					if err := br.Store(ctx, evs); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "events/s")
			})
		}
	}
}

// BenchmarkStoreConcurrent compares, in one run, C concurrent publishers of
// 1 KiB events with fsync before every acknowledgement (SyncAlways):
//
//   - weft: C goroutines each calling Broker.Store with one event at a time
//     (C HTTP requests in flight); concurrent calls share atomic batches.
//   - jetstream: the reference of issue 5, nats.go jetstream PublishMsgAsync
//     pipelined (C goroutines publishing without waiting for acks, each with
//     at most 4096/C pending) to an embedded nats-server with SyncAlways and WEFT_EVENTS'
//     settings, then waiting for every ack.
//
// Both report events/s; weft/jetstream is the ratio of goal 1. Run them
// interleaved with -count, e.g.
//
//	go test -run '^$' -bench 'BenchmarkStoreConcurrent' -benchtime 3s -count 3 ./broker/
func BenchmarkStoreConcurrent(b *testing.B) {
	data := strings.Repeat("x", 1024)
	for _, c := range []int{1, 4, 8, 16, 64} {
		b.Run(fmt.Sprintf("c=%d/weft", c), func(b *testing.B) {
			br, err := New(Config{DataDir: b.TempDir(), BatchStaging: DefaultBatchStaging(), DrainTimeout: time.Second}, nil, nil, slog.New(slog.DiscardHandler))
			if err != nil {
				b.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- br.Run(ctx) }()
			defer func() { cancel(); <-done }()
			<-br.Ready()
			var next atomic.Int64
			b.ReportAllocs()
			b.ResetTimer()
			start := time.Now()
			runWorkers(b, c, func() error {
				for {
					n := next.Add(1)
					if n > int64(b.N) {
						return nil
					}
					ev := event.New()
					ev.SetID(fmt.Sprint(n))
					ev.SetSource("/bench")
					ev.SetType("bench")
					_ = ev.SetData("text/plain", data)
					if err := br.Store(ctx, []event.Event{ev}); err != nil {
						return err
					}
				}
			})
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "events/s")
			if a := br.batcher().atomicBatches.Load(); a > 0 {
				b.ReportMetric(float64(b.N)/float64(a), "events/batch")
			}
		})
		b.Run(fmt.Sprintf("c=%d/jetstream", c), func(b *testing.B) {
			js := refJetStream(b, true, jetstream.LimitsPolicy)
			var next atomic.Int64
			body := []byte(data)
			b.ReportAllocs()
			b.ResetTimer()
			start := time.Now()
			runWorkers(b, c, func() error {
				// Each publisher keeps at most its share of 4096 acks pending.
				window := max(1, 4096/c)
				var futures []jetstream.PubAckFuture
				for {
					n := next.Add(1)
					if n > int64(b.N) {
						break
					}
					if len(futures) == window {
						select {
						case <-futures[0].Ok():
						case err := <-futures[0].Err():
							return err
						}
						futures = futures[1:]
					}
					msg := nats.NewMsg(eventsSubject)
					msg.Data = body
					f, err := js.PublishMsgAsync(msg, jetstream.WithMsgID(fmt.Sprint(n)), jetstream.WithExpectStream(eventsStream))
					if err != nil {
						return err
					}
					futures = append(futures, f)
				}
				for _, f := range futures {
					select {
					case <-f.Ok():
					case err := <-f.Err():
						return err
					}
				}
				return nil
			})
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "events/s")
		})
	}
}

// runWorkers runs f in c goroutines and fails b on the first error.
func runWorkers(b *testing.B, c int, f func() error) {
	var wg sync.WaitGroup
	errs := make(chan error, c)
	for range c {
		wg.Go(func() {
			if err := f(); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
}

// refJetStream starts the reference: an embedded nats-server, with SyncAlways
// or not, and a stream configured like WEFT_EVENTS (without atomic publish,
// which the pipelined publisher does not use) but with the given retention,
// reached in-process; it stops when the benchmark ends.
func refJetStream(b *testing.B, syncAlways bool, retention jetstream.RetentionPolicy) jetstream.JetStream {
	nc, _ := startTestServer(b, server.Options{
		JetStream: true, StoreDir: filepath.Join(b.TempDir(), "jetstream"), SyncAlways: syncAlways, MaxPayload: 1 << 20,
	})
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(4096))
	if err != nil {
		b.Fatal(err)
	}
	_, err = js.CreateStream(context.Background(), jetstream.StreamConfig{
		Name: eventsStream, Subjects: []string{eventsSubject},
		Retention: retention, Storage: jetstream.FileStorage,
		Duplicates: 2 * time.Minute, MaxMsgSize: 1 << 20,
	})
	if err != nil {
		b.Fatal(err)
	}
	return js
}
