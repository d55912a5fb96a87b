package triggers

import (
	"cmp"
	"slices"
	"sort"
	"strings"

	"github.com/cloudevents/sdk-go/v2/event"
)

// Index is an immutable set of triggers compiled for matching. Build a new
// Index for every change and swap it in whole (the broker keeps it behind an
// atomic.Pointer); all methods are safe for concurrent use, and a nil *Index
// is an empty one.
//
// Matching costs in proportion to the triggers an event may match, not to
// all triggers: most filters require some attribute to equal, start with or
// end with a value (an exact or legacy attributes filter, a prefix or
// suffix, an equality ANDed into a CESQL expression, any of these inside
// all, or in every branch of any). NewIndex files each trigger under one
// such set of keys, picking the set fewest other triggers share, and Match
// looks up the event's attribute values in those buckets, so it evaluates
// only the triggers filed under a key the event meets, plus the few whose
// filter requires nothing indexable (not, a CESQL expression without an
// equality, no filter at all).
type Index struct {
	all    []*Trigger // sorted by name
	byName map[string]*Trigger
	attrs  []attrIndex // one per attribute some key names, by name
	open   []int32     // positions in all of triggers without keys, ascending
}

// attrIndex holds the buckets of the keys on one attribute. Bucket lists are
// positions in Index.all, ascending.
type attrIndex struct {
	name   string
	ext    bool // name is an extension (isExtensionName)
	exact  map[string][]int32
	prefix affixIndex
	suffix affixIndex
	// cesql lists the triggers filed under an equality taken from a CESQL
	// expression on this attribute. CESQL compares its own rendering of
	// the value (utils.Cast); for the value types where that may differ from
	// lookup's (URI, URI-reference and timestamp extensions) these triggers
	// are all candidates.
	cesql []int32
}

// affixIndex holds prefix (or suffix) buckets: an event value v meets the
// keys v[:n] (or v[len(v)-n:]) for every length n of a key.
type affixIndex struct {
	byValue map[string][]int32
	lens    []int // distinct key lengths, ascending
}

// keyOp is how a key compares an attribute's value.
type keyOp uint8

const (
	opExact keyOp = iota
	opPrefix
	opSuffix
)

// key is a condition on one attribute that the Index can look up: the
// attribute's value, as lookup renders it, equals (starts with, ends with)
// value. value is never empty.
type key struct {
	op          keyOp
	attr, value string
	cesql       bool // taken from a CESQL equality; see attrIndex.cesql
}

// keyed is implemented by filters that pass only events meeting certain
// keys.
type keyed interface {
	// keyAlternatives returns sets of keys such that every event the filter
	// passes meets at least one key of each set; so any one set may file the
	// filter's trigger. choose picks the set to use where a filter must
	// combine its children's (any needs one set per branch).
	keyAlternatives(choose func([][]key) []key) [][]key
}

// keyAlternatives returns f's key sets, nil when f may pass events that meet
// no key.
func keyAlternatives(f Filter, choose func([][]key) []key) [][]key {
	if k, ok := f.(keyed); ok {
		return k.keyAlternatives(choose)
	}
	return nil
}

// NewIndex builds an index of trs, which it does not modify; nil entries are
// skipped. Names should be unique (the resource store guarantees it); with
// duplicates every one is matched and Get returns the first in trs.
func NewIndex(trs []*Trigger) *Index {
	x := &Index{byName: make(map[string]*Trigger, len(trs))}
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

	// How many triggers mention each key: a key many triggers share is a
	// large bucket, so a trigger is filed under the set of keys with the
	// smallest total. A first pass with a fixed preference counts them.
	count := map[key]int{}
	for _, t := range x.all {
		seen := map[key]bool{}
		for _, set := range filterAlternatives(t, shortestSet) {
			for _, k := range set {
				if !seen[k] {
					seen[k] = true
					count[k]++
				}
			}
		}
	}
	cheapest := func(sets [][]key) []key {
		return slices.MinFunc(sets, func(a, b []key) int {
			return cmp.Or(cmp.Compare(setCost(a, count), setCost(b, count)), compareSets(a, b))
		})
	}

	byAttr := map[string]*attrIndex{}
	for i, t := range x.all {
		sets := filterAlternatives(t, cheapest)
		if len(sets) == 0 {
			x.open = append(x.open, int32(i))
			continue
		}
		for _, k := range dedupKeys(cheapest(sets)) {
			a := byAttr[k.attr]
			if a == nil {
				a = &attrIndex{name: k.attr, ext: isExtensionName(k.attr)}
				byAttr[k.attr] = a
			}
			a.add(k, int32(i))
		}
	}
	for _, a := range byAttr {
		a.prefix.lens = sortedLens(a.prefix.byValue)
		a.suffix.lens = sortedLens(a.suffix.byValue)
		x.attrs = append(x.attrs, *a)
	}
	slices.SortFunc(x.attrs, func(a, b attrIndex) int { return strings.Compare(a.name, b.name) })
	return x
}

func filterAlternatives(t *Trigger, choose func([][]key) []key) [][]key {
	if t.Filter == nil {
		return nil
	}
	return keyAlternatives(t.Filter, choose)
}

// shortestSet is the preference before keys are counted: the fewest keys,
// exact before prefix and suffix.
func shortestSet(sets [][]key) []key { return slices.MinFunc(sets, compareSets) }

// compareSets orders key sets by preference when their costs tie: fewer
// keys, then exact keys before affixes, then longer values, then by text so
// the choice is deterministic.
func compareSets(a, b []key) int {
	if c := cmp.Compare(len(a), len(b)); c != 0 {
		return c
	}
	for i := range a {
		if c := cmp.Or(
			cmp.Compare(a[i].op, b[i].op),
			-cmp.Compare(len(a[i].value), len(b[i].value)),
			strings.Compare(a[i].attr, b[i].attr),
			strings.Compare(a[i].value, b[i].value),
		); c != 0 {
			return c
		}
	}
	return 0
}

// setCost estimates how many triggers share set's buckets.
func setCost(set []key, count map[key]int) int {
	n := 0
	for _, k := range set {
		n += count[k]
	}
	return n
}

func dedupKeys(set []key) []key {
	out := make([]key, 0, len(set))
	for _, k := range set {
		if !slices.Contains(out, k) {
			out = append(out, k)
		}
	}
	return out
}

func (a *attrIndex) add(k key, pos int32) {
	switch k.op {
	case opExact:
		if a.exact == nil {
			a.exact = map[string][]int32{}
		}
		a.exact[k.value] = appendPos(a.exact[k.value], pos)
	case opPrefix:
		a.prefix.add(k.value, pos)
	case opSuffix:
		a.suffix.add(k.value, pos)
	}
	if k.cesql {
		a.cesql = appendPos(a.cesql, pos)
	}
}

func (f *affixIndex) add(value string, pos int32) {
	if f.byValue == nil {
		f.byValue = map[string][]int32{}
	}
	f.byValue[value] = appendPos(f.byValue[value], pos)
}

// appendPos appends pos unless it is already last: positions arrive in
// ascending order, and one trigger may name the same bucket twice.
func appendPos(l []int32, pos int32) []int32 {
	if n := len(l); n > 0 && l[n-1] == pos {
		return l
	}
	return append(l, pos)
}

func sortedLens(m map[string][]int32) []int {
	var lens []int
	for v := range m {
		if !slices.Contains(lens, len(v)) {
			lens = append(lens, len(v))
		}
	}
	slices.Sort(lens)
	return lens
}

// Match returns the triggers of every broker whose filter passes ev, ordered
// by name, or nil when none does.
func (x *Index) Match(ev event.Event) []*Trigger { return x.match(false, "", ev) }

// MatchBroker returns the triggers of broker whose filter passes ev, ordered
// by name, or nil when none does.
func (x *Index) MatchBroker(broker string, ev event.Event) []*Trigger {
	return x.match(true, broker, ev)
}

// maxListsOnStack is how many candidate lists match gathers without
// allocating; more spill to the heap.
const maxListsOnStack = 16

func (x *Index) match(byBroker bool, broker string, ev event.Event) []*Trigger {
	if x == nil || len(x.all) == 0 || ev.Context == nil {
		return nil
	}
	var buf [maxListsOnStack][]int32
	lists := buf[:0]
	if len(x.open) > 0 {
		lists = append(lists, x.open)
	}
	for i := range x.attrs {
		lists = x.attrs[i].candidates(lists, ev)
	}
	// Merge the ascending candidate lists so the result stays in name
	// order without sorting; a trigger in several lists is tried once.
	var out []*Trigger
	last := int32(-1)
	for {
		m, head := -1, int32(0)
		for i, l := range lists {
			if len(l) > 0 && (m < 0 || l[0] < head) {
				m, head = i, l[0]
			}
		}
		if m < 0 {
			break
		}
		lists[m] = lists[m][1:]
		if head == last {
			continue
		}
		last = head
		if t := x.all[head]; (!byBroker || t.Broker == broker) && t.Match(ev) {
			out = append(out, t)
		}
	}
	return out
}

// candidates appends the buckets of a's keys that ev meets.
func (a *attrIndex) candidates(lists [][]int32, ev event.Event) [][]int32 {
	v, ok := lookup(ev, a.name)
	if !ok {
		return lists
	}
	if l := a.exact[v]; len(l) > 0 {
		lists = append(lists, l)
	}
	for _, n := range a.prefix.lens {
		if n > len(v) {
			break
		}
		if l := a.prefix.byValue[v[:n]]; len(l) > 0 {
			lists = append(lists, l)
		}
	}
	for _, n := range a.suffix.lens {
		if n > len(v) {
			break
		}
		if l := a.suffix.byValue[v[len(v)-n:]]; len(l) > 0 {
			lists = append(lists, l)
		}
	}
	if a.ext && len(a.cesql) > 0 && !cesqlPlain(ev, a.name) {
		lists = append(lists, a.cesql)
	}
	return lists
}

// cesqlPlain reports whether CESQL renders extension name of ev as lookup
// does (see attrIndex.cesql): strings, integers, booleans and binary.
func cesqlPlain(ev event.Event, name string) bool {
	raw, _ := extension(ev, name)
	switch raw.(type) {
	case string, int32, bool, []byte:
		return true
	}
	return false
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
