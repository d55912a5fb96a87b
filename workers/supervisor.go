package workers

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

const (
	// probeTimeout bounds one readiness probe (a TCP connect or an HTTP GET).
	probeTimeout = time.Second
	// probeMaxInterval caps the pause between probes.
	probeMaxInterval = 250 * time.Millisecond
	// For probeFastFor after the start, probes are probeFastInterval apart:
	// a connect to a loopback port nobody listens on costs tens of
	// microseconds, and a worker that binds its port within milliseconds is
	// seen within a quarter of one, which is most of a cold start (issue 5,
	// goal 7). After that the pause starts at probeFirstInterval and grows by
	// half each time, so a slow worker is not hammered.
	probeFastInterval  = 250 * time.Microsecond
	probeFastFor       = 20 * time.Millisecond
	probeFirstInterval = time.Millisecond
	// pipeGrace bounds how long Wait keeps reading output after the process
	// group is gone, in case a daemonised grandchild kept the pipes open.
	pipeGrace = 2 * time.Second
)

// spawnRequest asks the spawner to fork one process.
type spawnRequest struct {
	cmd *exec.Cmd
	// started, when set, runs on the spawner right after a successful fork
	// (it sets rlimits, see limits.go); when it fails the spawner kills the
	// process group and replies with its error, and the asker reaps.
	started func(pid int) error
	reply   chan error // buffered (1), so the spawner never waits for the asker
}

// spawner starts every process of the pool. Linux ties Pdeathsig to the OS
// thread that forked the child, not to the process: a child forked from an
// ordinary goroutine would be killed whenever the Go runtime retired that
// thread. So every fork happens here, on a thread locked for the pool's life.
func (p *Pool) spawner(stop <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	runtime.LockOSThread()
	// No UnlockOSThread: when this goroutine returns the runtime ends the
	// thread, and Pdeathsig then kills anything it started that still runs,
	// a backstop behind Run, which has stopped every process by then.
	for {
		select {
		case req := <-p.spawnc:
			err := req.cmd.Start()
			if err == nil && req.started != nil {
				if err = req.started(req.cmd.Process.Pid); err != nil {
					_ = syscall.Kill(-req.cmd.Process.Pid, syscall.SIGKILL)
				}
			}
			req.reply <- err
		case <-stop:
			return
		}
	}
}

// process is one started OS process, the leader of its own process group.
type process struct {
	cmd    *exec.Cmd
	pid    int
	stdout *lineWriter
	stderr *lineWriter
	exited chan struct{} // closed when the leader exited (a zombie, not yet reaped)
	done   chan struct{} // closed when it is reaped and its output flushed
	err    error         // cmd.Wait's result; read only after done
	limits *procLimits   // released by watch once the process is reaped
	// exitHook, when set, runs once the leader exited, before it is reaped,
	// while its zombie still holds its CPU counters (the meter's last sample).
	exitHook func()

	mu     sync.Mutex
	reaped bool // set before reaping: after it the group id may be reused
}

// signal sends sig to the whole process group, unless the leader is being
// reaped: until then its zombie keeps the group id from being reused.
func (pr *process) signal(sig syscall.Signal) {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	if !pr.reaped {
		_ = syscall.Kill(-pr.pid, sig) // ESRCH: the group is already gone
	}
}

// watch waits for the leader to exit without reaping it (waitid WNOWAIT),
// kills what is left of its group while the zombie still holds the group
// id, then reaps it with cmd.Wait, which also drains the output pipes.
func (pr *process) watch() {
	var info unix.Siginfo
	for {
		err := unix.Waitid(unix.P_PID, pr.pid, &info, unix.WEXITED|unix.WNOWAIT, nil)
		if !errors.Is(err, unix.EINTR) {
			break // on any other error cmd.Wait below reports what happened
		}
	}
	if pr.exitHook != nil {
		pr.exitHook()
	}
	close(pr.exited)
	pr.mu.Lock()
	_ = syscall.Kill(-pr.pid, syscall.SIGKILL) // grandchildren die with their instance
	pr.reaped = true
	pr.mu.Unlock()
	pr.err = pr.cmd.Wait()
	if pr.limits.release() {
		pr.err = pr.limits.oomError(pr.exitError())
	}
	pr.stdout.flush()
	pr.stderr.flush()
	close(pr.done)
}

// stop asks the group to terminate, kills it after grace, and returns once
// the process is reaped.
func (pr *process) stop(grace time.Duration) {
	pr.signal(syscall.SIGTERM)
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-pr.exited:
	case <-t.C:
		pr.signal(syscall.SIGKILL)
	}
	<-pr.done
}

// exitError describes how the process ended; call it after done.
func (pr *process) exitError() error {
	if pr.err == nil {
		return errors.New("exit status 0")
	}
	return pr.err
}

// start builds the command of one instance and has the spawner fork it.
func (p *Pool) start(in *instance, port int, log *slog.Logger) (*process, error) {
	spec := in.spec
	if len(spec.Command) == 0 {
		return nil, errors.New("start: the function has no command")
	}
	env := buildEnv(spec, port, p.cfg.ProxyURL, os.LookupEnv)
	if p.cfg.Identities != nil {
		uid, gid := -1, -1
		if spec.User != nil {
			uid, gid = int(spec.User.UID), int(spec.User.GID)
		}
		extra, err := p.cfg.Identities.Env(spec.Name, uid, gid)
		if err != nil {
			return nil, fmt.Errorf("start: identity: %w", err)
		}
		env = withEnv(env, extra)
	}
	path, err := lookPath(spec.Command[0], spec.Dir, env)
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", spec.Command[0], err)
	}
	writer := func(s Stream) *lineWriter {
		return &lineWriter{buf: in.fs.logs, log: log, function: in.fs.name, instance: in.id, stream: s}
	}
	limits, err := prepareLimits(spec, in.id, log)
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", spec.Command[0], err)
	}
	pr := &process{stdout: writer(Stdout), stderr: writer(Stderr), exited: make(chan struct{}), done: make(chan struct{}), limits: limits}
	attr := &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	limits.configure(attr) // user and cgroup: applied by the fork itself
	pr.cmd = &exec.Cmd{
		Path:        path,
		Args:        spec.Command,
		Dir:         spec.Dir,
		Env:         env,
		Stdout:      pr.stdout,
		Stderr:      pr.stderr,
		SysProcAttr: attr,
		WaitDelay:   pipeGrace,
	}
	req := spawnRequest{cmd: pr.cmd, started: limits.started, reply: make(chan error, 1)}
	p.spawnc <- req // the spawner outlives every supervisor (Run waits for them first)
	if err := <-req.reply; err != nil {
		if pr.cmd.Process != nil { // started, then its limits failed: the spawner killed it
			_ = pr.cmd.Wait()
		}
		limits.release()
		return nil, fmt.Errorf("start %s: %w", spec.Command[0], err)
	}
	pr.pid = pr.cmd.Process.Pid
	p.cfg.Meter.Track(in.fs.name, in.id, pr.pid)
	pr.exitHook = func() { p.cfg.Meter.Untrack(in.id) }
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		pr.watch()
	}()
	return pr, nil
}

// supervise keeps one instance running until it is asked to stop: it starts
// the process, restarts it with exponential backoff whenever it fails, and
// drains and stops it on request. It is the instance's only writer of
// pid, port and state (besides stopInstanceLocked marking it draining).
func (p *Pool) supervise(in *instance) {
	defer p.wg.Done()
	defer p.forget(in)
	log := p.log.With("function", in.fs.name, "instance", in.id)
	var delay time.Duration
	for {
		started := time.Now()
		err := p.runOnce(in, log)
		if err == nil || in.stopRequested() {
			return
		}
		delay = nextBackoff(p.cfg.Backoff, delay, time.Since(started))
		p.failed(in, err, delay, log)
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-in.stop:
			t.Stop()
			return
		}
	}
}

// nextBackoff returns the pause before restarting an instance whose previous
// pause was prev (0 before the first failure) and whose last run lasted up.
// The first failure, and any after a run of at least b.Reset, waits
// b.Initial; each further one twice the previous, up to b.Max.
func nextBackoff(b Backoff, prev, up time.Duration) time.Duration {
	if prev == 0 || up >= b.Reset {
		return b.Initial
	}
	return min(2*prev, b.Max)
}

// failed records why an instance's process ended, for Status.
func (p *Pool) failed(in *instance, err error, delay time.Duration, log *slog.Logger) {
	tail := in.fs.logs.tail(in.id, stderrTail)
	p.mu.Lock()
	in.restarts++
	in.failStreak++
	in.fs.restarts++
	in.lastErr = err.Error()
	in.pid, in.port = 0, 0
	if !in.stopping {
		in.state = StateBackoff
	}
	in.fs.lastErr = fmt.Sprintf("instance %s: %v", in.id, err)
	in.fs.lastTail = tail
	restarts := in.fs.restarts
	in.fs.notify()
	p.mu.Unlock()
	log.Warn("instance failed, restarting", "err", err, "backoff", delay, "restarts", restarts)
}

// runOnce runs one process of the instance from start to end. It returns nil
// when the instance was asked to stop, and otherwise why the process ended:
// it could not start, did not become ready in time, or exited.
func (p *Pool) runOnce(in *instance, log *slog.Logger) error {
	if in.stopRequested() {
		return nil
	}
	port, err := p.reservePort()
	if err != nil {
		return fmt.Errorf("pick a port: %w", err)
	}
	defer p.releasePort(port)
	proc, err := p.start(in, port, log)
	if err != nil {
		return err
	}
	started := time.Now()
	p.mu.Lock()
	in.pid, in.port, in.started = proc.pid, port, started
	if !in.stopping {
		in.state = StateStarting
	}
	p.mu.Unlock()
	log.Info("instance started", "pid", proc.pid, "port", port)

	limit := in.spec.Readiness.Timeout
	if limit <= 0 {
		limit = p.cfg.ReadyTimeout
	}
	switch p.awaitReady(in, proc, port, limit) {
	case probeStopped:
		proc.stop(p.cfg.StopGrace)
		return nil
	case probeExited:
		<-proc.done
		return fmt.Errorf("exited before ready: %w", proc.exitError())
	case probeTimedOut:
		proc.stop(p.cfg.StopGrace)
		return fmt.Errorf("not ready within %v", limit)
	}
	p.mu.Lock()
	if !in.stopping {
		in.state = StateReady
		in.failStreak = 0
		in.fs.notify()
	}
	p.mu.Unlock()
	log.Info("instance ready", "after", time.Since(started).Round(time.Millisecond))

	select {
	case <-proc.exited:
		<-proc.done
		return fmt.Errorf("exited after %v: %w", time.Since(started).Round(time.Millisecond), proc.exitError())
	case <-in.stop:
	}
	p.drain(in, proc, log)
	proc.stop(p.cfg.StopGrace)
	log.Info("instance stopped", "pid", proc.pid)
	return nil
}

type probeResult int

const (
	probeReady probeResult = iota
	probeExited
	probeStopped
	probeTimedOut
)

// awaitReady probes a new process until it is ready, exits, is asked to
// stop, or limit passes.
func (p *Pool) awaitReady(in *instance, proc *process, port int, limit time.Duration) probeResult {
	deadline := time.NewTimer(limit)
	defer deadline.Stop()
	start := time.Now()
	pause := probeFirstInterval
	for {
		select {
		case <-proc.exited: // checked first: the port may already belong to someone else
			return probeExited
		default:
		}
		if p.probe(in.spec.Readiness.Path, port) {
			return probeReady
		}
		wait := pause
		if time.Since(start) < probeFastFor {
			wait = probeFastInterval
		}
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-proc.exited:
			t.Stop()
			return probeExited
		case <-in.stop:
			t.Stop()
			return probeStopped
		case <-deadline.C:
			t.Stop()
			return probeTimedOut
		}
		if wait == pause {
			pause = min(pause+pause/2, probeMaxInterval)
		}
	}
}

// probe reports whether the instance on port answers: a TCP connect when
// path is empty, an HTTP GET of path answering 2xx otherwise.
func (p *Pool) probe(path string, port int) bool {
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	ctx, cancel := context.WithTimeout(context.Background(), probeTimeout)
	defer cancel()
	if path == "" {
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return false
		}
		_ = c.Close()
		return true
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+path, nil)
	if err != nil {
		return false
	}
	resp, err := p.probeClient.Do(req)
	if err != nil {
		return false
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10))
	_ = resp.Body.Close()
	return resp.StatusCode >= 200 && resp.StatusCode <= 299
}

// drain waits until the instance, already marked draining so that it gets no
// new requests, has none in flight, the process exits, or the drain bound
// passes: Config.DrainTimeout, or the Function's timeout when longer.
func (p *Pool) drain(in *instance, proc *process, log *slog.Logger) {
	bound := max(p.cfg.DrainTimeout, in.spec.Timeout)
	t := time.NewTimer(bound)
	defer t.Stop()
	for {
		p.mu.Lock()
		n := in.inflight
		var ch <-chan struct{}
		if n > 0 {
			ch = in.fs.waitCh()
		}
		p.mu.Unlock()
		if n == 0 {
			return
		}
		select {
		case <-ch:
		case <-proc.exited:
			return
		case <-t.C:
			log.Warn("instance still busy after drain bound, stopping it", "in_flight", n, "bound", bound)
			return
		}
	}
}

// reservePort returns a loopback port that was free a moment ago and that no
// other live process of the pool holds: the kernel may hand a port it just
// freed to the next caller, and two instances on one port could each pass
// the other's readiness probe. Another program may still take the port
// before the worker binds; the worker then fails and restarts on a new one.
// The port stays reserved until releasePort, after the process is reaped.
func (p *Pool) reservePort() (int, error) {
	for range 20 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		port := l.Addr().(*net.TCPAddr).Port
		_ = l.Close()
		p.mu.Lock()
		taken := p.ports[port]
		if !taken {
			p.ports[port] = true
		}
		p.mu.Unlock()
		if !taken {
			return port, nil
		}
	}
	return 0, errors.New("no free loopback port that the pool does not already use")
}

func (p *Pool) releasePort(port int) {
	p.mu.Lock()
	delete(p.ports, port)
	p.mu.Unlock()
}
