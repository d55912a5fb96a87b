package testutil_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/weft-dev/weft/internal/testutil"
)

// fakeTB records Fatalf instead of ending the test, so WaitFor's failure path
// can be checked. Other methods go to the real test.
type fakeTB struct {
	testing.TB
	fatal string
}

func (f *fakeTB) Helper() {}

func (f *fakeTB) Fatalf(format string, args ...any) { f.fatal = fmt.Sprintf(format, args...) }

func TestWaitForPollsUntilTrue(t *testing.T) {
	t.Parallel()
	calls := 0
	testutil.WaitFor(t, 5*time.Second, func() bool {
		calls++
		return calls == 3
	}, "third call")
	if calls != 3 {
		t.Fatalf("cond called %d times, want 3 (stop at the first true)", calls)
	}
}

func TestWaitForTrueAtOnce(t *testing.T) {
	t.Parallel()
	start := time.Now()
	testutil.WaitFor(t, 5*time.Second, func() bool { return true })
	if d := time.Since(start); d > time.Second {
		t.Fatalf("WaitFor took %v for a condition true at once", d)
	}
}

func TestWaitForFailsAtDeadline(t *testing.T) {
	t.Parallel()
	ft := &fakeTB{TB: t}
	const timeout = 50 * time.Millisecond
	calls := 0
	start := time.Now()
	testutil.WaitFor(ft, timeout, func() bool { calls++; return false }, "event %q delivered", "e1")
	if elapsed := time.Since(start); elapsed < timeout {
		t.Errorf("WaitFor gave up after %v, before the %v timeout", elapsed, timeout)
	}
	if calls < 3 {
		t.Errorf("cond called %d times in %v, want it polled repeatedly", calls, timeout)
	}
	if !strings.Contains(ft.fatal, `event "e1" delivered`) || !strings.Contains(ft.fatal, timeout.String()) {
		t.Errorf("failure message %q does not name the condition and the timeout", ft.fatal)
	}
}

func TestWaitForMessageWithoutFormat(t *testing.T) {
	t.Parallel()
	ft := &fakeTB{TB: t}
	testutil.WaitFor(ft, time.Millisecond, func() bool { return false })
	if ft.fatal == "" {
		t.Fatal("WaitFor did not fail")
	}
}
