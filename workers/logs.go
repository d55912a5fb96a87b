package workers

import (
	"bytes"
	"context"
	"log/slog"
	"sync"
	"time"
)

// Stream names the output a log line came from.
type Stream string

// The streams of a worker process.
const (
	Stdout Stream = "stdout"
	Stderr Stream = "stderr"
)

// LogLine is one line a worker printed, without its newline.
type LogLine struct {
	// Seq numbers the lines of one function from 1, without gaps, in the
	// order they were captured; a reader joining Logs and Follow uses it to
	// skip lines it has already seen.
	Seq      uint64    `json:"seq"`
	Time     time.Time `json:"time"`
	Function string    `json:"function"`
	Instance string    `json:"instance"`
	Stream   Stream    `json:"stream"`
	Text     string    `json:"text"`
}

const (
	// maxLineBytes splits longer lines so one chatty worker cannot make a
	// log line (and the ring holding it) unbounded.
	maxLineBytes = 8 << 10
	// followBuffer is how many lines a Follow channel holds for a slow
	// reader before the oldest are dropped.
	followBuffer = 256
	// stderrTail is how many stderr lines a failure report keeps.
	stderrTail = 20
)

// logBuffer is the bounded ring of one function's output plus its live
// followers. It is safe for concurrent use.
type logBuffer struct {
	mu        sync.Mutex
	ring      []LogLine // grows to size lines (not preallocated: an idle function costs little); once full, next is the oldest slot
	size      int
	next      int
	seq       uint64
	followers map[*follower]struct{}
	closed    bool
}

type follower struct {
	ch   chan LogLine
	stop func() bool // unregisters the context.AfterFunc that ends the follow
}

func newLogBuffer(size int) *logBuffer {
	return &logBuffer{size: size, followers: map[*follower]struct{}{}}
}

// add numbers l, stores it, dropping the oldest line when full, and offers it
// to every follower without blocking: a follower whose channel is full loses
// its oldest unread line instead, so a slow reader never stalls a worker.
func (b *logBuffer) add(l LogLine) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.seq++
	l.Seq = b.seq
	if len(b.ring) < b.size {
		b.ring = append(b.ring, l)
	} else {
		b.ring[b.next] = l
		b.next = (b.next + 1) % len(b.ring)
	}
	for f := range b.followers {
		offer(f.ch, l)
	}
}

// offer sends l on ch, discarding the oldest buffered line when ch is full.
// Callers hold the buffer's lock, so no other sender races for the freed slot.
func offer(ch chan LogLine, l LogLine) {
	for {
		select {
		case ch <- l:
			return
		default:
		}
		select {
		case <-ch:
		default:
		}
	}
}

// lines returns a copy of the stored lines, oldest first.
func (b *logBuffer) lines() []LogLine {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([]LogLine, 0, len(b.ring))
	out = append(out, b.ring[b.next:]...)
	return append(out, b.ring[:b.next]...)
}

// tail returns the last n stderr lines of instance (of any instance when
// instance is empty), oldest first.
func (b *logBuffer) tail(instance string, n int) []string {
	all := b.lines()
	var out []string
	for i := len(all) - 1; i >= 0 && len(out) < n; i-- {
		if all[i].Stream == Stderr && (instance == "" || all[i].Instance == instance) {
			out = append(out, all[i].Text)
		}
	}
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return out
}

// follow returns a channel of lines added from now on. It is closed when ctx
// ends or the buffer is closed.
func (b *logBuffer) follow(ctx context.Context) <-chan LogLine {
	f := &follower{ch: make(chan LogLine, followBuffer)} // bounded; see offer
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		close(f.ch)
		return f.ch
	}
	b.followers[f] = struct{}{}
	// AfterFunc runs the unfollow in its own goroutine once ctx ends; close
	// stops it when the buffer goes first, so none outlives both.
	f.stop = context.AfterFunc(ctx, func() { b.unfollow(f) })
	return f.ch
}

func (b *logBuffer) unfollow(f *follower) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.followers[f]; ok {
		delete(b.followers, f)
		close(f.ch)
	}
}

// close ends every follow; later follows get a closed channel. Lines may
// still be added (a draining process of a removed function) and are kept.
func (b *logBuffer) close() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.closed = true
	for f := range b.followers {
		f.stop()
		delete(b.followers, f)
		close(f.ch)
	}
}

// lineWriter turns one output stream of one process into LogLines. os/exec
// calls Write from a single copying goroutine and Cmd.Wait waits for it, so
// lineWriter needs no lock: flush runs after Wait.
type lineWriter struct {
	buf      *logBuffer
	log      *slog.Logger
	function string
	instance string
	stream   Stream
	partial  []byte
}

func (w *lineWriter) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			w.partial = append(w.partial, p...)
			for len(w.partial) >= maxLineBytes {
				w.emit(w.partial[:maxLineBytes])
				w.partial = append(w.partial[:0], w.partial[maxLineBytes:]...)
			}
			break
		}
		w.partial = append(w.partial, p[:i]...)
		w.emit(w.partial)
		w.partial = w.partial[:0]
		p = p[i+1:]
	}
	return n, nil
}

// flush emits a last line that had no newline.
func (w *lineWriter) flush() {
	if len(w.partial) > 0 {
		w.emit(w.partial)
		w.partial = nil
	}
}

func (w *lineWriter) emit(line []byte) {
	for len(line) > maxLineBytes { // a single Write may bring a long line at once
		w.emit(line[:maxLineBytes])
		line = line[maxLineBytes:]
	}
	text := string(bytes.TrimSuffix(line, []byte("\r")))
	w.buf.add(LogLine{Time: time.Now(), Function: w.function, Instance: w.instance, Stream: w.stream, Text: text})
	w.log.Debug("worker output", "stream", string(w.stream), "line", text)
}
