package router

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

func lbBudget(t *testing.T, cfg BudgetConfig, clk Clock) *Budget {
	t.Helper()
	b, err := NewBudget(cfg, clk)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// lbWithdrawAll withdraws until refused and returns how many were allowed.
func lbWithdrawAll(b *Budget) int {
	n := 0
	for b.Withdraw() {
		n++
	}
	return n
}

func TestBudgetAllowsPercentPlusFloor(t *testing.T) {
	clk := newLBClock()
	b := lbBudget(t, BudgetConfig{}, clk) // 20 %, 10/s, 10 s
	for range 100 {
		b.Deposit()
	}
	if got := b.Remaining(); got != 120 {
		t.Errorf("Remaining after 100 requests = %d, want 20 + 100", got)
	}
	if got := lbWithdrawAll(b); got != 120 {
		t.Errorf("100 requests allowed %d retries, want 20%% of them + 10/s × 10s = 120", got)
	}
	if b.Withdraw() || b.Remaining() != 0 {
		t.Error("a retry beyond the budget was allowed")
	}
	// Each new request earns a fifth of a retry.
	for range 5 {
		b.Deposit()
	}
	if got := lbWithdrawAll(b); got != 1 {
		t.Errorf("5 more requests allowed %d retries, want 1", got)
	}
}

func TestBudgetFloorWithoutTraffic(t *testing.T) {
	clk := newLBClock()
	b := lbBudget(t, BudgetConfig{}, clk)
	if got := lbWithdrawAll(b); got != 100 {
		t.Errorf("with no requests %d retries allowed, want 10/s × 10 s = 100", got)
	}
	onlyPercent := lbBudget(t, BudgetConfig{MinPerSecond: -1}, clk)
	for range 4 {
		onlyPercent.Deposit()
	}
	if onlyPercent.Withdraw() {
		t.Error("no floor: 4 requests allowed a retry at 20 %")
	}
	onlyPercent.Deposit()
	if !onlyPercent.Withdraw() {
		t.Error("no floor: 5 requests allowed no retry at 20 %")
	}
	none := lbBudget(t, BudgetConfig{Percent: -1, MinPerSecond: -1}, clk)
	none.Deposit()
	if none.Withdraw() {
		t.Error("a budget with no percent and no floor allowed a retry")
	}
}

func TestBudgetRefillsAsWindowSlides(t *testing.T) {
	clk := newLBClock()
	b := lbBudget(t, BudgetConfig{}, clk)
	for range 50 {
		b.Deposit()
	}
	if got := lbWithdrawAll(b); got != 110 {
		t.Fatalf("allowed %d, want 10 + 100", got)
	}
	clk.Advance(5 * time.Second)
	if b.Withdraw() {
		t.Fatal("refilled after half the window")
	}
	for range 50 { // new traffic counts at once
		b.Deposit()
	}
	if got := lbWithdrawAll(b); got != 10 {
		t.Errorf("50 more requests allowed %d retries, want 10", got)
	}
	// The first batch of requests and retries leaves the window: only the
	// second batch's share and the floor remain.
	clk.Advance(5 * time.Second)
	if got := b.Remaining(); got != 10+100-10 {
		t.Errorf("Remaining once the first half slid out = %d, want 10 + 100 - 10", got)
	}
	clk.Advance(10 * time.Second)
	if got := lbWithdrawAll(b); got != 100 {
		t.Errorf("after a quiet window %d retries allowed, want the floor, 100", got)
	}
}

func TestBudgetConcurrentUse(t *testing.T) {
	clk := newLBClock()
	b := lbBudget(t, BudgetConfig{}, clk)
	var allowed atomic.Int64
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 500 {
				b.Deposit()
				if b.Withdraw() {
					allowed.Add(1)
				}
				if b.Withdraw() {
					allowed.Add(1)
				}
			}
		})
	}
	wg.Wait()
	if got := allowed.Load(); got != 4000/5+100 {
		t.Errorf("%d retries allowed for 4000 requests, want exactly 900", got)
	}
}

func TestBudgetConfigValidate(t *testing.T) {
	for name, cfg := range map[string]BudgetConfig{
		"window too short": {Window: 500 * time.Millisecond},
		"window too long":  {Window: 61 * time.Second},
		"percent too high": {Percent: 1001},
	} {
		if _, err := NewBudget(cfg, nil); err == nil {
			t.Errorf("%s: NewBudget accepted %+v", name, cfg)
		}
	}
}

func TestRetryPolicyDefaultsAndValidate(t *testing.T) {
	got := RetryPolicy{}.withDefaults()
	if want := (RetryPolicy{Attempts: 3, BudgetPercent: 20}); got != want {
		t.Errorf("defaults = %+v, want %+v", got, want)
	}
	for name, p := range map[string]RetryPolicy{
		"negative attempts": {Attempts: -1},
		"negative per try":  {PerTryTimeout: -time.Second},
		"negative timeout":  {Timeout: -time.Second},
		"budget above 1000": {BudgetPercent: 1001},
	} {
		if err := p.Validate(); err == nil {
			t.Errorf("%s: Validate(%+v) = nil", name, p)
		}
	}
	if err := (RetryPolicy{Attempts: 3, PerTryTimeout: 2 * time.Second, Timeout: 10 * time.Second}).Validate(); err != nil {
		t.Errorf("DESIGN's example: %v", err)
	}
}

func TestRetryableTable(t *testing.T) {
	refused := &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}
	reset := &net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("read", syscall.ECONNRESET)}
	perTry := fmt.Errorf("%w: %w", ErrPerTryTimeout, context.DeadlineExceeded)
	headerTimeout := &net.OpError{Op: "read", Err: os.ErrDeadlineExceeded} // a net.Error with Timeout()
	on5xx := RetryPolicy{RetryOn5xx: true}

	for _, tc := range []struct {
		name   string
		method string
		status int
		err    error
		p      RetryPolicy
		want   bool
	}{
		{"GET 503", "GET", 503, nil, RetryPolicy{}, true},
		{"GET 500", "GET", 500, nil, RetryPolicy{}, true},
		{"empty method is GET", "", 502, nil, RetryPolicy{}, true},
		{"HEAD 504", "HEAD", 504, nil, RetryPolicy{}, true},
		{"OPTIONS 503", "OPTIONS", 503, nil, RetryPolicy{}, true},
		{"PUT 503", "PUT", 503, nil, RetryPolicy{}, true},
		{"DELETE 503", "DELETE", 503, nil, RetryPolicy{}, true},
		{"TRACE 503", "TRACE", 503, nil, RetryPolicy{}, true},
		{"POST 503", "POST", 503, nil, RetryPolicy{}, false},
		{"PATCH 503", "PATCH", 503, nil, RetryPolicy{}, false},
		{"POST 503 RetryOn5xx", "POST", 503, nil, on5xx, true},
		{"PATCH 500 RetryOn5xx", "PATCH", 500, nil, on5xx, true},
		{"lower-case get is not GET", "get", 503, nil, RetryPolicy{}, false},
		{"GET 200", "GET", 200, nil, RetryPolicy{}, false},
		{"GET 404", "GET", 404, nil, on5xx, false},
		{"GET 429", "GET", 429, nil, RetryPolicy{}, false},
		{"GET 499", "GET", 499, nil, RetryPolicy{}, false},
		{"GET 600", "GET", 600, nil, RetryPolicy{}, false},
		{"POST refused", "POST", 0, refused, RetryPolicy{}, true},
		{"POST refused, wrapped", "POST", 0, fmt.Errorf("attempt 1: %w", refused), RetryPolicy{}, true},
		{"POST reset", "POST", 0, reset, RetryPolicy{}, true},
		{"POST EOF", "POST", 0, io.EOF, RetryPolicy{}, true},
		{"POST unexpected EOF", "POST", 0, io.ErrUnexpectedEOF, RetryPolicy{}, false},
		{"GET per-try timeout", "GET", 0, perTry, RetryPolicy{}, true},
		{"POST per-try timeout", "POST", 0, perTry, RetryPolicy{}, false},
		{"POST per-try timeout RetryOn5xx", "POST", 0, perTry, on5xx, false},
		{"GET header timeout", "GET", 0, headerTimeout, RetryPolicy{}, true},
		{"POST header timeout", "POST", 0, headerTimeout, RetryPolicy{}, false},
		{"GET overall deadline", "GET", 0, context.DeadlineExceeded, RetryPolicy{}, false},
		{"GET cancelled", "GET", 0, context.Canceled, RetryPolicy{}, false},
		{"GET refused but cancelled", "GET", 0, errors.Join(refused, context.Canceled), RetryPolicy{}, false},
		{"GET body not replayable", "GET", 0, fmt.Errorf("%w: %w", ErrBodyNotReplayable, refused), RetryPolicy{}, false},
		{"GET other error", "GET", 0, errors.New("tls: bad certificate"), RetryPolicy{}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if got := Retryable(tc.method, tc.status, tc.err, tc.p); got != tc.want {
				t.Errorf("Retryable(%q, %d, %v, %+v) = %v, want %v", tc.method, tc.status, tc.err, tc.p, got, tc.want)
			}
		})
	}
}

func TestRetryableRequestNeedsReplayableBody(t *testing.T) {
	buffered, err := http.NewRequest("GET", "http://svc/", strings.NewReader("x")) // sets GetBody
	if err != nil {
		t.Fatal(err)
	}
	streamed, err := http.NewRequest("PUT", "http://svc/", io.NopCloser(strings.NewReader("x")))
	if err != nil {
		t.Fatal(err)
	}
	bodiless, err := http.NewRequest("DELETE", "http://svc/", nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		req  *http.Request
		want bool
	}{{buffered, true}, {streamed, false}, {bodiless, true}} {
		if got := RetryableRequest(tc.req, 503, nil, RetryPolicy{}); got != tc.want {
			t.Errorf("%s with body %T: RetryableRequest = %v, want %v", tc.req.Method, tc.req.Body, got, tc.want)
		}
	}
}

// TestRetryableRealErrors classifies the errors net/http really returns.
func TestRetryableRealErrors(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().String()
	ln.Close()

	release := make(chan struct{})
	hang := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(hang.Close)
	t.Cleanup(func() { close(release) }) // runs before hang.Close

	hangup := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, _, err := http.NewResponseController(w).Hijack()
		if err == nil {
			c.Close() // no response byte
		}
	}))
	t.Cleanup(hangup.Close)

	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	client := &http.Client{Transport: tr}
	do := func(ctx context.Context, method, url string) error {
		req, err := http.NewRequestWithContext(ctx, method, url, nil)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := client.Do(req)
		if err == nil {
			resp.Body.Close()
			t.Fatalf("%s %s answered %d, want an error", method, url, resp.StatusCode)
		}
		if cause := context.Cause(ctx); cause != nil && !errors.Is(err, cause) {
			err = fmt.Errorf("%w: %w", cause, err) // how the proxy marks a per-try timeout
		}
		return err
	}

	refused := do(t.Context(), "POST", "http://"+closed+"/")
	if !Retryable("POST", 0, refused, RetryPolicy{}) {
		t.Errorf("connection refused (%v) is not retryable for POST", refused)
	}
	eof := do(t.Context(), "POST", hangup.URL)
	if !Retryable("POST", 0, eof, RetryPolicy{}) {
		t.Errorf("hang-up before any response byte (%v) is not retryable for POST", eof)
	}

	for _, method := range []string{"GET", "POST"} {
		ctx, cancel := context.WithTimeoutCause(t.Context(), 50*time.Millisecond, ErrPerTryTimeout)
		perTry := do(ctx, method, hang.URL)
		cancel()
		if got, want := Retryable(method, 0, perTry, RetryPolicy{}), method == "GET"; got != want {
			t.Errorf("%s per-try timeout (%v): Retryable = %v, want %v", method, perTry, got, want)
		}
		ctx, cancel = context.WithTimeout(t.Context(), 50*time.Millisecond)
		overall := do(ctx, method, hang.URL)
		cancel()
		if Retryable(method, 0, overall, RetryPolicy{}) {
			t.Errorf("%s overall deadline (%v) is retryable", method, overall)
		}
	}
}

func TestRetryBackoffBounds(t *testing.T) {
	rnd := lbSeeded(12)
	for attempt, ceil := range map[int]time.Duration{
		-1: 25 * time.Millisecond, // treated as the first retry
		0:  25 * time.Millisecond,
		1:  25 * time.Millisecond,
		2:  50 * time.Millisecond,
		3:  100 * time.Millisecond,
		4:  200 * time.Millisecond,
		5:  400 * time.Millisecond,
		6:  800 * time.Millisecond,
		7:  time.Second,
		30: time.Second,
		99: time.Second, // no overflow
	} {
		lo, hi := ceil, time.Duration(0)
		for range 2000 {
			d := Backoff(attempt, rnd)
			if d < 0 || d > ceil {
				t.Fatalf("Backoff(%d) = %v, want within [0, %v]", attempt, d, ceil)
			}
			lo, hi = min(lo, d), max(hi, d)
		}
		// Full jitter uses the whole range.
		if lo > ceil/20 || hi < ceil*19/20 {
			t.Errorf("Backoff(%d) ranged %v..%v over 2000 draws, want about 0..%v", attempt, lo, hi, ceil)
		}
	}
	if d := Backoff(3, nil); d < 0 || d > 100*time.Millisecond {
		t.Errorf("Backoff(3, nil) = %v, want within [0, 100ms]", d)
	}
}
