package broker

import (
	"encoding/json"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus/testutil"

	wtest "github.com/weft-dev/weft/internal/testutil"
)

// natsBadBinary are binary-mode messages the NATS ingress refuses; their
// HTTP twins differ (HTTP percent-decodes header values, NATS does not).
var natsBadBinary = []struct {
	name string
	msg  *nats.Msg
}{
	{"binary missing id", natsMsg(natsBinary("e4", "ce-id", caseDel), "{}")},
	{"binary missing source", natsMsg(natsBinary("e4b", "ce-source", caseDel), "{}")},
	{"binary missing type", natsMsg(natsBinary("e4c", "ce-type", caseDel), "{}")},
	{"binary specversion 0.3", natsMsg(natsBinary("e5", "ce-specversion", "0.3"), "{}")},
	{"binary bad extension name", natsMsg(natsBinary("e6", "ce-my_ext", "x"), "{}")},
	{"binary control character", natsMsg(natsBinary("e7", "ce-subject", "a\x01b"), "{}")},
	{"binary content types disagree", natsMsg(natsBinary("e8", "ce-datacontenttype", "text/plain"), "{}")},
	{"binary header in two spellings", natsMsg(natsBinary("e9", "Ce-Id", "other"), "{}")},
	{"binary bad time", natsMsg(natsBinary("e10", "ce-time", "yesterday"), "{}")},
	{"binary relative dataschema", natsMsg(natsBinary("e11", "ce-dataschema", "schema.json"), "{}")},
	{"non-CloudEvents content type", natsMsg(map[string]string{"content-type": "application/json"}, `{"a":1}`)},
	{"unknown format", natsMsg(map[string]string{"content-type": "application/cloudevents+avro"}, "x")},
	{"structured without headers, not JSON", natsMsg(nil, "not json")},
}

// TestNATSIngressStoresNothingInvalid publishes, over a real NATS connection
// to the real broker, every malformed structured and batch body of the HTTP
// table and the NATS-only binary cases: each is nacked with code 400 and
// stored nowhere, and the next good event is stored and delivered.
func TestNATSIngressStoresNothingInvalid(t *testing.T) {
	rec := newRecorder()
	b, _ := startBroker(t, rec)
	setTriggers(t, b, triggerYAML("all", "", "{uri: http://catch-all.invalid/}", ""))
	nc, err := nats.Connect(b.NATSURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()

	var msgs []*nats.Msg
	var names []string
	for _, c := range badIngressCases {
		ct := c.headers["Content-Type"]
		// Structured and batch bodies mean the same over NATS; 400 and 415
		// (an unknown format) are both a 400 nack there. The HTTP-only cases
		// (methods, paths, sizes, binary headers) do not translate.
		if (ct != "application/cloudevents+json" && ct != "application/cloudevents-batch+json") ||
			(c.wantStatus != http.StatusBadRequest && c.wantStatus != http.StatusUnsupportedMediaType) || c.method != "" || c.path != "" {
			continue
		}
		msgs = append(msgs, natsMsg(map[string]string{"content-type": ct}, c.body))
		names = append(names, "HTTP case "+c.name)
	}
	for _, c := range natsBadBinary {
		msgs = append(msgs, c.msg)
		names = append(names, c.name)
	}
	if len(msgs) < 30 {
		t.Fatalf("only %d malformed messages: the HTTP table changed shape", len(msgs))
	}
	for i, m := range msgs {
		m.Subject = "weft.in.bad"
		reply, err := nc.RequestMsg(m, 5*time.Second)
		if err != nil {
			t.Fatalf("%s: %v", names[i], err)
		}
		var ack struct {
			Code   int    `json:"code"`
			Error  string `json:"error"`
			Stored *int   `json:"stored"`
		}
		if err := json.Unmarshal(reply.Data, &ack); err != nil || ack.Code != 400 || ack.Error == "" || ack.Stored != nil {
			t.Errorf("%s: ack %s, want code 400 with an error (%v)", names[i], reply.Data, err)
		}
	}
	if n := testutil.ToFloat64(b.metrics.Stored); n != 0 {
		t.Fatalf("malformed NATS messages stored %v events", n)
	}
	good := natsMsg(natsBinary("after-bad"), `{"ok":true}`)
	good.Subject = "weft.in.good"
	if reply, err := nc.RequestMsg(good, 5*time.Second); err != nil || string(reply.Data) != `{"stored":1}` {
		t.Fatalf("good event after bad ones: %v %v", reply, err)
	}
	wtest.WaitFor(t, 10*time.Second, func() bool { return rec.count("http://catch-all.invalid/") == 1 }, "good event not delivered")
	t.Logf("%d malformed messages refused over NATS, none stored", len(msgs))
}

// TestNATSIngressBurst: a burst of requests far beyond what is stored at
// once is answered in full — every message acknowledged, none dropped as a
// slow consumer — and every event is stored.
func TestNATSIngressBurst(t *testing.T) {
	b, _ := startBroker(t, newRecorder())
	if stored, overloaded := natsBurst(t, b, 1000); stored != 1000 || overloaded != 0 {
		t.Fatalf("%d stored, %d answered 429; want all 1000 stored", stored, overloaded)
	}
}

// TestNATSIngressOverload: with room for 8 events being stored, a burst of
// 1,000 is answered in full all the same: each request is stored or
// answered 429 (none is dropped, none waits for a store to finish), and
// every event acknowledged as stored is.
func TestNATSIngressOverload(t *testing.T) {
	b, _ := startBrokerWith(t, newRecorder(), func(c *Config) { c.MaxInflight = 8 })
	b.StartDispatching()
	stored, overloaded := natsBurst(t, b, 1000)
	if overloaded == 0 {
		t.Errorf("no request of 1,000 answered 429 with MaxInflight 8")
	}
	if stored == 0 {
		t.Errorf("no request of 1,000 stored with MaxInflight 8")
	}
	t.Logf("%d stored, %d answered 429", stored, overloaded)
}

// natsBurst publishes n binary events to the NATS ingress at once, reads
// every answer, and returns how many said stored and how many 429. It fails
// the test on any other answer, when answers are missing, or when the
// broker's stored count differs from the stored answers.
func natsBurst(t *testing.T, b *Broker, n int) (stored, overloaded int) {
	t.Helper()
	nc, err := nats.Connect(b.NATSURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	burst := n
	acks := make(chan *nats.Msg, burst)
	inbox := nats.NewInbox()
	sub, err := nc.ChanSubscribe(inbox, acks)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	for i := range burst {
		m := natsMsg(natsBinary(fmt.Sprintf("burst-%d", i)), `{}`)
		m.Subject, m.Reply = "weft.in.burst", inbox
		if err := nc.PublishMsg(m); err != nil {
			t.Fatal(err)
		}
	}
	for stored+overloaded < burst {
		select {
		case m := <-acks:
			switch string(m.Data) {
			case `{"stored":1}`:
				stored++
			case string(natsAck(0, ErrOverloaded)):
				overloaded++
			default:
				t.Fatalf("ack %s", m.Data)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("%d of %d requests answered; the rest were dropped", stored+overloaded, burst)
		}
	}
	if got := testutil.ToFloat64(b.metrics.Stored); got != float64(stored) {
		t.Fatalf("stored %v events, %d acknowledged as stored", got, stored)
	}
	return stored, overloaded
}
