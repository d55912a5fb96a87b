package broker

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/weft-dev/weft/triggers"
)

// startDispatcher consumes stored events, matches each against the trigger
// index, and for each matching trigger either makes the first delivery
// attempt itself, when the trigger has a free slot (direct.go), or stores a
// delivery for the trigger's runner. An event is acked only after all its
// deliveries are settled or stored; a crash in between redelivers it and the
// per-(event, trigger) message IDs keep the stored fan-out from doubling.
//
// DispatchWorkers goroutines decode, match and hand the deliveries to the
// fan-out. When the fan-out commits deliveries in batches, each event then
// waits for its storage in a goroutine of its own (settle), so matching never
// waits for an fsync and a commit holds the deliveries of many events; the
// consumer's MaxAckPending bounds the events in flight. Otherwise the worker
// waits itself: with an fsync per delivery, more events in flight only
// crowd out the runners' acks (measured about 10% slower).
func (b *Broker) startDispatcher(ctx context.Context, c *conn) (stop func(), err error) {
	cons, err := c.js.CreateOrUpdateConsumer(ctx, eventsStream, jetstream.ConsumerConfig{
		Durable:       dispatchConsumer,
		FilterSubject: eventsSubject, // not unmatchedSubject
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       b.cfg.AckWait,
		MaxAckPending: b.cfg.DispatchWorkers * dispatchPending,
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
	fo := b.newFanout(ctx, c)
	b.earlyMu.Lock()
	clear(b.early) // left by an earlier run, whose messages are dispatched anew
	b.earlyMu.Unlock()
	b.dispatching.Store(&dispatchState{ctx: ctx, c: c, fo: fo})
	for range b.cfg.DispatchWorkers {
		b.wg.Go(func() {
			runners := map[string]*runner{} // this worker's cache of b.runners
			for {
				select {
				case msg := <-work:
					b.dispatch(ctx, c, fo, msg, runners)
				case <-done:
					return
				}
			}
		})
	}
	b.wg.Go(func() { b.sweep(ctx, c, done) })
	cc, err := cons.Consume(func(msg jetstream.Msg) {
		if ctx.Err() != nil {
			// Handed back at once, so that it is dispatched right after a
			// restart rather than when AckWait runs out.
			_ = msg.Nak()
			return
		}
		select {
		case work <- msg:
		case <-ctx.Done():
			_ = msg.Nak()
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
			b.dispatching.Store(nil)
			cc.Drain() // what is buffered goes through the callback, which hands it back
			<-cc.Closed()
			close(done)
		})
	}, nil
}

// dispatchPending is how many events per dispatch worker may be in flight
// (the dispatch consumer's MaxAckPending, per worker).
const dispatchPending = 64

func (b *Broker) dispatch(ctx context.Context, c *conn, fo fanout, msg jetstream.Msg, runners map[string]*runner) {
	if e := b.takeEarly(msg.Headers().Get(jetstream.MsgIDHeader)); e != nil {
		// Store started its deliveries already (early.go).
		b.wg.Go(func() { b.settle(ctx, msg, e.ev, len(e.results), failedWait{}, nil, e.results) })
		return
	}
	if b.stillUnmatched(msg.Headers().Get(hdrUnmatched)) {
		// No trigger wanted it when it was stored, and the triggers are
		// the same: nothing to decode or deliver.
		if err := b.ack(msg); err != nil {
			b.log.Debug("ack of unmatched event", "err", err)
		}
		return
	}
	var ev event.Event
	if err := ev.UnmarshalJSON(msg.Data()); err != nil { // as json.Unmarshal does, without its validity pass
		// Only validated events are stored; an unreadable one cannot get
		// better by redelivery.
		b.log.Error("dropping unreadable stored event", "err", err)
		_ = b.term(msg)
		return
	}
	meta, err := msg.Metadata()
	if err != nil {
		_ = msg.NakWithDelay(retryStorageDelay)
		return
	}
	idx := b.index.Load()
	if len(runners) > 2*idx.Len()+64 {
		clear(runners) // drop the runners of deleted triggers
	}
	matched := idx.MatchBroker(DefaultBroker, ev)
	var (
		ds      []delivery // stored for the triggers' runners
		storeTo []*triggers.Trigger
		direct  []directDelivery // made here (direct.go)
	)
	for _, tr := range matched {
		if r := b.runnerOf(tr.Name, runners); r != nil && b.awaitDirect(ctx, r) {
			direct = append(direct, directDelivery{r: r, tr: tr, seq: meta.Sequence.Stream, data: msg.Data()})
			continue
		}
		ds = append(ds, newDelivery(meta.Sequence.Stream, tr.Name, msg.Data()))
		storeTo = append(storeTo, tr)
	}
	// Runners are woken before their deliveries are stored, so a sleeping
	// one creates its consumer meanwhile.
	readies := b.wakeRunners(storeTo, runners)
	// Counted before they are confirmed (an overcount, never a miss): the
	// storage guard estimates use between samples from what was stored.
	b.storedSince.Add(int64(len(msg.Data()) * len(ds)))
	stored := fo.publish(ds)
	results := b.startDirect(ctx, c, fo, ev, direct)
	if !fo.batches() && len(direct) == 0 {
		b.settle(ctx, msg, ev, len(matched), stored, readies, nil)
		return
	}
	b.wg.Go(func() { b.settle(ctx, msg, ev, len(matched), stored, readies, results) })
}

// startDirect starts the direct deliveries of ev, each in a goroutine;
// each result reports how it settled (see deliverDirect).
func (b *Broker) startDirect(ctx context.Context, c *conn, fo fanout, ev event.Event, direct []directDelivery) []<-chan error {
	results := make([]<-chan error, len(direct))
	for i, dd := range direct {
		result := make(chan error, 1)
		results[i] = result
		b.goKept(ctx, func() { result <- b.deliverDirect(ctx, c, fo, ev, dd) })
	}
	return results
}

// deliveryID is the Nats-Msg-Id of the delivery of stored event seq for a
// trigger: a redelivered event does not fan out twice.
func deliveryID(seq uint64, trigger string) string {
	return strconv.FormatUint(seq, 10) + "." + trigger
}

// settle acks a dispatched event once its deliveries are stored and a
// consumer of each matching trigger exists to hand them out (a woken runner
// creates one), so no moment passes where an event is neither pending nor
// waiting in a trigger's consumer. A consumer that cannot be created (the
// stream's consumer limit) delays the ack by at most PublishTimeout; the
// deliveries are stored either way. An event whose deliveries were not all
// stored is redelivered. So is one whose direct deliveries (results) did not
// all settle; while they run, the event is kept in progress and the wait
// outlives ctx by DrainTimeout, as the deliveries do.
func (b *Broker) settle(ctx context.Context, msg jetstream.Msg, ev event.Event, matches int, stored fanoutWait, readies []<-chan struct{}, results []<-chan error) {
	if len(results) > 0 {
		defer keepInProgress(msg, b.cfg.AckWait/3)()
		drainCtx, cancel := b.drainContext(ctx)
		defer cancel()
		stopping := ctx
		ctx = drainCtx
		for _, result := range results {
			if err := <-result; err != nil {
				switch {
				case ctx.Err() != nil: // past the drain: the connection may be gone
				case stopping.Err() != nil:
					// Handed back at once, so that it is dispatched right
					// after a restart.
					b.log.Debug("direct delivery not settled while stopping; event will be dispatched again", "event_id", ev.ID(), "err", err)
					_ = msg.Nak()
				default:
					b.log.Warn("direct delivery not settled; event will be dispatched again", "event_id", ev.ID(), "err", err)
					_ = msg.NakWithDelay(retryStorageDelay)
				}
				return
			}
		}
	}
	if err := stored.wait(ctx); err != nil {
		if ctx.Err() != nil {
			return // not acked: redelivered after restart
		}
		b.log.Warn("fan-out not stored; event will be redelivered", "event_id", ev.ID(), "err", err)
		_ = msg.NakWithDelay(retryStorageDelay)
		return
	}
	if len(readies) > 0 {
		timeout := time.NewTimer(b.cfg.PublishTimeout)
		defer timeout.Stop()
	wait:
		for _, ready := range readies {
			select {
			case <-ready:
			case <-timeout.C:
				break wait
			case <-ctx.Done():
				return
			}
		}
	}
	b.log.Debug("dispatched", "event_id", ev.ID(), "event_type", ev.Type(), "matches", matches)
	// A plain ack, not waiting for the server's confirmation: nothing would
	// be done differently without it (an ack that is lost redelivers the
	// event, whose deliveries the message ids then keep from doubling), and
	// the wait cost about a tenth of the throughput with interval fsync.
	if err := b.ack(msg); err != nil {
		b.log.Debug("ack of dispatched event", "event_id", ev.ID(), "err", err)
	}
}

// runnerOf returns the runner of trigger name, or nil when it has none yet
// (Run reconciles after the dispatcher starts; the sweep wakes it later).
// runners caches b.runners for the calling worker, so dispatching takes b.mu
// only the first time it meets a trigger (SetTriggers holds b.mu while a
// deleted trigger's deliveries drain).
func (b *Broker) runnerOf(name string, runners map[string]*runner) *runner {
	r := runners[name]
	if r != nil && !r.isStopped() {
		return r
	}
	b.mu.Lock()
	r = b.runners[name]
	b.mu.Unlock()
	if r == nil {
		delete(runners, name)
		return nil
	}
	runners[name] = r
	return r
}

// wakeRunners wakes the runners of trs and returns the readiness channels
// not yet closed (see runner.wake).
func (b *Broker) wakeRunners(trs []*triggers.Trigger, runners map[string]*runner) []<-chan struct{} {
	var waiting []<-chan struct{}
	for _, tr := range trs {
		r := b.runnerOf(tr.Name, runners)
		if r == nil {
			continue
		}
		ready := r.wake()
		select {
		case <-ready:
		default:
			waiting = append(waiting, ready)
		}
	}
	return waiting
}

// sweepInterval is how often the sweep looks for deliveries that no running
// runner was told about.
const sweepInterval = time.Second

// sweep wakes, every sweepInterval until done is closed, the runners of
// triggers with stored deliveries: those stored by a DLQ replay, or before a
// restart, or that a runner going to sleep left behind. The first sweep
// after the runners exist also wakes those whose consumer is left from
// before (each deletes its own once idle).
func (b *Broker) sweep(ctx context.Context, c *conn, done <-chan struct{}) {
	t := time.NewTicker(sweepInterval)
	defer t.Stop()
	consumersSwept := false
	for {
		var names []string
		info, err := c.dels.Info(ctx, jetstream.WithSubjectFilter(deliverPrefix+">"))
		if err == nil {
			for subject := range info.State.Subjects {
				names = append(names, strings.TrimPrefix(subject, deliverPrefix))
			}
		}
		b.mu.Lock()
		started := b.runCtx != nil
		b.mu.Unlock()
		if started && !consumersSwept {
			consumersSwept = true
			lister := c.dels.ConsumerNames(ctx)
			for name := range lister.Name() {
				if trigger, ok := strings.CutPrefix(name, consumerPrefix); ok {
					names = append(names, trigger)
				}
			}
			if err := lister.Err(); err != nil {
				consumersSwept = false
			}
		}
		var rs []*runner
		b.mu.Lock()
		for _, name := range names {
			if r := b.runners[name]; r != nil {
				rs = append(rs, r)
			}
		}
		b.mu.Unlock()
		for _, r := range rs {
			r.wake()
		}
		select {
		case <-t.C:
		case <-done:
			return
		case <-ctx.Done():
			return
		}
	}
}

// reconcileLocked gives every trigger without one a runner (asleep until
// woken) and takes out the runners of triggers that are gone, which it
// returns for stopRunners. b.mu and b.swapMu must be held.
func (b *Broker) reconcileLocked(idx *triggers.Index) (gone map[string]*runner) {
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
		if gone == nil {
			gone = map[string]*runner{}
		}
		gone[name] = r
		delete(b.runners, name)
	}
	return gone
}

// stopRunners stops the runners of triggers that are gone, letting their
// deliveries in flight end, and deletes their consumers and pending
// deliveries. b.swapMu must be held (the triggers cannot come back
// meanwhile), b.mu must not.
func (b *Broker) stopRunners(gone map[string]*runner) {
	for name, r := range gone {
		r.stop()
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
// later does not receive stale events. A sleeping trigger has deliveries but
// no consumer, so both are looked for. b.mu must be held.
func (b *Broker) forgetStaleTriggers(ctx context.Context, c *conn) {
	idx := b.index.Load()
	stale := map[string]bool{}
	names := c.dels.ConsumerNames(ctx)
	for name := range names.Name() {
		trigger, ok := strings.CutPrefix(name, consumerPrefix)
		if _, live := idx.Get(trigger); ok && !live {
			stale[trigger] = true
		}
	}
	if err := names.Err(); err != nil {
		b.log.Warn("list trigger consumers", "err", err)
	}
	info, err := c.dels.Info(ctx, jetstream.WithSubjectFilter(deliverPrefix+">"))
	if err != nil {
		b.log.Warn("list pending deliveries", "err", err)
	} else {
		for subject := range info.State.Subjects {
			trigger := strings.TrimPrefix(subject, deliverPrefix)
			if _, live := idx.Get(trigger); !live {
				stale[trigger] = true
			}
		}
	}
	for _, t := range slices.Sorted(maps.Keys(stale)) {
		b.log.Info("removing deliveries of a trigger deleted while the node was down", "trigger", t)
		b.forgetTrigger(c, t)
	}
}

// Pending returns how many deliveries of a trigger wait in JetStream, not yet
// handed to its runner: the backlog the autoscaler adds to a function's
// demand. A sleeping trigger has no consumer; all its stored deliveries wait.
func (b *Broker) Pending(ctx context.Context, trigger string) (int, error) {
	c, release, err := b.running()
	if err != nil {
		return 0, err
	}
	defer release()
	cons, err := c.js.Consumer(ctx, deliveriesStream, consumerName(trigger))
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		subject := deliverPrefix + trigger
		info, err := c.dels.Info(ctx, jetstream.WithSubjectFilter(subject))
		if err != nil {
			return 0, fmt.Errorf("trigger %s: %w", trigger, err)
		}
		return int(info.State.Subjects[subject]), nil
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
