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

// natsIngressWorkers bounds how many NATS-published events are being stored
// at once; further messages wait in the subscription's pending buffer, and
// nats.go reports a slow consumer rather than growing without bound.
const natsIngressWorkers = 32

// startNATSIngress subscribes to weft.in.> on the in-process connection:
// each message is decoded, validated, stored, and, when it has a reply
// subject, acknowledged after storage with natsAck's payload.
func (b *Broker) startNATSIngress(ctx context.Context, c *conn) (*ingressSub, error) {
	msgs := make(chan *nats.Msg, natsIngressWorkers) // small hand-off buffer between nats.go and the workers
	sub, err := c.nc.ChanQueueSubscribe(ingressSubjects, "weft-ingress", msgs)
	if err != nil {
		return nil, fmt.Errorf("broker: subscribe %s: %w", ingressSubjects, err)
	}
	s := &ingressSub{sub: sub, done: make(chan struct{})}
	for range natsIngressWorkers {
		s.wg.Go(func() {
			for {
				select {
				case msg := <-msgs:
					b.handleNATSIngress(ctx, msg)
				case <-s.done:
					return
				}
			}
		})
	}
	return s, nil
}

type ingressSub struct {
	sub  *nats.Subscription
	done chan struct{} // closed by stop; msgs is never closed, nats.go owns its sends
	wg   sync.WaitGroup
	once sync.Once
}

// stop unsubscribes and waits for in-flight messages.
func (s *ingressSub) stop() {
	s.once.Do(func() {
		_ = s.sub.Unsubscribe()
		close(s.done)
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
