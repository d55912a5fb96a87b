package broker

import (
	"context"
	"errors"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
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
	ctx := t.Context()
	publish := func(id string) (jetstream.PubAck, *ackInbox, error) {
		t.Helper()
		msg := nats.NewMsg(eventsSubject)
		msg.Data = []byte(`{}`)
		msg.Header.Set(jetstream.MsgIDHeader, id)
		a, err := p.publish(msg)
		if err != nil {
			t.Fatal(err)
		}
		ack, err := a.wait(ctx)
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
	done, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := a.wait(done); !errors.Is(err, context.Canceled) {
		t.Fatalf("wait with an ended context: %v", err)
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
	if _, err := nowhere.wait(ctx); !errors.Is(err, nats.ErrNoResponders) {
		t.Fatalf("publish to a subject without a stream: %v, want no responders", err)
	}
}
