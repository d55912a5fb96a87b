// Command looptrace sums, from a Go execution trace, where chosen goroutines
// spent their time: on a CPU, runnable, waiting, and in each system call.
// docs/performance.md uses it on nats-server's stream loop, the goroutine
// that stores and fsyncs every event of a stream:
//
//	curl -so trace.out 'http://127.0.0.1:8080/debug/pprof/trace?seconds=2'
//	cd tools && go run ./looptrace ../trace.out
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"golang.org/x/exp/trace"
)

func main() {
	match := flag.String("func", "(*stream).internalLoop", "the goroutines whose stacks hold a function with this in its name")
	flag.Usage = func() {
		fmt.Fprintln(flag.CommandLine.Output(), "usage: looptrace [-func NAME] TRACE")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() != 1 {
		flag.Usage()
		os.Exit(2)
	}
	f, err := os.Open(flag.Arg(0))
	if err != nil {
		fmt.Fprintln(os.Stderr, "looptrace:", err)
		os.Exit(1)
	}
	defer f.Close()
	span, gs, err := summarize(f, *match)
	if err != nil {
		fmt.Fprintf(os.Stderr, "looptrace: %s: %v\n", flag.Arg(0), err)
		os.Exit(1)
	}
	if len(gs) == 0 {
		fmt.Fprintf(os.Stderr, "looptrace: no goroutine ran a function named like %q\n", *match)
		os.Exit(1)
	}
	fmt.Printf("trace of %v\n", span.Round(time.Millisecond))
	for _, g := range gs {
		g.write(os.Stdout, span)
	}
}

// goroutine is where one goroutine spent the trace.
type goroutine struct {
	id       trace.GoID
	states   map[string]time.Duration // "running", "waiting", "syscall Fsync", …
	waits    []time.Duration          // each wait for work, in order
	syscalls map[string][]time.Duration
}

// summarize reads a trace and returns its span and, for every goroutine
// whose stack ever held a function named like match, its time by state.
func summarize(r io.Reader, match string) (time.Duration, []*goroutine, error) {
	tr, err := trace.NewReader(r)
	if err != nil {
		return 0, nil, err
	}
	type track struct {
		g       *goroutine
		since   trace.Time
		syscall string // the call it is in, when in one
		matched bool
	}
	tracks := map[trace.GoID]*track{}
	var first, last trace.Time
	for {
		ev, err := tr.ReadEvent()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return 0, nil, err
		}
		if first == 0 {
			first = ev.Time()
		}
		last = ev.Time()
		if ev.Kind() != trace.EventStateTransition {
			continue
		}
		st := ev.StateTransition()
		if st.Resource.Kind != trace.ResourceGoroutine {
			continue
		}
		id := st.Resource.Goroutine()
		t := tracks[id]
		if t == nil {
			t = &track{g: &goroutine{id: id, states: map[string]time.Duration{}, syscalls: map[string][]time.Duration{}}}
			tracks[id] = t
		}
		from, to := st.Goroutine()
		if t.since != 0 {
			d := ev.Time().Sub(t.since)
			switch {
			case from == trace.GoSyscall:
				name := "syscall " + t.syscall
				t.g.states[name] += d
				t.g.syscalls[t.syscall] = append(t.g.syscalls[t.syscall], d)
			case from == trace.GoWaiting:
				t.g.states["waiting"] += d
				t.g.waits = append(t.g.waits, d)
			default:
				t.g.states[strings.ToLower(from.String())] += d
			}
		}
		t.since, t.syscall = ev.Time(), ""
		if to == trace.GoSyscall {
			t.syscall = "?"
			for fr := range ev.Stack().Frames() {
				t.syscall = fr.Func[strings.LastIndexByte(fr.Func, '.')+1:]
				break
			}
		}
		for fr := range st.Stack.Frames() {
			if strings.Contains(fr.Func, match) {
				t.matched = true
			}
		}
	}
	var gs []*goroutine
	for _, t := range tracks {
		if t.matched {
			gs = append(gs, t.g)
		}
	}
	slices.SortFunc(gs, func(a, b *goroutine) int { return int(a.id - b.id) })
	return last.Sub(first), gs, nil
}

func (g *goroutine) write(w io.Writer, span time.Duration) {
	fmt.Fprintf(w, "goroutine %d\n", g.id)
	names := make([]string, 0, len(g.states))
	for name := range g.states {
		names = append(names, name)
	}
	slices.SortFunc(names, func(a, b string) int { return int(g.states[b] - g.states[a]) })
	for _, name := range names {
		d := g.states[name]
		if d == 0 {
			continue
		}
		fmt.Fprintf(w, "  %-22s %9.1f ms %5.1f %%\n", name, float64(d)/1e6, 100*float64(d)/float64(span))
	}
	if len(g.waits) > 0 {
		fmt.Fprintf(w, "  waits for work:  %s\n", quantiles(g.waits))
	}
	for _, name := range []string{"Fsync", "Fdatasync"} {
		// Calls under 20 µs did not reach a disk (a tmpfs, a clean file).
		var disk []time.Duration
		for _, d := range g.syscalls[name] {
			if d >= 20*time.Microsecond {
				disk = append(disk, d)
			}
		}
		if len(disk) > 0 {
			fmt.Fprintf(w, "  %s of 20 µs or more: %s\n", name, quantiles(disk))
		}
	}
}

// quantiles describes ds: how many, and their p50, p90 and p99.
func quantiles(ds []time.Duration) string {
	s := slices.Clone(ds)
	slices.Sort(s)
	at := func(q float64) time.Duration { return s[int(q*float64(len(s)-1))].Round(time.Microsecond) }
	return fmt.Sprintf("%d, p50 %v, p90 %v, p99 %v", len(s), at(0.5), at(0.9), at(0.99))
}
