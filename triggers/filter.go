package triggers

import (
	"errors"
	"fmt"
	"sort"
	"strconv"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/cloudevents/sdk-go/v2/types"
)

// Filter decides whether an event is delivered to a trigger's subscriber.
// Implementations are immutable and safe for concurrent use; Match never
// blocks, does no I/O and never panics.
type Filter interface {
	// Match reports whether ev passes the filter.
	Match(ev event.Event) bool
}

// matchAll is the Filter of a trigger without filters: every event passes.
type matchAll struct{}

func (matchAll) Match(event.Event) bool { return true }
func (matchAll) String() string         { return "all events" }

// filterSpec is one entry of spec.filters as the YAML spells it: exactly one
// dialect is set (the schema enforces it; compile checks again).
type filterSpec struct {
	Exact  map[string]string `json:"exact,omitempty"`
	Prefix map[string]string `json:"prefix,omitempty"`
	Suffix map[string]string `json:"suffix,omitempty"`
	All    []filterSpec      `json:"all,omitempty"`
	Any    []filterSpec      `json:"any,omitempty"`
	Not    *filterSpec       `json:"not,omitempty"`
	CESQL  *string           `json:"cesql,omitempty"`
}

// legacyFilterSpec is spec.filter.
type legacyFilterSpec struct {
	Attributes map[string]string `json:"attributes,omitempty"`
}

// pathError is a compile problem at a path relative to the spec, turned into
// a *resource.FieldError by Parse, which knows the document.
type pathError struct {
	path []string
	err  error
}

// compiler collects every problem instead of stopping at the first, so one
// run of weft apply shows them all.
type compiler struct {
	errs []pathError
}

func (c *compiler) fail(path []string, err error) {
	c.errs = append(c.errs, pathError{path: path, err: err})
}

// compileFilters builds the trigger's Filter as Knative's broker does: a
// non-empty filters list wins and is ANDed, otherwise filter.attributes
// applies, otherwise every event matches.
func (c *compiler) compileFilters(filters []filterSpec, legacy *legacyFilterSpec) Filter {
	if len(filters) > 0 {
		compiled := c.compileList(filters, []string{"spec", "filters"})
		if len(compiled) != len(filters) {
			return nil // errors recorded; no partial filter ever escapes
		}
		return newAll(compiled)
	}
	if legacy != nil && legacy.Attributes != nil {
		path := []string{"spec", "filter", "attributes"}
		ok := true
		for _, name := range sortedKeys(legacy.Attributes) {
			if err := validateAttributeName(name); err != nil {
				c.fail(with(path, name), err)
				ok = false
			}
		}
		if !ok {
			return nil
		}
		return newAttributes(legacy.Attributes)
	}
	return matchAll{}
}

// with returns path extended by segs in a new slice, so sibling paths never
// share a backing array.
func with(path []string, segs ...string) []string {
	out := make([]string, 0, len(path)+len(segs))
	return append(append(out, path...), segs...)
}

// sortedKeys returns the keys of m in lexical order, for deterministic
// evaluation and error order.
func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func (c *compiler) compileList(specs []filterSpec, path []string) []Filter {
	out := make([]Filter, 0, len(specs))
	for i := range specs {
		if f := c.compile(&specs[i], with(path, strconv.Itoa(i))); f != nil {
			out = append(out, f)
		}
	}
	return out
}

// compile builds one filter expression; it returns nil after recording an
// error.
func (c *compiler) compile(s *filterSpec, path []string) Filter {
	var set []string
	if s.Exact != nil {
		set = append(set, "exact")
	}
	if s.Prefix != nil {
		set = append(set, "prefix")
	}
	if s.Suffix != nil {
		set = append(set, "suffix")
	}
	if s.All != nil {
		set = append(set, "all")
	}
	if s.Any != nil {
		set = append(set, "any")
	}
	if s.Not != nil {
		set = append(set, "not")
	}
	if s.CESQL != nil {
		set = append(set, "cesql")
	}
	if len(set) != 1 {
		c.fail(path, fmt.Errorf("a filter needs exactly one of exact, prefix, suffix, all, any, not, cesql; found %d %v", len(set), set))
		return nil
	}
	switch set[0] {
	case "exact":
		return c.single(s.Exact, with(path, "exact"), newExact)
	case "prefix":
		return c.single(s.Prefix, with(path, "prefix"), newPrefix)
	case "suffix":
		return c.single(s.Suffix, with(path, "suffix"), newSuffix)
	case "all", "any":
		list := s.All
		if set[0] == "any" {
			list = s.Any
		}
		p := with(path, set[0])
		if len(list) == 0 {
			c.fail(p, fmt.Errorf("%s needs at least one nested filter", set[0]))
			return nil
		}
		compiled := c.compileList(list, p)
		if len(compiled) != len(list) {
			return nil
		}
		if set[0] == "any" {
			return newAny(compiled)
		}
		return newAll(compiled)
	case "not":
		inner := c.compile(s.Not, with(path, "not"))
		if inner == nil {
			return nil
		}
		return notFilter{inner: inner}
	default: // cesql
		p := with(path, "cesql")
		f, err := newCESQL(*s.CESQL)
		if err != nil {
			c.fail(p, err)
			return nil
		}
		return f
	}
}

// single compiles exact, prefix and suffix, which Knative requires to hold
// exactly one attribute with a non-empty name and value.
func (c *compiler) single(m map[string]string, path []string, build func(name, value string) Filter) Filter {
	if len(m) != 1 {
		c.fail(path, fmt.Errorf("needs exactly one attribute, found %d", len(m)))
		return nil
	}
	for name, value := range m {
		if err := validateAttributeName(name); err != nil {
			c.fail(with(path, name), err)
			return nil
		}
		if value == "" {
			c.fail(with(path, name), errors.New("the value must not be empty"))
			return nil
		}
		return build(name, value)
	}
	return nil // unreachable: len(m) == 1
}

// validateAttributeName applies Knative's rule for filter keys,
// ^[a-z][a-z0-9]*$ (pkg/apis/eventing/v1/trigger_validation.go).
func validateAttributeName(name string) error {
	ok := name != "" && name[0] >= 'a' && name[0] <= 'z'
	for i := 1; ok && i < len(name); i++ {
		ch := name[i]
		ok = ch >= 'a' && ch <= 'z' || ch >= '0' && ch <= '9'
	}
	if !ok {
		return fmt.Errorf("attribute name %q must start with a lower-case letter and contain only lower-case letters and digits", name)
	}
	return nil
}

// lookup returns the canonical string form of the context attribute or
// extension name of ev, and whether the event carries it. An attribute that
// is absent or empty is reported as missing: Knative's filters never match
// an unset optional attribute (an empty string is how the SDK reports one),
// and CloudEvents forbids empty required attributes.
//
// Values are rendered as the CloudEvents type system's canonical strings
// (types.Format): integers in decimal, booleans as true/false, timestamps in
// RFC 3339 (UTC), binary in base64. Knative compares the SDK's Go values and
// so never matches a non-string extension that an SDK client set typed;
// comparing canonical strings makes the same manifest behave the same
// whichever binding delivered the event.
func lookup(ev event.Event, name string) (string, bool) {
	if ev.Context == nil {
		return "", false
	}
	var s string
	switch name {
	case "specversion":
		s = ev.SpecVersion()
	case "id":
		s = ev.ID()
	case "source":
		s = ev.Source()
	case "type":
		s = ev.Type()
	case "subject":
		s = ev.Subject()
	case "time":
		t := ev.Time()
		if t.IsZero() {
			return "", false
		}
		s = t.UTC().Format(time.RFC3339Nano)
	case "dataschema", "schemaurl": // schemaurl: the CloudEvents 0.3 name, as in Knative
		s = ev.DataSchema()
	case "datacontenttype":
		s = ev.DataContentType()
	case "datamediatype": // Knative's derived attribute: datacontenttype without parameters
		s = ev.DataMediaType()
	default:
		v, ok := extension(ev, name)
		if !ok {
			return "", false
		}
		if str, isStr := v.(string); isStr {
			s = str
			break
		}
		f, err := types.Format(v)
		if err != nil {
			return "", false
		}
		s = f
	}
	return s, s != ""
}

// isExtensionName reports whether lookup treats name as an extension rather
// than a context attribute (or Knative's derived datamediatype).
func isExtensionName(name string) bool {
	switch name {
	case "specversion", "id", "source", "type", "subject", "time", "dataschema", "schemaurl", "datacontenttype", "datamediatype":
		return false
	}
	return true
}

// extension returns the extension name of ev without the copy of the whole
// map that event.Extensions makes. The SDK stores extension names in lower
// case, as filter keys are.
func extension(ev event.Event, name string) (any, bool) {
	var m map[string]any
	switch c := ev.Context.(type) {
	case *event.EventContextV1:
		m = c.Extensions
	case *event.EventContextV03:
		m = c.Extensions
	default:
		m = ev.Extensions()
	}
	v, ok := m[name]
	return v, ok && v != nil
}

// describe renders a filter for messages and debugging.
func describe(f Filter) string {
	if s, ok := f.(fmt.Stringer); ok {
		return s.String()
	}
	return fmt.Sprintf("%T", f)
}
