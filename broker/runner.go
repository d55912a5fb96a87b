package broker

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
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

// A trigger's consumer on WEFT_DELIVERIES exists only while the trigger has
// work. nats-server checks every consumer of a work-queue stream for
// interest on every ack (stream.checkForInterestWithSubject), so each idle
// consumer slows every delivery of every trigger: measured with nats.go
// alone, 10,000 idle consumers on the stream took one consumer's acked
// consumption from about 120,000 to 350 messages/s. The server also refuses
// more than 1,000 consumers per stream by default. So a runner sleeps without
// a consumer (and without a goroutine) until it is woken: by the dispatcher
// when it stores deliveries for the trigger, and by the sweep (Broker.sweep)
// for deliveries stored by anyone else (a DLQ replay, a previous run). It then
// creates the consumer, delivers, and goes back to sleep, deleting the
// consumer, once nothing arrived for runnerIdleAfter and nothing is in
// flight. Undelivered messages of a work queue stay in the stream without a
// consumer; the next consumer starts at the first of them.
const runnerIdleAfter = 30 * time.Second

// runner runs one trigger's deliveries. Create it with startRunner, wake it
// when deliveries may be waiting, stop it when the trigger goes. Its methods
// are safe for concurrent use. Lock order: runTrigger's mu before r.mu.
type runner struct {
	b      *Broker
	name   string
	ctx    context.Context // ends on stop
	cancel context.CancelFunc
	wg     sync.WaitGroup // the activation goroutine, if any
	// slots bounds the trigger's deliveries in flight (TriggerWorkers),
	// those of the runner's consumer and those the dispatcher makes
	// directly alike.
	slots chan struct{}
	// slowUntil (Unix ns): until then the dispatcher does not wait for a
	// busy slot of this trigger (direct.go).
	slowUntil atomic.Int64
	// finished counts the deliveries that gave back their slot: the
	// dispatcher tells a busy trigger from a slow one by it (direct.go).
	finished atomic.Uint64

	mu        sync.Mutex
	idleAfter time.Duration // runnerIdleAfter; tests shorten it
	stopped   bool
	active    bool          // an activation goroutine runs
	woken     bool          // woken since the activation last checked
	ready     chan struct{} // closed once the current activation's consumer exists
}

// startRunner returns the runner of trigger name, asleep; it runs until
// parent ends or stop.
func (b *Broker) startRunner(parent context.Context, name string) *runner {
	ctx, cancel := context.WithCancel(parent)
	return &runner{b: b, name: name, ctx: ctx, cancel: cancel, idleAfter: runnerIdleAfter, ready: make(chan struct{}),
		slots: make(chan struct{}, b.cfg.TriggerWorkers)}
}

// tryAcquire takes a delivery slot if one is free.
func (r *runner) tryAcquire() bool {
	select {
	case r.slots <- struct{}{}:
		return true
	default:
		return false
	}
}

// release gives back a slot, taken by tryAcquire or by the runner's
// consumer.
func (r *runner) release() {
	r.finished.Add(1)
	<-r.slots
}

// stop ends the runner: no new delivery starts, and it returns once the
// in-flight ones finished or DrainTimeout passed. The consumer stays, so
// what is pending is delivered after a restart. Idempotent.
func (r *runner) stop() {
	r.mu.Lock()
	r.stopped = true
	r.mu.Unlock()
	r.cancel()
	r.wg.Wait()
}

// isStopped reports whether stop was called.
func (r *runner) isStopped() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.stopped
}

// wake tells the runner that deliveries may be waiting and starts it if it
// sleeps. The channel it returns is closed once a consumer of the trigger
// exists that will hand them out (at once when the runner is running), and
// never if the consumer cannot be created.
func (r *runner) wake() <-chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.stopped {
		c := make(chan struct{})
		close(c) // nothing to wait for
		return c
	}
	r.woken = true
	if !r.active {
		r.active = true
		r.wg.Add(1)
		r.b.wg.Go(func() {
			defer r.wg.Done()
			r.run()
		})
	}
	return r.ready
}

// run activates the runner until it goes to sleep with no wake pending, or
// stops.
func (r *runner) run() {
	for {
		r.mu.Lock()
		r.woken = false
		r.mu.Unlock()
		r.b.runTrigger(r)
		r.mu.Lock()
		if r.stopped || r.ctx.Err() != nil || !r.woken {
			r.active = false
			r.mu.Unlock()
			return
		}
		r.mu.Unlock() // woken while going to sleep: deliveries may wait
	}
}

// consumerReady marks the activation's consumer as created.
func (r *runner) consumerReady() {
	r.mu.Lock()
	defer r.mu.Unlock()
	select {
	case <-r.ready:
	default:
		close(r.ready)
	}
}

// trySleep is asked by an idle activation whether it may delete its
// consumer and end: not when a wake came since the last check. When it may,
// the next wake waits for a new consumer.
func (r *runner) trySleep() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.woken || r.stopped {
		r.woken = false
		return false
	}
	r.ready = make(chan struct{})
	return true
}

// runTrigger is one activation of r: it creates the trigger's durable
// consumer (retrying while JetStream refuses), delivers until r stops or the
// trigger is idle, and reports whether it went to sleep, its consumer
// deleted.
func (b *Broker) runTrigger(r *runner) (slept bool) {
	ctx, name := r.ctx, r.name
	r.mu.Lock()
	idleAfter := r.idleAfter
	r.mu.Unlock()
	c := b.conn.Load()
	if c == nil {
		return false // not running: nothing to deliver with
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
		if ctx.Err() != nil {
			return false
		}
		var apiErr *jetstream.APIError
		if errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeMaximumConsumersLimit {
			// More triggers have work at once than the stream admits
			// consumers; this one waits for others to go idle.
			wait = 30 * time.Second
			b.log.Error("trigger consumer not created: too many triggers with pending deliveries at once; retrying", "trigger", name, "err", err)
		} else {
			b.log.Warn("trigger consumer not created; retrying", "trigger", name, "err", err)
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(wait):
		}
	}
	r.consumerReady()

	deliverCtx, cancelDeliver := b.drainContext(ctx)
	defer cancelDeliver()

	// Each message gets a goroutine of its own, at most TriggerWorkers at
	// once (r.slots), so a sleeping trigger costs no goroutine. mu guards the
	// rest; once closing is set no delivery starts, so handlers.Wait cannot
	// race an Add. A callback that runs after that naks its message, which
	// goes at once to the next consumer (after a restart, or a wake-up).
	slots := r.slots
	var (
		mu       sync.Mutex
		closing  bool
		inFlight int
		lastSeen = time.Now()
		handlers sync.WaitGroup
	)
	cc, err := cons.Consume(func(msg jetstream.Msg) {
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
			_ = msg.Nak() // handed back at once, not when AckWait runs out
			return
		}
		mu.Lock()
		if closing {
			mu.Unlock()
			<-slots
			_ = msg.Nak()
			return
		}
		inFlight++
		lastSeen = time.Now()
		handlers.Add(1)
		mu.Unlock()
		go func() { // owned: handlers, waited for below
			defer func() {
				mu.Lock()
				inFlight--
				lastSeen = time.Now()
				mu.Unlock()
				r.release()
				handlers.Done()
			}()
			b.handleDelivery(deliverCtx, ctx, c, name, msg)
		}()
	}, jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
		b.log.Debug("trigger consumer", "trigger", name, "err", err)
	}))
	if err != nil {
		b.log.Error("trigger consumer cannot consume", "trigger", name, "err", err)
		<-ctx.Done()
		return false
	}

	idle := time.NewTicker(idleAfter / 4)
	defer idle.Stop()
	for !slept && ctx.Err() == nil {
		select {
		case <-ctx.Done():
		case <-idle.C:
			mu.Lock()
			if inFlight == 0 && time.Since(lastSeen) >= idleAfter {
				if slept = r.trySleep(); !slept {
					lastSeen = time.Now() // woken meanwhile: look again later
				}
			}
			closing = slept
			mu.Unlock()
		}
	}
	mu.Lock()
	closing = true
	mu.Unlock()
	cc.Drain() // what is buffered goes through the callback, which hands it back
	<-cc.Closed()
	handlers.Wait()
	if !slept {
		return false // stopping: the consumer keeps what is pending
	}
	dctx, cancel := context.WithTimeout(context.Background(), b.cfg.PublishTimeout)
	defer cancel()
	if err := deleteConsumer(dctx, c.dels, consumerName(name)); err != nil {
		b.log.Debug("delete idle trigger consumer", "trigger", name, "err", err)
	}
	return true
}

// drainContext returns a context that ends DrainTimeout after ctx does (or
// when cancel is called), so a stop lets in-flight requests finish instead of
// cutting them.
func (b *Broker) drainContext(ctx context.Context) (context.Context, context.CancelFunc) {
	drainCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	stop := context.AfterFunc(ctx, func() {
		t := time.NewTimer(b.cfg.DrainTimeout)
		defer t.Stop()
		select {
		case <-t.C:
			cancel()
		case <-drainCtx.Done():
		}
	})
	return drainCtx, func() { stop(); cancel() }
}

// errStopping ends a retry loop when the runner stops: the attempt in flight
// was allowed to finish, but no new one starts and the message is handed
// back (nak), to be delivered after restart rather than dead-lettered.
var errStopping = errors.New("broker: stopping")

// handleDelivery delivers one (event, trigger) pair per the trigger's policy
// and settles the JetStream message: ack on success or once dead-lettered,
// nak (so it is redelivered at once) when weft is stopping. ctx bounds the work
// (it outlives stopping by the drain timeout); stopping ends when the runner
// is asked to stop.
func (b *Broker) handleDelivery(ctx, stopping context.Context, c *conn, name string, msg jetstream.Msg) {
	tr, ok := b.index.Load().Get(name)
	if !ok {
		_ = b.ack(msg) // the trigger was deleted while this waited
		return
	}
	var ev event.Event
	if err := ev.UnmarshalJSON(msg.Data()); err != nil { // as json.Unmarshal does, without its validity pass
		b.log.Error("dropping unreadable delivery", "trigger", name, "err", err)
		_ = b.term(msg)
		return
	}
	ttl := ttlOf(ev)
	// out shares ev's data, which nothing changes; only the attributes
	// differ.
	out := ev
	out.Context = ev.Context.Clone()
	out.SetExtension(TTLExtension, nil) // the hop counter is the broker's business
	replay := replayOf(msg)
	if replay != nil {
		stripErrorExtensions(&out)
	}

	// The heartbeat runs until the message is settled: dead-lettering to a
	// sink retries too and can outlast AckWait.
	defer keepInProgress(msg, b.cfg.AckWait/3)()
	// A delivery the dispatcher handed over after a failed first attempt
	// carries that attempt and when the next one is due.
	history, retryAt := handedOver(msg)
	if wait := time.Until(retryAt); wait > 0 {
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-stopping.Done():
			t.Stop()
			_ = msg.Nak()
			return
		}
	}
	chain := retryFrom(tr.Delivery, len(history)+1, func(a Attempt) error {
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
		// Stopping: hand it back at once, so that it is delivered right after
		// a restart instead of when AckWait runs out.
		_ = msg.Nak()
		return
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
		_ = b.ack(msg)
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
	_ = b.ack(msg)
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
	v, ok := extensionOf(ev, TTLExtension)
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

// extensionOf returns the extension name of ev without the copy of every
// extension that ev.Extensions makes.
func extensionOf(ev event.Event, name string) (any, bool) {
	if c, ok := ev.Context.(*event.EventContextV1); ok {
		v, ok := c.Extensions[name]
		return v, ok
	}
	v, ok := ev.Extensions()[name]
	return v, ok
}

// keepInProgress tells JetStream every interval that msg is still being
// worked on, so retries with long backoffs do not trigger a redelivery. A
// timer waits between heartbeats rather than a goroutine, as most deliveries
// end long before the first; once stop returns no heartbeat is sent.
func keepInProgress(msg jetstream.Msg, interval time.Duration) (stop func()) {
	var (
		mu      sync.Mutex
		stopped bool
		t       *time.Timer
	)
	mu.Lock() // the first beat must see t
	defer mu.Unlock()
	t = time.AfterFunc(interval, func() {
		mu.Lock()
		defer mu.Unlock()
		if stopped {
			return
		}
		_ = msg.InProgress()
		t.Reset(interval)
	})
	return func() {
		mu.Lock()
		defer mu.Unlock()
		stopped = true
		t.Stop()
	}
}
