package node

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain checks, after all tests, that every goroutine the tests started
// (watchers, brokers, pools, stores, HTTP servers) has ended.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
