package broker

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"

	wtest "github.com/weft-dev/weft/internal/testutil"
)

// TestStopLetsStoresInFlightFinish stops a broker while publishers store
// events one by one: a Store either stores its event or is refused before
// it sends anything (the broker is stopping, or stopped); none is cut
// half-way by the connection closing under it. Run again on the same data,
// the stream holds exactly the events Store acknowledged.
func TestStopLetsStoresInFlightFinish(t *testing.T) {
	dir := t.TempDir()
	b, stop := runStagingBroker(t, dir, "") // batches staged in dir: the default
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

	b, _ = runStagingBroker(t, dir, "")
	if got, want := streamMsgs(t, b), uint64(acked.Load()); got != want {
		t.Errorf("after the restart the stream holds %d events; Store acknowledged %d", got, want)
	}
}
