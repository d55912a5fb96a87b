package broker

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"

	wtest "github.com/weft-dev/weft/internal/testutil"
)

// runBrokerOn runs a broker on dir until the returned stop is called; stop
// waits for Run's end.
func runBrokerOn(t *testing.T, dir string) (b *Broker, stop func()) {
	t.Helper()
	b, err := New(Config{DataDir: dir, DrainTimeout: time.Second}, newRecorder(), nil, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()
	stop = sync.OnceFunc(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("broker.Run: %v", err)
		}
	})
	t.Cleanup(stop)
	select {
	case <-b.Ready():
	case <-time.After(30 * time.Second):
		t.Fatal("broker not ready after 30s")
	}
	return b, stop
}

// TestStopLetsStoresInFlightFinish stops a broker while publishers store
// events one by one: a Store either stores its event or is refused before
// it sends anything (the broker is stopping, or stopped); none is cut
// half-way by the connection closing under it. Run again on the same data,
// the stream holds exactly the events Store acknowledged.
func TestStopLetsStoresInFlightFinish(t *testing.T) {
	dir := t.TempDir()
	b, stop := runBrokerOn(t, dir)
	const publishers = 8
	var acked atomic.Int64
	cut := make(chan error, publishers)
	var wg sync.WaitGroup
	for w := range publishers {
		wg.Go(func() {
			for i := 0; ; i++ {
				err := b.Store(context.Background(), []event.Event{testEvent("/stop", fmt.Sprintf("%d-%d", w, i))})
				switch {
				case err == nil:
					acked.Add(1)
				case strings.Contains(err.Error(), "broker stopping"), strings.Contains(err.Error(), "broker not running"):
					return
				default:
					cut <- err
					return
				}
			}
		})
	}
	wtest.WaitFor(t, 30*time.Second, func() bool { return acked.Load() >= 200 }, "publishers stored fewer than 200 events")
	stop()
	wg.Wait()
	close(cut)
	for err := range cut {
		t.Errorf("a Store was cut by the stop: %v", err)
	}

	b, _ = runBrokerOn(t, dir)
	if got, want := streamMsgs(t, b), uint64(acked.Load()); got != want {
		t.Errorf("after the restart the stream holds %d events; Store acknowledged %d", got, want)
	}
}
