package workers

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/weft-dev/weft/internal/ceclient"
)

// benchPool runs a pool for a benchmark and stops it when it ends.
func benchPool(b *testing.B) *Pool {
	b.Helper()
	p := New(Config{StopGrace: 2 * time.Second}, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	b.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			b.Errorf("Run: %v", err)
		}
	})
	<-p.Ready()
	return p
}

// BenchmarkColdStart reports how long an event waits for a function that has
// no process (min 0): weft starts one, waits for its port and delivers —
// next to the same process started by hand, its port polled the same way,
// and the same request sent, in the same run. cold-ms is per cold start;
// compare the weft and by-hand rows as a ratio.
func BenchmarkColdStart(b *testing.B) {
	langs := []struct {
		name string
		fn   func(name string) *Function
	}{
		{"go", func(name string) *Function { return goFn(name) }},
		{"python", func(name string) *Function { return pyFn(b, name) }},
	}
	for _, lang := range langs {
		b.Run(lang.name+"/weft", func(b *testing.B) {
			p := benchPool(b)
			i := 0
			for b.Loop() {
				i++
				fn := lang.fn("cold-" + strconv.Itoa(i))
				fn.Scale.Min = 0
				p.Apply(fn)
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				_, err := p.Deliver(ctx, "function:"+fn.Name, newEvent(map[string]any{}))
				cancel()
				if err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				p.Remove(fn.Name) // stops in the background, outside the timed part
				b.StartTimer()
			}
			b.ReportMetric(float64(b.Elapsed().Milliseconds())/float64(b.N), "cold-ms")
		})
		b.Run(lang.name+"/by-hand", func(b *testing.B) {
			client := &http.Client{Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}
			for b.Loop() {
				fn := lang.fn("by-hand")
				port := freePort(b)
				cmd := exec.Command(fn.Command[0], fn.Command[1:]...)
				cmd.Dir = fn.Dir
				cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "PORT=" + strconv.Itoa(port)}
				cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
				if err := cmd.Start(); err != nil {
					b.Fatal(err)
				}
				addr := "127.0.0.1:" + strconv.Itoa(port)
				for {
					c, err := net.DialTimeout("tcp", addr, time.Second)
					if err == nil {
						c.Close()
						break
					}
					runtime.Gosched() // poll as tightly as weft's probe loop may
				}
				if _, err := ceclient.Send(context.Background(), client, "http://"+addr+"/", newEvent(map[string]any{})); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
				_ = cmd.Wait()
				b.StartTimer()
			}
			b.ReportMetric(float64(b.Elapsed().Milliseconds())/float64(b.N), "cold-ms")
		})
	}
}

func freePort(tb testing.TB) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// BenchmarkIdleFunctionMemory reports the heap weft keeps per applied
// function that is scaled to zero (its state, autoscaler windows and log
// ring), measured over 1,000 functions.
func BenchmarkIdleFunctionMemory(b *testing.B) {
	const n = 1000
	var perFn float64
	for b.Loop() {
		p := New(Config{}, nil)
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		for i := range n {
			fn := goFn(fmt.Sprintf("idle-%d", i))
			fn.Scale.Min = 0
			p.Apply(fn)
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		perFn = float64(after.HeapAlloc-before.HeapAlloc) / n
		runtime.KeepAlive(p)
	}
	b.ReportMetric(perFn, "B/function")
}
