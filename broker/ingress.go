package broker

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
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
// subscription is a channel subscription: the connection's reader puts each
// message straight into the channel, where an idle handler goroutine takes
// it. (An async subscription hands each message to a goroutine of its own
// first, one more wake-up per event.) Before a handler blocks on storage it
// makes sure another one is idle, so a message never waits for a store to
// finish: it is either stored concurrently or answered 429.
func (b *Broker) startNATSIngress(ctx context.Context, c *conn) (*ingressSub, error) {
	s := &ingressSub{
		b: b, ctx: context.WithoutCancel(ctx),
		received: b.metrics.Received.WithLabelValues("nats"),
		slots:    make(chan struct{}, b.cfg.MaxInflight),
		// A burst outruns the handlers (each stores a message or answers
		// 429); the reader drops a message (the publisher's request times
		// out) only when this is full.
		msgs: make(chan *nats.Msg, natsIngressQueue),
		quit: make(chan struct{}),
	}
	sub, err := c.nc.ChanQueueSubscribe(ingressSubjects, "weft-ingress", s.msgs)
	if err != nil {
		return nil, fmt.Errorf("broker: subscribe %s: %w", ingressSubjects, err)
	}
	// A channel subscription is never dropped for falling behind by
	// nats.go's pending limits, only when the channel is full.
	s.startHandler()
	// The subscription goes to the server asynchronously; until it is there
	// a request finds no responder. The broker is ready only once it is.
	if err := c.nc.FlushTimeout(b.cfg.PublishTimeout); err != nil {
		s.sub = sub
		s.stop()
		return nil, fmt.Errorf("broker: subscribe %s: %w", ingressSubjects, err)
	}
	s.sub = sub
	return s, nil
}

// natsIngressQueue is how many messages of the NATS ingress may wait for a
// handler: a burst of them, each soon stored or answered 429. (An async
// subscription's default limit, 512 Ki messages, was the bound before.)
// Untouched, the queue's pages cost no memory.
const natsIngressQueue = 64 << 10

// ingressHandlersIdle is how many idle handlers of the NATS ingress are
// kept; one finishing a store while more are idle exits. Kept handlers keep
// their grown stacks: a new goroutine grows its stack in the decoder on
// every message (a twentieth of the CPU when each message had one).
const ingressHandlersIdle = 64

type ingressSub struct {
	b        *Broker
	ctx      context.Context // the broker's run, without its cancellation: stores outlive it (they are acknowledged)
	received prometheus.Counter
	sub      *nats.Subscription
	msgs     chan *nats.Msg // filled by the connection's reader
	slots    chan struct{}  // messages being stored
	quit     chan struct{}  // closed by stop: idle handlers exit
	idle     atomic.Int32   // handlers waiting for a message
	wg       sync.WaitGroup // every handler
	once     sync.Once
}

// startHandler starts one more handler goroutine, counted idle.
func (s *ingressSub) startHandler() {
	s.idle.Add(1)
	s.wg.Go(s.handle) // owned: s.wg, waited for by stop
}

// handle takes messages until stop, or until it finds enough others idle
// after a store.
func (s *ingressSub) handle() {
	for {
		select {
		case <-s.quit:
			s.idle.Add(-1)
			return // a message left in msgs is not acknowledged: the publisher retries
		case msg := <-s.msgs:
			if s.idle.Add(-1) == 0 {
				s.startHandler() // so the next message does not wait for this store
			}
			s.take(msg)
			if s.idle.Load() >= ingressHandlersIdle {
				return
			}
			s.idle.Add(1)
		}
	}
}

// take stores one message, or answers 429 when MaxInflight are being stored.
func (s *ingressSub) take(msg *nats.Msg) {
	select {
	case s.slots <- struct{}{}:
		defer func() { <-s.slots }()
		s.b.handleNATSIngress(s.ctx, s.received, msg)
	default:
		s.received.Inc()
		s.b.metrics.Rejected.WithLabelValues(rejectReason(ErrOverloaded)).Inc()
		if msg.Reply != "" {
			_ = msg.Respond(natsAck(0, ErrOverloaded))
		}
	}
}

// stop unsubscribes and waits for the messages being stored.
func (s *ingressSub) stop() {
	s.once.Do(func() {
		_ = s.sub.Unsubscribe()
		close(s.quit)
		s.wg.Wait()
	})
}

// handleNATSIngress stores one message's events; ctx must not end before the
// store does (an acknowledged store is one the publisher may rely on).
func (b *Broker) handleNATSIngress(ctx context.Context, received prometheus.Counter, msg *nats.Msg) {
	received.Inc()
	evs, err := decodeNATSMsg(msg)
	if err == nil {
		err = b.Store(ctx, evs)
	}
	if err != nil {
		b.metrics.Rejected.WithLabelValues(rejectReason(err)).Inc()
		b.log.Debug("nats ingress refused", "subject", msg.Subject, "err", err)
	}
	if msg.Reply != "" {
		_ = msg.Respond(natsAck(len(evs), err))
	}
}
