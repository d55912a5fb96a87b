package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Processes that `weft bench router` and `weft bench footprint` start and
// measure: weft serve, nginx, nats-server. Linux only (/proc).

// benchProc is a child process with its combined output kept for errors.
type benchProc struct {
	name   string
	cmd    *exec.Cmd
	out    *lockedBuffer
	exited chan struct{} // closed once Wait returned
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.b.Len() > 64<<10 { // keep the start: it says why a process failed
		return len(p), nil
	}
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// startProc starts bin with args in its own process group, so that stop
// reaches whatever it spawned. It gets SIGTERM if the bench dies without
// stopping it (killed, say), so no `weft serve` or nginx outlives its bench.
// Linux ties Pdeathsig to the forking thread, but the Go runtime retires a
// thread only when a goroutine locked to it returns, which the bench never does.
func startProc(name, bin string, args ...string) (*benchProc, error) {
	p := &benchProc{name: name, cmd: exec.Command(bin, args...), out: &lockedBuffer{}, exited: make(chan struct{})}
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go func() { _ = p.cmd.Wait(); close(p.exited) }() // owned: stop waits on exited
	return p, nil
}

func (p *benchProc) pid() int { return p.cmd.Process.Pid }

// failed describes an early exit with the process's output.
func (p *benchProc) failed(what string) error {
	return fmt.Errorf("%s %s: %s\n%s", p.name, what, p.cmd.ProcessState, strings.TrimSpace(p.out.String()))
}

// stop sends SIGTERM to the process group, waits up to 10 s, then kills it.
func (p *benchProc) stop() {
	_ = syscall.Kill(-p.pid(), syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(10 * time.Second):
		_ = syscall.Kill(-p.pid(), syscall.SIGKILL)
		<-p.exited
	}
}

// waitUntil polls ready every 20 ms until it holds, the process exits or
// timeout passes.
func (p *benchProc) waitUntil(ctx context.Context, timeout time.Duration, what string, ready func() bool) error {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !ready() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-p.exited:
			return p.failed("exited before " + what)
		case <-deadline.C:
			return fmt.Errorf("%s: not %s after %s\n%s", p.name, what, timeout, strings.TrimSpace(p.out.String()))
		case <-tick.C:
		}
	}
	return nil
}

// httpOK reports whether GET url answers 200.
func httpOK(url string) bool {
	c := &http.Client{Timeout: time.Second, Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}
	resp, err := c.Get(url)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// tcpOpen reports whether addr accepts a connection.
func tcpOpen(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// freeAddr returns a loopback address that was free a moment ago (bound and
// closed), for a child process that must be told its port up front.
func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("free port: %w", err)
	}
	addr := ln.Addr().String()
	return addr, ln.Close()
}

// clockTick is USER_HZ, the unit of utime and stime in /proc/<pid>/stat:
// 100 on every Linux architecture Go supports.
const clockTick = 10 * time.Millisecond

// procCPU returns the user plus system CPU time a process has used so far,
// its exited threads included.
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may hold spaces; fields after it are plain.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, errors.New("malformed /proc stat")
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, errors.New("malformed /proc stat")
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64) // field 14
	stime, err2 := strconv.ParseInt(f[12], 10, 64) // field 15
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("malformed /proc stat: %w", err)
	}
	return time.Duration(utime+stime) * clockTick, nil
}

// children lists the processes whose parent is pid.
func children(pid int) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var out []int
	for _, e := range ents {
		child, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue // exited meanwhile
		}
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:]))
		if len(f) > 1 && f[1] == strconv.Itoa(pid) { // field 4, ppid
			out = append(out, child)
		}
	}
	return out
}

// treeCPU is the CPU time of pid and its direct children (nginx's master
// and workers).
func treeCPU(pid int) time.Duration {
	var sum time.Duration
	for _, p := range append([]int{pid}, children(pid)...) {
		if d, err := procCPU(p); err == nil {
			sum += d
		}
	}
	return sum
}

// procRSS returns VmRSS and VmHWM (peak RSS) of a process, in bytes.
func procRSS(pid int) (rss, hwm int64, err error) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "status"))
	if err != nil {
		return 0, 0, err
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok || (k != "VmRSS" && k != "VmHWM") {
			continue
		}
		f := strings.Fields(v) // "12345 kB"
		if len(f) != 2 || f[1] != "kB" {
			return 0, 0, fmt.Errorf("malformed %s in /proc status: %q", k, v)
		}
		n, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("malformed %s in /proc status: %w", k, err)
		}
		if k == "VmRSS" {
			rss = n << 10
		} else {
			hwm = n << 10
		}
	}
	if rss == 0 {
		return 0, 0, errors.New("no VmRSS in /proc status")
	}
	return rss, hwm, nil
}

// weftExecutable is the weft binary to run as a child: flag, or this one.
func weftExecutable(flag string) (string, error) {
	if flag != "" {
		return flag, nil
	}
	exe, err := os.Executable()
	if err != nil {
		return "", fmt.Errorf("find weft's own binary (give --weft): %w", err)
	}
	return exe, nil
}

// roundCPU is one round's CPU time on one side, per stored event: the
// node's and this process's.
type roundCPU struct{ node, self float64 }

// cpuProbe reads a node's CPU time; false when it cannot.
type cpuProbe func(context.Context) (time.Duration, bool)

// nodeCPUProbe reads the CPU time of the node c talks to.
func nodeCPUProbe(c *apiClient) cpuProbe {
	return func(ctx context.Context) (time.Duration, bool) { return nodeCPU(ctx, c) }
}

// cpuPerEvent measures the CPU time run takes, this process's and the
// node's (when node is not nil and reports it), per event it stored.
func cpuPerEvent(ctx context.Context, node cpuProbe, run func() loadStats) (loadStats, roundCPU, bool) {
	if node == nil {
		node = func(context.Context) (time.Duration, bool) { return 0, false }
	}
	self0, selfErr := procCPU(os.Getpid())
	node0, nodeOK := node(ctx)
	st := run()
	self1, selfErr1 := procCPU(os.Getpid())
	node1, nodeOK1 := node(ctx)
	if selfErr != nil || selfErr1 != nil || st.Events == 0 {
		return st, roundCPU{}, false
	}
	n := float64(st.Events)
	c := roundCPU{self: float64((self1 - self0).Microseconds()) / n}
	if nodeOK && nodeOK1 {
		c.node = float64((node1 - node0).Microseconds()) / n
	}
	return st, c, true
}

// nodeCPU reads the node's process_cpu_seconds_total from its /metrics.
func nodeCPU(ctx context.Context, c *apiClient) (time.Duration, bool) {
	m, err := nodeMetrics(ctx, c, "process_cpu_seconds_total")
	secs, ok := m["process_cpu_seconds_total"]
	return time.Duration(secs * float64(time.Second)), err == nil && ok
}

// nodeMetrics reads the samples named (as /metrics writes them, labels
// included) from the /metrics of the node c talks to; a sample it does not
// find is missing from the map.
func nodeMetrics(ctx context.Context, c *apiClient, names ...string) (map[string]float64, error) {
	resp, err := c.send(ctx, http.MethodGet, "/metrics", "", nil)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	got := make(map[string]float64, len(names))
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		name, value, ok := strings.Cut(sc.Text(), " ")
		if !ok || !slices.Contains(names, name) {
			continue
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(value), 64)
		if err != nil {
			return nil, fmt.Errorf("/metrics %s: %w", name, err)
		}
		got[name] = v
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read /metrics: %w", err)
	}
	return got, nil
}

// commitReading is a node's weft_store_commit_events at one moment: its
// fsynced commits, the events they stored, and the commits of a lone event.
type commitReading struct{ commits, events, lone float64 }

// commitProbe reads a node's commitReading; false when it cannot.
type commitProbe func(context.Context) (commitReading, bool)

// nodeCommitProbe reads the group commits of the node c talks to.
func nodeCommitProbe(c *apiClient) commitProbe {
	const (
		count = "weft_store_commit_events_count"
		sum   = "weft_store_commit_events_sum"
		lone  = `weft_store_commit_events_bucket{le="1"}`
	)
	return func(ctx context.Context) (commitReading, bool) {
		m, err := nodeMetrics(ctx, c, count, sum, lone)
		if err != nil || len(m) != 3 {
			return commitReading{}, false
		}
		return commitReading{commits: m[count], events: m[sum], lone: m[lone]}, true
	}
}

// groupCommitStats is how a node shared its fsyncs between two readings.
type groupCommitStats struct {
	EventsPerCommit float64 `json:"events_per_commit"`
	// LoneCommitsPct is the share of commits that stored one event.
	LoneCommitsPct float64 `json:"lone_commits_pct"`
}

// during runs run and returns how the node shared its fsyncs meanwhile;
// false when p is nil, the node cannot be read, or it committed nothing
// with an fsync (it fsyncs on an interval).
func (p commitProbe) during(ctx context.Context, run func()) (groupCommitStats, bool) {
	if p == nil {
		run()
		return groupCommitStats{}, false
	}
	before, ok0 := p(ctx)
	run()
	after, ok1 := p(ctx)
	commits := after.commits - before.commits
	if !ok0 || !ok1 || commits <= 0 {
		return groupCommitStats{}, false
	}
	return groupCommitStats{EventsPerCommit: (after.events - before.events) / commits, LoneCommitsPct: 100 * (after.lone - before.lone) / commits}, true
}
