package triggers

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/weft-dev/weft/internal/resource"
)

func TestParseDesignExample(t *testing.T) {
	t.Parallel()
	tr, err := parseYAML(t, `apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata:
  name: on-upload
spec:
  broker: default
  filters:
    - exact: {type: com.example.upload}
    - prefix: {source: /storage/}
    - cesql: "size > 1024"
  subscriber:
    ref: {apiVersion: weft.dev/v1, kind: Function, name: thumbnailer}
  delivery:
    retry: 5
    backoffPolicy: exponential
    backoffDelay: PT0.2S
    timeout: PT10S
    deadLetterSink:
      uri: http://127.0.0.1:9999/dead
`)
	if err != nil {
		t.Fatal(err)
	}
	if tr.Name != "on-upload" || tr.Broker != "default" {
		t.Errorf("Name, Broker = %q, %q", tr.Name, tr.Broker)
	}
	if got := tr.Subscriber.Target(); got != "function:thumbnailer" {
		t.Errorf("Subscriber.Target() = %q", got)
	}
	want := `all(exact(type="com.example.upload"), prefix(source="/storage/"), cesql(size > 1024))`
	if got := describe(tr.Filter); got != want {
		t.Errorf("Filter = %s, want %s", got, want)
	}
	d := tr.Delivery
	if d.Retry != 5 || d.Attempts() != 6 || d.BackoffPolicy != Exponential || d.BackoffDelay != 200*time.Millisecond || d.Timeout != 10*time.Second {
		t.Errorf("Delivery = %+v", d)
	}
	if d.DeadLetterSink == nil || d.DeadLetterSink.Target() != "http://127.0.0.1:9999/dead" {
		t.Errorf("DeadLetterSink = %v", d.DeadLetterSink)
	}
	if !tr.Match(testEvent()) || tr.Match(testEvent(withExt("size", 10))) {
		t.Error("Match disagrees with the filters")
	}
}

func TestParseDefaultBroker(t *testing.T) {
	t.Parallel()
	if got := mustParse(t, "filters: []").Broker; got != DefaultBroker {
		t.Errorf("Broker = %q, want %q", got, DefaultBroker)
	}
}

func TestParseAcceptsKubernetesMetadata(t *testing.T) {
	t.Parallel()
	_, err := parseYAML(t, `apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata:
  name: t
  namespace: default
  labels: {app: shop}
  annotations: {knative.dev/dependency: x}
  uid: 7d2c
spec:
  subscriber: {ref: {apiVersion: serving.knative.dev/v1, kind: Service, name: shop, namespace: default}}
`)
	if err != nil {
		t.Fatal(err)
	}
}

// wantErr is one expected *resource.FieldError.
type wantErr struct {
	line  int
	field string
	text  string // a word the message must contain, in any case
}

func TestParseErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		doc  string
		want []wantErr
	}{{
		name: "bad cesql",
		doc: `apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata:
  name: t
spec:
  filters:
    - exact: {type: a}
    - cesql: "type = 'x' )"
  subscriber: {uri: "http://x/"}
`,
		want: []wantErr{{8, "spec.filters[1].cesql", "')'"}},
	}, {
		name: "cesql lexer error in a nested filter",
		doc: `apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata:
  name: t
spec:
  filters:
    - all:
        - exact: {type: a}
        - not:
            cesql: "size >> 3 @"
  subscriber: {uri: "http://x/"}
`,
		want: []wantErr{{10, "spec.filters[0].all[1].not.cesql", "column"}},
	}, {
		name: "bad duration",
		doc: `apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata:
  name: t
spec:
  subscriber: {uri: "http://x/"}
  delivery:
    retry: 3
    backoffDelay: 200ms
`,
		want: []wantErr{{9, "spec.delivery.backoffDelay", "ISO-8601"}},
	}, {
		name: "negative timeout and zero timeout",
		doc: `apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata:
  name: t
spec:
  subscriber: {uri: "http://x/"}
  delivery:
    timeout: PT0S
    retryAfterMax: -PT1S
`,
		want: []wantErr{{8, "spec.delivery.timeout", "greater than zero"}, {9, "spec.delivery.retryAfterMax", "negative"}},
	}, {
		name: "unknown field",
		doc: `apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata:
  name: t
spec:
  subscriber: {uri: "http://x/"}
  filterz:
    - exact: {type: a}
`,
		want: []wantErr{{6, "spec", "filterz"}},
	}, {
		name: "unknown field in a filter",
		doc: `apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata:
  name: t
spec:
  subscriber: {uri: "http://x/"}
  filters:
    - regex: {type: a.*}
`,
		want: []wantErr{{8, "spec.filters[0]", "regex"}},
	}, {
		name: "missing subscriber",
		doc: `apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata:
  name: t
spec:
  broker: default
`,
		want: []wantErr{{6, "spec", "subscriber"}},
	}, {
		name: "bad backoffPolicy",
		doc: `apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata:
  name: t
spec:
  subscriber: {uri: "http://x/"}
  delivery:
    backoffPolicy: quadratic
`,
		want: []wantErr{{8, "spec.delivery.backoffPolicy", "linear"}},
	}, {
		name: "wrong apiVersion",
		doc: `apiVersion: eventing.knative.dev/v1beta1
kind: Trigger
metadata:
  name: t
spec:
  subscriber: {uri: "http://x/"}
`,
		want: []wantErr{{1, "apiVersion", "eventing.knative.dev/v1"}},
	}, {
		name: "wrong kind",
		doc: `apiVersion: eventing.knative.dev/v1
kind: Broker
metadata:
  name: t
`,
		want: []wantErr{{2, "kind", "Trigger"}},
	}, {
		name: "exact with two attributes and an empty value",
		doc: `apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata:
  name: t
spec:
  subscriber: {uri: "http://x/"}
  filters:
    - exact: {type: a, source: b}
    - prefix:
        type: ""
`,
		want: []wantErr{{8, "spec.filters[0].exact", "1"}, {10, "spec.filters[1].prefix.type", "length"}},
	}, {
		name: "two dialects in one filter",
		doc: `apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata:
  name: t
spec:
  subscriber: {uri: "http://x/"}
  filters:
    - exact: {type: a}
      suffix: {type: b}
`,
		want: []wantErr{{8, "spec.filters[0]", "1"}},
	}, {
		name: "invalid attribute names",
		doc: `apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata:
  name: t
spec:
  subscriber: {uri: "http://x/"}
  filter:
    attributes:
      Type: a
      my-ext: b
`,
		want: []wantErr{{9, "spec.filter.attributes.Type", "lower-case"}, {10, "spec.filter.attributes.my-ext", "lower-case"}},
	}, {
		name: "invalid attribute name in exact",
		doc: `apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata:
  name: t
spec:
  subscriber: {uri: "http://x/"}
  filters:
    - any:
        - exact: {type: a}
        - exact: {9lives: a}
`,
		want: []wantErr{{10, "spec.filters[0].any[1].exact.9lives", "lower-case"}},
	}, {
		name: "empty any",
		doc: `apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata:
  name: t
spec:
  subscriber: {uri: "http://x/"}
  filters:
    - any: []
`,
		want: []wantErr{{8, "spec.filters[0].any", "1"}},
	}, {
		name: "unsupported subscriber ref",
		doc: `apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata:
  name: t
spec:
  subscriber:
    ref:
      apiVersion: messaging.knative.dev/v1
      kind: Channel
      name: c
`,
		want: []wantErr{{8, "spec.subscriber.ref", "Channel"}},
	}, {
		name: "weft Service ref",
		doc: `apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata:
  name: t
spec:
  subscriber:
    ref: {apiVersion: weft.dev/v1, kind: Service, name: payments}
`,
		want: []wantErr{{7, "spec.subscriber.ref", "uri"}},
	}, {
		name: "absolute uri with a ref",
		doc: `apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata:
  name: t
spec:
  subscriber:
    ref: {apiVersion: weft.dev/v1, kind: Function, name: fn}
    uri: http://elsewhere/hook
`,
		want: []wantErr{{8, "spec.subscriber.uri", "relative"}},
	}, {
		name: "relative uri alone",
		doc: `apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata:
  name: t
spec:
  subscriber:
    uri: /hook
`,
		want: []wantErr{{7, "spec.subscriber.uri", "absolute"}},
	}, {
		name: "empty subscriber and bad dead-letter sink",
		doc: `apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata:
  name: t
spec:
  subscriber: {}
  delivery:
    deadLetterSink:
      uri: "ftp://x/dead"
`,
		want: []wantErr{{6, "spec.subscriber", "1"}},
	}, {
		name: "errors are reported in line order",
		doc: `apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata:
  name: t
spec:
  filters:
    - cesql: "("
  subscriber: {uri: "ftp://x/"}
  delivery:
    backoffDelay: soon
    timeout: PT
`,
		want: []wantErr{
			{7, "spec.filters[0].cesql", "CESQL"},
			{8, "spec.subscriber.uri", "http"},
			{10, "spec.delivery.backoffDelay", "ISO-8601"},
			{11, "spec.delivery.timeout", "ISO-8601"},
		},
	}, {
		name: "negative retry",
		doc: `apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata:
  name: t
spec:
  subscriber: {uri: "http://x/"}
  delivery: {retry: -1}
`,
		want: []wantErr{{7, "spec.delivery.retry", "0"}},
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tr, err := parseYAML(t, tc.doc)
			if err == nil {
				t.Fatalf("Parse = %+v, nil; want errors", tr)
			}
			if tr != nil {
				t.Errorf("Parse returned a trigger with its error")
			}
			var first *resource.FieldError
			if !errors.As(err, &first) {
				t.Fatalf("error %v is not a *resource.FieldError", err)
			}
			got := fieldErrors(t, err)
			if len(got) != len(tc.want) {
				t.Fatalf("got %d errors, want %d:\n%v", len(got), len(tc.want), err)
			}
			if first != got[0] {
				t.Errorf("errors.As found %v, not the first error %v", first, got[0])
			}
			for i, w := range tc.want {
				g := got[i]
				if g.File != "t.yaml" || g.Line != w.line || g.Field != w.field {
					t.Errorf("error %d at %s:%d %s, want t.yaml:%d %s (%v)", i, g.File, g.Line, g.Field, w.line, w.field, g)
				}
				if !strings.Contains(strings.ToLower(g.Err.Error()), strings.ToLower(w.text)) {
					t.Errorf("error %d %q does not mention %q", i, g.Err, w.text)
				}
			}
		})
	}
}

// TestParseNeverSkipsBadFilters is the regression guard for Knative's
// MaterializeFiltersList, which logs and drops a filter it cannot build and
// so widens the trigger: every bad entry must refuse the whole trigger.
func TestParseNeverSkipsBadFilters(t *testing.T) {
	t.Parallel()
	for _, f := range []string{
		`{cesql: "size >"}`,
		`{all: [{exact: {type: a}}, {cesql: ")"}]}`,
		`{any: [{exact: {type: a}}, {exact: {Bad: a}}]}`,
		`{not: {cesql: "'open"}}`,
	} {
		_, err := parseYAML(t, manifest("t", "filters: ["+f+"]\n"+fnSubscriber))
		if err == nil {
			t.Errorf("filters: [%s] accepted, want an error", f)
		}
	}
}
