package broker

import (
	"context"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/nats-io/nats.go"
)

// Early dispatch: an event published by Store while few others are (the
// pipelined path, not an atomic batch) is matched and its direct deliveries
// started as soon as JetStream acknowledged it, instead of when the
// dispatcher's consumer hands the stored message over, about 80 µs later
// here. The consumer's message stays the unit of work: when it arrives, the
// dispatcher finds the early start (by its Nats-Msg-Id) and only settles it,
// acking once the deliveries settled. An early start happens only when every
// matching trigger has a direct slot; otherwise the dispatcher does all of
// it, as without. A crash in between redelivers the message (at least once,
// as before).

// dispatchState is what early dispatch needs of the running dispatcher.
type dispatchState struct {
	ctx context.Context
	c   *conn
	fo  fanout
}

// earlyEvent is one event Store may dispatch early. Its fields are guarded
// by Broker.earlyMu; results is set before ready is closed.
type earlyEvent struct {
	started bool // Store began the early start; the consumer waits for ready
	taken   bool // the consumer came first: no early start
	ready   chan struct{}
	ev      event.Event    // the event, when started
	results []<-chan error // nil: nothing started early
}

// registerEarly reserves an early start for the event with message id id,
// before it is published; nil when the dispatcher is not running or the id
// is already reserved (a duplicate in flight).
func (b *Broker) registerEarly(id string) *earlyEvent {
	if b.dispatching.Load() == nil || b.cfg.noEarlyStart {
		return nil
	}
	b.earlyMu.Lock()
	defer b.earlyMu.Unlock()
	if _, ok := b.early[id]; ok {
		return nil
	}
	e := &earlyEvent{ready: make(chan struct{})}
	b.early[id] = e
	return e
}

// dropEarly gives up e: the event was not stored, or was a duplicate.
func (b *Broker) dropEarly(id string, e *earlyEvent) {
	b.earlyMu.Lock()
	defer b.earlyMu.Unlock()
	if b.early[id] == e {
		delete(b.early, id)
	}
	e.taken = true
}

// startEarly matches ev, stored as stream sequence seq with body data, and
// starts its direct deliveries, unless the consumer took it first. It
// reports whether it started any.
func (b *Broker) startEarly(id string, e *earlyEvent, ev *event.Event, data []byte, seq uint64) bool {
	d := b.dispatching.Load()
	b.earlyMu.Lock()
	if e.taken || d == nil {
		if b.early[id] == e {
			delete(b.early, id)
		}
		b.earlyMu.Unlock()
		return false
	}
	e.started = true
	b.earlyMu.Unlock()
	defer close(e.ready)
	matched := b.index.Load().MatchBroker(DefaultBroker, *ev)
	if len(matched) == 0 {
		return false
	}
	runners := map[string]*runner{}
	direct := make([]directDelivery, 0, len(matched))
	for _, tr := range matched {
		r := b.runnerOf(tr.Name, runners)
		if r == nil || !b.tryDirect(r) {
			for _, dd := range direct {
				b.releaseDirect(dd.r)
			}
			return false
		}
		direct = append(direct, directDelivery{r: r, tr: tr, seq: seq, data: data})
	}
	b.earlyStarted.Add(1)
	e.ev = *ev
	e.results = b.startDirect(d.ctx, d.c, d.fo, *ev, direct)
	return true
}

// takeEarly is the consumer's side: the early start of the event with
// message id id, once it has been set up, or nil when there is none (then the
// dispatcher does all of it, and a late Store gives up).
func (b *Broker) takeEarly(id string) *earlyEvent {
	b.earlyMu.Lock()
	e := b.early[id]
	if e == nil {
		b.earlyMu.Unlock()
		return nil
	}
	delete(b.early, id)
	if !e.started {
		e.taken = true
		b.earlyMu.Unlock()
		return nil
	}
	b.earlyMu.Unlock()
	<-e.ready // set up without waiting on anything: a few microseconds
	if e.results == nil {
		return nil
	}
	return e
}

// newDelivery is the delivery of the stored event seq (body data) for a
// trigger.
func newDelivery(seq uint64, trigger string, data []byte) delivery {
	out := nats.NewMsg(deliverPrefix + trigger)
	out.Data = data
	out.Header.Set(hdrTrigger, trigger)
	return delivery{msg: out, id: deliveryID(seq, trigger)}
}
