package triggers

import (
	"strings"

	"github.com/cloudevents/sdk-go/v2/event"
)

// allFilter passes when every nested filter passes; it is also how the
// entries of spec.filters combine. It stops at the first failure. Knative's
// allFilter reorders its children at run time by failure counts; weft keeps
// the declared order so a compiled filter stays immutable and lock-free.
type allFilter []Filter

// newAll returns the conjunction of fs; one filter needs no wrapper.
func newAll(fs []Filter) Filter {
	if len(fs) == 1 {
		return fs[0]
	}
	return allFilter(fs)
}

func (f allFilter) Match(ev event.Event) bool {
	for _, c := range f {
		if !c.Match(ev) {
			return false
		}
	}
	return true
}

func (f allFilter) String() string { return "all(" + joinFilters(f) + ")" }

// keyAlternatives offers every child's key sets: an event that passes all
// children meets a key of each of them.
func (f allFilter) keyAlternatives(choose func([][]key) []key) [][]key {
	var sets [][]key
	for _, c := range f {
		sets = append(sets, keyAlternatives(c, choose)...)
	}
	return sets
}

func joinFilters(fs []Filter) string {
	parts := make([]string, len(fs))
	for i, c := range fs {
		parts[i] = describe(c)
	}
	return strings.Join(parts, ", ")
}
