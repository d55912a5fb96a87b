package testutil

import (
	"fmt"
	"testing"
	"time"
)

// pollInterval is how often WaitFor checks its condition: short enough that a
// test waits at most ~10 ms past the moment the condition holds, long enough
// that polling does not compete with the code under test for the CPU.
const pollInterval = 10 * time.Millisecond

// WaitFor calls cond until it returns true, immediately and then every ~10 ms,
// and fails the test with t.Fatalf if it has not by timeout (after one last
// call at the deadline). msgAndArgs describes what was awaited: a format
// string and its arguments, or nothing. The arguments are evaluated when
// WaitFor is called, not at the deadline.
//
// Like t.Fatalf, it must be called from the goroutine running the test. cond
// runs on that goroutine too, so it may use t.
func WaitFor(t testing.TB, timeout time.Duration, cond func() bool, msgAndArgs ...any) {
	t.Helper()
	if cond() {
		return
	}
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
			if cond() {
				return
			}
		case <-deadline.C:
			if cond() {
				return
			}
			t.Fatalf("WaitFor: %s: still false after %v", message(msgAndArgs), timeout)
			return // t.Fatalf exits the goroutine; a fake testing.TB may not
		}
	}
}

// message renders msgAndArgs the way testify does.
func message(msgAndArgs []any) string {
	switch {
	case len(msgAndArgs) == 0:
		return "condition"
	case len(msgAndArgs) == 1:
		return fmt.Sprint(msgAndArgs[0])
	}
	if format, ok := msgAndArgs[0].(string); ok {
		return fmt.Sprintf(format, msgAndArgs[1:]...)
	}
	return fmt.Sprint(msgAndArgs...)
}
