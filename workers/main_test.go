package workers

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"

	"github.com/weft-dev/weft/internal/testutil"
)

// goWorker is the Go test worker (testdata/goworker), built once per test
// binary by TestMain.
var goWorker string

const (
	// helperEnv switches the test binary into a helper process (see
	// runHelper) instead of running tests.
	helperEnv = "WEFT_WORKERS_TEST_HELPER"
	// workerEnv hands the helper the Go worker's path.
	workerEnv = "WEFT_WORKERS_TEST_WORKER"
)

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) != "" {
		os.Exit(runHelper())
	}
	dir, err := os.MkdirTemp("", "weft-workers-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	goWorker = filepath.Join(dir, "goworker")
	build := exec.Command("go", "build", "-o", goWorker, "./testdata/goworker")
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build the Go test worker: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

// runHelper runs a Pool with one instance of the Go worker, prints the
// instance's pid and waits to be killed: TestPdeathsig kills it with SIGKILL,
// which gives the pool no chance to stop its workers itself.
func runHelper() int {
	p := New(Config{}, nil)
	p.Apply(&Function{Name: "orphan", Command: []string{os.Getenv(workerEnv)}, Dir: os.TempDir(), Scale: Scale{Min: 1, Target: 1}})
	go func() { _ = p.Run(context.Background()) }()
	deadline := time.After(30 * time.Second)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		if in := p.Instances("orphan"); len(in) == 1 && in[0].State == StateReady {
			fmt.Fprintf(os.Stdout, "pid=%d\n", in[0].PID)
			select {} // the test kills us with SIGKILL
		}
		select {
		case <-tick.C:
		case <-deadline:
			fmt.Fprintln(os.Stderr, "helper: instance not ready")
			return 1
		}
	}
}

// waitFor polls cond until it holds, failing the test after timeout.
func waitFor(t *testing.T, timeout time.Duration, cond func() bool) {
	t.Helper()
	testutil.WaitFor(t, timeout, cond)
}

func testLogger() *slog.Logger {
	if os.Getenv("WEFT_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// startPool runs a pool for the test with short restart delays. When the
// test ends it stops the pool and checks that every process it ran is gone.
func startPool(t *testing.T, cfg Config) *Pool {
	t.Helper()
	if cfg.StopGrace == 0 {
		cfg.StopGrace = 2 * time.Second
	}
	if cfg.Backoff.Initial == 0 {
		cfg.Backoff = Backoff{Initial: 10 * time.Millisecond, Max: 200 * time.Millisecond}
	}
	p := New(cfg, testLogger())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	t.Cleanup(func() {
		var pids []int
		for _, fs := range p.Status() {
			for _, in := range p.Instances(fs.Name) {
				if in.PID != 0 {
					pids = append(pids, in.PID)
				}
			}
		}
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("Run did not return within 30s of its context ending")
		}
		for _, pid := range pids {
			if !gone(pid) {
				t.Errorf("worker pid %d survived the pool", pid)
			}
		}
	})
	select {
	case <-p.Ready():
	case <-time.After(10 * time.Second):
		t.Fatal("pool not ready")
	}
	return p
}

// goFn returns a Function running the Go worker with extra env ("K=V").
func goFn(name string, env ...string) *Function {
	fn := &Function{Name: name, Command: []string{goWorker}, Dir: os.TempDir(), Scale: Scale{Min: 1, Target: DefaultTarget}}
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		fn.Env = append(fn.Env, EnvVar{Name: k, Value: v})
	}
	return fn
}

// pyFn returns a Function running the Python worker with the system
// interpreter (a pyenv shim would add ~400ms per start).
func pyFn(t testing.TB, name string) *Function {
	t.Helper()
	py := "/usr/bin/python3"
	if _, err := os.Stat(py); err != nil {
		if py, err = exec.LookPath("python3"); err != nil {
			t.Fatal("python3 is missing: ./task test installs it")
		}
	}
	dir, err := filepath.Abs("testdata")
	if err != nil {
		t.Fatal(err)
	}
	return &Function{Name: name, Command: []string{py, "pyworker.py"}, Dir: dir, Scale: Scale{Min: 1, Target: DefaultTarget}}
}

// reply is the data of a test worker's reply event.
type reply struct {
	Worker      string   `json:"worker"`
	PID         int      `json:"pid"`
	Port        string   `json:"port"`
	Path        string   `json:"path"`
	ID          string   `json:"id"`
	Type        string   `json:"type"`
	MaxInflight int      `json:"max_inflight"`
	Env         []string `json:"env"`
	Version     string   `json:"version"`
	Cwd         string   `json:"cwd"`
	Ready       bool     `json:"ready"`
	ChildPID    int      `json:"child_pid"`
}

var eventSeq atomic.Int64

func newEvent(data any) event.Event {
	ev := event.New()
	ev.SetID("ev-" + strconv.FormatInt(eventSeq.Add(1), 10))
	ev.SetSource("/workers/test")
	ev.SetType("dev.weft.test")
	if err := ev.SetData(event.ApplicationJSON, data); err != nil {
		panic(err)
	}
	return ev
}

// send delivers an event with data and decodes the reply. It does not fail
// the test itself, so goroutines may call it.
func send(p *Pool, target string, data any) (*event.Event, reply, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return sendCtx(ctx, p, target, data)
}

func sendCtx(ctx context.Context, p *Pool, target string, data any) (*event.Event, reply, error) {
	var r reply
	ev, err := p.Deliver(ctx, target, newEvent(data))
	if err != nil {
		return nil, r, err
	}
	if ev == nil {
		return nil, r, errors.New("no reply event")
	}
	if err := json.Unmarshal(ev.Data(), &r); err != nil {
		return ev, r, fmt.Errorf("decode reply %s: %w", ev.Data(), err)
	}
	return ev, r, nil
}

func mustSend(t *testing.T, p *Pool, target string, data any) reply {
	t.Helper()
	_, r, err := send(p, target, data)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// gone reports whether no process has the pid: for the pool's own children,
// which the pool must reap.
func gone(pid int) bool {
	return errors.Is(syscall.Kill(pid, 0), syscall.ESRCH)
}

// dead reports whether pid is gone or a zombie: for orphans, which the
// machine's init reaps whenever it gets to it.
func dead(pid int) bool {
	if gone(pid) {
		return true
	}
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true
	}
	i := bytes.LastIndexByte(stat, ')') // the state follows the command name
	return i > 0 && i+2 < len(stat) && stat[i+2] == 'Z'
}

// instanceOf returns the status of the instance with pid.
func instanceOf(p *Pool, name string, pid int) (InstanceStatus, bool) {
	for _, in := range p.Instances(name) {
		if in.PID == pid {
			return in, true
		}
	}
	return InstanceStatus{}, false
}

func statusOf(t *testing.T, p *Pool, name string) FunctionStatus {
	t.Helper()
	for _, s := range p.Status() {
		if s.Name == name {
			return s
		}
	}
	t.Fatalf("no status for %s", name)
	return FunctionStatus{}
}
