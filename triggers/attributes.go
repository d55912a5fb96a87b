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

// requiredTypes lets the Index bucket the trigger by event type.
func (f attributesFilter) requiredTypes() []string {
	for i, name := range f.names {
		if name == "type" && f.values[i] != "" {
			return []string{f.values[i]}
		}
	}
	return nil
}
