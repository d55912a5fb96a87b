package broker

import (
	"errors"
	"math"
	"mime"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/cloudevents/sdk-go/v2/types"
)

func validateTestEvent() event.Event {
	ev := event.New()
	ev.SetID("v1")
	ev.SetSource("/weft/validate")
	ev.SetType("dev.weft.test")
	return ev
}

func valPtr[T any](v T) *T { return &v }

func TestValidateEvent(t *testing.T) {
	cases := []struct {
		name     string
		edit     func(ev *event.Event, ec *event.EventContextV1)
		wantAttr string // "" means valid
	}{
		{"valid", func(*event.Event, *event.EventContextV1) {}, ""},
		{"valid with every attribute", func(ev *event.Event, ec *event.EventContextV1) {
			ev.SetSubject("s")
			ev.SetTime(time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC))
			ev.SetDataSchema("https://schemas.example.com/x.json")
			_ = ev.SetData("application/json", map[string]int{"n": 1})
			ev.SetExtension("averylongextensionnamebeyondtwenty", "ok")
			ev.SetExtension("count", int32(math.MaxInt32))
			ev.SetExtension("flag", true)
			ev.SetExtension("blob", []byte{0, 1})
		}, ""},
		{"missing id", func(_ *event.Event, ec *event.EventContextV1) { ec.ID = "" }, "id"},
		{"whitespace id (sdk-go rule)", func(_ *event.Event, ec *event.EventContextV1) { ec.ID = " " }, "id"},
		{"missing source", func(_ *event.Event, ec *event.EventContextV1) { ec.Source = types.URIRef{} }, "source"},
		{"missing type", func(_ *event.Event, ec *event.EventContextV1) { ec.Type = "" }, "type"},
		{"specversion 0.3", func(ev *event.Event, _ *event.EventContextV1) { ev.Context = ev.Context.AsV03() }, "specversion"},
		{"no context", func(ev *event.Event, _ *event.EventContextV1) { ev.Context = nil }, "specversion"},
		{"control character in id", func(_ *event.Event, ec *event.EventContextV1) { ec.ID = "a\x00b" }, "id"},
		{"C1 control character in type", func(_ *event.Event, ec *event.EventContextV1) { ec.Type = "a\u0085b" }, "type"},
		{"noncharacter in type", func(_ *event.Event, ec *event.EventContextV1) { ec.Type = "a\ufffeb" }, "type"},
		{"invalid UTF-8 in type", func(_ *event.Event, ec *event.EventContextV1) { ec.Type = "a\xffb" }, "type"},
		{"empty subject", func(_ *event.Event, ec *event.EventContextV1) { ec.Subject = valPtr("") }, "subject"},
		{"relative dataschema", func(ev *event.Event, _ *event.EventContextV1) { ev.SetDataSchema("/schemas/x.json") }, "dataschema"},
		{"dataschema with fragment", func(ev *event.Event, _ *event.EventContextV1) { ev.SetDataSchema("https://x.example/s.json#/a") }, "dataschema"},
		{"bad datacontenttype", func(_ *event.Event, ec *event.EventContextV1) { ec.DataContentType = valPtr("not a type") }, "datacontenttype"},
		{"time beyond year 9999", func(_ *event.Event, ec *event.EventContextV1) {
			ec.Time = &types.Timestamp{Time: time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)}
		}, "time"},
		{"upper-case extension name", func(_ *event.Event, ec *event.EventContextV1) { ec.Extensions = map[string]any{"myExt": "x"} }, "myExt"},
		{"dash in extension name", func(_ *event.Event, ec *event.EventContextV1) { ec.Extensions = map[string]any{"my-ext": "x"} }, "my-ext"},
		{"extension named like an attribute", func(_ *event.Event, ec *event.EventContextV1) { ec.Extensions = map[string]any{"id": "x"} }, "id"},
		{"control character in extension", func(_ *event.Event, ec *event.EventContextV1) { ec.Extensions = map[string]any{"note": "a\nb"} }, "note"},
		{"64-bit extension", func(_ *event.Event, ec *event.EventContextV1) { ec.Extensions = map[string]any{"big": int64(1) << 40} }, "big"},
		{"huge unsigned extension", func(_ *event.Event, ec *event.EventContextV1) {
			ec.Extensions = map[string]any{"big": uint64(math.MaxUint64)}
		}, "big"},
		{"fractional extension", func(_ *event.Event, ec *event.EventContextV1) { ec.Extensions = map[string]any{"ratio": 1.5} }, "ratio"},
		{"map extension", func(_ *event.Event, ec *event.EventContextV1) {
			ec.Extensions = map[string]any{"obj": map[string]any{}}
		}, "obj"},
		{"small int extension", func(_ *event.Event, ec *event.EventContextV1) { ec.Extensions = map[string]any{"n": int64(-5)} }, ""},
		{"integral float extension", func(_ *event.Event, ec *event.EventContextV1) { ec.Extensions = map[string]any{"n": 7.0} }, ""},
		{"setter error (sdk-go FieldErrors)", func(ev *event.Event, _ *event.EventContextV1) { ev.SetID("") }, "id"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			ev := validateTestEvent()
			c.edit(&ev, ev.Context.(*event.EventContextV1))
			err := ValidateEvent(&ev)
			if c.wantAttr == "" {
				if err != nil {
					t.Fatalf("ValidateEvent = %v, want nil", err)
				}
				return
			}
			var ee *EventError
			if !errors.As(err, &ee) {
				t.Fatalf("ValidateEvent = %v, want *EventError", err)
			}
			if ee.Attribute != c.wantAttr || ee.Index != -1 || ee.Rule == "" {
				t.Fatalf("got %+v, want attribute %q, index -1 and a rule", ee, c.wantAttr)
			}
		})
	}
	if err := ValidateEvent(nil); err == nil {
		t.Error("ValidateEvent(nil) = nil")
	}
}

func TestEventErrorMessage(t *testing.T) {
	cases := []struct {
		err  EventError
		want string
	}{
		{EventError{Index: -1, Attribute: "id", Rule: "is required"}, `invalid event: attribute "id": is required`},
		{EventError{Index: 2, Attribute: "time", Rule: "must be an RFC 3339 timestamp"}, `event[2]: attribute "time": must be an RFC 3339 timestamp`},
		{EventError{Index: 0, Rule: "malformed JSON"}, `event[0]: malformed JSON`},
	}
	for _, c := range cases {
		if got := c.err.Error(); got != c.want {
			t.Errorf("Error() = %q, want %q", got, c.want)
		}
	}
}

func TestURIRules(t *testing.T) {
	refs := map[string]bool{
		"/weft/x": true, "https://example.com/a?b=c#d": true, "urn:uuid:1234": true, "a%20b": true,
		"not a uri": false, "caf\u00e9": false, "100%": false, "%zz": false, "http://[::1": false, "": true,
	}
	for s, want := range refs {
		if got := isURIReference(s); got != want {
			t.Errorf("isURIReference(%q) = %v, want %v", s, got, want)
		}
	}
	abs := map[string]bool{
		"https://example.com/s.json": true, "urn:example:s": true,
		"/s.json": false, "s.json": false, "https://example.com/s.json#frag": false,
	}
	for s, want := range abs {
		if got := isAbsoluteURI(s); got != want {
			t.Errorf("isAbsoluteURI(%q) = %v, want %v", s, got, want)
		}
	}
}

// TestCommonMediaTypesPassTheirCheck: the media types datacontenttype's check
// takes without parsing are ones the parse would take.
func TestCommonMediaTypesPassTheirCheck(t *testing.T) {
	for mt := range commonMediaTypes {
		if _, _, err := mime.ParseMediaType(mt); err != nil || checkText(mt) != "" {
			t.Errorf("%q is in commonMediaTypes but fails the check: %v", mt, err)
		}
	}
}

func TestPercentDecode(t *testing.T) {
	cases := []struct {
		in, want string
		ok       bool
	}{
		{"plain", "plain", true},
		{"caf%C3%A9", "café", true},
		{"a+b", "a+b", true}, // '+' is not a space here
		{"%25", "%", true},
		{"100%", "", false},
		{"%4", "", false},
		{"%g0", "", false},
	}
	for _, c := range cases {
		got, ok := percentDecode(c.in)
		if ok != c.ok || got != c.want {
			t.Errorf("percentDecode(%q) = %q, %v; want %q, %v", c.in, got, ok, c.want, c.ok)
		}
	}
}
