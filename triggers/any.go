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

// keyAlternatives is one set, the union of a set chosen for each child, when
// every child has one; otherwise the filter may pass events that meet no
// key.
func (f anyFilter) keyAlternatives(choose func([][]key) []key) [][]key {
	var set []key
	for _, c := range f {
		sets := keyAlternatives(c, choose)
		if len(sets) == 0 {
			return nil
		}
		set = append(set, choose(sets)...)
	}
	return [][]key{set}
}
