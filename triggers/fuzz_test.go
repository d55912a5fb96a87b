package triggers

import (
	"testing"

	"github.com/weft-dev/weft/internal/resource"
)

// FuzzParse feeds arbitrary YAML to Parse: it must never panic, must refuse
// only with *resource.FieldError values, and what it accepts must be a
// complete trigger whose filter can be evaluated.
func FuzzParse(f *testing.F) {
	seeds := []string{
		manifest("t", fnSubscriber),
		manifest("on-upload", "filters:\n"+
			"  - exact: {type: com.example.upload}\n"+
			"  - prefix: {source: /storage/}\n"+
			"  - cesql: \"size > 1024\"\n"+
			"  - any: [{suffix: {subject: .jpg}}, {not: {exact: {region: us}}}]\n"+
			"filter: {attributes: {type: \"\"}}\n"+
			"subscriber: {ref: {apiVersion: weft.dev/v1, kind: Function, name: fn}, uri: /hook}\n"+
			"delivery: {retry: 3, backoffPolicy: linear, backoffDelay: PT1S, timeout: PT10S, retryAfterMax: PT0S,\n"+
			"  deadLetterSink: {uri: \"http://dlq/\"}}\n"),
		manifest("t", "filters: [{cesql: \"type = 'x' )\"}]\n"+fnSubscriber),
		manifest("t", "filters: [{cesql: \"EXISTS\"}]\n"+fnSubscriber),
		manifest("t", "filters: [{cesql: \"a AND\"}]\n"+fnSubscriber),
		manifest("t", "subscriber: {uri: \"http://x/\"}\ndelivery: {backoffDelay: P1M}"),
		"apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {name: t}\nspec: []\n",
		"apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {name: t}\n",
	}
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		objs, err := resource.Decode("f.yaml", data)
		if err != nil {
			return
		}
		for _, obj := range objs {
			tr, err := Parse(obj)
			if err != nil {
				if tr != nil {
					t.Fatalf("Parse returned a trigger and %v", err)
				}
				fieldErrors(t, err)
				continue
			}
			if tr == nil || tr.Filter == nil || tr.Name == "" || tr.Broker == "" {
				t.Fatalf("incomplete trigger %+v", tr)
			}
			if tr.Subscriber.Target() == "" || tr.Delivery.Timeout <= 0 || tr.Delivery.Retry < 0 {
				t.Fatalf("invalid trigger %+v", tr)
			}
			tr.Match(testEvent())
			tr.Match(bare())
			NewIndex([]*Trigger{tr}).MatchBroker(tr.Broker, testEvent())
		}
	})
}
