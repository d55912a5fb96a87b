package triggers

import (
	"errors"
	"fmt"
	"math"
	"time"
)

// BackoffPolicy selects how the wait between retries grows.
type BackoffPolicy int

// The backoff policies of Knative's delivery spec.
const (
	// Exponential doubles the wait with every retry: delay × 2^(n-1).
	Exponential BackoffPolicy = iota
	// Linear grows the wait by delay with every retry: delay × (n-1).
	Linear
)

// String returns the name the YAML uses.
func (b BackoffPolicy) String() string {
	switch b {
	case Exponential:
		return "exponential"
	case Linear:
		return "linear"
	default:
		return fmt.Sprintf("BackoffPolicy(%d)", int(b))
	}
}

// Defaults of a delivery policy. Knative's broker defaults (config-br-defaults)
// are retry 10, exponential, PT0.2S; weft applies them field by field.
const (
	DefaultRetry        = 10
	DefaultBackoff      = Exponential
	DefaultBackoffDelay = 200 * time.Millisecond
	// DefaultTimeout bounds each attempt. Knative sets no default (the HTTP
	// client's own, unbounded); weft needs a bound so that a hung subscriber
	// cannot hold an event forever. 30 s equals JetStream's default consumer
	// AckWait; a subscriber that needs longer sets spec.delivery.timeout.
	DefaultTimeout = 30 * time.Second
	// DefaultRetryAfterMax caps an honoured Retry-After when the trigger does
	// not set retryAfterMax, so one subscriber cannot park a delivery for
	// long; it equals DefaultTimeout.
	DefaultRetryAfterMax = 30 * time.Second
)

// Policy is a trigger's compiled delivery spec. The zero value retries
// nothing and has no timeout; policies come from Parse or DefaultPolicy, and
// are plain values, safe to copy and share.
type Policy struct {
	// Retry is how many times a failed delivery is retried; attempts are
	// 1 + Retry.
	Retry int
	// BackoffPolicy and BackoffDelay give the wait before each retry; see
	// Backoff.
	BackoffPolicy BackoffPolicy
	BackoffDelay  time.Duration
	// Timeout bounds each attempt (never zero in a parsed policy).
	Timeout time.Duration
	// RetryAfterMax caps the Retry-After a subscriber asks for on 429 and
	// 503; 0 ignores Retry-After (Knative's "PT0S" opt-out).
	RetryAfterMax time.Duration
	// DeadLetterSink receives events whose attempts are spent; nil means the
	// node's DLQ stream weft.dlq.<trigger>.
	DeadLetterSink *Destination
}

// DefaultPolicy returns the policy of a trigger without a delivery spec.
//
// Deviation from Knative: Knative takes a trigger's delivery spec as a whole
// or the broker's instead, so delivery: {retry: 3} there means zero backoff.
// weft has no Broker resource, so each absent field takes its default here.
// Knative honours Retry-After only when retryAfterMax is set (an alpha
// feature); weft honours it by default, capped at DefaultRetryAfterMax, as
// Knative plans for GA.
func DefaultPolicy() Policy {
	return Policy{
		Retry:         DefaultRetry,
		BackoffPolicy: DefaultBackoff,
		BackoffDelay:  DefaultBackoffDelay,
		Timeout:       DefaultTimeout,
		RetryAfterMax: DefaultRetryAfterMax,
	}
}

// Attempts returns the number of delivery attempts: 1 + Retry.
func (p Policy) Attempts() int {
	if p.Retry < 0 {
		return 1
	}
	if p.Retry == math.MaxInt {
		return math.MaxInt
	}
	return 1 + p.Retry
}

// Backoff returns the wait before retry n (n = 1 is the first retry, the
// second attempt). It follows Knative's kncloudevents.RetryConfigFromDeliverySpec
// as driven by go-retryablehttp, which numbers the waits from 0:
// linear waits delay × (n-1), so the first retry is immediate;
// exponential waits delay × 2^(n-1): delay, 2×delay, 4×delay… Knative's API
// docs write these as delay × retries and delay × 2^retries with retries
// counted from 0. The result saturates at the largest time.Duration instead
// of overflowing; n < 1 gives 0.
func (p Policy) Backoff(n int) time.Duration {
	if n < 1 || p.BackoffDelay <= 0 {
		return 0
	}
	k := n - 1
	switch p.BackoffPolicy {
	case Linear:
		if int64(k) > math.MaxInt64/int64(p.BackoffDelay) {
			return math.MaxInt64
		}
		return p.BackoffDelay * time.Duration(k)
	default:
		if k >= 63 || p.BackoffDelay > math.MaxInt64>>k {
			return math.MaxInt64
		}
		return p.BackoffDelay << k
	}
}

// RetryDelay returns the wait before retry n after an attempt that ended with
// HTTP status (0 when there was no response) and the subscriber's
// Retry-After (0 when absent). As in Knative's generateBackoffFn, a
// Retry-After counts only on 429 and 503, is cut to RetryAfterMax (and
// ignored when that is 0), and the wait is the longer of it and Backoff(n).
func (p Policy) RetryDelay(n, status int, retryAfter time.Duration) time.Duration {
	d := p.Backoff(n)
	if status != 429 && status != 503 { // Too Many Requests, Service Unavailable
		return d
	}
	if p.RetryAfterMax <= 0 || retryAfter <= 0 {
		return d
	}
	ra := min(retryAfter, p.RetryAfterMax)
	return max(d, ra)
}

// Retryable reports whether a delivery that ended with HTTP status should be
// retried, as Knative's kncloudevents.SelectiveRetry decides: 5xx, 404
// (a subscriber still starting), 408, 409 and 429 are; 1xx, 2xx, 3xx and the
// other 4xx are not. status ≤ 0 stands for no response at all (a network
// error or timeout), which is retried.
func Retryable(status int) bool {
	switch {
	case status <= 0:
		return true
	case status >= 500:
		return true
	}
	switch status {
	case 404, 408, 409, 429: // Not Found, Request Timeout, Conflict, Too Many Requests
		return true
	}
	return false
}

// deliverySpec is spec.delivery as the YAML spells it.
type deliverySpec struct {
	Retry          *int64           `json:"retry,omitempty"`
	BackoffPolicy  *string          `json:"backoffPolicy,omitempty"`
	BackoffDelay   *string          `json:"backoffDelay,omitempty"`
	Timeout        *string          `json:"timeout,omitempty"`
	RetryAfterMax  *string          `json:"retryAfterMax,omitempty"`
	DeadLetterSink *destinationSpec `json:"deadLetterSink,omitempty"`
}

// compilePolicy applies the defaults to ds (nil for no delivery spec).
func (c *compiler) compilePolicy(ds *deliverySpec) Policy {
	p := DefaultPolicy()
	if ds == nil {
		return p
	}
	path := []string{"spec", "delivery"}
	if ds.Retry != nil {
		if *ds.Retry < 0 || *ds.Retry > math.MaxInt32 {
			c.fail(with(path, "retry"), fmt.Errorf("must be between 0 and %d, got %d", math.MaxInt32, *ds.Retry))
		} else {
			p.Retry = int(*ds.Retry)
		}
	}
	if ds.BackoffPolicy != nil {
		switch *ds.BackoffPolicy {
		case "linear":
			p.BackoffPolicy = Linear
		case "exponential":
			p.BackoffPolicy = Exponential
		default:
			c.fail(with(path, "backoffPolicy"), fmt.Errorf("must be linear or exponential, got %q", *ds.BackoffPolicy))
		}
	}
	durations := []struct {
		field   string
		src     *string
		dst     *time.Duration
		nonZero bool // Knative refuses a zero timeout
	}{
		{"backoffDelay", ds.BackoffDelay, &p.BackoffDelay, false},
		{"timeout", ds.Timeout, &p.Timeout, true},
		{"retryAfterMax", ds.RetryAfterMax, &p.RetryAfterMax, false},
	}
	for _, f := range durations {
		if f.src == nil {
			continue
		}
		d, err := ParseDuration(*f.src)
		switch {
		case err != nil:
			c.fail(with(path, f.field), err)
		case f.nonZero && d == 0:
			c.fail(with(path, f.field), errors.New("must be greater than zero"))
		default:
			*f.dst = d
		}
	}
	if ds.DeadLetterSink != nil {
		if d, ok := c.compileDestination(ds.DeadLetterSink, with(path, "deadLetterSink")); ok {
			p.DeadLetterSink = &d
		}
	}
	return p
}
