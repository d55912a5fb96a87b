package broker

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
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
				br, err := New(Config{DataDir: b.TempDir(), RelaxedSync: relaxed, DrainTimeout: time.Second}, nil, nil, slog.New(slog.DiscardHandler))
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
