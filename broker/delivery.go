package broker

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"

	"github.com/weft-dev/weft/internal/ceclient"
	"github.com/weft-dev/weft/triggers"
)

// Middleware wraps a Deliverer. A trigger's chain is
// Retry(policy)(Timeout(policy.Timeout)(deliverer)): the timeout bounds each
// attempt, the retry loop spans them; dead-lettering happens in the runner,
// which owns the JetStream message.
type Middleware func(Deliverer) Deliverer

// Timeout bounds each attempt; the subscriber sees the deadline through ctx.
// A zero d leaves ctx as it is.
func Timeout(d time.Duration) Middleware {
	return func(next Deliverer) Deliverer {
		if d <= 0 {
			return next
		}
		return DelivererFunc(func(ctx context.Context, t string, ev event.Event) (*event.Event, error) {
			ctx, cancel := context.WithTimeout(ctx, d)
			defer cancel()
			return next.Deliver(ctx, t, ev)
		})
	}
}

// Attempt is one delivery attempt, as kept in a dead letter's history.
type Attempt struct {
	Time time.Time `json:"time"`
	// Status is the subscriber's HTTP status, 0 when none came back.
	Status int `json:"status,omitempty"`
	// Error describes a failure; empty on success.
	Error     string  `json:"error,omitempty"`
	LatencyMS float64 `json:"latencyMs"`
}

// Retry runs attempts per the Knative delivery policy p: up to p.Attempts(),
// waiting p.RetryDelay between them (a 429/503's Retry-After counts, capped
// by retryAfterMax, and so does an open circuit's time to its next probe),
// retrying network errors, timeouts and the statuses Knative
// retries. record, if not nil, sees every attempt; when it returns an error
// after a failed attempt, no further attempt is made and Retry returns that
// error. It stops early when ctx ends and returns ctx's error then.
func Retry(p triggers.Policy, record func(Attempt) error) Middleware {
	return retryFrom(p, 1, record)
}

// retryFrom is Retry for a delivery whose first attempts were made elsewhere
// (by the dispatcher, see direct.go): its first attempt is number first, so
// the attempt limit and the backoff continue where those left off.
func retryFrom(p triggers.Policy, first int, record func(Attempt) error) Middleware {
	return func(next Deliverer) Deliverer {
		return DelivererFunc(func(ctx context.Context, t string, ev event.Event) (*event.Event, error) {
			for n := first; ; n++ {
				start := time.Now()
				reply, err := next.Deliver(ctx, t, ev)
				if record != nil {
					if rerr := record(attemptOf(start, err)); rerr != nil && err != nil {
						return nil, rerr
					}
				}
				if err == nil {
					return reply, nil
				}
				if ctx.Err() != nil {
					return nil, ctx.Err()
				}
				wait, again := retryWait(p, n, err)
				if !again {
					return nil, err
				}
				timer := time.NewTimer(wait)
				select {
				case <-timer.C:
				case <-ctx.Done():
					timer.Stop()
					return nil, ctx.Err()
				}
			}
		})
	}
}

// retryWait reports whether failed attempt n (counted from 1) is followed by
// another under p, and how long to wait before it: p's backoff, or a 429/503's
// Retry-After capped by retryAfterMax, or an open circuit's time to its next
// probe under the same cap.
func retryWait(p triggers.Policy, n int, err error) (wait time.Duration, again bool) {
	if n >= p.Attempts() || !retryable(err) {
		return 0, false
	}
	wait = p.Backoff(n)
	if se, ok := ceclient.IsStatus(err); ok {
		wait = p.RetryDelay(n, se.Code, se.RetryAfter)
	}
	var open *CircuitOpenError
	if errors.As(err, &open) {
		// Like a Retry-After: the next attempt can be the probe instead of
		// another refusal.
		wait = max(wait, min(time.Until(open.Until), p.RetryAfterMax))
	}
	return wait, true
}

func attemptOf(start time.Time, err error) Attempt {
	a := Attempt{Time: start.UTC(), LatencyMS: float64(time.Since(start).Microseconds()) / 1000}
	if err == nil {
		a.Status = http.StatusOK
		return a
	}
	a.Error = err.Error()
	if se, ok := ceclient.IsStatus(err); ok {
		a.Status = se.Code
	}
	return a
}

// retryable follows Knative: transport errors and timeouts are retried, and
// of HTTP answers only those triggers.Retryable names; a malformed reply event
// is the subscriber's bug and is not.
func retryable(err error) bool {
	if se, ok := ceclient.IsStatus(err); ok {
		return triggers.Retryable(se.Code)
	}
	var re *ceclient.ReplyError
	return !errors.As(err, &re)
}
