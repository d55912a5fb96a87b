package broker

import (
	"context"

	"github.com/cloudevents/sdk-go/v2/event"
)

// Deliverer sends one event to one subscriber and returns its reply, if any.
// target is "function:NAME[/path]" for a Function subscriber or an absolute
// URL. workers.Pool (functions) and router.Client (URLs) implement it; broker
// imports neither. Implementations must be safe for concurrent use and report
// a subscriber's non-2xx answer as *ceclient.StatusError.
type Deliverer interface {
	Deliver(ctx context.Context, target string, ev event.Event) (*event.Event, error)
}

// DelivererFunc adapts a function to a Deliverer, as http.HandlerFunc does.
type DelivererFunc func(context.Context, string, event.Event) (*event.Event, error)

// Deliver calls f.
func (f DelivererFunc) Deliver(ctx context.Context, t string, ev event.Event) (*event.Event, error) {
	return f(ctx, t, ev)
}
