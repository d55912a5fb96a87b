package triggers

import (
	"fmt"

	"github.com/cloudevents/sdk-go/v2/event"
)

// exactFilter is the Subscriptions API exact dialect: the attribute's value
// equals value, case-sensitively. Knative (pkg/eventfilter/subscriptionsapi,
// exact_filter.go) requires one attribute with a non-empty name and value;
// compile enforces it.
type exactFilter struct {
	name, value string
}

func newExact(name, value string) Filter { return exactFilter{name: name, value: value} }

func (f exactFilter) Match(ev event.Event) bool {
	v, ok := lookup(ev, f.name)
	return ok && v == f.value
}

func (f exactFilter) String() string { return fmt.Sprintf("exact(%s=%q)", f.name, f.value) }

// keyAlternatives lets the Index file the trigger under the value.
func (f exactFilter) keyAlternatives(func([][]key) []key) [][]key {
	return [][]key{{{op: opExact, attr: f.name, value: f.value}}}
}
