package triggers

import (
	"github.com/cloudevents/sdk-go/v2/event"
)

// anyFilter passes when at least one nested filter passes, stopping at the
// first that does (Knative's any_filter.go; weft keeps the declared order).
type anyFilter []Filter

func newAny(fs []Filter) Filter {
	if len(fs) == 1 {
		return fs[0]
	}
	return anyFilter(fs)
}

func (f anyFilter) Match(ev event.Event) bool {
	for _, c := range f {
		if c.Match(ev) {
			return true
		}
	}
	return false
}

func (f anyFilter) String() string { return "any(" + joinFilters(f) + ")" }

// requiredTypes is the union of the children's types when every child
// requires one; otherwise the filter may pass events of any type.
func (f anyFilter) requiredTypes() []string {
	var out []string
	for _, c := range f {
		ts := requiredTypes(c)
		if ts == nil {
			return nil
		}
		out = append(out, ts...)
	}
	return out
}
