package broker

import (
	"bytes"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/cloudevents/sdk-go/v2/types"
)

// assertEncodesAsSDK fails t unless encodeEvent writes ev as sdk-go's
// MarshalJSON does, byte for byte.
func assertEncodesAsSDK(t *testing.T, ev *event.Event) {
	t.Helper()
	want, wantErr := ev.MarshalJSON()
	got, err := encodeEvent(ev, ev.Source())
	if (err == nil) != (wantErr == nil) || !bytes.Equal(got, want) {
		t.Fatalf("encodeEvent differs from sdk-go:\ngot:  %s (%v)\nwant: %s (%v)", got, err, want, wantErr)
	}
}

// TestEncodeEventMatchesSDK: events of every shape encodeEvent writes, and
// some it leaves to sdk-go, come out as sdk-go writes them.
func TestEncodeEventMatchesSDK(t *testing.T) {
	base := func() event.Event {
		ev := event.New()
		ev.SetID("id-1")
		ev.SetSource("https://example.com/a?b=c")
		ev.SetType("dev.weft.test")
		return ev
	}
	cases := map[string]func(*event.Event){
		"bare":    func(*event.Event) {},
		"escapes": func(ev *event.Event) { ev.SetID("a\"b\\c\nd\re\tf\x01g\x1fh\x7fi é \u2028") },
		"all attributes": func(ev *event.Event) {
			ev.SetSubject("s")
			ev.SetTime(time.Date(2026, 12, 7, 5, 0, 0, 123, time.FixedZone("x", 3600)))
			ev.SetDataSchema("https://example.com/s")
		},
		"JSON data": func(ev *event.Event) { _ = ev.SetData(event.ApplicationJSON, map[string]any{"a": []int{1, 2}}) },
		"JSON charset": func(ev *event.Event) {
			ev.SetDataContentType("Application/JSON; charset=utf-8")
			ev.DataEncoded = []byte(`{"a":1}`)
		},
		"no type, data": func(ev *event.Event) { ev.DataEncoded = []byte(`[1,2]`) },
		"empty type":    func(ev *event.Event) { ev.SetDataContentType(""); ev.DataEncoded = []byte(`"x"`) },
		"text data":     func(ev *event.Event) { _ = ev.SetData(event.TextPlain, "line\n\"quoted\"") },
		"xml data":      func(ev *event.Event) { _ = ev.SetData(event.ApplicationXML, []byte("<a>&</a>")) },
		"base64 data": func(ev *event.Event) {
			ev.SetDataContentType("application/octet-stream")
			ev.DataEncoded = []byte{0, 1, 2, 250}
			ev.DataBase64 = true
		},
		"base64 JSON": func(ev *event.Event) { ev.DataEncoded = []byte(`{}`); ev.DataBase64 = true },
		"empty data":  func(ev *event.Event) { ev.DataEncoded = []byte{} },
		"extensions": func(ev *event.Event) {
			ev.SetExtension("zz", "last")
			ev.SetExtension("aa", int32(-7))
			ev.SetExtension("mm", true)
			ev.SetExtension(TTLExtension, DefaultTTL)
		},
		"many extensions": func(ev *event.Event) {
			for _, n := range "abcdefghijkl" {
				ev.SetExtension("x"+string(n), string(n))
			}
		},
		"URI extension": func(ev *event.Event) {
			ev.SetExtension("u", *types.ParseURI("https://example.com/x"))
		},
		"time extension": func(ev *event.Event) { ev.SetExtension("t", types.Timestamp{Time: time.Unix(0, 0)}) },
	}
	for name, edit := range cases {
		t.Run(name, func(t *testing.T) {
			ev := base()
			edit(&ev)
			assertEncodesAsSDK(t, &ev)
		})
	}
}
