package testutil_test

import (
	"bufio"
	"errors"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/weft-dev/weft/internal/testutil"
)

// redisDo sends one inline command and returns the first line of the answer.
func redisDo(t *testing.T, addr, cmd string) string {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial redis at %s: %v", addr, err)
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write([]byte(cmd + "\r\n")); err != nil {
		t.Fatalf("send %q: %v", cmd, err)
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("read answer to %q: %v", cmd, err)
	}
	return strings.TrimSpace(line)
}

func TestStartRedis(t *testing.T) {
	t.Parallel()
	url := testutil.StartRedis(t)
	addr, ok := strings.CutPrefix(url, "redis://")
	if !ok {
		t.Fatalf("StartRedis = %q, want redis://127.0.0.1:<port>", url)
	}
	if host, _, err := net.SplitHostPort(addr); err != nil || host != "127.0.0.1" {
		t.Fatalf("StartRedis = %q, want a loopback address", url)
	}
	if got := redisDo(t, addr, "PING"); got != "+PONG" {
		t.Fatalf("PING = %q", got)
	}
	// No persistence: a test's data never outlives its server.
	if got := redisDo(t, addr, "CONFIG GET appendonly"); got != "*2" {
		t.Fatalf("CONFIG GET = %q", got)
	}
}

// TestRedisStopStart checks the handle used to take Redis down for a while:
// connections are refused while stopped, and Start brings it back on the
// same address, empty.
func TestRedisStopStart(t *testing.T) {
	t.Parallel()
	r := testutil.RunRedis(t, "--databases", "4")
	addr := r.Addr()
	if got := redisDo(t, addr, "SET k v"); got != "+OK" {
		t.Fatalf("SET = %q", got)
	}
	if got := redisDo(t, addr, "SELECT 3"); got != "+OK" {
		t.Fatalf("SELECT 3 = %q; extra arguments not passed?", got)
	}

	r.Stop()
	r.Stop() // idempotent
	r.Kill() // so is Kill of a stopped server
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err == nil {
		_ = c.Close()
		t.Fatal("dial succeeded after Stop")
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial after Stop: %v, want ECONNREFUSED", err)
	}

	r.Start()
	r.Start() // a running server is left alone
	if r.Addr() != addr {
		t.Fatalf("address changed across restart: %s → %s", addr, r.Addr())
	}
	if got := redisDo(t, addr, "GET k"); got != "$-1" {
		t.Fatalf("GET after restart = %q, want nil (no persistence)", got)
	}
}

// TestRunRedisMissing checks that a machine without redis-server fails the
// test with instructions instead of skipping it.
func TestRunRedisMissing(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	ft := &fakeTB{TB: t}
	if r := testutil.RunRedis(ft); r != nil {
		t.Fatal("RunRedis returned a server without redis-server on PATH")
	}
	if !strings.Contains(ft.fatal, "redis-server not found: run ./task test, which installs it") {
		t.Fatalf("failure message %q lacks the instructions", ft.fatal)
	}
}

// TestRedisKill checks that Kill takes the server down at once, as a crash
// does, and that Start brings it back on the same address.
func TestRedisKill(t *testing.T) {
	t.Parallel()
	r := testutil.RunRedis(t)
	addr := r.Addr()
	r.Kill()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err == nil {
		_ = c.Close()
		t.Fatal("dial succeeded after Kill")
	}
	r.Start()
	if got := redisDo(t, addr, "PING"); got != "+PONG" {
		t.Fatalf("PING after Kill and Start = %q", got)
	}
}
