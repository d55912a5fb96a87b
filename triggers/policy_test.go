package triggers

import (
	"math"
	"testing"
	"time"
)

func TestBackoff(t *testing.T) {
	t.Parallel()
	const d = 200 * time.Millisecond
	exp := Policy{BackoffPolicy: Exponential, BackoffDelay: d}
	lin := Policy{BackoffPolicy: Linear, BackoffDelay: d}
	// Knative's waits, numbered by retry n from 1: go-retryablehttp passes
	// attemptNum n-1 to RetryConfig.Backoff, which computes delay×2^attemptNum
	// or delay×attemptNum.
	tests := []struct {
		p    Policy
		n    int
		want time.Duration
	}{
		{exp, 0, 0},
		{exp, 1, d},
		{exp, 2, 2 * d},
		{exp, 3, 4 * d},
		{exp, 10, 512 * d},
		{lin, 0, 0},
		{lin, 1, 0},
		{lin, 2, d},
		{lin, 3, 2 * d},
		{lin, 10, 9 * d},
		{exp, 64, math.MaxInt64},
		{exp, 1000, math.MaxInt64},
		{Policy{BackoffPolicy: Exponential, BackoffDelay: time.Hour}, 40, math.MaxInt64},
		{Policy{BackoffPolicy: Linear, BackoffDelay: time.Hour}, math.MaxInt, math.MaxInt64},
		{Policy{BackoffPolicy: Exponential}, 5, 0},
		{Policy{BackoffPolicy: Linear, BackoffDelay: -time.Second}, 5, 0},
	}
	for _, tc := range tests {
		if got := tc.p.Backoff(tc.n); got != tc.want {
			t.Errorf("%v delay %v: Backoff(%d) = %v, want %v", tc.p.BackoffPolicy, tc.p.BackoffDelay, tc.n, got, tc.want)
		}
	}
}

func TestBackoffIsMonotonic(t *testing.T) {
	t.Parallel()
	for _, bp := range []BackoffPolicy{Linear, Exponential} {
		p := Policy{BackoffPolicy: bp, BackoffDelay: 3 * time.Millisecond}
		prev := time.Duration(0)
		for n := 1; n < 200; n++ {
			got := p.Backoff(n)
			if got < prev {
				t.Fatalf("%v: Backoff(%d) = %v < Backoff(%d) = %v", bp, n, got, n-1, prev)
			}
			prev = got
		}
	}
}

func TestAttempts(t *testing.T) {
	t.Parallel()
	for retry, want := range map[int]int{0: 1, 1: 2, 10: 11, -3: 1, math.MaxInt: math.MaxInt} {
		if got := (Policy{Retry: retry}).Attempts(); got != want {
			t.Errorf("Retry %d: Attempts() = %d, want %d", retry, got, want)
		}
	}
}

func TestRetryable(t *testing.T) {
	t.Parallel()
	retried := []int{-1, 0, 404, 408, 409, 429, 500, 502, 503, 504, 599}
	notRetried := []int{100, 200, 202, 204, 300, 301, 302, 304, 307, 400, 401, 403, 405, 410, 413, 415, 422, 431}
	for _, s := range retried {
		if !Retryable(s) {
			t.Errorf("Retryable(%d) = false, want true", s)
		}
	}
	for _, s := range notRetried {
		if Retryable(s) {
			t.Errorf("Retryable(%d) = true, want false", s)
		}
	}
}

func TestRetryDelay(t *testing.T) {
	t.Parallel()
	p := Policy{BackoffPolicy: Exponential, BackoffDelay: time.Second, RetryAfterMax: 10 * time.Second}
	tests := []struct {
		name       string
		p          Policy
		n, status  int
		retryAfter time.Duration
		want       time.Duration
	}{
		{"no Retry-After", p, 1, 503, 0, time.Second},
		{"Retry-After longer than backoff", p, 1, 429, 5 * time.Second, 5 * time.Second},
		{"Retry-After on 503", p, 1, 503, 5 * time.Second, 5 * time.Second},
		{"Retry-After capped", p, 1, 429, time.Hour, 10 * time.Second},
		{"backoff longer than Retry-After", p, 4, 429, 5 * time.Second, 8 * time.Second},
		{"ignored on 500", p, 1, 500, 5 * time.Second, time.Second},
		{"ignored on 404", p, 1, 404, 5 * time.Second, time.Second},
		{"ignored without a response", p, 1, 0, 5 * time.Second, time.Second},
		{"PT0S opts out", Policy{BackoffPolicy: Exponential, BackoffDelay: time.Second}, 1, 429, 5 * time.Second, time.Second},
		{"default cap", DefaultPolicy(), 1, 429, time.Hour, DefaultRetryAfterMax},
	}
	for _, tc := range tests {
		if got := tc.p.RetryDelay(tc.n, tc.status, tc.retryAfter); got != tc.want {
			t.Errorf("%s: RetryDelay(%d, %d, %v) = %v, want %v", tc.name, tc.n, tc.status, tc.retryAfter, got, tc.want)
		}
	}
}

func TestDefaultPolicy(t *testing.T) {
	t.Parallel()
	want := Policy{Retry: 10, BackoffPolicy: Exponential, BackoffDelay: 200 * time.Millisecond,
		Timeout: 30 * time.Second, RetryAfterMax: 30 * time.Second}
	if got := DefaultPolicy(); got != want {
		t.Errorf("DefaultPolicy() = %+v, want %+v", got, want)
	}
	if got := mustParse(t, "broker: default").Delivery; got != want {
		t.Errorf("no delivery: %+v, want %+v", got, want)
	}
}

func TestParsePolicy(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		spec string
		want Policy
	}{{
		name: "every field",
		spec: "delivery:\n" +
			"  retry: 5\n" +
			"  backoffPolicy: linear\n" +
			"  backoffDelay: PT1S\n" +
			"  timeout: PT10S\n" +
			"  retryAfterMax: PT2M\n" +
			"  deadLetterSink: {uri: \"http://127.0.0.1:9999/dead\"}\n",
		want: Policy{Retry: 5, BackoffPolicy: Linear, BackoffDelay: time.Second, Timeout: 10 * time.Second,
			RetryAfterMax: 2 * time.Minute, DeadLetterSink: &Destination{URI: "http://127.0.0.1:9999/dead"}},
	}, {
		name: "absent fields take their defaults one by one",
		spec: "delivery: {retry: 0}",
		want: Policy{Retry: 0, BackoffPolicy: Exponential, BackoffDelay: DefaultBackoffDelay, Timeout: DefaultTimeout, RetryAfterMax: DefaultRetryAfterMax},
	}, {
		name: "zero backoff and Retry-After opt-out",
		spec: "delivery: {backoffDelay: PT0S, retryAfterMax: PT0S}",
		want: Policy{Retry: DefaultRetry, BackoffPolicy: Exponential, Timeout: DefaultTimeout},
	}, {
		name: "dead-letter sink to a function path",
		spec: "delivery: {deadLetterSink: {ref: {apiVersion: weft.dev/v1, kind: Function, name: dlq}, uri: /failed}}",
		want: func() Policy {
			p := DefaultPolicy()
			p.DeadLetterSink = &Destination{FunctionName: "dlq", URI: "/failed"}
			return p
		}(),
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got := mustParse(t, tc.spec).Delivery
			gotDLS, wantDLS := got.DeadLetterSink, tc.want.DeadLetterSink
			got.DeadLetterSink, tc.want.DeadLetterSink = nil, nil
			if got != tc.want {
				t.Errorf("Delivery = %+v, want %+v", got, tc.want)
			}
			if (gotDLS == nil) != (wantDLS == nil) || gotDLS != nil && *gotDLS != *wantDLS {
				t.Errorf("DeadLetterSink = %v, want %v", gotDLS, wantDLS)
			}
		})
	}
}

func TestBackoffPolicyString(t *testing.T) {
	t.Parallel()
	for p, want := range map[BackoffPolicy]string{Linear: "linear", Exponential: "exponential", 7: "BackoffPolicy(7)"} {
		if got := p.String(); got != want {
			t.Errorf("String() = %q, want %q", got, want)
		}
	}
}
