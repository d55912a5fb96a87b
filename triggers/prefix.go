package triggers

import (
	"fmt"
	"strings"

	"github.com/cloudevents/sdk-go/v2/event"
)

// prefixFilter is the Subscriptions API prefix dialect: the attribute's value
// starts with prefix, case-sensitively. As in Knative (prefix_filter.go), an
// attribute the event lacks fails, and the prefix is never empty.
type prefixFilter struct {
	name, prefix string
}

func newPrefix(name, prefix string) Filter { return prefixFilter{name: name, prefix: prefix} }

func (f prefixFilter) Match(ev event.Event) bool {
	v, ok := lookup(ev, f.name)
	return ok && strings.HasPrefix(v, f.prefix)
}

func (f prefixFilter) String() string { return fmt.Sprintf("prefix(%s=%q)", f.name, f.prefix) }

// keyAlternatives lets the Index file the trigger under the prefix.
func (f prefixFilter) keyAlternatives(func([][]key) []key) [][]key {
	return [][]key{{{op: opPrefix, attr: f.name, value: f.prefix}}}
}
