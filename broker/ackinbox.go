package broker

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Acknowledgement inboxes. nats.go's async JetStream publish routes every
// PubAck through a subscription goroutine of its own, which then wakes the
// caller through the future's channel: two goroutine wake-ups between the
// connection's reader and the waiting Store. A channel subscription is filled
// by the reader itself, so a store that waits on an inbox of its own is woken
// once. Inboxes are subscribed once and reused; the server sees one
// subscription per event that was ever in flight at the same time.

// ackInboxes is a pool of reply subjects, each a channel subscription on the
// broker's connection. Safe for concurrent use.
type ackInboxes struct {
	nc     *nats.Conn
	prefix string
	max    int // free inboxes kept; more are unsubscribed when given back
	next   atomic.Uint64
	mu     sync.Mutex
	free   []*ackInbox
}

// ackInbox is one reply subject and the channel its replies land in.
type ackInbox struct {
	subject string
	replies chan *nats.Msg
	sub     *nats.Subscription
}

func newAckInboxes(nc *nats.Conn, keep int) *ackInboxes {
	return &ackInboxes{nc: nc, prefix: nc.NewInbox() + ".", max: keep}
}

// get returns a free inbox, subscribing a new one when none is.
func (p *ackInboxes) get() (*ackInbox, error) {
	p.mu.Lock()
	if n := len(p.free); n > 0 {
		in := p.free[n-1]
		p.free = p.free[:n-1]
		p.mu.Unlock()
		return in, nil
	}
	p.mu.Unlock()
	in := &ackInbox{
		subject: p.prefix + strconv.FormatUint(p.next.Add(1), 36),
		// One reply per publish; the reader never blocks on it, and a
		// second one (there is none) would be dropped as a slow consumer.
		replies: make(chan *nats.Msg, 1),
	}
	// The subscription is sent before the publish on the same connection,
	// so the server knows it before it can answer.
	sub, err := p.nc.ChanSubscribe(in.subject, in.replies)
	if err != nil {
		return nil, fmt.Errorf("ack inbox: %w", err)
	}
	in.sub = sub
	return in, nil
}

// put gives back an inbox whose reply was received.
func (p *ackInboxes) put(in *ackInbox) {
	p.mu.Lock()
	if len(p.free) < p.max {
		p.free = append(p.free, in)
		p.mu.Unlock()
		return
	}
	p.mu.Unlock()
	_ = in.sub.Unsubscribe()
}

// discard drops an inbox whose reply may still come (the wait gave up), so
// that a late reply can never be taken for another publish's.
func (p *ackInboxes) discard(in *ackInbox) {
	_ = in.sub.Unsubscribe()
}

// pendingAck is one publish waiting for its PubAck.
type pendingAck struct {
	p  *ackInboxes
	in *ackInbox
}

// publish sends msg with an inbox of the pool as its reply subject; wait
// returns the server's answer.
func (p *ackInboxes) publish(msg *nats.Msg) (pendingAck, error) {
	in, err := p.get()
	if err != nil {
		return pendingAck{}, err
	}
	msg.Reply = in.subject
	if err := p.nc.PublishMsg(msg); err != nil {
		p.put(in) // nothing was sent: no reply can come
		return pendingAck{}, err
	}
	return pendingAck{p: p, in: in}, nil
}

// errNoAck is wait's and poll's error when the deadline came first.
var errNoAck = errors.New("no acknowledgement before the deadline")

// wait returns the PubAck of the publish, or an error: the server refused
// the message (a *jetstream.APIError), nothing answers on the subject
// (nats.ErrNoResponders), or deadline delivered first (errNoAck). A timer's
// channel rather than a context: a context with a deadline per Store was
// five allocations an event.
func (a pendingAck) wait(deadline <-chan time.Time) (jetstream.PubAck, error) {
	select {
	case msg := <-a.in.replies:
		a.p.put(a.in)
		return parsePubAck(msg)
	case <-deadline:
		a.p.discard(a.in)
		return jetstream.PubAck{}, errNoAck
	}
}

// poll is wait once the deadline has passed: the answer if it came, else
// errNoAck.
func (a pendingAck) poll() (jetstream.PubAck, error) {
	select {
	case msg := <-a.in.replies:
		a.p.put(a.in)
		return parsePubAck(msg)
	default:
		a.p.discard(a.in)
		return jetstream.PubAck{}, errNoAck
	}
}

// timers are stopped timers for publishEach to reuse (since Go 1.23 a
// stopped or reset timer delivers no stale value).
var timers sync.Pool

// startTimer returns a timer that fires after d; give it back with
// stopTimer.
func startTimer(d time.Duration) *time.Timer {
	if t, ok := timers.Get().(*time.Timer); ok {
		t.Reset(d)
		return t
	}
	return time.NewTimer(d)
}

func stopTimer(t *time.Timer) {
	t.Stop()
	timers.Put(t)
}

// parsePubAck reads JetStream's answer to a publish. (A PubAck, not a
// pointer: one allocation less per event.)
func parsePubAck(msg *nats.Msg) (jetstream.PubAck, error) {
	if len(msg.Data) == 0 && msg.Header.Get("Status") == "503" {
		return jetstream.PubAck{}, nats.ErrNoResponders
	}
	if ack, ok := parsePlainPubAck(msg.Data); ok {
		return ack, nil
	}
	var resp struct {
		jetstream.PubAck
		Error *jetstream.APIError `json:"error,omitempty"`
	}
	if err := json.Unmarshal(msg.Data, &resp); err != nil {
		return jetstream.PubAck{}, fmt.Errorf("publish answer %q: %w", msg.Data, err)
	}
	if resp.Error != nil {
		return jetstream.PubAck{}, resp.Error
	}
	if resp.Stream == "" {
		return jetstream.PubAck{}, fmt.Errorf("publish answer %q names no stream", msg.Data)
	}
	return resp.PubAck, nil
}

// parsePlainPubAck reads the answer the server gives to a stored message
// that is not a duplicate, {"stream":"NAME","seq":N}, without reflection (it
// was a twentieth of the NATS ingress's CPU through encoding/json) and, for
// the events stream, without allocating; any other answer is left to
// encoding/json.
func parsePlainPubAck(data []byte) (jetstream.PubAck, bool) {
	const head, mid = `{"stream":"`, `","seq":`
	rest, ok := bytes.CutPrefix(data, []byte(head))
	if !ok {
		return jetstream.PubAck{}, false
	}
	name, rest, ok := bytes.Cut(rest, []byte(mid))
	if !ok || bytes.ContainsAny(name, `"\`) || len(rest) < 2 || rest[len(rest)-1] != '}' {
		return jetstream.PubAck{}, false
	}
	digits := rest[:len(rest)-1]
	if len(digits) > 19 { // more may not fit in a uint64; encoding/json decides
		return jetstream.PubAck{}, false
	}
	var seq uint64
	for _, c := range digits {
		if c < '0' || c > '9' {
			return jetstream.PubAck{}, false
		}
		seq = seq*10 + uint64(c-'0')
	}
	stream := eventsStream
	if string(name) != eventsStream {
		stream = string(name)
	}
	return jetstream.PubAck{Stream: stream, Sequence: seq}, true
}
