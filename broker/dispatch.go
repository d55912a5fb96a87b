package broker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/weft-dev/weft/triggers"
)

// startDispatcher consumes stored events, matches each against the trigger
// index, and stores one delivery per matching trigger. An event is acked only
// after all its deliveries are stored; a crash in between redelivers it and
// the per-(event, trigger) message IDs keep the fan-out from doubling.
func (b *Broker) startDispatcher(ctx context.Context, c *conn) (stop func(), err error) {
	cons, err := c.js.CreateOrUpdateConsumer(ctx, eventsStream, jetstream.ConsumerConfig{
		Durable:       dispatchConsumer,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       b.cfg.AckWait,
		MaxAckPending: b.cfg.DispatchWorkers * 64,
		Description:   "matches stored events against triggers",
	})
	if err != nil {
		return nil, fmt.Errorf("broker: dispatch consumer: %w", err)
	}
	// work is never closed: a Consume callback may still be running after
	// Stop, and a send on a closed channel would panic. Workers leave on
	// done; a callback gives up on ctx, which has ended by then.
	work := make(chan jetstream.Msg) // unbuffered: MaxAckPending already bounds what is in flight
	done := make(chan struct{})
	for range b.cfg.DispatchWorkers {
		b.wg.Go(func() {
			for {
				select {
				case msg := <-work:
					b.dispatch(ctx, c, msg)
				case <-done:
					return
				}
			}
		})
	}
	cc, err := cons.Consume(func(msg jetstream.Msg) {
		if ctx.Err() != nil {
			return // not acked: redelivered after restart
		}
		select {
		case work <- msg:
		case <-ctx.Done():
		}
	}, jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
		b.log.Debug("dispatch consumer", "err", err)
	}))
	if err != nil {
		close(done)
		return nil, fmt.Errorf("broker: consume events: %w", err)
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			cc.Stop()
			<-cc.Closed()
			close(done)
		})
	}, nil
}

func (b *Broker) dispatch(ctx context.Context, c *conn, msg jetstream.Msg) {
	var ev event.Event
	if err := json.Unmarshal(msg.Data(), &ev); err != nil {
		// Only validated events are stored; an unreadable one cannot get
		// better by redelivery.
		b.log.Error("dropping unreadable stored event", "err", err)
		_ = msg.Term()
		return
	}
	meta, err := msg.Metadata()
	if err != nil {
		_ = msg.NakWithDelay(retryStorageDelay)
		return
	}
	matched := b.index.Load().MatchBroker(DefaultBroker, ev)
	futures := make([]jetstream.PubAckFuture, 0, len(matched))
	for _, tr := range matched {
		out := nats.NewMsg(deliverPrefix + tr.Name)
		out.Data = msg.Data()
		out.Header.Set(hdrTrigger, tr.Name)
		id := fmt.Sprintf("%d.%s", meta.Sequence.Stream, tr.Name)
		f, err := c.js.PublishMsgAsync(out, jetstream.WithMsgID(id), jetstream.WithExpectStream(deliveriesStream))
		if err != nil {
			b.log.Warn("fan-out publish failed; event will be redelivered", "event_id", ev.ID(), "trigger", tr.Name, "err", err)
			_ = msg.NakWithDelay(retryStorageDelay)
			return
		}
		futures = append(futures, f)
	}
	for _, f := range futures {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			b.log.Warn("fan-out not stored; event will be redelivered", "event_id", ev.ID(), "err", err)
			_ = msg.NakWithDelay(retryStorageDelay)
			return
		case <-ctx.Done():
			return // not acked: redelivered after restart
		}
	}
	b.log.Debug("dispatched", "event_id", ev.ID(), "event_type", ev.Type(), "matches", len(futures))
	if err := msg.DoubleAck(ctx); err != nil {
		b.log.Debug("ack of dispatched event", "event_id", ev.ID(), "err", err)
	}
}

// reconcileLocked starts a runner for every trigger without one and stops the
// runners of triggers that are gone, deleting their consumer and pending
// deliveries. b.mu must be held.
func (b *Broker) reconcileLocked(idx *triggers.Index) {
	want := map[string]bool{}
	for _, tr := range idx.All() {
		want[tr.Name] = true
		if _, ok := b.runners[tr.Name]; !ok {
			b.runners[tr.Name] = b.startRunner(b.runCtx, tr.Name)
		}
	}
	for name, r := range b.runners {
		if want[name] {
			continue
		}
		r.stop()
		delete(b.runners, name)
		if c := b.conn.Load(); c != nil {
			b.forgetTrigger(c, name)
		}
	}
}

// forgetTrigger removes a deleted trigger's consumer and pending deliveries.
// Its dead letters stay: they are the user's to inspect or purge.
func (b *Broker) forgetTrigger(c *conn, name string) {
	ctx, cancel := context.WithTimeout(context.Background(), b.cfg.PublishTimeout)
	defer cancel()
	if err := c.js.DeleteConsumer(ctx, deliveriesStream, consumerName(name)); err != nil {
		b.log.Debug("delete trigger consumer", "trigger", name, "err", err)
	}
	if err := c.dels.Purge(ctx, jetstream.WithPurgeSubject(deliverPrefix+name)); err != nil {
		b.log.Warn("purge deliveries of deleted trigger", "trigger", name, "err", err)
	}
}

// retryStorageDelay is how long a message waits before it is tried again
// after storage refused a step, so a full disk does not become a busy loop.
const retryStorageDelay = time.Second

const consumerPrefix = "trigger-"

func consumerName(trigger string) string { return consumerPrefix + trigger }

// forgetStaleTriggers removes the consumers and pending deliveries of
// triggers that were deleted while the node was down, so a trigger re-added
// later does not receive stale events. b.mu must be held.
func (b *Broker) forgetStaleTriggers(ctx context.Context, c *conn) {
	idx := b.index.Load()
	names := c.dels.ConsumerNames(ctx)
	var stale []string
	for name := range names.Name() {
		trigger, ok := strings.CutPrefix(name, consumerPrefix)
		if _, live := idx.Get(trigger); ok && !live {
			stale = append(stale, trigger)
		}
	}
	if err := names.Err(); err != nil {
		b.log.Warn("list trigger consumers", "err", err)
	}
	for _, t := range stale {
		b.log.Info("removing deliveries of a trigger deleted while the node was down", "trigger", t)
		b.forgetTrigger(c, t)
	}
}

// Pending returns how many deliveries of a trigger wait in JetStream, not yet
// handed to its runner: the backlog the autoscaler adds to a function's
// demand. A trigger without a consumer yet has none.
func (b *Broker) Pending(ctx context.Context, trigger string) (int, error) {
	c, err := b.running()
	if err != nil {
		return 0, err
	}
	cons, err := c.js.Consumer(ctx, deliveriesStream, consumerName(trigger))
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("trigger %s: %w", trigger, err)
	}
	info, err := cons.Info(ctx)
	if err != nil {
		return 0, fmt.Errorf("trigger %s: %w", trigger, err)
	}
	return int(info.NumPending), nil
}
