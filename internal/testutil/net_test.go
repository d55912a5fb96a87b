package testutil_test

import (
	"errors"
	"net"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/weft-dev/weft/internal/testutil"
)

// TestFreePort: the port is free to listen on. Another process may take a
// port between FreePort closing it and the caller binding it (the helper's
// known race, which parallel tests opening many connections can hit), so a
// collision is retried with a fresh port before the test fails.
func TestFreePort(t *testing.T) {
	t.Parallel()
	var err error
	for range 3 {
		port := testutil.FreePort(t)
		if port <= 0 || port > 65535 {
			t.Fatalf("FreePort = %d", port)
		}
		var l net.Listener
		if l, err = net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port))); err == nil {
			_ = l.Close()
			return
		}
	}
	t.Fatalf("listen on the free port: %v", err)
}

func TestFreeAddr(t *testing.T) {
	t.Parallel()
	addr := testutil.FreeAddr(t)
	host, _, err := net.SplitHostPort(addr)
	if err != nil || host != "127.0.0.1" {
		t.Fatalf("FreeAddr = %q, want 127.0.0.1:<port>", addr)
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listen on the free address: %v", err)
	}
	_ = l.Close()
}

func TestRefusingAddr(t *testing.T) {
	t.Parallel()
	addr := testutil.RefusingAddr(t)
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err == nil {
		_ = c.Close()
		t.Fatalf("dial %s succeeded, want connection refused", addr)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial %s: %v, want ECONNREFUSED", addr, err)
	}
}
