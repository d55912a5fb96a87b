package broker

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Fan-out storage: the dispatcher stores one delivery per (event, matching
// trigger) in WEFT_DELIVERIES before it acks the event. With SyncAlways
// JetStream fsyncs every message on its own, so when the stream allows
// atomic batch publish (AllowAtomicPublish) the deliveries of all events
// being dispatched are committed together, a batch at a time, sharing one
// fsync, the way Store commits ingress events (batch.go). Without it each
// delivery is published on its own, pipelined.
const (
	fanoutBatchMax   = 256 // deliveries per atomic batch; the server allows 1,000
	fanoutCommitters = 2   // atomic batches in flight; the server allows 50 per stream
)

// delivery is one message of a fan-out: the stored event for one trigger.
type delivery struct {
	msg *nats.Msg // subject, data and headers but the batch's
	id  string    // Nats-Msg-Id: <event sequence>.<trigger>
}

// fanoutWait reports when every delivery handed to a fan-out is stored, or
// the first error.
type fanoutWait interface {
	wait(ctx context.Context) error
}

// fanout stores deliveries. publish never blocks on storage; the returned
// fanoutWait does.
type fanout interface {
	publish(ds []delivery) fanoutWait
	// batches reports whether deliveries of several events share a
	// commit: only then is it worth having many events in flight.
	batches() bool
}

// newFanout picks atomic batches when WEFT_DELIVERIES allows them.
func (b *Broker) newFanout(ctx context.Context, c *conn) fanout {
	if info, err := c.dels.Info(ctx); err == nil && info.Config.AllowAtomicPublish {
		var r [8]byte
		_, _ = rand.Read(r[:])
		return &batchFanout{b: b, c: c, prefix: hex.EncodeToString(r[:])}
	}
	return &asyncFanout{c: c}
}

// asyncFanout publishes each delivery on its own, pipelined.
type asyncFanout struct{ c *conn }

type futures []jetstream.PubAckFuture

func (f *asyncFanout) batches() bool { return false }

func (f *asyncFanout) publish(ds []delivery) fanoutWait {
	fs := make(futures, 0, len(ds))
	for _, d := range ds {
		fu, err := f.c.js.PublishMsgAsync(d.msg, jetstream.WithMsgID(d.id), jetstream.WithExpectStream(deliveriesStream))
		if err != nil {
			return failedWait{err}
		}
		fs = append(fs, fu)
	}
	return fs
}

func (fs futures) wait(ctx context.Context) error {
	for _, f := range fs {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			return err
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

type failedWait struct{ err error }

func (w failedWait) wait(context.Context) error { return w.err }

// fanoutCall is one publish call's deliveries in a batchFanout.
type fanoutCall struct {
	countdown
}

func (c *fanoutCall) resolve(err error) { c.record(err) }

func (c *fanoutCall) wait(ctx context.Context) error {
	select {
	case <-c.done:
		return c.result()
	case <-ctx.Done():
		return ctx.Err()
	}
}

type queuedDelivery struct {
	delivery
	call *fanoutCall
}

// batchFanout commits queued deliveries as atomic batches: a committer takes
// what is queued (at most fanoutBatchMax) whenever no other commit is in
// flight, so batches grow with the load and a lone delivery does not wait.
// The queue holds at most what the dispatch consumer's MaxAckPending lets be
// in flight.
type batchFanout struct {
	b      *Broker
	c      *conn
	prefix string // random, so batch ids of different runs never meet
	seq    atomic.Uint64

	mu         sync.Mutex
	queue      []queuedDelivery
	committers int
}

func (f *batchFanout) batches() bool { return true }

func (f *batchFanout) publish(ds []delivery) fanoutWait {
	call := &fanoutCall{}
	call.expect(len(ds))
	if len(ds) == 0 {
		return call
	}
	f.mu.Lock()
	for _, d := range ds {
		f.queue = append(f.queue, queuedDelivery{delivery: d, call: call})
	}
	start := f.committers < fanoutCommitters
	if start {
		f.committers++
	}
	f.mu.Unlock()
	if start {
		// Owned by the queue: it ends once the queue is empty, and every
		// caller waits for its deliveries, so none outlives them.
		go f.commitLoop()
	}
	return call
}

func (f *batchFanout) commitLoop() {
	for {
		f.mu.Lock()
		if len(f.queue) == 0 {
			f.committers--
			f.mu.Unlock()
			return
		}
		n := min(len(f.queue), fanoutBatchMax)
		batch := make([]queuedDelivery, n)
		copy(batch, f.queue)
		clear(f.queue[:n])
		f.queue = f.queue[n:]
		if len(f.queue) == 0 {
			f.queue = nil // let the backing array go
		}
		f.mu.Unlock()
		f.commit(batch)
	}
}

// commit stores batch atomically; when the server refuses the batch (a
// delivery already stored, from a redelivered event, refuses it whole) its
// deliveries are published one by one, so each gets its own answer. A batch
// an atomic commit does not pay for (atomicPays: under interval fsync, or
// fewer than atomicMin deliveries) is published plainly, pipelined: the
// server stages every atomic batch in a file store of its own that it
// creates, flushes and deletes (milliseconds, which a lone event's
// end-to-end latency paid in full).
func (f *batchFanout) commit(batch []queuedDelivery) {
	if !f.b.atomicPays(len(batch)) {
		f.publishEach(batch)
		return
	}
	sent, err := f.publishAtomic(batch)
	var apiErr *jetstream.APIError
	if err != nil && (errors.As(err, &apiErr) || !sent) {
		if apiErr == nil || apiErr.ErrorCode != errBatchDuplicate {
			f.b.log.Warn("atomic fan-out batch not committed, publishing its deliveries one by one", "deliveries", len(batch), "err", err)
		}
		f.publishEach(batch)
		return
	}
	for _, q := range batch {
		q.call.resolve(err) // nil, or an unknown outcome: the event is redelivered
	}
}

// publishEach publishes batch delivery by delivery, pipelined, and resolves
// each with its own answer.
func (f *batchFanout) publishEach(batch []queuedDelivery) {
	ctx, cancel := context.WithTimeout(context.Background(), f.b.cfg.PublishTimeout)
	defer cancel()
	async := &asyncFanout{c: f.c}
	waits := make([]fanoutWait, len(batch))
	for i, q := range batch {
		waits[i] = async.publish([]delivery{q.delivery})
	}
	for i, q := range batch {
		q.call.resolve(waits[i].wait(ctx))
	}
}

// publishAtomic sends batch as one atomic batch (see Broker.publishAtomic,
// which does the same for ingress events). sent reports whether the commit
// request went out.
func (f *batchFanout) publishAtomic(batch []queuedDelivery) (sent bool, err error) {
	// Within a batch, a message id must not repeat; a redelivered event
	// dispatched twice at once would, so such a batch goes one by one.
	seen := make(map[string]bool, len(batch))
	for _, q := range batch {
		if seen[q.id] {
			return false, errors.New("duplicate delivery in batch")
		}
		seen[q.id] = true
	}
	msgs := make([]*nats.Msg, len(batch))
	for n, q := range batch {
		msg := nats.NewMsg(q.msg.Subject)
		msg.Data = q.msg.Data
		for k, v := range q.msg.Header {
			msg.Header[k] = v
		}
		msg.Header.Set(jetstream.MsgIDHeader, q.id)
		msg.Header.Set(jetstream.ExpectedStreamHeader, deliveriesStream)
		msgs[n] = msg
	}
	return commitAtomic(f.c.nc, f.b.cfg.PublishTimeout, deliveriesStream, f.prefix+"-"+strconv.FormatUint(f.seq.Add(1), 36), msgs)
}
