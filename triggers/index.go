package triggers

import (
	"sort"

	"github.com/cloudevents/sdk-go/v2/event"
)

// Index is an immutable set of triggers compiled for matching. Build a new
// Index for every change and swap it in whole (the broker keeps it behind an
// atomic.Pointer); all methods are safe for concurrent use, and a nil *Index
// is an empty one.
//
// Matching is cheap for many triggers: a trigger whose filter requires an
// exact event type (exact type, a legacy type attribute, or such a filter
// inside all, or in every branch of any) sits in a bucket of that type, and
// an event is checked only against its type's bucket and the triggers that
// accept any type.
type Index struct {
	all      []*Trigger // sorted by name
	byName   map[string]*Trigger
	byType   map[string][]int // positions in all, ascending
	anyTypes []int            // positions in all of triggers without a required type
}

// typeRequirer is implemented by filters that pass only events of certain
// types.
type typeRequirer interface {
	requiredTypes() []string
}

// requiredTypes returns the event types one of which f requires, or nil when
// f may pass events of any type.
func requiredTypes(f Filter) []string {
	if r, ok := f.(typeRequirer); ok {
		return r.requiredTypes()
	}
	return nil
}

// NewIndex builds an index of trs, which it does not modify; nil entries are
// skipped. Names should be unique (the resource store guarantees it); with
// duplicates every one is matched and Get returns the first in trs.
func NewIndex(trs []*Trigger) *Index {
	x := &Index{
		byName: make(map[string]*Trigger, len(trs)),
		byType: make(map[string][]int),
	}
	for _, t := range trs {
		if t != nil {
			x.all = append(x.all, t)
		}
	}
	sort.SliceStable(x.all, func(i, j int) bool { return x.all[i].Name < x.all[j].Name })
	for _, t := range x.all {
		if _, dup := x.byName[t.Name]; !dup {
			x.byName[t.Name] = t
		}
	}
	for i, t := range x.all {
		var types []string
		if t.Filter != nil {
			types = requiredTypes(t.Filter)
		}
		if types == nil {
			x.anyTypes = append(x.anyTypes, i)
			continue
		}
		seen := make(map[string]bool, len(types))
		for _, typ := range types {
			if !seen[typ] {
				seen[typ] = true
				x.byType[typ] = append(x.byType[typ], i)
			}
		}
	}
	return x
}

// Match returns the triggers of every broker whose filter passes ev, ordered
// by name, or nil when none does.
func (x *Index) Match(ev event.Event) []*Trigger { return x.match(false, "", ev) }

// MatchBroker returns the triggers of broker whose filter passes ev, ordered
// by name, or nil when none does.
func (x *Index) MatchBroker(broker string, ev event.Event) []*Trigger {
	return x.match(true, broker, ev)
}

func (x *Index) match(byBroker bool, broker string, ev event.Event) []*Trigger {
	if x == nil || len(x.all) == 0 || ev.Context == nil {
		return nil
	}
	typed, untyped := x.byType[ev.Type()], x.anyTypes
	var out []*Trigger
	// Merge the two ascending candidate lists so the result stays in name
	// order without sorting.
	for len(typed) > 0 || len(untyped) > 0 {
		var k int
		if len(untyped) == 0 || len(typed) > 0 && typed[0] < untyped[0] {
			k, typed = typed[0], typed[1:]
		} else {
			k, untyped = untyped[0], untyped[1:]
		}
		t := x.all[k]
		if byBroker && t.Broker != broker {
			continue
		}
		if t.Match(ev) {
			out = append(out, t)
		}
	}
	return out
}

// Get returns the trigger named name.
func (x *Index) Get(name string) (*Trigger, bool) {
	if x == nil {
		return nil, false
	}
	t, ok := x.byName[name]
	return t, ok
}

// All returns every trigger, ordered by name, in a new slice.
func (x *Index) All() []*Trigger {
	if x == nil {
		return nil
	}
	return append([]*Trigger(nil), x.all...)
}

// Len returns the number of triggers.
func (x *Index) Len() int {
	if x == nil {
		return 0
	}
	return len(x.all)
}
