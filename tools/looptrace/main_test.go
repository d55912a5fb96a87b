package main

import (
	"bytes"
	"os"
	"path/filepath"
	"runtime/trace"
	"strings"
	"testing"
	"time"
)

// loopUnderTest waits twice for work (a timer's tick, pause long) and
// fsyncs a file once, as a stream's loop does, so that the trace has each
// state to find.
func loopUnderTest(file *os.File, pause time.Duration, done chan<- struct{}) {
	for range 2 {
		<-time.After(pause)
	}
	_, _ = file.Write([]byte("x"))
	_ = file.Sync()
	close(done)
}

// TestSummarize: a traced goroutine's waits and fsync are found under its
// function, and other goroutines are left out.
func TestSummarize(t *testing.T) {
	file, err := os.Create(filepath.Join(t.TempDir(), "f"))
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()
	var buf bytes.Buffer
	if err := trace.Start(&buf); err != nil {
		t.Fatal(err)
	}
	const pause = 20 * time.Millisecond
	done := make(chan struct{})
	go loopUnderTest(file, pause, done)
	<-done
	trace.Stop()

	span, gs, err := summarize(&buf, "loopUnderTest")
	if err != nil {
		t.Fatal(err)
	}
	if len(gs) != 1 {
		t.Fatalf("%d goroutines found, want the one running loopUnderTest", len(gs))
	}
	g := gs[0]
	if len(g.waits) < 2 || g.states["waiting"] < 2*pause {
		t.Errorf("waits %v, %v waiting in all; want two of at least %v", g.waits, g.states["waiting"], pause)
	}
	if len(g.syscalls["Fsync"]) != 1 {
		t.Errorf("fsync calls %v, want one (system calls: %v)", g.syscalls["Fsync"], g.syscalls)
	}
	if span < 2*pause {
		t.Errorf("span %v, shorter than the goroutine's waits", span)
	}
	var out strings.Builder
	g.write(&out, span)
	for _, want := range []string{"waiting", "syscall Fsync", "waits for work:  2,"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, out.String())
		}
	}

	if _, gs, err := summarize(bytes.NewReader(nil), "x"); err == nil || gs != nil {
		t.Errorf("an empty trace: %v, %v; want an error", gs, err)
	}
}
