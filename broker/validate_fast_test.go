package broker

import (
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/cloudevents/sdk-go/v2/binding/spec"
	"github.com/cloudevents/sdk-go/v2/event"
)

// FuzzDecodeJSONEventFast: the fast decoder never accepts what the thorough
// path refuses, so an error's wording and every rule stay explainJSONEvent's,
// and what it accepts it decodes exactly as sdk-go's decoder does.
func FuzzDecodeJSONEventFast(f *testing.F) {
	for _, c := range append(append([]ingressCase(nil), goodIngressCases...), badIngressCases...) {
		if c.headers["Content-Type"] == "application/cloudevents+json" && len(c.body) <= 4<<10 {
			f.Add([]byte(c.body))
		}
	}
	for _, s := range append(fastDecodedEvents,
		`{"specversion":"1.0","id":"f","source":"/f","type":"t","datacontenttype":"text/plain","data":"x"}`,
		`{"specversion":"1.0","id":"f","source":"/f","type":"t","data":null,"data_base64":"eA=="}`,
		`{"specversion":"1.0","id":"f","source":"/f","type":"t","id":"g"}`,
		`{"specversion":"1.0","id":"f","source":"/f","type":"t","Ext":"x"}`,
		`{"specversion":"1.0","id":"f","source":"/f","type":"t","n":1.5}`,
		`{"specversion":"1.0","id":"f","source":"/f","type":"t","n":2147483648}`,
		`{"specversion":"1.0","id":"f","source":"/f","type":"t","o":{"a":1}}`,
		`{"specversion":"1.0","id":"f","source":"/f","type":"t","s":"\ud800"}`,
		`{"specversion":"1.0","id":"f","source":"/f","type":null}`,
		`{"specversion":"1.0","id":"f","source":"/f","type":"t"} {}`,
		`{"specversion":"1.0","id":"f","source":"/f","type":"t","subject":""}`,
		`{"specversion":"1.0","id":"f","source":"/f","type":"t","data_base64":"e\u0041=="}`,
		`{"specversion":"1.0","id":"f","source":"/f","type":"t","datacontenttype":"text/plain","data":{"a":1}}`,
		`{"specversion":"1.0","id":"f","source":"/f","type":"t","datacontenttype":"text/plain","data":"a\nb\u00e9"}`,
		`{"data":"x","datacontenttype":"text/plain","specversion":"1.0","id":"f","source":"/f","type":"t"}`,
		`{"specversion":"1.0","data":[1],"datacontenttype":"application/json;charset=utf-8","id":"f","source":"/f","type":"t"}`,
		`{"specversion":"1.0","id":"f","source":"/f","type":"t","datacontenttype":"not a type","data":{"a":1}}`,
		`{"specversion":"1.0","id":"f","source":"/f","type":"t","dataschema":"https://example.com/s","n":-7,"b":false}`,
		`{"specversion":"1.0","id":" ","source":"/f","type":"t"}`,
		`{"specversion":"1.0","id":"f","source":"/f","type":"\u0020 "}`,
		`{"specversion":"1.0","id":"f","source":"/f","type":"t","subject":"  "}`,
		`{"specversion":"1.0","id":"f","source":"#","type":"t"}`,
		`{"specversion":"1.0","id":"f","source":"HTTP://Example.com/%7e?","type":"t"}`,
		`{"specversion":"1.0","id":"f","source":"/f","type":"t","dataschema":"HTTP://example.com/s#"}`,
		`{"specversion":"1.0","id":"f","source":"/f","type":"t","time":"0000-01-01T00:00:00+01:00"}`,
		`{"specversion":"1.0","id":"f","source":"/f","type":"t","time":"9999-12-31T23:59:59-01:00"}`,
		`{"specversion":"1.0","id":"f","source":"/f","type":"t","time":"2026-12-07"}`,
		`{"specversion":"1.0","id":"f","source":"a b","type":"t"}`,
		`{"specversion":"1.0","id":"f","source":"%zz","type":"t"}`,
		`{"specversion":"1.0","id":"f","source":"/f","type":"t","datacontenttype":"application/json; charset=utf-8","data":1}`,
	) {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		if !validJSON(raw) {
			return // decodeJSONEventFast's precondition
		}
		got, ok := decodeJSONEventFast(raw)
		if !ok {
			return
		}
		if err := explainJSONEvent(raw, -1); err != nil {
			t.Fatalf("decoded by the fast path, refused by the thorough one: %v\n%s", err, raw)
		}
		want := event.New()
		if err := want.UnmarshalJSON(raw); err != nil {
			t.Fatalf("decoded by the fast path, refused by sdk-go: %v\n%s", err, raw)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("fast path and sdk-go differ for %s:\nfast:   %#v\nsdk-go: %#v", raw, got, want)
		}
		if err := validateEvent(&got, -1); err != nil {
			t.Fatalf("decoded by the fast path, refused by validateEvent: %v\n%s", err, raw)
		}
		assertEncodesAsSDK(t, &got)
	})
}

// fastDecodedEvents are valid events as publishers commonly send them.
var fastDecodedEvents = []string{
	`{"specversion":"1.0","id":"f","source":"/f","type":"t","datacontenttype":"application/json","data":{"a":[1,2,{"b":null}]}}`,
	`{"specversion":"1.0","id":"f","source":"/f","type":"t","time":"2026-11-27T18:00:00Z","subject":"s","knativebrokerttl":255,"flag":true}`,
	`{"specversion":"1.0","id":"f","source":"/f","type":"t","data_base64":"eA=="}`,
	`{"id":"f","source":"https://example.com/a?b=c","type":"t","specversion":"1.0","data":"plain JSON string"}`,
	`{"specversion":"1.0","id":"f","source":"/f","type":"t","datacontenttype":"text/plain; charset=utf-8","data":"x\"y"}`,
}

// TestDecodeJSONEventFastTakesTheCommonCase: a plain valid event takes the
// fast path (otherwise it saves nothing).
func TestDecodeJSONEventFastTakesTheCommonCase(t *testing.T) {
	for _, s := range fastDecodedEvents {
		if _, ok := decodeJSONEventFast([]byte(s)); !ok {
			t.Errorf("not decoded by the fast path: %s", s)
		}
		if err := explainJSONEvent([]byte(s), -1); err != nil {
			t.Errorf("%s: %v", s, err)
		}
	}
}

// FuzzValidJSON: validJSON answers as json.Valid does, for any input.
func FuzzValidJSON(f *testing.F) {
	for _, s := range []string{
		`{}`, `[]`, `""`, `0`, `-0`, `01`, `1.`, `1e`, `1e+`, `-`, `1.5e-3`, `true`, `nul`, ` {"a" : [1, 2 , {"b":null}] } `,
		`{"a":1,}`, `[1,]`, `[,1]`, `{"a"}`, `{"a":}`, `{,}`, `"\u12"`, `"\u12G4"`, `"\x"`, `"a\tb"`, "\"a\tb\"", "\"\x01\"",
		`"\/\b\f\n\r\t\\\""`, `{} {}`, `{}x`, "\ufeff{}", "{\"a\":\"\xff\"}", `[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		if got, want := validJSON(raw), json.Valid(raw); got != want {
			t.Fatalf("validJSON = %v, json.Valid = %v for %q", got, want, raw)
		}
	})
}

// TestDecodeJSONEventFastLeavesManyMembers: an event with more members than
// the fast path checks for duplicates still decodes, the thorough way.
func TestDecodeJSONEventFastLeavesManyMembers(t *testing.T) {
	var b strings.Builder
	b.WriteString(`{"specversion":"1.0","id":"f","source":"/f","type":"t"`)
	for i := range maxFastMembers {
		fmt.Fprintf(&b, `,"x%d":%d`, i, i)
	}
	b.WriteString("}")
	raw := []byte(b.String())
	if _, ok := decodeJSONEventFast(raw); ok {
		t.Fatalf("the fast path took an event of %d members", maxFastMembers+4)
	}
	ev, err := decodeStructured(raw, -1)
	if err != nil {
		t.Fatal(err)
	}
	if got := len(ev.Extensions()); got != maxFastMembers {
		t.Fatalf("%d extensions decoded, want %d", got, maxFastMembers)
	}
}

// FuzzDecodeBinary: decodeBinary, which runs validateEvent only when its own
// cheaper checks doubt an event, never accepts an event validateEvent
// refuses. attrs holds one name=value per line.
func FuzzDecodeBinary(f *testing.F) {
	const base = "specversion=1.0\nid=f\nsource=/f\ntype=t\n"
	for _, s := range []string{
		"", "subject=s\ntime=2026-12-07T05:00:00Z\n", "subject= \n", "id= \n", "type=  \n",
		"source=#\n", "source=HTTP://Example.com/%7e?\n", "source=a b\n", "source=%zz\n", "source=\n",
		"dataschema=HTTP://example.com/s#\n", "dataschema=https://example.com/s\n", "dataschema=/s\n",
		"time=0000-01-01T00:00:00+01:00\n", "time=9999-12-31T23:59:59-01:00\n", "time=2026-12-07\n",
		"time=0001-01-01T00:00:00Z\n", "data=x\n", "data_base64=eA==\n", "myext=v\n", "myext=\x01\n",
	} {
		f.Add(base+s, "application/json")
		f.Add(base+s, "")
	}
	f.Add(base, "not a type")
	f.Add(base, " ")
	f.Fuzz(func(t *testing.T, lines, contentType string) {
		attrs := map[string]string{}
		for line := range strings.Lines(lines) {
			name, value, _ := strings.Cut(strings.TrimSuffix(line, "\n"), "=")
			if checkBinaryHeader(name, []string{value}) != nil || name == attrDataCT {
				return // binaryAttrsFromHTTP refuses these before decodeBinary
			}
			attrs[name] = value
		}
		ev, err := decodeBinary(attrs, contentType, []byte("x"))
		if err != nil {
			return
		}
		if err := validateEvent(&ev, -1); err != nil {
			t.Fatalf("decodeBinary accepted what validateEvent refuses: %v\n%q, content type %q", err, lines, contentType)
		}
		assertEncodesAsSDK(t, &ev)
	})
}

// FuzzSetBinaryAttr holds setBinaryAttr to spec.V1's setters (SetExtension
// for an extension), which decodeBinary called before: the same context,
// the same error.
func FuzzSetBinaryAttr(f *testing.F) {
	for _, s := range [][2]string{
		{"id", "a"}, {"id", " "}, {"id", " b "}, {"source", "/s"}, {"source", "%zz"}, {"source", "HTTP://Example.com/%7e?"},
		{"type", " t "}, {"subject", ""}, {"subject", " s"}, {"dataschema", " "}, {"dataschema", "::"},
		{"dataschema", "https://example.com/s"}, {"time", "2026-12-07T05:00:00Z"}, {"time", "2026-12-07"},
		{"time", "2026-12-07T05:00:00.123456789+01:00"}, {"datacontenttype", " application/json "}, {"myext", "v"}, {"Bad", "v"},
	} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, name, value string) {
		if name == attrSpecVersion {
			return // decodeBinary sets no specversion
		}
		got, want := event.New(), event.New()
		gotErr := setBinaryAttr(got.Context, name, value)
		var wantErr error
		if attr := spec.V1.Attribute(name); attr != nil {
			wantErr = attr.Set(want.Context, value)
		} else {
			wantErr = want.Context.SetExtension(name, value)
		}
		if fmt.Sprint(gotErr) != fmt.Sprint(wantErr) {
			t.Fatalf("%s=%q: error %v, spec.V1's %v", name, value, gotErr, wantErr)
		}
		if !reflect.DeepEqual(got.Context, want.Context) {
			t.Fatalf("%s=%q: context %#v, spec.V1's %#v", name, value, got.Context, want.Context)
		}
	})
}
