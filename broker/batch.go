package broker

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Group commit. With SyncAlways JetStream fsyncs every message on its own, so
// concurrent Store calls share one fsync instead: their events go into one
// queue per broker, and a committer takes up to batchMax of them and stores
// them as one atomic batch (ADR-50; the stream has AllowAtomicPublish). The
// server stages the batch and commits it with a single fsync of the stream
// before it answers the commit request, so every event of a batch is durable
// once the commit is acknowledged, and none is stored when it is refused.
// A Store call returns only when every batch holding its events committed.
//
// Bounds: one committer at a time sends, as one batch of at most batchMax,
// what is queued; it sends the next as soon as the last one committed, so a
// lone event never waits for companions, and events that arrive during a
// commit wait for that one commit only. One batch in flight, not more: the
// server stages each batch in a store of its own that costs two synchronous
// disk writes on the stream's loop, so fewer and larger batches store more
// (fsync per ack, A/B in both orders: c64 +19.6 %, c256 +11 % against two
// committers that each sent what was queued within 1 ms). For the same
// reason a batch takes up to 250 events: at 256 connections, +6.0 % and
// +5.6 % over 100 (two A/B pairs, both orders), 500 no better. The server
// allows 1000 events per batch (streamMaxAtomicBatchSize).
const (
	batchMax = 250
	// atomicMin is the fewest events worth an atomic batch when the
	// server stages batches on disk: it stages each batch in a file store
	// of its own that it creates, flushes and deletes, about as long as 16
	// fsyncs of single messages here (BenchmarkStoreConcurrent: 4,075
	// events/s in batches of 17 against 4,400 pipelined). Fewer events are
	// published one by one, pipelined, and so are the events of Store calls
	// made while fewer than that are in flight: they go straight out
	// instead of through the queue.
	atomicMin = 16
	// atomicMinStaged is the same when batches are staged in memory
	// (staging.go). BenchmarkStoreConcurrent, 4 / 8 / 16 publishers: with 16,
	// 4.5k / – / 4.4k events/s; with 4, 3.9–4.0k / 5.7–6.3k / 11.0k; with 2,
	// 3.4–4.1k / 5.9k / 11.4k (batches of 2–3 cost as much as their fsyncs
	// one by one).
	atomicMinStaged = 4
)

// atomicPays reports whether n messages are worth an atomic batch: only
// with an fsync to share (not under --relaxed-sync) and at least atomicMin
// (atomicMinStaged) of them. Ingress events and fan-out deliveries follow
// the same rule.
func (b *Broker) atomicPays(n int) bool {
	return !b.cfg.RelaxedSync && n >= int(b.atomicMin.Load())
}

// Protocol of atomic batch publish (nats-server 2.12+).
const (
	hdrBatchID     = "Nats-Batch-Id"
	hdrBatchSeq    = "Nats-Batch-Sequence"
	hdrBatchCommit = "Nats-Batch-Commit"
	// errBatchDuplicate is JSAtomicPublishContainsDuplicateMessageErr: the
	// server refuses a whole atomic batch when one of its Nats-Msg-Ids is in
	// the dedup window (or twice in the batch); nothing of it is stored.
	errBatchDuplicate = 10201
)

// storeItem is one encoded event waiting to be committed.
type storeItem struct {
	id    string // Nats-Msg-Id, from msgID
	data  []byte
	ev    *event.Event // the event data encodes
	early *earlyEvent  // reserved for early dispatch, or nil
	// unmatched is the mark of an event no trigger matched (unmatched.go),
	// else "".
	unmatched string
	apart     bool // stored under unmatchedSubject, never dispatched
	call      *storeCall
}

// countdown is done once each of its outcomes is recorded; it keeps the
// first error.
type countdown struct {
	mu   sync.Mutex
	left int
	err  error
	done chan struct{}
}

// expect readies c for n outcomes; with none it is done at once.
func (c *countdown) expect(n int) {
	c.left, c.done = n, make(chan struct{})
	if n == 0 {
		close(c.done)
	}
}

// record counts one outcome.
func (c *countdown) record(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err != nil && c.err == nil {
		c.err = err
	}
	c.left--
	if c.left == 0 {
		close(c.done)
	}
}

// result is the first error recorded; call it once done is closed.
func (c *countdown) result() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// storeCall is one Store call waiting for all its events.
type storeCall struct {
	b *Broker
	countdown
}

// resolve records the outcome of one of the call's events and releases its
// in-flight slot; the call is done once every event is resolved.
func (c *storeCall) resolve(err error) {
	<-c.b.inflight
	c.record(err)
}

// batcher is a broker's queue of events waiting to be committed.
type batcher struct {
	mu         sync.Mutex
	queue      []storeItem
	committing bool   // a goroutine runs commitLoop
	prefix     string // random, so batch ids of different runs never meet
	seq        atomic.Uint64

	atomicBatches atomic.Uint64 // batches committed atomically
	fallbacks     atomic.Uint64 // batches refused and published one by one
}

// newBatcher returns the group-commit queue of one broker.
func newBatcher() *batcher {
	var r [8]byte
	_, _ = rand.Read(r[:])
	return &batcher{prefix: hex.EncodeToString(r[:])}
}

// batcher returns the broker's group-commit queue.
func (b *Broker) batcher() *batcher { return b.batch }

// enqueue queues items and makes sure a committer will take them.
func (bt *batcher) enqueue(b *Broker, items []storeItem) {
	bt.mu.Lock()
	bt.queue = append(bt.queue, items...)
	start := !bt.committing
	bt.committing = true
	bt.mu.Unlock()
	if start {
		// Owned by the queue: one runs at a time, it ends as soon as the
		// queue is empty, and every caller waits for its events, so it never
		// outlives the Store calls that started it.
		go bt.commitLoop(b)
	}
}

// commitLoop commits queued events batch after batch until the queue is
// empty.
func (bt *batcher) commitLoop(b *Broker) {
	for {
		bt.mu.Lock()
		if len(bt.queue) == 0 {
			bt.committing = false
			bt.mu.Unlock()
			return
		}
		n := min(len(bt.queue), batchMax)
		batch := make([]storeItem, n)
		copy(batch, bt.queue)
		clear(bt.queue[:n]) // drop references for the collector
		bt.queue = bt.queue[n:]
		if len(bt.queue) == 0 {
			bt.queue = nil // let the backing array go
		}
		bt.mu.Unlock()
		b.commit(bt, batch)
	}
}

// commit stores batch and resolves each of its events. Events with the same
// Nats-Msg-Id are sent once; the later ones count as duplicates of the first.
func (b *Broker) commit(bt *batcher, batch []storeItem) {
	// A lone event (a request's, under light load or --relaxed-sync) needs
	// no search for duplicates, and its bookkeeping fits on the stack.
	var (
		uniqOne, firstOne [1]int
		resultsOne        [1]storeResult
	)
	uniq, first, results := uniqOne[:], firstOne[:], resultsOne[:]
	if len(batch) > 1 {
		uniq = make([]int, 0, len(batch)) // indexes of first occurrences
		first = make([]int, len(batch))   // index of each item's first occurrence
		results = make([]storeResult, len(batch))
		seen := make(map[string]int, len(batch))
		for i, it := range batch {
			if j, ok := seen[it.id]; ok {
				first[i] = j
				continue
			}
			seen[it.id] = i
			first[i] = i
			uniq = append(uniq, i)
		}
	}
	c := b.conn.Load()
	committedAtomic := false // one fsync for the whole batch, not one per event
	switch {
	case c == nil:
		for _, i := range uniq {
			results[i] = storeResult{err: fmt.Errorf("%w: broker not running", ErrUnavailable)}
		}
	case !b.atomicPays(len(uniq)):
		// Without SyncAlways there is no fsync to share, and pipelined
		// publishes beat the server's staging of an atomic batch; so do
		// they below atomicMin events.
		b.publishEach(c, batch, uniq, results)
	default:
		sent, err := b.publishAtomic(c, bt, batch, uniq)
		var apiErr *jetstream.APIError
		switch {
		case err == nil:
			bt.atomicBatches.Add(1)
			committedAtomic = true
		case errors.As(err, &apiErr) || !sent:
			// The server refused the whole batch and stored none of it
			// (typically one event is a duplicate, 10201, which must still
			// be acknowledged), or the commit was never sent. Publish one by
			// one, so each event gets its own answer and one bad event
			// cannot fail the others.
			bt.fallbacks.Add(1)
			if apiErr == nil || apiErr.ErrorCode != errBatchDuplicate {
				b.log.Warn("atomic batch not committed, publishing its events one by one", "events", len(uniq), "error", err)
			}
			b.publishEach(c, batch, uniq, results)
		default:
			// Unknown outcome (commit timed out, connection lost): nobody
			// is acknowledged. A retry is safe: Nats-Msg-Id makes it
			// idempotent.
			for _, i := range uniq {
				results[i] = storeResult{err: fmt.Errorf("%w: %v", ErrUnavailable, err)}
			}
		}
	}
	stored := 0
	for i, it := range batch {
		r := results[first[i]]
		if r.err == nil {
			if first[i] != i || r.dup {
				b.metrics.Duplicates.Inc()
			} else {
				b.metrics.Stored.Inc()
				stored++
			}
			if it.apart {
				b.settled.Add(1) // nothing will read it: the compactor's to purge
			}
		}
		if it.early != nil {
			if r.err == nil && first[i] == i && !r.dup && r.seq > 0 {
				if b.startEarly(it.id, it.early, it.ev, it.data, r.seq) {
					// This goroutine (Store's caller: an ingress request's,
					// typically) would answer before the delivery's
					// goroutine, readied just now, gets a thread (55 µs on
					// average at one connection here, a scheduler trace of
					// `weft bench e2e`). Yielding lets the delivery go
					// first; the answer follows once the delivery waits on
					// its subscriber (bench e2e p50 lower in each of four
					// A/B pairs, by 1–20 %).
					runtime.Gosched()
				}
			} else {
				b.dropEarly(it.id, it.early)
			}
		}
		it.call.resolve(r.err)
	}
	b.observeCommits(committedAtomic, stored)
}

// observeCommits counts the fsynced commits that stored the events of one
// commit call: one for an atomic batch, one per event published on its own.
func (b *Broker) observeCommits(atomic bool, stored int) {
	switch {
	case b.cfg.RelaxedSync || stored == 0:
	case atomic:
		b.metrics.CommitEvents.Observe(float64(stored))
	default:
		for range stored {
			b.metrics.CommitEvents.Observe(1)
		}
	}
}

type storeResult struct {
	dup bool
	seq uint64 // the stream sequence, when published one by one
	err error
}

func eventMsg(it *storeItem) *nats.Msg {
	subject := eventsSubject
	if it.apart {
		subject = unmatchedSubject
	}
	msg := &nats.Msg{Subject: subject, Data: it.data, Header: make(nats.Header, 4)} // room for commitAtomic's
	msg.Header[jetstream.MsgIDHeader] = []string{it.id}
	msg.Header[jetstream.ExpectedStreamHeader] = expectEventsStream
	if it.unmatched != "" && !it.apart {
		msg.Header[hdrUnmatched] = []string{it.unmatched} // for the dispatcher
	}
	return msg
}

// expectEventsStream is the Nats-Expected-Stream header of every event
// published; shared, never modified.
var expectEventsStream = []string{eventsStream}

// batchAck is the server's answer to a batch commit: a PubAck with the batch
// id and its size, or an API error.
type batchAck struct {
	Stream string              `json:"stream"`
	Seq    uint64              `json:"seq"`
	Batch  string              `json:"batch"`
	Count  int                 `json:"count"`
	Error  *jetstream.APIError `json:"error,omitempty"`
}

// publishAtomic sends batch[uniq] as one atomic batch; see commitAtomic.
func (b *Broker) publishAtomic(c *conn, bt *batcher, batch []storeItem, uniq []int) (sent bool, err error) {
	msgs := make([]*nats.Msg, len(uniq))
	for n, i := range uniq {
		msgs[n] = eventMsg(&batch[i])
	}
	return commitAtomic(c.nc, b.cfg.PublishTimeout, eventsStream, bt.prefix+"-"+strconv.FormatUint(bt.seq.Add(1), 36), msgs)
}

// commitAtomic sends msgs to stream as one atomic batch with the given id:
// every message but the last as a plain core-NATS publish, the last as a
// request carrying Nats-Batch-Commit. It returns nil only when the server
// stored all of them; a *jetstream.APIError when it refused the batch (then
// nothing is stored). sent reports whether the commit request went out; if
// not, nothing can have been stored.
func commitAtomic(nc *nats.Conn, timeout time.Duration, stream, id string, msgs []*nats.Msg) (sent bool, err error) {
	for n, msg := range msgs {
		msg.Header.Set(hdrBatchID, id)
		msg.Header.Set(hdrBatchSeq, strconv.Itoa(n+1))
		if n == len(msgs)-1 {
			msg.Header.Set(hdrBatchCommit, "1")
			break
		}
		if err := nc.PublishMsg(msg); err != nil {
			return false, err
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	resp, err := nc.RequestMsgWithContext(ctx, msgs[len(msgs)-1])
	if err != nil {
		return !errors.Is(err, nats.ErrMaxPayload) && !errors.Is(err, nats.ErrConnectionClosed), err
	}
	var ack batchAck
	if err := json.Unmarshal(resp.Data, &ack); err != nil {
		return true, fmt.Errorf("batch commit answer %q: %w", resp.Data, err)
	}
	if ack.Error != nil {
		return true, ack.Error
	}
	if ack.Stream != stream || ack.Batch != id || ack.Count != len(msgs) {
		return true, fmt.Errorf("unexpected batch commit answer %q", resp.Data)
	}
	return true, nil
}

// publishEach publishes batch[uniq] message by message, pipelined, and fills
// results for them.
func (b *Broker) publishEach(c *conn, batch []storeItem, uniq []int, results []storeResult) {
	timer := startTimer(b.cfg.PublishTimeout)
	defer stopTimer(timer)
	pending := make([]pendingAck, len(uniq))
	for n, i := range uniq {
		a, err := c.acks.publish(eventMsg(&batch[i]))
		if err != nil {
			results[i] = storeResult{err: fmt.Errorf("%w: publish: %v", ErrUnavailable, err)}
			continue
		}
		pending[n] = a
	}
	late := false // the timer fired: answers not yet in are not waited for
	for n, i := range uniq {
		if pending[n].in == nil {
			continue
		}
		var (
			ack jetstream.PubAck
			err error
		)
		if late {
			ack, err = pending[n].poll()
		} else {
			ack, err = pending[n].wait(timer.C)
			late = errors.Is(err, errNoAck)
		}
		switch {
		case err == nil:
			results[i] = storeResult{dup: ack.Duplicate, seq: ack.Sequence}
		case errors.Is(err, errNoAck):
			results[i] = storeResult{err: fmt.Errorf("%w: no storage confirmation within %s", ErrUnavailable, b.cfg.PublishTimeout)}
		default:
			results[i] = storeResult{err: fmt.Errorf("%w: %v", ErrUnavailable, err)}
		}
	}
}
