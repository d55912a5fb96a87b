package broker

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// TTLExtension is Knative's hop counter: the ingress sets it on events that
// lack it, every reply gets its trigger event's value minus one, and a reply
// whose counter reaches zero is cut (dead-lettered) instead of re-entering.
const TTLExtension = "knativebrokerttl"

// DefaultTTL is Knative's default hop budget.
const DefaultTTL = 255

// msgID derives JetStream's dedup key from (source, id), the pair CloudEvents
// declares unique. Hashing keeps it short and free of header-unsafe bytes.
func msgID(ev *event.Event) string {
	h := sha256.New()
	h.Write([]byte(ev.Source()))
	h.Write([]byte{0})
	h.Write([]byte(ev.ID()))
	return hex.EncodeToString(h.Sum(nil)[:16])
}

// Store stores events in JetStream and returns once every one is acknowledged
// as stored (a duplicate (source, id) counts as stored). Events without a
// knativebrokerttl get DefaultTTL. Callers validate events first. It returns
// an error wrapping ErrOverloaded when too many publishes are waiting, and
// ErrUnavailable when storage did not confirm in time; then some events of the
// slice may be stored and others not, and the caller must not acknowledge.
func (b *Broker) Store(ctx context.Context, evs []event.Event) error {
	if len(evs) == 0 {
		return nil
	}
	if len(evs) > cap(b.inflight) {
		return fmt.Errorf("%w: %d events, at most %d", ErrBatchTooLarge, len(evs), cap(b.inflight))
	}
	c := b.conn.Load()
	if c == nil {
		return fmt.Errorf("%w: broker not running", ErrUnavailable)
	}
	acquired := 0
	defer func() {
		for range acquired {
			<-b.inflight
		}
	}()
	for range evs {
		select {
		case b.inflight <- struct{}{}:
			acquired++
		default:
			return ErrOverloaded
		}
	}
	ctx, cancel := context.WithTimeout(ctx, b.cfg.PublishTimeout)
	defer cancel()

	futures := make([]jetstream.PubAckFuture, 0, len(evs))
	for i := range evs {
		ev := &evs[i]
		if _, ok := ev.Extensions()[TTLExtension]; !ok {
			ev.SetExtension(TTLExtension, DefaultTTL)
		}
		body, err := json.Marshal(ev)
		if err != nil {
			return fmt.Errorf("encode event %q: %w", ev.ID(), err)
		}
		msg := nats.NewMsg(eventsSubject)
		msg.Data = body
		f, err := c.js.PublishMsgAsync(msg, jetstream.WithMsgID(msgID(ev)), jetstream.WithExpectStream(eventsStream))
		if err != nil {
			return fmt.Errorf("%w: publish: %v", ErrUnavailable, err)
		}
		futures = append(futures, f)
	}
	for _, f := range futures {
		select {
		case ack := <-f.Ok():
			if ack.Duplicate {
				b.metrics.Duplicates.Inc()
			} else {
				b.metrics.Stored.Inc()
			}
		case err := <-f.Err():
			return fmt.Errorf("%w: %v", ErrUnavailable, err)
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return fmt.Errorf("%w: no storage confirmation within %s", ErrUnavailable, b.cfg.PublishTimeout)
			}
			return ctx.Err()
		}
	}
	return nil
}
