package testutil

import (
	"bufio"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// redisReadyTimeout bounds how long a starting redis-server may take to
// answer PING; it usually takes a few milliseconds.
const redisReadyTimeout = 10 * time.Second

// redisStopTimeout is how long Stop waits after SIGTERM before SIGKILL.
// Without persistence, redis-server exits at once.
const redisStopTimeout = 10 * time.Second

// RedisServer is a redis-server child process of the test, listening on a
// loopback port, with no persistence, in a directory of the test's own. It
// can be stopped and started again on the same port, to test what clients do
// while Redis is down. Its methods must be called from the test's goroutine.
type RedisServer struct {
	t    testing.TB
	bin  string
	dir  string
	args []string // extra arguments, after the fixed ones
	log  string   // redis-server's output, appended across restarts

	mu     sync.Mutex
	port   int
	proc   *os.Process   // nil while stopped
	exited chan struct{} // closed when proc has exited
}

// StartRedis starts a redis-server for the test and returns its URL,
// "redis://127.0.0.1:<port>" (database 0; append "/<n>" for another). The
// server is stopped when the test ends. It fails the test if redis-server is
// not installed.
func StartRedis(t testing.TB) string {
	t.Helper()
	r := RunRedis(t)
	if r == nil {
		return ""
	}
	return r.URL()
}

// RunRedis is StartRedis returning a handle, with args appended to
// redis-server's command line (for example "--databases", "64"). The fixed
// arguments are --port <free port> --bind 127.0.0.1 --save "" --appendonly no
// --dir <t.TempDir()>. The server is stopped when the test ends; the Pdeathsig
// of the child process also kills it if the test binary dies first.
//
// It fails the test (with Fatalf, not Skip: a test that needs Redis must not
// pass without it) if redis-server is not on PATH, or does not answer PING
// within 10 s; the message then includes the server's output.
func RunRedis(t testing.TB, args ...string) *RedisServer {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatalf("redis-server not found: run ./task test, which installs it (%v)", err)
		return nil // a fake testing.TB may return from Fatalf
	}
	dir := t.TempDir()
	r := &RedisServer{t: t, bin: bin, dir: dir, args: args, log: filepath.Join(dir, "redis.log")}
	t.Cleanup(r.Stop)
	// The free port may be taken before redis-server binds it; then it exits
	// at once, and another port is tried. A restart keeps its port.
	for attempt := 1; ; attempt++ {
		r.port = stablePort(t)
		err := r.start()
		if err == nil {
			return r
		}
		if attempt == 3 {
			t.Fatalf("RunRedis: %v", err)
			return nil
		}
	}
}

// URL returns "redis://127.0.0.1:<port>", the server's database 0.
func (r *RedisServer) URL() string { return "redis://" + r.Addr() }

// Addr returns "127.0.0.1:<port>". It stays the same across Stop and Start.
func (r *RedisServer) Addr() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(r.port))
}

// Start starts the server again after Stop, on the same port, and returns
// once it answers PING; it does nothing if the server is running. The data
// is gone: the server keeps none across restarts, as after a crash of a
// Redis without persistence. It fails the test if the server cannot start
// (for example because another process took the port meanwhile).
func (r *RedisServer) Start() {
	r.t.Helper()
	if err := r.start(); err != nil {
		r.t.Fatalf("RedisServer.Start: %v", err)
	}
}

// Stop stops the server (SIGTERM, then SIGKILL after 10 s) and returns once
// it has exited; it does nothing if the server is stopped. Clients see
// connections refused until Start.
func (r *RedisServer) Stop() { r.stop(syscall.SIGTERM) }

// Kill is Stop with SIGKILL: the server dies at once, without closing its
// clients' connections itself (the kernel resets them), as in a crash.
func (r *RedisServer) Kill() { r.stop(syscall.SIGKILL) }

func (r *RedisServer) stop(sig syscall.Signal) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.proc == nil {
		return
	}
	_ = r.proc.Signal(sig)
	select {
	case <-r.exited:
	case <-time.After(redisStopTimeout):
		_ = r.proc.Kill()
		<-r.exited
	}
	r.proc = nil
}

// start runs redis-server and waits until it answers PING.
func (r *RedisServer) start() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.proc != nil {
		return nil
	}
	logFile, err := os.OpenFile(r.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logFile.Close() // the child has its own descriptor
	args := append([]string{
		"--port", strconv.Itoa(r.port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", r.dir, "--daemonize", "no",
	}, r.args...)

	// Linux sends Pdeathsig when the thread that started the child exits,
	// not the process; so the child is started, and waited for, on a
	// goroutine locked to its thread, which lives exactly as long as the
	// child (it ends, and its thread with it, once Wait returns).
	type result struct {
		proc *os.Process
		err  error
	}
	started := make(chan result, 1) // one send, never blocking the goroutine
	exited := make(chan struct{})
	go func() {
		runtime.LockOSThread()
		cmd := exec.Command(r.bin, args...)
		cmd.Dir = r.dir
		cmd.Stdout, cmd.Stderr = logFile, logFile
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			started <- result{err: err}
			return
		}
		started <- result{proc: cmd.Process}
		_ = cmd.Wait() // an exit status after SIGTERM is expected
		close(exited)
	}()
	res := <-started
	if res.err != nil {
		return fmt.Errorf("start redis-server: %w", res.err)
	}

	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(r.port))
	deadline := time.NewTimer(redisReadyTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(pollInterval) // redis-server has no ready signal but PING
	defer tick.Stop()
	for {
		if pingRedis(addr) == nil {
			r.proc, r.exited = res.proc, exited
			return nil
		}
		select {
		case <-tick.C:
		case <-exited:
			return fmt.Errorf("redis-server on %s exited before answering PING; its output:\n%s", addr, r.output())
		case <-deadline.C:
			_ = res.proc.Kill()
			<-exited
			return fmt.Errorf("redis-server on %s did not answer PING within %v; its output:\n%s",
				addr, redisReadyTimeout, r.output())
		}
	}
}

// stablePort returns a free loopback port below the kernel's ephemeral range
// where it can find one, else FreePort's. A port from the ephemeral range can
// be taken, while the server is stopped, as the local port of any outgoing
// connection, and Start would then fail; below the range only a listener can
// take it.
func stablePort(t testing.TB) int {
	t.Helper()
	const lowest = 10000
	first := 32768 // Linux's default start of the range
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if n, err := strconv.Atoi(f[0]); err == nil {
				first = n
			}
		}
	}
	for range 20 {
		if first <= lowest {
			break
		}
		port := lowest + rand.IntN(first-lowest)
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			continue
		}
		if err := l.Close(); err == nil {
			return port
		}
	}
	return FreePort(t)
}

// output returns the end of redis-server's log, for failure messages.
func (r *RedisServer) output() string {
	b, err := os.ReadFile(r.log)
	if err != nil {
		return err.Error()
	}
	const tail = 4 << 10
	if len(b) > tail {
		b = b[len(b)-tail:]
	}
	return string(b)
}

// pingRedis sends PING in Redis's inline protocol and expects +PONG. A
// server still loading answers -LOADING, which counts as not ready.
func pingRedis(addr string) error {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(time.Second)); err != nil {
		return err
	}
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if strings.TrimSpace(line) != "+PONG" {
		return fmt.Errorf("PING answered %q", line)
	}
	return nil
}
