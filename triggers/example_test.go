package triggers_test

import (
	"errors"
	"fmt"

	"github.com/cloudevents/sdk-go/v2/event"

	"github.com/weft-dev/weft/internal/resource"
	"github.com/weft-dev/weft/triggers"
)

const manifests = `apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata:
  name: on-upload
spec:
  filters:
    - exact: {type: com.example.upload}
    - prefix: {source: /storage/}
    - cesql: "size > 1024"
  subscriber:
    ref: {apiVersion: weft.dev/v1, kind: Function, name: thumbnailer}
  delivery:
    retry: 5
    backoffDelay: PT0.5S
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata:
  name: audit
spec:
  filter:
    attributes: {type: ""}
  subscriber:
    uri: http://audit-log/events
`

// Example parses Trigger manifests, builds an Index and finds the triggers
// an event goes to, with the first retry waits of one of them.
func Example() {
	objs, err := resource.Decode("triggers.yaml", []byte(manifests))
	if err != nil {
		panic(err)
	}
	var trs []*triggers.Trigger
	for _, obj := range objs {
		tr, err := triggers.Parse(obj)
		if err != nil {
			panic(err)
		}
		trs = append(trs, tr)
	}
	idx := triggers.NewIndex(trs)

	ev := event.New()
	ev.SetID("1")
	ev.SetType("com.example.upload")
	ev.SetSource("/storage/photos")
	ev.SetExtension("size", 4096)
	for _, tr := range idx.MatchBroker(triggers.DefaultBroker, ev) {
		fmt.Printf("%s -> %s (%d attempts)\n", tr.Name, tr.Subscriber.Target(), tr.Delivery.Attempts())
	}
	up, _ := idx.Get("on-upload")
	for n := 1; n <= 3; n++ {
		fmt.Printf("retry %d after %v\n", n, up.Delivery.Backoff(n))
	}
	// Output:
	// audit -> http://audit-log/events (11 attempts)
	// on-upload -> function:thumbnailer (6 attempts)
	// retry 1 after 500ms
	// retry 2 after 1s
	// retry 3 after 2s
}

// ExampleParse shows the error for an invalid CESQL expression: a
// *resource.FieldError that names the file, line and field.
func ExampleParse() {
	objs, err := resource.Decode("bad.yaml", []byte(`apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata:
  name: bad
spec:
  filters:
    - cesql: "size >"
  subscriber: {uri: "http://sink/"}
`))
	if err != nil {
		panic(err)
	}
	_, err = triggers.Parse(objs[0])
	var fe *resource.FieldError
	if errors.As(err, &fe) {
		fmt.Println(fe.File, fe.Line, fe.Field)
	}
	// Output:
	// bad.yaml 7 spec.filters[0].cesql
}

// ExampleParseDuration parses the ISO-8601 durations of delivery specs.
func ExampleParseDuration() {
	for _, s := range []string{"PT0.2S", "PT1M30S", "P1DT2H"} {
		d, _ := triggers.ParseDuration(s)
		fmt.Println(s, d)
	}
	_, err := triggers.ParseDuration("P1M")
	fmt.Println(err)
	// Output:
	// PT0.2S 200ms
	// PT1M30S 1m30s
	// P1DT2H 26h0m0s
	// invalid ISO-8601 duration "P1M": months have no fixed length; for minutes write T before M, as in PT1M
}
