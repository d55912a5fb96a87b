// Package ceclient sends one CloudEvent to an HTTP subscriber in binary mode
// and reads the reply, the way a Knative broker's dispatcher does. Workers (to
// reach a function instance) and the router (to reach a URL) share it, so both
// report failures with the same *StatusError that the broker's retry policy
// reads.
package ceclient

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/cloudevents/sdk-go/v2/binding"
	"github.com/cloudevents/sdk-go/v2/event"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
)

// MaxErrorBody is how much of a failed response's body a StatusError keeps:
// Knative's knativeerrordata holds at most 1024 bytes.
const MaxErrorBody = 1024

// maxReplyBody bounds a reply read into memory; larger replies are refused.
const maxReplyBody = 4 << 20

// StatusError is a subscriber's non-2xx answer.
type StatusError struct {
	Code int
	// Body is the start of the response body, at most MaxErrorBody bytes.
	Body []byte
	// RetryAfter is the delay the subscriber asked for with Retry-After on a
	// 429 or 503, zero when absent.
	RetryAfter time.Duration
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("subscriber answered %d %s", e.Code, http.StatusText(e.Code))
}

// Send POSTs ev to url in binary content mode and returns the reply event, or
// nil when the 2xx response carries no CloudEvent. A non-2xx answer is a
// *StatusError; a transport failure is client.Do's *url.Error.
func Send(ctx context.Context, client *http.Client, url string, ev event.Event) (*event.Event, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, nil)
	if err != nil {
		return nil, fmt.Errorf("build request to %s: %w", url, err)
	}
	if err := cehttp.WriteRequest(ctx, binding.ToMessage(&ev), req); err != nil {
		return nil, fmt.Errorf("encode event for %s: %w", url, err)
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err // a *url.Error: it names the method and url already
	}
	defer resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, MaxErrorBody))
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxReplyBody)) // let the connection be reused
		return nil, &StatusError{Code: resp.StatusCode, Body: body, RetryAfter: retryAfter(resp.Header.Get("Retry-After"))}
	}
	resp.Body = http.MaxBytesReader(nil, resp.Body, maxReplyBody)
	msg := cehttp.NewMessageFromHttpResponse(resp)
	defer msg.Finish(nil)
	if msg.ReadEncoding() == binding.EncodingUnknown {
		_, _ = io.Copy(io.Discard, resp.Body)
		return nil, nil
	}
	reply, err := binding.ToEvent(ctx, msg)
	if err != nil {
		return nil, &ReplyError{Err: err}
	}
	if err := reply.Validate(); err != nil {
		return nil, &ReplyError{Err: err}
	}
	return reply, nil
}

// ReplyError is a 2xx answer whose body claimed to be a CloudEvent but was not
// a valid one. Knative treats this as a failed delivery.
type ReplyError struct{ Err error }

func (e *ReplyError) Error() string { return "invalid reply event: " + e.Err.Error() }
func (e *ReplyError) Unwrap() error { return e.Err }

// retryAfter parses a Retry-After header: delay-seconds or an HTTP date.
func retryAfter(v string) time.Duration {
	if v == "" {
		return 0
	}
	if s, err := strconv.Atoi(v); err == nil && s >= 0 {
		return time.Duration(s) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		if d := time.Until(t); d > 0 {
			return d
		}
	}
	return 0
}

// IsStatus reports whether err is a *StatusError and returns it.
func IsStatus(err error) (*StatusError, bool) {
	var se *StatusError
	ok := errors.As(err, &se)
	return se, ok
}
