package broker

import (
	"encoding/json"
	"errors"
	"fmt"
	"testing"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/nats-io/nats.go"
)

func natsMsg(hdr map[string]string, data string) *nats.Msg {
	msg := nats.NewMsg("weft.in.test")
	for k, v := range hdr {
		msg.Header[k] = []string{v} // as published: nats.Header keeps the case
	}
	msg.Data = []byte(data)
	return msg
}

func natsBinary(id string, kv ...string) map[string]string {
	return caseApply(map[string]string{
		"ce-specversion": "1.0",
		"ce-id":          id,
		"ce-source":      "/weft/nats",
		"ce-type":        "dev.weft.test",
		"content-type":   "application/json",
	}, kv)
}

func TestNATSDecode(t *testing.T) {
	cases := []struct {
		name      string
		msg       *nats.Msg
		wantIDs   []string
		wantCT    string // datacontenttype of the first event
		wantAttr  string // for errors: EventError.Attribute
		wantIndex int    // for errors: EventError.Index
	}{
		{name: "structured without headers", msg: &nats.Msg{Subject: "weft.in.x", Data: []byte(caseStructured("n1"))}, wantIDs: []string{"n1"}},
		{name: "structured with content-type", msg: natsMsg(map[string]string{"content-type": "application/cloudevents+json"}, caseStructured("n2")), wantIDs: []string{"n2"}},
		{name: "structured ignores other headers", msg: natsMsg(map[string]string{"Nats-Msg-Id": "x"}, caseStructured("n3")), wantIDs: []string{"n3"}},
		{name: "batch", msg: natsMsg(map[string]string{"Content-Type": "application/cloudevents-batch+json"},
			caseBatch(caseStructured("n4"), caseStructured("n5"), caseStructured("n6"))), wantIDs: []string{"n4", "n5", "n6"}},
		{name: "empty batch", msg: natsMsg(map[string]string{"Content-Type": "application/cloudevents-batch+json"}, "[]"), wantIDs: []string{}},
		{name: "binary", msg: natsMsg(natsBinary("n7"), `{"n":1}`), wantIDs: []string{"n7"}, wantCT: "application/json"},
		{name: "binary as sdk-go writes it (ce-datacontenttype)", msg: natsMsg(natsBinary("n8", "content-type", caseDel, "ce-datacontenttype", "text/plain"), "hi"),
			wantIDs: []string{"n8"}, wantCT: "text/plain"},
		{name: "binary with canonicalised names", msg: natsMsg(map[string]string{"Ce-Specversion": "1.0", "Ce-Id": "n9", "Ce-Source": "/s", "Ce-Type": "t", "Content-Type": "text/plain"}, "hi"),
			wantIDs: []string{"n9"}, wantCT: "text/plain"},
		{name: "binary without data", msg: natsMsg(natsBinary("n10", "content-type", caseDel), ""), wantIDs: []string{"n10"}},

		{name: "structured invalid", msg: natsMsg(nil, caseStructured("e1", "time", `"later"`)), wantAttr: "time", wantIndex: -1},
		{name: "structured malformed", msg: natsMsg(nil, `{"id":`), wantIndex: -1},
		{name: "batch with an invalid event", msg: natsMsg(map[string]string{"content-type": "application/cloudevents-batch+json"},
			caseBatch(caseStructured("e2"), caseStructured("e3", "id", caseDel))), wantAttr: "id", wantIndex: 1},
		{name: "binary missing id", msg: natsMsg(natsBinary("e4", "ce-id", caseDel), "{}"), wantAttr: "id", wantIndex: -1},
		{name: "binary specversion 0.3", msg: natsMsg(natsBinary("e5", "ce-specversion", "0.3"), "{}"), wantAttr: "specversion", wantIndex: -1},
		{name: "binary bad extension name", msg: natsMsg(natsBinary("e6", "ce-my_ext", "x"), "{}"), wantAttr: "my_ext", wantIndex: -1},
		{name: "binary control character", msg: natsMsg(natsBinary("e7", "ce-subject", "a\x01b"), "{}"), wantAttr: "subject", wantIndex: -1},
		{name: "binary content types disagree", msg: natsMsg(natsBinary("e8", "ce-datacontenttype", "text/plain"), "{}"), wantAttr: "datacontenttype", wantIndex: -1},
		{name: "binary header in two spellings", msg: natsMsg(natsBinary("e9", "Ce-Id", "other"), "{}"), wantAttr: "id", wantIndex: -1},
		{name: "non-CloudEvents content type", msg: natsMsg(map[string]string{"content-type": "application/json"}, `{"a":1}`), wantAttr: "specversion", wantIndex: -1},
		{name: "unknown format", msg: natsMsg(map[string]string{"content-type": "application/cloudevents+avro"}, "x")},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			evs, err := decodeNATSMsg(c.msg)
			if c.wantIDs == nil {
				if err == nil {
					t.Fatalf("decoded %d events, want an error", len(evs))
				}
				if evs != nil {
					t.Errorf("events returned with an error")
				}
				var ee *EventError
				if errors.As(err, &ee) && (ee.Attribute != c.wantAttr || ee.Index != c.wantIndex) {
					t.Errorf("got %+v, want attribute %q index %d", ee, c.wantAttr, c.wantIndex)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(evs) != len(c.wantIDs) {
				t.Fatalf("decoded %d events, want %d", len(evs), len(c.wantIDs))
			}
			for i, ev := range evs {
				if ev.ID() != c.wantIDs[i] {
					t.Errorf("event %d id %q, want %q", i, ev.ID(), c.wantIDs[i])
				}
			}
			if c.wantCT != "" && evs[0].DataContentType() != c.wantCT {
				t.Errorf("datacontenttype %q, want %q", evs[0].DataContentType(), c.wantCT)
			}
		})
	}
}

// TestNATSDecodeUnknownFormatIsNotEventError: an unknown format is refused as
// a media-type error (415 over HTTP), which the NATS ack reports as 400.
func TestNATSDecodeUnknownFormatIsNotEventError(t *testing.T) {
	_, err := decodeNATSMsg(natsMsg(map[string]string{"content-type": "application/cloudevents+avro"}, "x"))
	var mt *mediaTypeError
	if !errors.As(err, &mt) {
		t.Fatalf("err = %v, want *mediaTypeError", err)
	}
	if code := natsAckCode(t, natsAck(0, err)); code != 400 {
		t.Errorf("ack code %d, want 400", code)
	}
}

func natsAckCode(t *testing.T, b []byte) int {
	t.Helper()
	var ack struct {
		Stored *int   `json:"stored"`
		Error  string `json:"error"`
		Code   int    `json:"code"`
	}
	if err := json.Unmarshal(b, &ack); err != nil {
		t.Fatalf("ack %q: %v", b, err)
	}
	if ack.Code != 0 && (ack.Error == "" || ack.Stored != nil) {
		t.Fatalf("ack %s: an error ack needs error and no stored", b)
	}
	return ack.Code
}

func TestNATSAck(t *testing.T) {
	var stored struct {
		Stored int `json:"stored"`
	}
	if err := json.Unmarshal(natsAck(3, nil), &stored); err != nil || stored.Stored != 3 {
		t.Fatalf("success ack %s: %v", natsAck(3, nil), err)
	}
	if string(natsAck(0, nil)) != `{"stored":0}` {
		t.Errorf("empty batch ack %s", natsAck(0, nil))
	}
	cases := []struct {
		err  error
		want int
	}{
		{&EventError{Index: 1, Attribute: "id", Rule: ruleRequired}, 400},
		{fmt.Errorf("%w: limit", errBodyTooLarge), 400},
		{fmt.Errorf("store: %w", ErrOverloaded), 429},
		{fmt.Errorf("store: %w", ErrUnavailable), 503},
		{fmt.Errorf("store: %w", errors.Join(ErrUnavailable, errors.New("disk full"))), 503},
		{errors.New("unexpected"), 503},
	}
	for _, c := range cases {
		if got := natsAckCode(t, natsAck(0, c.err)); got != c.want {
			t.Errorf("natsAck(%v) code %d, want %d", c.err, got, c.want)
		}
	}
}

// TestNATSRoundTripWithHTTPCases: every good structured and batch body of the
// HTTP table decodes the same over NATS.
func TestNATSRoundTripWithHTTPCases(t *testing.T) {
	for _, c := range goodIngressCases {
		ct := c.headers["Content-Type"]
		if ct != "application/cloudevents+json" && ct != "application/cloudevents-batch+json" {
			continue
		}
		evs, err := decodeNATSMsg(natsMsg(map[string]string{"content-type": ct}, c.body))
		if err != nil || len(evs) != c.wantEvents {
			t.Errorf("%s: %d events, err %v; want %d", c.name, len(evs), err, c.wantEvents)
		}
		for i := range evs {
			if evs[i].SpecVersion() != event.CloudEventsVersionV1 {
				t.Errorf("%s: event %d specversion %q", c.name, i, evs[i].SpecVersion())
			}
		}
	}
}
