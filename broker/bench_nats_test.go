package broker

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// BenchmarkNATSIngress measures issue 5's goal 2b: events published to
// weft's NATS ingress (weft.in.>, a request each, acknowledged after
// storage) against raw JetStream publishes of the same bytes to an embedded
// server with the same fsync setting, both over TCP from c closed-loop
// publishers, in the same run:
//
//	go test -run '^$' -bench BenchmarkNATSIngress -benchtime 3s -count 3 ./broker/
//
// Goal 2b is about interval fsync (sync=relaxed); sync=always is reported
// for comparison. Each reports events/s; divide weft by jetstream.
func BenchmarkNATSIngress(b *testing.B) {
	body := `{"specversion":"1.0","id":"ID","source":"/bench","type":"bench","data":"` + strings.Repeat("x", 1024) + `"}`
	for _, relaxed := range []bool{true, false} {
		mode := map[bool]string{true: "relaxed", false: "always"}[relaxed]
		for _, c := range []int{16, 64} {
			b.Run(fmt.Sprintf("sync=%s/c=%d/weft", mode, c), func(b *testing.B) {
				br, _ := runBenchBroker(b, func(c *Config) { c.NATSAddr, c.RelaxedSync = "127.0.0.1:0", relaxed })
				nc, err := nats.Connect(br.NATSURL())
				if err != nil {
					b.Fatal(err)
				}
				defer nc.Close()
				var next atomic.Int64
				b.ResetTimer()
				start := time.Now()
				runWorkers(b, c, func() error {
					for {
						n := next.Add(1)
						if n > int64(b.N) {
							return nil
						}
						reply, err := nc.Request("weft.in.bench", []byte(strings.Replace(body, `"ID"`, fmt.Sprintf(`"%d"`, n), 1)), 10*time.Second)
						if err != nil {
							return err
						}
						if string(reply.Data) != `{"stored":1}` {
							return fmt.Errorf("ack %s", reply.Data)
						}
					}
				})
				b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "events/s")
			})
			b.Run(fmt.Sprintf("sync=%s/c=%d/jetstream", mode, c), func(b *testing.B) {
				ns, err := server.NewServer(&server.Options{
					JetStream: true, StoreDir: filepath.Join(b.TempDir(), "jetstream"), SyncAlways: !relaxed,
					Host: "127.0.0.1", Port: server.RANDOM_PORT, NoSigs: true, NoLog: true, MaxPayload: 1 << 20,
				})
				if err != nil {
					b.Fatal(err)
				}
				go ns.Start()
				defer func() { ns.Shutdown(); ns.WaitForShutdown() }()
				if !ns.ReadyForConnections(30 * time.Second) {
					b.Fatal("reference nats-server not ready")
				}
				nc, err := nats.Connect(ns.ClientURL())
				if err != nil {
					b.Fatal(err)
				}
				defer nc.Close()
				js, err := jetstream.New(nc)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := js.CreateStream(context.Background(), jetstream.StreamConfig{
					Name: eventsStream, Subjects: []string{eventsSubject},
					Retention: jetstream.WorkQueuePolicy, Storage: jetstream.FileStorage,
					Duplicates: 2 * time.Minute, MaxMsgSize: 1 << 20,
				}); err != nil {
					b.Fatal(err)
				}
				var next atomic.Int64
				b.ResetTimer()
				start := time.Now()
				runWorkers(b, c, func() error {
					for {
						n := next.Add(1)
						if n > int64(b.N) {
							return nil
						}
						data := []byte(strings.Replace(body, `"ID"`, fmt.Sprintf(`"%d"`, n), 1))
						if _, err := js.Publish(context.Background(), eventsSubject, data, jetstream.WithMsgID(fmt.Sprint(n))); err != nil {
							return err
						}
					}
				})
				b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "events/s")
			})
		}
	}
}
