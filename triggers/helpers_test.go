package triggers

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"

	"github.com/weft-dev/weft/internal/resource"
)

// manifest wraps spec lines (indented as under spec:) into a Trigger
// document named name whose subscriber is the Function fn. The spec starts
// on line 5.
func manifest(name, specLines string) string {
	return "apiVersion: eventing.knative.dev/v1\n" +
		"kind: Trigger\n" +
		"metadata:\n" +
		"  name: " + name + "\n" +
		"spec:\n" +
		indent(specLines)
}

func indent(s string) string {
	var b strings.Builder
	for _, line := range strings.Split(strings.TrimRight(s, "\n"), "\n") {
		b.WriteString("  " + line + "\n")
	}
	return b.String()
}

const fnSubscriber = "subscriber: {ref: {apiVersion: weft.dev/v1, kind: Function, name: fn}}\n"

// parseYAML decodes one document of file t.yaml and parses it.
func parseYAML(tb testing.TB, doc string) (*Trigger, error) {
	tb.Helper()
	objs, err := resource.Decode("t.yaml", []byte(doc))
	if err != nil {
		tb.Fatalf("decode: %v\n%s", err, doc)
	}
	if len(objs) != 1 {
		tb.Fatalf("decode: %d documents, want 1", len(objs))
	}
	return Parse(objs[0])
}

// mustParse parses a trigger whose spec is specLines plus a Function
// subscriber, failing the test on error.
func mustParse(tb testing.TB, specLines string) *Trigger {
	tb.Helper()
	tr, err := parseYAML(tb, manifest("t", strings.TrimRight(specLines, "\n")+"\n"+fnSubscriber))
	if err != nil {
		tb.Fatalf("Parse: %v", err)
	}
	return tr
}

// fieldErrors returns every *resource.FieldError in err (joined or single)
// and fails the test if err holds anything else.
func fieldErrors(tb testing.TB, err error) []*resource.FieldError {
	tb.Helper()
	var errs []error
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		errs = j.Unwrap()
	} else if err != nil {
		errs = []error{err}
	}
	out := make([]*resource.FieldError, 0, len(errs))
	for _, e := range errs {
		var fe *resource.FieldError
		if !errors.As(e, &fe) {
			tb.Fatalf("error %v (%T) is not a *resource.FieldError", e, e)
		}
		out = append(out, fe)
	}
	return out
}

var testTime = time.Date(2026, 1, 2, 3, 4, 5, 600000000, time.FixedZone("CET", 3600))

// testEvent is an upload event carrying every optional attribute and a few
// extensions of several types; mods adjust it.
func testEvent(mods ...func(*event.Event)) event.Event {
	ev := event.New()
	ev.SetID("evt-1")
	ev.SetSource("/storage/bucket-1")
	ev.SetType("com.example.upload")
	ev.SetSubject("photos/cat.jpg")
	ev.SetTime(testTime)
	ev.SetDataSchema("https://example.com/schemas/upload.json")
	ev.SetExtension("region", "eu-west-1")
	ev.SetExtension("size", 2048)
	ev.SetExtension("public", true)
	_ = ev.SetData("application/json; charset=utf-8", map[string]int{"n": 1})
	for _, m := range mods {
		m(&ev)
	}
	return ev
}

func withType(t string) func(*event.Event) { return func(ev *event.Event) { ev.SetType(t) } }

func withExt(name string, v any) func(*event.Event) {
	return func(ev *event.Event) { ev.SetExtension(name, v) }
}

func withoutExt(name string) func(*event.Event) {
	return func(ev *event.Event) { ev.SetExtension(name, nil) }
}

func withSubject(s string) func(*event.Event) { return func(ev *event.Event) { ev.SetSubject(s) } }

// bare is an event with only the required attributes.
func bare(mods ...func(*event.Event)) event.Event {
	ev := event.New()
	ev.SetID("evt-2")
	ev.SetSource("/other")
	ev.SetType("com.example.other")
	for _, m := range mods {
		m(&ev)
	}
	return ev
}

func resourceDecode(doc []byte) ([]resource.Object, error) { return resource.Decode("t.yaml", doc) }
