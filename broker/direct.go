package broker

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/weft-dev/weft/triggers"
)

// Direct delivery: when a matching trigger has a free delivery slot, the
// dispatcher makes the first attempt itself instead of storing a delivery for
// the trigger's runner, and acks the event only once that attempt settled.
// The event stays in WEFT_EVENTS until then, so a crash in between delivers
// it again (at least once, as before); what is saved is a second fsynced
// store and a consumer hop on every event's way to a warm function (the way
// Knative's broker filter delivers straight from the channel).
//
// Only the first attempt is direct. A failed one that the trigger's policy
// retries is handed over: stored as a delivery that carries the attempt
// (hdrAttempts) and when the next is due (hdrRetryAt), so the runner goes on
// with attempt 2 after the same backoff, and a slow or failing subscriber
// never holds events in the dispatcher for longer than one attempt. One that
// is not retried is dead-lettered here, as the runner would.

// directShare is the part of the dispatch consumer's MaxAckPending that
// direct deliveries may hold at once (each holds its event unacknowledged):
// beyond it they are stored, so slow subscribers of many triggers cannot
// stall the dispatch of everyone else's events.
const directShare = 2

// A trigger whose slots are all busy makes the dispatcher wait for one before
// it stores the delivery instead: a trigger whose subscriber answers at once
// frees a slot within a fraction of a millisecond, and a second store, fsync
// included, costs more than the wait (a backlog to a warm subscriber,
// BenchmarkDispatch/bound: 14.5k → 20–22k events/s).
//
// The wait is made of windows of slotWait. A window in which none of the
// trigger's deliveries finished marks it slow for slowFor: its busy
// deliveries are then stored at once, so a slow subscriber holds up the
// dispatcher for about one slotWait per worker and slowFor (5 %). A trigger
// that finished some is busy, not slow: the worker waits another window, as
// it queues behind the other workers waiting for the same trigger.
//
// A single wait of 20 ms misjudged that queue: with an event matching ten
// triggers, every worker waits for each trigger's slot in turn, 320
// deliveries are in flight and each takes about 20 ms; 10–20 % of the waits
// ran out, although those windows had seen 2–7 deliveries finish (they end
// in bursts under load), the triggers counted slow, and storing their
// deliveries made ten matching triggers 0.63–0.89 × one trigger's
// deliveries/s (BenchmarkDispatch/triggers; 1.0–1.1 with the windows).
//
// slotWindows bounds the wait (a wait that long marks the trigger slow too),
// and with it what a busy trigger may cost the events behind it: while its
// waits stay under the bound, the dispatcher goes at that trigger's pace.
// Five windows (100 ms) gave ten matching triggers 1.2–1.3 × one trigger
// against 1.1 with two, but would let a subscriber answering in 200 ms set
// the pace for every event.
const (
	defaultSlotWait = 20 * time.Millisecond
	defaultSlowFor  = 400 * time.Millisecond
	slotWindows     = 2
)

// tryDirect reserves a direct delivery for trigger r: a slot of the trigger
// and a place within the node's share. release undoes it.
func (b *Broker) tryDirect(r *runner) bool {
	if !b.reserveDirect() {
		return false
	}
	if !r.tryAcquire() {
		b.direct.Add(-1)
		return false
	}
	return true
}

// awaitDirect is tryDirect for the dispatcher: when r's slots are all busy
// and r is not counted slow, it waits up to slotWait for one.
func (b *Broker) awaitDirect(ctx context.Context, r *runner) bool {
	if !b.reserveDirect() {
		return false
	}
	if r.tryAcquire() || b.awaitSlot(ctx, r) {
		return true
	}
	b.direct.Add(-1)
	return false
}

// awaitSlot waits for one of r's slots, unless r counts as slow: window by
// window while r finishes deliveries, marking it slow when a window shows
// none finished or the last window ran out. The windows are judged by a
// timer of their own (slotJudge), so the wait stays one select: a worker
// keeps its place in the queue of senders on r.slots, which Go serves in
// order.
func (b *Broker) awaitSlot(ctx context.Context, r *runner) bool {
	if time.Now().UnixNano() < r.slowUntil.Load() {
		return false
	}
	j := startSlotJudge(r, b.cfg.slotWait)
	defer j.stop()
	select {
	case r.slots <- struct{}{}:
		b.metrics.SlotWaits.WithLabelValues("acquired").Inc()
		return true
	case outcome := <-j.giveUp:
		r.slowUntil.Store(time.Now().Add(b.cfg.slowFor).UnixNano())
		b.metrics.SlotWaits.WithLabelValues(outcome).Inc()
		return false
	case <-ctx.Done():
		return false
	case <-r.ctx.Done():
		return false
	}
}

// slotJudge judges one wait for a slot of r at the end of each window:
// giveUp receives "timed_out" after a window in which none of r's
// deliveries finished, "busy" after the last window.
type slotJudge struct {
	r      *runner
	window time.Duration
	giveUp chan string // buffered: at most one outcome

	mu       sync.Mutex
	t        *time.Timer
	n        int    // the window being judged, from 1
	finished uint64 // r.finished when it began
	stopped  bool
}

func startSlotJudge(r *runner, window time.Duration) *slotJudge {
	j := &slotJudge{r: r, window: window, giveUp: make(chan string, 1), n: 1, finished: r.finished.Load()}
	j.mu.Lock()
	defer j.mu.Unlock()
	j.t = time.AfterFunc(window, j.judge)
	return j
}

func (j *slotJudge) judge() {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.stopped {
		return
	}
	now := j.r.finished.Load()
	switch {
	case now == j.finished:
		j.giveUp <- "timed_out"
	case j.n == slotWindows:
		j.giveUp <- "busy"
	default:
		j.n++
		j.finished = now
		j.t.Reset(j.window)
	}
}

func (j *slotJudge) stop() {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.stopped = true
	j.t.Stop()
}

// reserveDirect takes a place within the node's share of direct
// deliveries, if direct delivery is on and one is free.
func (b *Broker) reserveDirect() bool {
	if b.cfg.storeEveryDelivery {
		return false
	}
	if b.direct.Add(1) > int64(b.cfg.DispatchWorkers*dispatchPending/directShare) {
		b.direct.Add(-1)
		return false
	}
	return true
}

// releaseDirect gives back what tryDirect reserved.
func (b *Broker) releaseDirect(r *runner) {
	r.release()
	b.direct.Add(-1)
}

// Direct deliveries run on kept goroutines: one that finished a delivery
// waits for the next instead of exiting, up to keptIdle of them, so that the
// deep call path of a delivery (the HTTP client, the router's transport)
// does not grow a new goroutine's stack every time (at one connection stack
// growth was a sixth of a direct delivery's CPU). They exit when the
// dispatcher's context ends.
const keptIdle = 64

// keptGoroutines is the hand-over point of kept goroutines.
type keptGoroutines struct {
	work chan func() // unbuffered: a send succeeds only to a waiting goroutine
	idle atomic.Int32
}

// goKept runs f on a waiting kept goroutine, or on a new one that is kept
// afterwards; it does not wait for f.
func (b *Broker) goKept(ctx context.Context, f func()) {
	k := &b.kept
	select {
	case k.work <- f:
		return
	default:
	}
	b.wg.Go(func() { // owned: b.wg; exits when ctx ends, or with keptIdle others waiting
		for {
			f()
			if k.idle.Add(1) > keptIdle {
				k.idle.Add(-1)
				return
			}
			select {
			case f = <-k.work:
				k.idle.Add(-1)
			case <-ctx.Done():
				k.idle.Add(-1)
				return
			}
		}
	})
}

// hdrRetryAt is on a delivery handed over by the dispatcher: RFC 3339 time
// before which its next attempt is not made.
const hdrRetryAt = "Weft-Retry-At"

// directDelivery is one trigger's delivery of a dispatched event made by the
// dispatcher; r's slot is held until it settles.
type directDelivery struct {
	r    *runner
	tr   *triggers.Trigger
	seq  uint64 // the event's stream sequence
	data []byte // the stored event, stored again if the delivery is handed over
}

// deliverDirect makes the first attempt of dd and settles it: delivered (and
// its reply stored), dead-lettered, or handed over to the runner. It returns
// an error only when none of these could be done; the event must then be
// dispatched again. ctx is the dispatcher's: the attempt outlives it by
// DrainTimeout, as a runner's would.
func (b *Broker) deliverDirect(ctx context.Context, c *conn, fo fanout, ev event.Event, dd directDelivery) error {
	defer b.releaseDirect(dd.r)
	attemptCtx, cancel := b.drainContext(ctx)
	defer cancel()
	tr := dd.tr
	out := ev
	out.Context = ev.Context.Clone()
	out.SetExtension(TTLExtension, nil) // the hop counter is the broker's business

	start := time.Now()
	reply, err := Timeout(tr.Delivery.Timeout)(b.deliverer).Deliver(attemptCtx, tr.Subscriber.Target(), out)
	history := []Attempt{attemptOf(start, err)}
	if err == nil {
		b.metrics.Delivered.WithLabelValues(tr.Name).Inc()
		b.log.Debug("delivered", "trigger", tr.Name, "event_id", ev.ID(), "attempt", 1, "direct", true)
		if reply == nil {
			return nil
		}
		rerr := b.handleReply(attemptCtx, c, tr, ttlOf(ev), *reply)
		if rerr == nil {
			return nil
		}
		// As the runner does when a reply is not stored: the delivery is
		// repeated, here by the runner.
		b.log.Warn("reply not stored; delivery will be repeated", "trigger", tr.Name, "event_id", ev.ID(), "err", rerr)
		return b.handOver(ctx, c, fo, dd, nil, time.Now().Add(time.Second))
	}
	if attemptCtx.Err() != nil {
		return attemptCtx.Err() // stopped past the drain: the event is dispatched again after restart
	}
	if ctx.Err() != nil {
		// Failed while stopping (a draining pool turns away what it would
		// have to start an instance for): not counted as an attempt, as
		// the runner does not count one (errStopping); the event is
		// dispatched again after restart.
		return fmt.Errorf("stopping: %w", err)
	}
	wait, again := retryWait(tr.Delivery, 1, err)
	if again {
		return b.handOver(ctx, c, fo, dd, history, time.Now().Add(wait))
	}
	b.log.Debug("delivery failed", "trigger", tr.Name, "event_id", ev.ID(), "attempt", 1, "err", err)
	if derr := b.deadLetter(attemptCtx, c, tr, ev, history, err, nil); derr != nil {
		b.log.Warn("dead letter not stored; delivery will be repeated", "trigger", tr.Name, "event_id", ev.ID(), "err", derr)
		return b.handOver(ctx, c, fo, dd, nil, time.Now().Add(time.Second))
	}
	return nil
}

// handOver stores dd's delivery for the trigger's runner with the attempts
// made so far and the time its next attempt is due, and waits until the
// runner has a consumer to hand it out (see settle).
func (b *Broker) handOver(ctx context.Context, c *conn, fo fanout, dd directDelivery, history []Attempt, retryAt time.Time) error {
	d := newDelivery(dd.seq, dd.tr.Name, dd.data)
	msg := d.msg
	if len(history) > 0 {
		attempts, err := json.Marshal(history)
		if err != nil {
			return err
		}
		msg.Header.Set(hdrAttempts, string(attempts))
	}
	msg.Header.Set(hdrRetryAt, retryAt.UTC().Format(time.RFC3339Nano))
	// Stored even while stopping (the connection stays open until the
	// dispatcher's goroutines are done), so the attempt is not repeated.
	storeCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), b.cfg.PublishTimeout)
	defer cancel()
	b.storedSince.Add(int64(len(msg.Data)))
	if err := fo.publish([]delivery{d}).wait(storeCtx); err != nil {
		return err
	}
	ready := dd.r.wake()
	select {
	case <-ready:
	case <-storeCtx.Done():
		// As in settle: the delivery is stored either way, and the sweep
		// wakes the runner.
	}
	return nil
}

// handedOver reads the attempts a handed-over delivery carries and when its
// next attempt is due; zero values for any other delivery.
func handedOver(msg jetstream.Msg) (history []Attempt, retryAt time.Time) {
	h := msg.Headers()
	if a := h.Get(hdrAttempts); a != "" {
		if err := json.Unmarshal([]byte(a), &history); err != nil {
			history = nil // unreadable: the attempts start again from one
		}
	}
	retryAt, _ = time.Parse(time.RFC3339Nano, h.Get(hdrRetryAt))
	return history, retryAt
}
