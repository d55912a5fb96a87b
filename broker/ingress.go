package broker

import (
	"context"
	"fmt"
	"net/http"
	"sync"

	"github.com/nats-io/nats.go"
)

// IngressHandler serves the CloudEvents HTTP ingress (POST / and
// POST /brokers/{name}). It answers 503 until the broker is running.
func (b *Broker) IngressHandler() http.Handler {
	return newIngressHandler(b, b.cfg.Ingress, b.metrics, b.log)
}

// startNATSIngress subscribes to weft.in.> on the in-process connection:
// each message is decoded, validated, stored, and, when it has a reply
// subject, acknowledged after storage with natsAck's payload.
//
// Messages are stored concurrently, so that they share fsyncs (group commit),
// at most MaxInflight at once: one more is answered 429 at once. The
// subscription's callback never blocks, so nats.go never drops a request as
// a slow consumer (a channel subscription would, as soon as its buffer is
// full).
func (b *Broker) startNATSIngress(ctx context.Context, c *conn) (*ingressSub, error) {
	s := &ingressSub{slots: make(chan struct{}, b.cfg.MaxInflight)}
	sub, err := c.nc.QueueSubscribe(ingressSubjects, "weft-ingress", func(msg *nats.Msg) {
		select {
		case s.slots <- struct{}{}:
		default:
			b.metrics.Received.WithLabelValues("nats").Inc()
			b.metrics.Rejected.WithLabelValues(rejectReason(ErrOverloaded)).Inc()
			if msg.Reply != "" {
				_ = msg.Respond(natsAck(0, ErrOverloaded))
			}
			return
		}
		s.mu.Lock()
		if s.stopped {
			s.mu.Unlock()
			<-s.slots
			return // not acknowledged: the publisher retries
		}
		s.wg.Add(1)
		s.mu.Unlock()
		go func() { // owned: s.wg, waited for by stop
			defer func() { <-s.slots; s.wg.Done() }()
			b.handleNATSIngress(ctx, msg)
		}()
	})
	if err != nil {
		return nil, fmt.Errorf("broker: subscribe %s: %w", ingressSubjects, err)
	}
	// The subscription goes to the server asynchronously; until it is there
	// a request finds no responder. The broker is ready only once it is.
	if err := c.nc.FlushTimeout(b.cfg.PublishTimeout); err != nil {
		_ = sub.Unsubscribe()
		return nil, fmt.Errorf("broker: subscribe %s: %w", ingressSubjects, err)
	}
	s.sub = sub
	return s, nil
}

type ingressSub struct {
	sub     *nats.Subscription
	slots   chan struct{} // messages being stored
	mu      sync.Mutex    // guards stopped against wg.Add
	stopped bool
	wg      sync.WaitGroup
	once    sync.Once
}

// stop unsubscribes and waits for in-flight messages.
func (s *ingressSub) stop() {
	s.once.Do(func() {
		_ = s.sub.Unsubscribe()
		s.mu.Lock()
		s.stopped = true
		s.mu.Unlock()
		s.wg.Wait()
	})
}

func (b *Broker) handleNATSIngress(ctx context.Context, msg *nats.Msg) {
	b.metrics.Received.WithLabelValues("nats").Inc()
	evs, err := decodeNATSMsg(msg)
	if err == nil {
		err = b.Store(context.WithoutCancel(ctx), evs)
	}
	if err != nil {
		b.metrics.Rejected.WithLabelValues(rejectReason(err)).Inc()
		b.log.Debug("nats ingress refused", "subject", msg.Subject, "err", err)
	}
	if msg.Reply != "" {
		_ = msg.Respond(natsAck(len(evs), err))
	}
}
