package triggers

import (
	"github.com/cloudevents/sdk-go/v2/event"
)

// notFilter passes when its nested filter fails (Knative's not_filter.go).
// Since weft refuses empty filters, the nested filter always decides, and
// Knative's third outcome (no filter at all) cannot arise.
type notFilter struct {
	inner Filter
}

func (f notFilter) Match(ev event.Event) bool { return !f.inner.Match(ev) }

func (f notFilter) String() string { return "not(" + describe(f.inner) + ")" }
