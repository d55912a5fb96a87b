package triggers

import (
	"fmt"
	"strings"

	"github.com/cloudevents/sdk-go/v2/event"
)

// suffixFilter is the Subscriptions API suffix dialect: the attribute's value
// ends with suffix, case-sensitively. As in Knative (suffix_filter.go), an
// attribute the event lacks fails, and the suffix is never empty.
type suffixFilter struct {
	name, suffix string
}

func newSuffix(name, suffix string) Filter { return suffixFilter{name: name, suffix: suffix} }

func (f suffixFilter) Match(ev event.Event) bool {
	v, ok := lookup(ev, f.name)
	return ok && strings.HasSuffix(v, f.suffix)
}

func (f suffixFilter) String() string { return fmt.Sprintf("suffix(%s=%q)", f.name, f.suffix) }

// keyAlternatives lets the Index file the trigger under the suffix.
func (f suffixFilter) keyAlternatives(func([][]key) []key) [][]key {
	return [][]key{{{op: opSuffix, attr: f.name, value: f.suffix}}}
}
