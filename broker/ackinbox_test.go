package broker

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/weft-dev/weft/internal/testutil"
)

func TestParsePubAck(t *testing.T) {
	noResponders := nats.NewMsg("x")
	noResponders.Header.Set("Status", "503")
	cases := map[string]struct {
		msg     *nats.Msg
		want    jetstream.PubAck
		wantErr error // matched with errors.Is; nil with apiCode 0 and bad false: no error
		apiCode jetstream.ErrorCode
		bad     bool // an answer that is no PubAck
	}{
		"stored":            {msg: &nats.Msg{Data: []byte(`{"stream":"WEFT_EVENTS","seq":42}`)}, want: jetstream.PubAck{Stream: "WEFT_EVENTS", Sequence: 42}},
		"duplicate":         {msg: &nats.Msg{Data: []byte(`{"stream":"WEFT_EVENTS","seq":7,"duplicate":true}`)}, want: jetstream.PubAck{Stream: "WEFT_EVENTS", Sequence: 7, Duplicate: true}},
		"with a domain":     {msg: &nats.Msg{Data: []byte(`{"stream":"S","domain":"d","seq":3}`)}, want: jetstream.PubAck{Stream: "S", Domain: "d", Sequence: 3}},
		"refused":           {msg: &nats.Msg{Data: []byte(`{"error":{"code":400,"err_code":10060,"description":"expected stream does not match"}}`)}, apiCode: 10060},
		"no responders":     {msg: noResponders, wantErr: nats.ErrNoResponders},
		"sequence missing":  {msg: &nats.Msg{Data: []byte(`{"stream":"S","seq":}`)}, bad: true},
		"not JSON":          {msg: &nats.Msg{Data: []byte(`+OK`)}, bad: true},
		"no stream named":   {msg: &nats.Msg{Data: []byte(`{"seq":1}`)}, bad: true},
		"escaped name":      {msg: &nats.Msg{Data: []byte(`{"stream":"a\"b","seq":1}`)}, want: jetstream.PubAck{Stream: `a"b`, Sequence: 1}},
		"sequence too long": {msg: &nats.Msg{Data: []byte(`{"stream":"S","seq":99999999999999999999}`)}, bad: true},
		"largest sequence":  {msg: &nats.Msg{Data: []byte(`{"stream":"S","seq":18446744073709551615}`)}, want: jetstream.PubAck{Stream: "S", Sequence: 18446744073709551615}},
		"signed sequence":   {msg: &nats.Msg{Data: []byte(`{"stream":"S","seq":-1}`)}, bad: true},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			ack, err := parsePubAck(tc.msg)
			var apiErr *jetstream.APIError
			switch {
			case tc.wantErr != nil:
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("err = %v, want %v", err, tc.wantErr)
				}
			case tc.apiCode != 0:
				if !errors.As(err, &apiErr) || apiErr.ErrorCode != tc.apiCode {
					t.Fatalf("err = %v, want API error %d", err, tc.apiCode)
				}
			case tc.bad:
				if err == nil {
					t.Fatalf("parsed %+v from %q, want an error", ack, tc.msg.Data)
				}
			default:
				if err != nil {
					t.Fatal(err)
				}
				if ack != tc.want {
					t.Fatalf("ack = %+v, want %+v", ack, tc.want)
				}
			}
		})
	}
}

// TestAckInboxes publishes through the pool to the broker's real events
// stream: acks carry the stream's sequences and duplicates, an inbox whose
// reply came is reused, one given up on is not, and a subject without a
// stream answers no responders.
func TestAckInboxes(t *testing.T) {
	b, _ := startStoringBroker(t, nil)
	c := b.conn.Load()
	p := newAckInboxes(c.nc, 4)
	never := make(chan time.Time) // no deadline: the test's own timeout bounds it
	publish := func(id string) (jetstream.PubAck, *ackInbox, error) {
		t.Helper()
		a, err := p.publish(eventMsgFor(id))
		if err != nil {
			t.Fatal(err)
		}
		ack, err := a.wait(never)
		return ack, a.in, err
	}
	first, in1, err := publish("a")
	if err != nil {
		t.Fatal(err)
	}
	second, in2, err := publish("b")
	if err != nil {
		t.Fatal(err)
	}
	if first.Stream != eventsStream || second.Sequence != first.Sequence+1 || first.Duplicate || second.Duplicate {
		t.Fatalf("acks %+v then %+v: want consecutive sequences of %s, no duplicates", first, second, eventsStream)
	}
	if in1 != in2 {
		t.Errorf("second publish used a new inbox %s, not the free %s", in2.subject, in1.subject)
	}
	again, _, err := publish("a")
	if err != nil {
		t.Fatal(err)
	}
	if !again.Duplicate || again.Sequence != first.Sequence {
		t.Errorf("same message id again: ack %+v, want a duplicate of sequence %d", again, first.Sequence)
	}

	// A wait that gives up drops its inbox: a late reply cannot reach
	// another publish.
	msg := nats.NewMsg(eventsSubject)
	msg.Header.Set(jetstream.MsgIDHeader, "c")
	a, err := p.publish(msg)
	if err != nil {
		t.Fatal(err)
	}
	passed := make(chan time.Time, 1)
	passed <- time.Now()
	if _, err := a.wait(passed); !errors.Is(err, errNoAck) {
		t.Fatalf("wait past its deadline: %v", err)
	}
	if a.in.sub.IsValid() {
		t.Error("an inbox given up on is still subscribed")
	}
	p.mu.Lock()
	for _, in := range p.free {
		if in == a.in {
			t.Error("an inbox given up on went back to the pool")
		}
	}
	p.mu.Unlock()

	nowhere, err := p.publish(nats.NewMsg("weft.nowhere"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := nowhere.wait(never); !errors.Is(err, nats.ErrNoResponders) {
		t.Fatalf("publish to a subject without a stream: %v, want no responders", err)
	}

	// Past the deadline, an answer that came is still taken.
	late, err := p.publish(eventMsgFor("d"))
	if err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, 10*time.Second, func() bool { return len(late.in.replies) == 1 }, "no answer to publish d")
	if ack, err := late.poll(); err != nil || ack.Stream != eventsStream {
		t.Fatalf("poll after the answer came: %+v, %v", ack, err)
	}
}

func eventMsgFor(id string) *nats.Msg {
	msg := nats.NewMsg(eventsSubject)
	msg.Data = []byte(`{}`)
	msg.Header.Set(jetstream.MsgIDHeader, id)
	return msg
}

// TestPublishEachGivesUpAtItsDeadline: publishEach waits for the answers in
// order until PublishTimeout; an event unanswered by then fails as
// unconfirmed, and an answer that came meanwhile still counts. The "stream"
// is a plain subscriber on a server without JetStream that answers every
// event but the second.
func TestPublishEachGivesUpAtItsDeadline(t *testing.T) {
	nc, _ := startTestServer(t, server.Options{})
	var seq atomic.Int64
	if _, err := nc.Subscribe(eventsSubject, func(m *nats.Msg) {
		if n := seq.Add(1); n != 2 {
			_ = m.Respond(fmt.Appendf(nil, `{"stream":%q,"seq":%d}`, eventsStream, n))
		}
	}); err != nil {
		t.Fatal(err)
	}
	b, err := New(Config{DataDir: t.TempDir(), PublishTimeout: 200 * time.Millisecond}, nil, nil, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	c := &conn{nc: nc, acks: newAckInboxes(nc, 4)}
	batch := []storeItem{{id: "a", data: []byte(`{}`)}, {id: "b", data: []byte(`{}`)}, {id: "c", data: []byte(`{}`)}}
	results := make([]storeResult, len(batch))
	b.publishEach(c, batch, []int{0, 1, 2}, results)
	if results[0].err != nil || results[0].seq != 1 {
		t.Errorf("first event: %+v, want stored at 1", results[0])
	}
	if err := results[1].err; !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "no storage confirmation") {
		t.Errorf("unanswered event: %v, want unconfirmed", err)
	}
	if results[2].err != nil || results[2].seq != 3 {
		t.Errorf("third event, answered while the second was awaited: %+v, want stored at 3", results[2])
	}
	c.acks.mu.Lock()
	defer c.acks.mu.Unlock()
	if len(c.acks.free) != 2 {
		t.Errorf("%d inboxes back in the pool, want the 2 answered", len(c.acks.free))
	}
}
