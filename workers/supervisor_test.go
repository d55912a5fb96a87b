package workers

import (
	"bufio"
	"context"
	"errors"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/weft-dev/weft/internal/ceclient"
)

func TestCrashIsRestarted(t *testing.T) {
	p := startPool(t, Config{})
	for name, fn := range map[string]*Function{"go": goFn("crashy-go"), "python": pyFn(t, "crashy-py")} {
		t.Run(name, func(t *testing.T) {
			target := "function:" + fn.Name
			p.Apply(fn)
			before := mustSend(t, p, target, map[string]any{})

			_, _, err := send(p, target, map[string]any{"crash": true})
			if err == nil {
				t.Fatal("a request that crashed the worker succeeded")
			}
			if _, ok := ceclient.IsStatus(err); ok {
				t.Errorf("crash reported as a status: %v", err)
			}
			waitFor(t, 10*time.Second, func() bool {
				s := statusOf(t, p, fn.Name)
				return s.Restarts == 1 && s.State == StateReady
			})
			s := statusOf(t, p, fn.Name)
			if !strings.Contains(s.LastError, "exit status 3") || !slices.Contains(s.Stderr, "crashing on demand") {
				t.Errorf("status %+v, want the exit status and the stderr tail", s)
			}
			if !gone(before.PID) {
				t.Errorf("crashed pid %d still exists (not reaped?)", before.PID)
			}
			after := mustSend(t, p, target, map[string]any{})
			if after.PID == before.PID {
				t.Error("the same process answered after the crash")
			}
			if in := p.Instances(fn.Name); len(in) != 1 || in[0].Restarts != 1 || in[0].PID != after.PID {
				t.Errorf("instances %+v, want one restarted once", in)
			}
		})
	}
}

func TestCrashLoopBacksOff(t *testing.T) {
	backoff := Backoff{Initial: 20 * time.Millisecond, Max: 160 * time.Millisecond, Reset: time.Hour}
	p := startPool(t, Config{Backoff: backoff})
	p.Apply(goFn("loop", "CRASH_ON_START=1"))
	waitFor(t, 20*time.Second, func() bool { return statusOf(t, p, "loop").Restarts >= 6 })

	s := statusOf(t, p, "loop")
	if s.State != StateFailed {
		t.Errorf("state %s after %d failed starts, want failed", s.State, s.Restarts)
	}
	if !strings.Contains(s.LastError, "exit status 2") || !slices.Contains(s.Stderr, "crash on start") {
		t.Errorf("status %+v, want the exit status and the stderr tail", s)
	}
	// Each start prints a line; the gap between starts is at least the
	// backoff, which doubles up to the cap.
	var starts []time.Time
	for _, l := range p.Logs("loop") {
		if l.Stream == Stdout && strings.HasPrefix(l.Text, "worker starting") {
			starts = append(starts, l.Time)
		}
	}
	if len(starts) < 6 {
		t.Fatalf("%d starts logged, want ≥ 6", len(starts))
	}
	want := backoff.Initial
	for i := 1; i < 6; i++ {
		if gap := starts[i].Sub(starts[i-1]); gap < want {
			t.Errorf("restart %d came %v after the previous start, want ≥ %v", i, gap, want)
		}
		want = min(2*want, backoff.Max)
	}

	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	if _, _, err := sendCtx(ctx, p, "function:loop", map[string]any{}); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Deliver to a crash-looping function: %v, want it to wait until the deadline", err)
	}
}

func TestNextBackoff(t *testing.T) {
	b := Backoff{Initial: 100 * time.Millisecond, Max: time.Second, Reset: time.Minute}
	cases := []struct {
		prev, up, want time.Duration
	}{
		{0, 0, 100 * time.Millisecond},
		{100 * time.Millisecond, time.Second, 200 * time.Millisecond},
		{800 * time.Millisecond, time.Second, time.Second},
		{time.Second, time.Second, time.Second},
		{time.Second, time.Minute, 100 * time.Millisecond}, // stayed up: start over
	}
	for _, c := range cases {
		if got := nextBackoff(b, c.prev, c.up); got != c.want {
			t.Errorf("nextBackoff(prev %v, up %v) = %v, want %v", c.prev, c.up, got, c.want)
		}
	}
}

func TestReadinessTimeout(t *testing.T) {
	p := startPool(t, Config{StopGrace: 100 * time.Millisecond})
	fn := &Function{Name: "mute", Command: []string{"sleep", "60"}, Dir: t.TempDir(), Scale: Scale{Min: 1, Target: 1}}
	fn.Readiness.Timeout = 100 * time.Millisecond
	p.Apply(fn)
	waitFor(t, 10*time.Second, func() bool { return statusOf(t, p, "mute").Restarts >= 2 })
	if s := statusOf(t, p, "mute"); !strings.Contains(s.LastError, "not ready within 100ms") {
		t.Errorf("last error %q, want the readiness timeout", s.LastError)
	}
}

func TestStartFailureIsReported(t *testing.T) {
	p := startPool(t, Config{})
	cases := map[string]struct {
		command []string
		want    string
	}{
		"missing program": {[]string{"./no-such-program"}, "no-such-program"},
		"no command":      {nil, "no command"}, // a hand-built Function; Parse refuses it
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			fn := &Function{Name: strings.ReplaceAll(name, " ", "-"), Command: c.command, Dir: t.TempDir(), Scale: Scale{Min: 1, Target: 1}}
			p.Apply(fn)
			waitFor(t, 10*time.Second, func() bool { return statusOf(t, p, fn.Name).Restarts >= 1 })
			if s := statusOf(t, p, fn.Name); !strings.Contains(s.LastError, c.want) || s.State != StateCrashLoop && s.State != StateFailed && s.State != StateStarting {
				t.Errorf("status %+v, want a crash loop whose error names %q", s, c.want)
			}
		})
	}
}

// TestPdeathsig kills a process running a Pool with SIGKILL, so the pool
// cannot stop its worker; the kernel must (Pdeathsig).
func TestPdeathsig(t *testing.T) {
	helper := exec.Command(os.Args[0])
	helper.Env = append(os.Environ(), helperEnv+"=pdeathsig", workerEnv+"="+goWorker)
	helper.Stderr = os.Stderr
	out, err := helper.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := helper.Start(); err != nil {
		t.Fatal(err)
	}
	pids := make(chan int, 1)
	go func() {
		defer close(pids)
		line, _ := bufio.NewReader(out).ReadString('\n')
		if pid, err := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(line, "pid="))); err == nil {
			pids <- pid
		}
	}()
	var pid int
	select {
	case pid = <-pids:
	case <-time.After(30 * time.Second):
	}
	_ = helper.Process.Signal(syscall.SIGKILL)
	_ = helper.Wait()
	if pid == 0 {
		t.Fatal("helper reported no worker pid")
	}
	waitFor(t, 10*time.Second, func() bool { return dead(pid) })
}

// TestWorkersSurviveThreadExits guards the spawner: Pdeathsig fires when the
// forking OS thread exits, so a worker forked from an ordinary goroutine dies
// whenever the runtime retires that thread. Goroutines that exit while
// locked to their thread make the runtime retire threads here.
func TestWorkersSurviveThreadExits(t *testing.T) {
	p := startPool(t, Config{})
	p.Apply(goFn("sturdy"))
	before := mustSend(t, p, "function:sturdy", map[string]any{})
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			runtime.LockOSThread() // never unlocked: the thread exits with the goroutine
		})
	}
	wg.Wait()
	after := mustSend(t, p, "function:sturdy", map[string]any{})
	if after.PID != before.PID || statusOf(t, p, "sturdy").Restarts != 0 {
		t.Errorf("worker pid %d → %d, restarts %d: it died with a thread", before.PID, after.PID, statusOf(t, p, "sturdy").Restarts)
	}
}
