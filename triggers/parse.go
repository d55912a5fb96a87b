package triggers

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"sort"

	"github.com/cloudevents/sdk-go/v2/event"

	"github.com/weft-dev/weft/internal/resource"
	"github.com/weft-dev/weft/schemas"
)

// APIVersion and Kind identify the manifests Parse accepts.
const (
	APIVersion = "eventing.knative.dev/v1"
	Kind       = "Trigger"
)

// DefaultBroker is the broker of a trigger without spec.broker, and of events
// published to POST /.
const DefaultBroker = "default"

// Trigger is a compiled Knative Trigger. Triggers come from Parse and are
// immutable afterwards, so one may be shared between goroutines; the zero
// value is not useful.
type Trigger struct {
	// Name is metadata.name, unique among triggers.
	Name string
	// Broker is spec.broker, DefaultBroker when absent.
	Broker string
	// Filter decides which events the trigger delivers. Parse always sets it
	// (to a filter that passes everything when the manifest has none); Match
	// and Index treat nil the same way.
	Filter Filter
	// Subscriber receives the matching events.
	Subscriber Destination
	// Delivery is the retry, timeout and dead-letter policy.
	Delivery Policy
}

// Match reports whether ev passes the trigger's filter (a nil Filter passes
// everything). It does not look at the broker; see Index.MatchBroker.
func (t *Trigger) Match(ev event.Event) bool { return t.Filter == nil || t.Filter.Match(ev) }

// spec is spec as the YAML spells it.
type spec struct {
	Broker     string            `json:"broker,omitempty"`
	Filter     *legacyFilterSpec `json:"filter,omitempty"`
	Filters    []filterSpec      `json:"filters,omitempty"`
	Subscriber *destinationSpec  `json:"subscriber,omitempty"`
	Delivery   *deliverySpec     `json:"delivery,omitempty"`
}

// Parse compiles one decoded manifest into a Trigger. It checks apiVersion
// and kind, validates the document against schemas' Trigger schema, then
// compiles the filters, the subscriber and the delivery policy.
//
// Every problem is a *resource.FieldError naming obj's file, the line and
// the field (spec.filters[0].cesql). Several problems are joined with
// errors.Join in the order of their lines, so errors.As finds the first. A
// trigger with any bad filter is refused as a whole: no filter is ever
// skipped.
func Parse(obj resource.Object) (*Trigger, error) {
	if obj.APIVersion != APIVersion {
		return nil, obj.FieldError([]string{"apiVersion"}, fmt.Errorf("a Trigger needs apiVersion %s, got %q", APIVersion, obj.APIVersion))
	}
	if obj.Kind != Kind {
		return nil, obj.FieldError([]string{"kind"}, fmt.Errorf("expected kind %s, got %q", Kind, obj.Kind))
	}
	if vs := schemas.Validate(Kind, obj.JSON); len(vs) > 0 {
		errs := make([]*resource.FieldError, len(vs))
		for i, v := range vs {
			errs[i] = obj.FieldError(v.Path, errors.New(v.Message))
		}
		return nil, joinFieldErrors(errs)
	}
	var doc struct {
		Spec json.RawMessage `json:"spec"`
	}
	if err := json.Unmarshal(obj.JSON, &doc); err != nil {
		return nil, obj.FieldError(nil, fmt.Errorf("decode: %w", err))
	}
	var sp spec
	dec := json.NewDecoder(bytes.NewReader(doc.Spec))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&sp); err != nil {
		// The schema admits only what the Go types hold; reaching this means
		// the two drifted apart, which TestSchemaMatchesTypes guards against.
		return nil, obj.FieldError([]string{"spec"}, fmt.Errorf("decode: %w", err))
	}
	var c compiler
	t := &Trigger{
		Name:   obj.Name,
		Broker: sp.Broker,
		Filter: c.compileFilters(sp.Filters, sp.Filter),
	}
	if t.Broker == "" {
		t.Broker = DefaultBroker
	}
	if sp.Subscriber == nil {
		c.fail([]string{"spec", "subscriber"}, errors.New("required"))
	} else if d, ok := c.compileDestination(sp.Subscriber, []string{"spec", "subscriber"}); ok {
		t.Subscriber = d
	}
	t.Delivery = c.compilePolicy(sp.Delivery)
	if len(c.errs) > 0 {
		errs := make([]*resource.FieldError, len(c.errs))
		for i, e := range c.errs {
			errs[i] = obj.FieldError(e.path, e.err)
		}
		return nil, joinFieldErrors(errs)
	}
	return t, nil
}

// joinFieldErrors orders errs by position (stable for equal positions) and
// joins them; a single error is returned as is.
func joinFieldErrors(errs []*resource.FieldError) error {
	sort.SliceStable(errs, func(i, j int) bool {
		if errs[i].Line != errs[j].Line {
			return errs[i].Line < errs[j].Line
		}
		return errs[i].Column < errs[j].Column
	})
	if len(errs) == 1 {
		return errs[0]
	}
	out := make([]error, len(errs))
	for i, e := range errs {
		out[i] = e
	}
	return errors.Join(out...)
}
