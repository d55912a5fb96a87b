package testutil

import (
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
)

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago: the
// kernel picked it for a listener that is closed again before returning.
// Another process may take it in between, so prefer handing "127.0.0.1:0" to
// the code under test and asking it for its address; use FreePort only for
// programs that must be told their port in advance (a worker's $PORT, a
// nats-server config).
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("FreePort: %v", err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	if err := l.Close(); err != nil {
		t.Fatalf("FreePort: %v", err)
	}
	return port
}

// FreeAddr returns "127.0.0.1:<port>" for a port from FreePort, with the same
// caveat.
func FreeAddr(t testing.TB) string {
	t.Helper()
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(FreePort(t)))
}

// RefusingAddr returns a loopback address where nothing listens, so a TCP
// connection to it is refused at once: a port that was free a moment ago,
// as caddy's tests use one. Use it for "subscriber down" and "endpoint
// unreachable" cases; unlike an unroutable address it fails fast instead of
// timing out. The port is below the kernel's ephemeral range, which
// FreePort's ports and every connection's own port come from: one of those
// took a refusing port here once, and a connection to an ephemeral port can
// even connect to itself (TCP simultaneous open), both making the dial
// succeed.
func RefusingAddr(t testing.TB) string {
	t.Helper()
	low := ephemeralLow()
	for range 100 {
		port := refusingFrom + rand.IntN(low-refusingFrom)
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		l, err := net.Listen("tcp", addr)
		if err != nil {
			continue // taken
		}
		if err := l.Close(); err != nil {
			t.Fatalf("RefusingAddr: %v", err)
		}
		return addr
	}
	t.Fatalf("RefusingAddr: no free port in %d–%d after 100 tries", refusingFrom, low-1)
	return ""
}

// refusingFrom is the lowest port RefusingAddr picks: above the ports that
// services usually listen on.
const refusingFrom = 10000

// ephemeralLow is the first port of the kernel's ephemeral range (Linux's
// ip_local_port_range; 32768, its default, elsewhere or when unreadable).
func ephemeralLow() int {
	const fallback = 32768
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return fallback
	}
	fields := strings.Fields(string(b))
	if len(fields) == 0 {
		return fallback
	}
	low, err := strconv.Atoi(fields[0])
	if err != nil || low <= refusingFrom+100 {
		return fallback
	}
	return low
}
