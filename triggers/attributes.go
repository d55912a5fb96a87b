package triggers

import (
	"fmt"
	"strings"

	"github.com/cloudevents/sdk-go/v2/event"
)

// attributesFilter is the legacy spec.filter.attributes: every listed
// attribute must equal its value, where the value "" (Knative's
// TriggerAnyFilter) accepts any value. As in Knative's attributes filter
// (pkg/eventfilter/attributes/filter.go), an attribute the event lacks fails
// even for "", and so does one that is set to an empty string.
type attributesFilter struct {
	names, values []string // sorted by name
}

func newAttributes(m map[string]string) Filter {
	f := attributesFilter{}
	for _, k := range sortedKeys(m) {
		f.names = append(f.names, k)
		f.values = append(f.values, m[k])
	}
	return f
}

func (f attributesFilter) Match(ev event.Event) bool {
	for i, name := range f.names {
		v, ok := lookup(ev, name)
		if !ok || f.values[i] != "" && v != f.values[i] {
			return false
		}
	}
	return true
}

func (f attributesFilter) String() string {
	parts := make([]string, len(f.names))
	for i, name := range f.names {
		parts[i] = fmt.Sprintf("%s=%q", name, f.values[i])
	}
	return "attributes(" + strings.Join(parts, ", ") + ")"
}

// keyAlternatives offers every attribute with a value: the event must equal
// each of them, so any one may file the trigger.
func (f attributesFilter) keyAlternatives(func([][]key) []key) [][]key {
	var sets [][]key
	for i, name := range f.names {
		if f.values[i] != "" {
			sets = append(sets, []key{{op: opExact, attr: name, value: f.values[i]}})
		}
	}
	return sets
}
