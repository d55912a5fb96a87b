package router

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"sync"
	"syscall"
	"time"
)

// Retry sentinels. (They belong in errors.go with the package's other
// sentinels once that file exists.)
var (
	// ErrPerTryTimeout marks an attempt that ran out of its per-try
	// timeout. The caller wraps it around the attempt's error, for example
	// by creating the attempt's context with
	// context.WithTimeoutCause(ctx, p.PerTryTimeout, ErrPerTryTimeout) and
	// joining context.Cause into the error, so that Retryable can tell it
	// from the overall deadline, which is never retried.
	ErrPerTryTimeout = errors.New("per-try timeout")

	// ErrBodyNotReplayable marks an attempt whose request body cannot be
	// sent again (already read and no GetBody). Retryable refuses it.
	ErrBodyNotReplayable = errors.New("request body not replayable")
)

// RetryPolicy is a Service's timeouts and retries (spec.timeout and
// spec.retries). Zero fields take the defaults listed; withDefaults fills
// them.
type RetryPolicy struct {
	// Attempts is the most tries of one request, the first included: 1
	// never retries. Zero means 3 (DESIGN's example). Retries are also
	// bounded by the Service's Budget.
	Attempts int

	// PerTryTimeout bounds each attempt. Zero means none: only Timeout
	// bounds the attempts.
	PerTryTimeout time.Duration

	// Timeout bounds the whole request, all attempts and back-offs
	// included. Zero means no bound beyond the caller's context (as
	// Service.Timeout, which ParseService sets to 10 s by default).
	Timeout time.Duration

	// BudgetPercent is the retry budget's share of recent requests, in
	// percent (BudgetConfig.Percent). Zero means 20 (Linkerd's); a negative
	// value leaves only the budget's floor of 10 retries a second. (A
	// Service's budgetPercent of 0, "no retry", maps to Attempts 1.)
	BudgetPercent float64

	// RetryOn5xx retries 5xx responses to non-idempotent methods too, for a
	// Service whose POSTs are known to be safe to repeat.
	RetryOn5xx bool
}

func (p RetryPolicy) withDefaults() RetryPolicy {
	if p.Attempts == 0 {
		p.Attempts = 3
	}
	if p.BudgetPercent == 0 {
		p.BudgetPercent = defaultBudgetPercent
	}
	return p
}

// Validate reports the first invalid field of p once defaults are applied.
func (p RetryPolicy) Validate() error {
	p = p.withDefaults()
	switch {
	case p.Attempts < 1:
		return fmt.Errorf("retries.attempts: %d is below 1", p.Attempts)
	case p.PerTryTimeout < 0:
		return fmt.Errorf("retries.perTryTimeout: %v is negative", p.PerTryTimeout)
	case p.Timeout < 0:
		return fmt.Errorf("timeout: %v is negative", p.Timeout)
	case p.BudgetPercent > 1000:
		return fmt.Errorf("retries.budgetPercent: %v is above 1000", p.BudgetPercent)
	}
	return nil
}

// Idempotent reports whether method is idempotent by RFC 9110 §9.2.2: GET,
// HEAD, OPTIONS, PUT, DELETE and TRACE ("" is GET, as in net/http).
func Idempotent(method string) bool {
	switch method {
	case "", http.MethodGet, http.MethodHead, http.MethodOptions,
		http.MethodPut, http.MethodDelete, http.MethodTrace:
		return true
	}
	return false
}

// Replayable reports whether req's body can be sent again: no body, or a
// GetBody to make a fresh copy (http.NewRequest sets it for in-memory
// bodies; a proxy sets it after buffering a small body).
func Replayable(req *http.Request) bool {
	return req.Body == nil || req.Body == http.NoBody || req.GetBody != nil
}

// Retryable reports whether an attempt that ended with status (0 when
// there was no response) or err may be retried under p. It judges the
// outcome only; Attempts, the deadline and the Budget are the caller's to
// check. The rules, first match wins:
//
//   - ErrBodyNotReplayable or a cancelled context: never.
//   - ErrPerTryTimeout (or another timeout waiting for the response): only
//     idempotent methods, since the server may have acted on the request.
//   - context.DeadlineExceeded without ErrPerTryTimeout, the overall
//     deadline: never.
//   - connection failures, where the request cannot have reached the
//     application: always, whatever the method. These are dial errors
//     (refused, unreachable, dial timeout), and a reset or EOF before any
//     response byte.
//   - other errors (TLS verification, malformed responses): never.
//   - a 5xx response: idempotent methods, or any method with p.RetryOn5xx.
//   - any other status: never.
func Retryable(method string, status int, err error, p RetryPolicy) bool {
	if err != nil {
		switch {
		case errors.Is(err, ErrBodyNotReplayable), errors.Is(err, context.Canceled):
			return false
		case errors.Is(err, ErrPerTryTimeout):
			return Idempotent(method)
		case errors.Is(err, context.DeadlineExceeded):
			return false
		case connectionFailure(err):
			return true
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return Idempotent(method) // e.g. Transport.ResponseHeaderTimeout
		}
		return false
	}
	if status >= 500 && status <= 599 {
		return Idempotent(method) || p.RetryOn5xx
	}
	return false
}

// RetryableRequest is Retryable for req, and false when req's body is not
// Replayable.
func RetryableRequest(req *http.Request, status int, err error, p RetryPolicy) bool {
	return Replayable(req) && Retryable(req.Method, status, err, p)
}

// connectionFailure reports whether err means the connection failed before
// the server could have read a complete request and answered.
func connectionFailure(err error) bool {
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		return true
	}
	switch {
	case errors.Is(err, syscall.ECONNREFUSED),
		errors.Is(err, syscall.ECONNRESET),
		errors.Is(err, syscall.ECONNABORTED),
		errors.Is(err, syscall.EHOSTUNREACH),
		errors.Is(err, syscall.ENETUNREACH),
		errors.Is(err, io.EOF): // closed with no response byte
		return true
	}
	// io.ErrUnexpectedEOF is left out on purpose: part of a response came.
	return false
}

// Back-off between attempts: exponential from 25 ms (Envoy's default retry
// base interval) to at most 1 s, with full jitter.
const (
	backoffBase = 25 * time.Millisecond
	backoffCap  = time.Second
)

// Backoff returns how long to wait before retry number attempt (1 for the
// first retry): uniform in [0, min(1 s, 25 ms × 2^(attempt-1))], the "full
// jitter" of AWS's "Exponential Backoff and Jitter", which spreads
// synchronised clients best. rnd nil means math/rand/v2's global generator;
// a non-nil rnd must not be shared between goroutines.
func Backoff(attempt int, rnd *rand.Rand) time.Duration {
	ceil := backoffCap
	if attempt < 1 {
		attempt = 1
	}
	if shift := attempt - 1; shift < 6 { // 25 ms << 6 = 1.6 s > cap
		ceil = min(backoffBase<<shift, backoffCap)
	}
	if rnd == nil {
		return time.Duration(rand.Int64N(int64(ceil) + 1))
	}
	return time.Duration(rnd.Int64N(int64(ceil) + 1))
}

// Retry-budget defaults: Linkerd's (and tower's TpsBudget::default, after
// Finagle's RetryBudget).
const (
	defaultBudgetPercent = 20
	defaultBudgetMin     = 10
	defaultBudgetWindow  = 10 * time.Second
	budgetSlots          = 10 // the window slides in tenths, as tower's
)

// BudgetConfig configures a Budget. Zero fields take the defaults listed.
type BudgetConfig struct {
	// Percent of the requests deposited in the window that may be retried:
	// 20 allows one retry per five requests. Zero means 20; a negative
	// value means none beyond MinPerSecond. At most 1000.
	Percent float64

	// MinPerSecond is a floor of retries allowed regardless of traffic,
	// MinPerSecond × Window per window, so that a Service with little
	// traffic can still retry. Zero means 10; a negative value means none.
	MinPerSecond int

	// Window is how long a request counts toward the budget, 1 s to 60 s
	// (Finagle's bounds). Zero means 10 s.
	Window time.Duration
}

func (c BudgetConfig) withDefaults() BudgetConfig {
	if c.Percent == 0 {
		c.Percent = defaultBudgetPercent
	}
	if c.MinPerSecond == 0 {
		c.MinPerSecond = defaultBudgetMin
	}
	if c.Window == 0 {
		c.Window = defaultBudgetWindow
	}
	return c
}

// Validate reports the first invalid field of c once defaults are applied.
func (c BudgetConfig) Validate() error {
	c = c.withDefaults()
	switch {
	case c.Percent > 1000:
		return fmt.Errorf("retry budget: percent %v is above 1000", c.Percent)
	case c.Window < time.Second || c.Window > time.Minute:
		return fmt.Errorf("retry budget: window %v is not in 1s..1m", c.Window)
	}
	return nil
}

// Budget bounds the retries of one Service so that retries cannot turn a
// partial outage into an overload: over a sliding Window, the retries
// withdrawn may not exceed Percent of the requests deposited plus
// MinPerSecond × Window (Linkerd: 20 % plus 10/s over 10 s). The floor is
// an allowance for the whole window, as in Finagle and tower, not a rate:
// 100 retries may go at once, and come back as the window slides past
// them.
//
// The window slides in tenths: a deposit or withdrawal counts for between
// 0.9 and 1 Window. Time is read from the Clock, so nothing runs in the
// background. A Budget is safe for concurrent use.
type Budget struct {
	cfg     BudgetConfig
	clk     Clock
	slot    int64   // slot width in nanoseconds
	ratio   float64 // retries per deposit: Percent/100, 0 if negative
	reserve float64 // MinPerSecond × Window retries, 0 if negative

	mu    sync.Mutex // guards slots
	slots [budgetSlots]budgetSlot
}

// budgetSlot holds one tenth of the window: the deposits and withdrawals
// made while the clock's slot number was epoch.
type budgetSlot struct {
	epoch       int64
	deposits    int64
	withdrawals int64
}

// NewBudget returns a Budget with cfg (zero fields take their defaults)
// reading clk (nil means SystemClock).
func NewBudget(cfg BudgetConfig, clk Clock) (*Budget, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("router: %w", err)
	}
	cfg = cfg.withDefaults()
	if clk == nil {
		clk = SystemClock{}
	}
	return &Budget{
		cfg:     cfg,
		clk:     clk,
		slot:    int64(cfg.Window / budgetSlots),
		ratio:   max(cfg.Percent, 0) / 100,
		reserve: float64(max(cfg.MinPerSecond, 0)) * cfg.Window.Seconds(),
	}, nil
}

// Deposit records one original request (not a retry).
func (b *Budget) Deposit() {
	b.mu.Lock()
	b.current().deposits++
	b.mu.Unlock()
}

// Withdraw takes one retry from the budget and reports whether it was
// allowed; a refused retry takes nothing.
func (b *Budget) Withdraw() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	cur := b.current()
	d, w := b.sums(cur.epoch)
	if !b.allows(d, w+1) {
		return false
	}
	cur.withdrawals++
	return true
}

// Remaining returns how many retries the budget would allow now.
func (b *Budget) Remaining() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	d, w := b.sums(b.epoch())
	return max(int(b.limit(d))-int(w), 0)
}

// allows reports whether w withdrawals fit d deposits.
func (b *Budget) allows(d, w int64) bool { return float64(w) <= b.limit(d) }

// limit is the number of retries d deposits allow in a window. The small
// epsilon keeps 20 % of 5 from rounding to 0.999….
func (b *Budget) limit(d int64) float64 {
	return math.Floor(float64(d)*b.ratio + b.reserve + 1e-9)
}

func (b *Budget) epoch() int64 { return b.clk.Now().UnixNano() / b.slot }

// current returns the slot for now, emptied if it last held an older
// tenth; b.mu is held.
func (b *Budget) current() *budgetSlot {
	e := b.epoch()
	s := &b.slots[(e%budgetSlots+budgetSlots)%budgetSlots] // e < 0 before 1970
	if s.epoch != e {
		*s = budgetSlot{epoch: e}
	}
	return s
}

// sums adds up the slots of the window ending in slot epoch; b.mu is held.
func (b *Budget) sums(epoch int64) (deposits, withdrawals int64) {
	for i := range b.slots {
		s := &b.slots[i]
		if s.epoch > epoch-budgetSlots && s.epoch <= epoch {
			deposits += s.deposits
			withdrawals += s.withdrawals
		}
	}
	return deposits, withdrawals
}
