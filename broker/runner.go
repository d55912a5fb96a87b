package broker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/cloudevents/sdk-go/v2/types"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/weft-dev/weft/triggers"
)

// Headers on delivery and dead-letter messages.
const (
	hdrTrigger  = "Weft-Trigger"
	hdrDLQSeq   = "Weft-Dlq-Seq"    // on a replayed delivery: the dead letter it came from
	hdrReplayID = "Weft-Replay-Id"  // on a replayed delivery: the replay it belongs to
	hdrReason   = "Weft-Reason"     // on a dead letter: why it is there
	hdrTarget   = "Weft-Target"     // on a dead letter: the subscriber that failed
	hdrFailedAt = "Weft-Failed-At"  // on a dead letter: RFC 3339 time of the last attempt
	hdrAttempts = "Weft-Attempts"   // on a dead letter: JSON array of Attempt
	hdrReplays  = "Weft-Replays"    // on a dead letter: how often it was replayed and failed again
	hdrError    = "Weft-Last-Error" // on a dead letter: the last attempt's error text
)

// runner consumes one trigger's deliveries. stop cancels it and waits until
// its in-flight deliveries finished or DrainTimeout passed.
type runner struct {
	cancel context.CancelFunc
	done   chan struct{}
}

func (r *runner) stop() {
	r.cancel()
	<-r.done
}

func (b *Broker) startRunner(parent context.Context, name string) *runner {
	ctx, cancel := context.WithCancel(parent)
	r := &runner{cancel: cancel, done: make(chan struct{})}
	b.wg.Go(func() {
		defer close(r.done)
		b.runTrigger(ctx, name)
	})
	return r
}

// runTrigger owns one trigger's durable consumer until ctx ends, retrying its
// creation while JetStream is not ready for it.
func (b *Broker) runTrigger(ctx context.Context, name string) {
	c := b.conn.Load()
	if c == nil {
		return
	}
	var cons jetstream.Consumer
	for wait := 100 * time.Millisecond; ; wait = min(wait*2, 5*time.Second) {
		var err error
		cons, err = c.js.CreateOrUpdateConsumer(ctx, deliveriesStream, jetstream.ConsumerConfig{
			Durable:       consumerName(name),
			Description:   "deliveries of trigger " + name,
			FilterSubject: deliverPrefix + name,
			AckPolicy:     jetstream.AckExplicitPolicy,
			AckWait:       b.cfg.AckWait,
			MaxAckPending: b.cfg.TriggerWorkers,
		})
		if err == nil {
			break
		}
		b.log.Warn("trigger consumer not created; retrying", "trigger", name, "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}

	// Deliveries outlive ctx by at most DrainTimeout, so a stop lets
	// in-flight requests finish instead of cutting them.
	deliverCtx, cancelDeliver := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelDeliver()
	stopDrain := context.AfterFunc(ctx, func() {
		t := time.NewTimer(b.cfg.DrainTimeout)
		defer t.Stop()
		select {
		case <-t.C:
			cancelDeliver()
		case <-deliverCtx.Done():
		}
	})
	defer stopDrain()

	// work is never closed (a callback may outlive Stop); workers leave on
	// done, callbacks give up on ctx.
	work := make(chan jetstream.Msg) // unbuffered: MaxAckPending bounds what is in flight
	done := make(chan struct{})
	var workers sync.WaitGroup
	for range b.cfg.TriggerWorkers {
		workers.Go(func() {
			for {
				select {
				case msg := <-work:
					b.handleDelivery(deliverCtx, ctx, c, name, msg)
				case <-done:
					return
				}
			}
		})
	}
	cc, err := cons.Consume(func(msg jetstream.Msg) {
		if ctx.Err() != nil {
			return // not acked: handed out again later
		}
		select {
		case work <- msg:
		case <-ctx.Done():
		}
	}, jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
		b.log.Debug("trigger consumer", "trigger", name, "err", err)
	}))
	if err != nil {
		b.log.Error("trigger consumer cannot consume", "trigger", name, "err", err)
	} else {
		<-ctx.Done()
		cc.Stop()
		<-cc.Closed()
	}
	close(done)
	workers.Wait()
}

// errStopping ends a retry loop when the runner stops: the attempt in flight
// was allowed to finish, but no new one starts and the message stays
// unacked, to be delivered after restart rather than dead-lettered.
var errStopping = errors.New("broker: stopping")

// handleDelivery delivers one (event, trigger) pair per the trigger's policy
// and settles the JetStream message: ack on success or once dead-lettered,
// nothing (so it is redelivered) when weft is stopping. ctx bounds the work
// (it outlives stopping by the drain timeout); stopping ends when the runner
// is asked to stop.
func (b *Broker) handleDelivery(ctx, stopping context.Context, c *conn, name string, msg jetstream.Msg) {
	tr, ok := b.index.Load().Get(name)
	if !ok {
		_ = msg.Ack() // the trigger was deleted while this waited
		return
	}
	var ev event.Event
	if err := json.Unmarshal(msg.Data(), &ev); err != nil {
		b.log.Error("dropping unreadable delivery", "trigger", name, "err", err)
		_ = msg.Term()
		return
	}
	ttl := ttlOf(ev)
	out := ev.Clone()
	out.SetExtension(TTLExtension, nil) // the hop counter is the broker's business
	replay := replayOf(msg)
	if replay != nil {
		stripErrorExtensions(&out)
	}

	// The heartbeat runs until the message is settled: dead-lettering to a
	// sink retries too and can outlast AckWait.
	defer keepInProgress(ctx, msg, b.cfg.AckWait/3)()
	var history []Attempt
	chain := Retry(tr.Delivery, func(a Attempt) error {
		if len(history) > 0 {
			b.metrics.Retried.WithLabelValues(name).Inc()
		}
		history = append(history, a)
		if stopping.Err() != nil {
			return errStopping
		}
		return nil
	})(Timeout(tr.Delivery.Timeout)(b.deliverer))
	target := tr.Subscriber.Target()
	reply, err := chain.Deliver(ctx, target, out)
	if err != nil && (ctx.Err() != nil || errors.Is(err, errStopping)) {
		return // stopping: leave it unacked so it is delivered after restart
	}

	if err == nil {
		b.metrics.Delivered.WithLabelValues(name).Inc()
		b.log.Debug("delivered", "trigger", name, "event_id", ev.ID(), "attempt", len(history))
		if reply != nil {
			if err := b.handleReply(ctx, c, tr, ttl, *reply); err != nil {
				b.log.Warn("reply not stored; delivery will be repeated", "trigger", name, "event_id", ev.ID(), "err", err)
				_ = msg.NakWithDelay(time.Second)
				return
			}
		}
		if replay != nil {
			b.settleReplay(ctx, c, replay, true)
		}
		_ = msg.Ack()
		return
	}

	b.log.Debug("delivery failed", "trigger", name, "event_id", ev.ID(), "attempt", len(history), "err", err)
	if err := b.deadLetter(ctx, c, tr, ev, history, err, replay); err != nil {
		b.log.Warn("dead letter not stored; delivery will be repeated", "trigger", name, "event_id", ev.ID(), "err", err)
		_ = msg.NakWithDelay(time.Second)
		return
	}
	if replay != nil {
		b.settleReplay(ctx, c, replay, false)
	}
	_ = msg.Ack()
}

// handleReply lets a subscriber's reply re-enter the broker with one hop less,
// or, when the hop budget is spent, cuts the loop into the trigger's DLQ.
func (b *Broker) handleReply(ctx context.Context, c *conn, tr *triggers.Trigger, ttl int32, reply event.Event) error {
	next := ttl - 1
	if next <= 0 {
		b.metrics.LoopsCut.Inc()
		b.metrics.DeadLettered.WithLabelValues(tr.Name, reasonTTL).Inc()
		b.log.Warn("reply loop cut: knativebrokerttl exhausted", "trigger", tr.Name, "event_id", reply.ID(), "event_type", reply.Type())
		_, err := b.publishDLQ(ctx, c, dlqEntry{
			Trigger: tr.Name, Reason: reasonTTL, Target: tr.Subscriber.Target(),
			FailedAt: time.Now().UTC(), Event: reply,
			LastError: fmt.Sprintf("%s reached 0 after %d hops", TTLExtension, DefaultTTL),
		})
		return err
	}
	reply.SetExtension(TTLExtension, next)
	if err := ValidateEvent(&reply); err != nil {
		// A reply the ingress would refuse is the subscriber's bug: keep it
		// where a person can see it rather than retrying forever.
		b.metrics.DeadLettered.WithLabelValues(tr.Name, reasonInvalidReply).Inc()
		_, derr := b.publishDLQ(ctx, c, dlqEntry{
			Trigger: tr.Name, Reason: reasonInvalidReply, Target: tr.Subscriber.Target(),
			FailedAt: time.Now().UTC(), Event: reply, LastError: err.Error(),
		})
		return derr
	}
	// Storing the reply is retried here, briefly, rather than by redelivering
	// the trigger event, which would call the subscriber again.
	var err error
	for wait := 50 * time.Millisecond; wait <= 2*time.Second; wait *= 2 {
		if err = b.Store(ctx, []event.Event{reply}); err == nil || (!errors.Is(err, ErrOverloaded) && !errors.Is(err, ErrUnavailable)) {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
	}
	return err
}

// ttlOf reads the hop counter; events stored before weft set it, or with a
// value that is not an integer, get the default.
func ttlOf(ev event.Event) int32 {
	v, ok := ev.Extensions()[TTLExtension]
	if !ok {
		return DefaultTTL
	}
	n, err := types.ToInteger(v)
	if err != nil {
		if s, ok := v.(string); ok {
			if i, err := strconv.ParseInt(s, 10, 32); err == nil {
				return int32(i)
			}
		}
		return DefaultTTL
	}
	return n
}

// keepInProgress tells JetStream every interval that msg is still being
// worked on, so retries with long backoffs do not trigger a redelivery.
func keepInProgress(ctx context.Context, msg jetstream.Msg, interval time.Duration) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { // owned: stop cancels and waits
		defer close(done)
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				_ = msg.InProgress()
			}
		}
	}()
	return func() {
		cancel()
		<-done
	}
}
