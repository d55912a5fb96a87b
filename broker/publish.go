package broker

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"

	"github.com/cloudevents/sdk-go/v2/event"
)

// TTLExtension is Knative's hop counter: the ingress sets it on events that
// lack it, every reply gets its trigger event's value minus one, and a reply
// whose counter reaches zero is cut (dead-lettered) instead of re-entering.
const TTLExtension = "knativebrokerttl"

// DefaultTTL is Knative's default hop budget.
const DefaultTTL = 255

// msgID derives JetStream's dedup key from (source, id), the pair CloudEvents
// declares unique. Hashing keeps it short and free of header-unsafe bytes.
func msgID(source, id string) string {
	var buf [256]byte // most pairs fit: no allocation but the result
	key := append(append(append(buf[:0], source...), 0), id...)
	sum := sha256.Sum256(key)
	return hex.EncodeToString(sum[:16])
}

// Store stores events in JetStream and returns once every one is acknowledged
// as stored (a duplicate (source, id) counts as stored). Events without a
// knativebrokerttl get DefaultTTL. Callers validate events first. It returns
// an error wrapping ErrOverloaded when too many publishes are waiting,
// ErrStorageFull while disk use is above its high-water mark, and
// ErrUnavailable when storage did not confirm in time; then some events of the
// slice may be stored and others not, and the caller must not acknowledge.
//
// Concurrent calls are committed together (group commit, see batch.go): their
// events share atomic batches and so one fsync, and each call returns once
// the batches holding its events are durable.
func (b *Broker) Store(ctx context.Context, evs []event.Event) error {
	if len(evs) == 0 {
		return nil
	}
	if len(evs) > cap(b.inflight) {
		return fmt.Errorf("%w: %d events, at most %d", ErrBatchTooLarge, len(evs), cap(b.inflight))
	}
	if !b.connGate.TryRLock() {
		return fmt.Errorf("%w: broker stopping", ErrUnavailable)
	}
	defer b.connGate.RUnlock()
	if b.conn.Load() == nil {
		return fmt.Errorf("%w: broker not running", ErrUnavailable)
	}
	if err := b.StorageError(); err != nil {
		return err
	}
	acquired := 0
	release := func() {
		for range acquired {
			<-b.inflight
		}
	}
	for range evs {
		select {
		case b.inflight <- struct{}{}:
			acquired++
		default:
			release()
			return ErrOverloaded
		}
	}
	call := &storeCall{b: b}
	call.expect(len(evs))
	var itemsOne [1]storeItem // a request's lone event: no allocation
	items := itemsOne[:]
	if len(evs) > 1 {
		items = make([]storeItem, len(evs))
	}
	version := b.indexVersion.Load() // before the index: see unmatched.go
	for i := range evs {
		ev := &evs[i]
		if _, ok := ev.Extensions()[TTLExtension]; !ok {
			ev.SetExtension(TTLExtension, DefaultTTL)
		}
		items[i].unmatched = b.unmatchedMark(version, ev)
		// Once dispatching has begun the node's whole configuration is in
		// force, so an event no trigger matches now is set apart for good.
		items[i].apart = items[i].unmatched != "" && b.dispatching.Load() != nil
		// Not json.Marshal: it would validate and compact sdk-go's output
		// again, a tenth of the ingress's CPU.
		source := ev.Source() // formatted once, for both
		body, err := encodeEvent(ev, source)
		if err != nil {
			release()
			return fmt.Errorf("encode event %q: %w", ev.ID(), err)
		}
		items[i].id, items[i].data, items[i].call = msgID(source, ev.ID()), body, call
	}
	// From here the in-flight slots are released as the events resolve
	// (storeCall.resolve), not when Store returns.
	storing := b.storing.Add(1)
	defer b.storing.Add(-1)
	if !b.atomicPays(int(storing)) {
		// No fsync to share, or too few calls at once for an atomic batch
		// to pay (atomicMin): each call publishes its own events,
		// pipelined, without waiting for a committer; batchMax at a time.
		for i := range items {
			if items[i].unmatched != "" {
				continue // nothing to start
			}
			items[i].ev = &evs[i]
			items[i].early = b.registerEarly(items[i].id)
		}
		for rest := items; len(rest) > 0; {
			n := min(len(rest), batchMax)
			b.commit(b.batcher(), rest[:n])
			rest = rest[n:]
		}
		// Each commit above waited for its acks within PublishTimeout:
		// the events are resolved, with no timer of this call's own (two
		// timers per event were 3.7 % of the ingress's CPU).
		return b.storeResult(call, items)
	}
	b.batcher().enqueue(b, items)
	ctx, cancel := context.WithTimeout(ctx, b.cfg.PublishTimeout)
	defer cancel()
	select {
	case <-call.done:
		return b.storeResult(call, items)
	case <-ctx.Done():
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return fmt.Errorf("%w: no storage confirmation within %s", ErrUnavailable, b.cfg.PublishTimeout)
		}
		return ctx.Err()
	}
}

// storeResult is the outcome of a Store call whose events all resolved.
func (b *Broker) storeResult(call *storeCall, items []storeItem) error {
	<-call.done
	err := call.result()
	if err == nil {
		n := 0
		for _, it := range items {
			n += len(it.data)
		}
		b.storedSince.Add(int64(n))
	}
	return err
}
