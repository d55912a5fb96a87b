package workers

import (
	"context"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

func texts(lines []LogLine) []string {
	out := make([]string, len(lines))
	for i, l := range lines {
		out[i] = l.Text
	}
	return out
}

func TestLogBufferRing(t *testing.T) {
	b := newLogBuffer(3)
	for i := 1; i <= 5; i++ {
		b.add(LogLine{Text: strconv.Itoa(i), Stream: Stderr, Instance: "f-" + strconv.Itoa(i%2)})
	}
	got := b.lines()
	if !slices.Equal(texts(got), []string{"3", "4", "5"}) || got[0].Seq != 3 || got[2].Seq != 5 {
		t.Errorf("ring holds %+v, want lines 3..5 numbered 3..5", got)
	}
	if tail := b.tail("f-1", 5); !slices.Equal(tail, []string{"3", "5"}) {
		t.Errorf("tail of f-1 = %q, want [3 5]", tail)
	}
	if tail := b.tail("", 2); !slices.Equal(tail, []string{"4", "5"}) {
		t.Errorf("tail = %q, want [4 5]", tail)
	}
}

func TestFollowDropsOldestForSlowReaders(t *testing.T) {
	b := newLogBuffer(10)
	ctx, cancel := context.WithCancel(t.Context())
	ch := b.follow(ctx)
	for i := 1; i <= followBuffer+5; i++ {
		b.add(LogLine{Text: strconv.Itoa(i)})
	}
	first := <-ch
	if first.Seq != 6 {
		t.Errorf("a reader %d lines behind first gets line %d, want 6 (the oldest dropped)", followBuffer+5, first.Seq)
	}
	cancel()
	deadline := time.After(5 * time.Second)
	for {
		select {
		case _, ok := <-ch:
			if !ok {
				return // closed once ctx ended
			}
		case <-deadline:
			t.Fatal("Follow channel not closed after its context ended")
		}
	}
}

func TestFollowEndsWhenBufferCloses(t *testing.T) {
	b := newLogBuffer(10)
	ch := b.follow(t.Context())
	b.close()
	if _, ok := <-ch; ok {
		t.Error("got a line from a closed buffer")
	}
	if _, ok := <-b.follow(t.Context()); ok {
		t.Error("following a closed buffer returned an open channel")
	}
}

func TestLineWriter(t *testing.T) {
	b := newLogBuffer(100)
	w := &lineWriter{buf: b, log: slog.New(slog.DiscardHandler), function: "f", instance: "f-1", stream: Stdout}
	long := strings.Repeat("x", maxLineBytes+10)
	for _, chunk := range []string{"hel", "lo\r\nwor", "ld\n\n", long + "\n", "tail"} {
		if n, err := w.Write([]byte(chunk)); n != len(chunk) || err != nil {
			t.Fatalf("Write = %d, %v", n, err)
		}
	}
	w.flush()
	want := []string{"hello", "world", "", strings.Repeat("x", maxLineBytes), "xxxxxxxxxx", "tail"}
	if got := texts(b.lines()); !slices.Equal(got, want) {
		t.Errorf("lines %q, want %q", got, want)
	}
	if l := b.lines()[0]; l.Function != "f" || l.Instance != "f-1" || l.Stream != Stdout || l.Time.IsZero() {
		t.Errorf("line metadata %+v", l)
	}
}

func TestLogsCapture(t *testing.T) {
	p := startPool(t, Config{})
	for name, fn := range map[string]*Function{"go": goFn("chatty-go"), "python": pyFn(t, "chatty-py")} {
		t.Run(name, func(t *testing.T) {
			p.Apply(fn)
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			follow := p.Follow(ctx, fn.Name)
			mustSend(t, p, "function:"+fn.Name, map[string]any{"stdout": "hello out", "stderr": "hello err"})

			var out, errLine LogLine
			waitFor(t, 10*time.Second, func() bool {
				for _, l := range p.Logs(fn.Name) {
					switch l.Text {
					case "hello out":
						out = l
					case "hello err":
						errLine = l
					}
				}
				return out.Seq != 0 && errLine.Seq != 0
			})
			id := p.Instances(fn.Name)[0].ID
			if out.Stream != Stdout || errLine.Stream != Stderr || out.Instance != id || errLine.Instance != id || out.Function != fn.Name {
				t.Errorf("lines %+v and %+v, want stdout and stderr of %s", out, errLine, id)
			}
			deadline := time.After(10 * time.Second)
			for got := false; !got; {
				select {
				case l := <-follow:
					got = l.Text == "hello out"
				case <-deadline:
					t.Fatal("Follow did not deliver the line")
				}
			}
		})
	}
	closed := p.Follow(t.Context(), "nope")
	if _, ok := <-closed; ok {
		t.Error("Follow of an unknown function gave an open channel")
	}
}
