package testutil

import (
	"net"
	"strconv"
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
// connection to it is refused at once, as caddy's tests do: bind a port, then
// close it. Use it for "subscriber down" and "endpoint unreachable" cases;
// unlike an unroutable address it fails fast instead of timing out.
func RefusingAddr(t testing.TB) string {
	t.Helper()
	return FreeAddr(t)
}
