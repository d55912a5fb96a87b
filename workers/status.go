package workers

import (
	"context"
	"sort"
	"time"
)

// State is the condition of a function or of one instance.
type State string

// States of functions (F) and instances (I).
const (
	// StateStarting (F, I): no instance is ready yet / the process runs but
	// is not ready yet.
	StateStarting State = "starting"
	// StateReady (F, I): all desired instances are ready / the instance
	// takes requests.
	StateReady State = "ready"
	// StateDegraded (F): some but fewer than the desired instances are ready.
	StateDegraded State = "degraded"
	// StateUpdating (F): a changed spec's instances are starting while the
	// previous ones keep serving.
	StateUpdating State = "updating"
	// StateCrashLoop (F): an instance of the current spec failed and waits
	// to restart, and no instance of the current spec is ready.
	StateCrashLoop State = "crashloop"
	// StateFailed (F): the current spec's instances failed failedAfter times
	// in a row without ever becoming ready (a function that crashes on
	// start); weft keeps retrying with backoff, events wait for it (or
	// dead-letter per their trigger's policy), and LastError and Stderr say
	// why.
	StateFailed State = "failed"
	// StateBackoff (I): the process failed; it restarts after a backoff.
	StateBackoff State = "backoff"
	// StateDraining (I): asked to stop; it takes no new requests and is
	// signalled once those in flight finished.
	StateDraining State = "draining"
	// StateIdle (F): scaled to zero; the next event starts an instance.
	StateIdle State = "idle"
	// StateStopped (F, I): the pool is not running / the instance is gone.
	StateStopped State = "stopped"
)

// failedAfter is how many failures in a row, without the instance ever
// becoming ready, mark a function failed rather than crash-looping.
const failedAfter = 5

// FunctionStatus is a snapshot of one function, for `weft get functions`.
type FunctionStatus struct {
	Name  string `json:"name"`
	State State  `json:"state"`
	// Desired is the number of instances the pool aims for.
	Desired int `json:"desired"`
	// Ready counts the instances taking requests.
	Ready int `json:"ready"`
	// InFlight counts the requests being handled by any instance.
	InFlight int `json:"inFlight"`
	// Restarts counts process failures since the function was applied.
	Restarts int `json:"restarts"`
	// LastError says why the last failed process ended ("instance f-1:
	// exited after 2s: exit status 3"); empty when none failed.
	LastError string `json:"lastError,omitempty"`
	// Stderr holds the last stderr lines (up to 20) of the last failed
	// process, or of the function's processes when none failed.
	Stderr []string `json:"stderr,omitempty"`
	// Waiting counts requests the activator holds until a slot is free.
	Waiting int `json:"waiting"`
	// Panic reports whether the autoscaler is in panic mode.
	Panic bool `json:"panic"`
	// Decisions are the latest changes of Desired with their reasons, oldest
	// first.
	Decisions []Decision `json:"decisions,omitempty"`
}

// InstanceStatus is a snapshot of one instance.
type InstanceStatus struct {
	ID    string `json:"id"`
	State State  `json:"state"`
	// Generation counts the changed specs applied to the function; an
	// instance of an older generation is being replaced.
	Generation int `json:"generation"`
	// PID and Port are those of the current process, 0 between processes.
	PID      int       `json:"pid,omitempty"`
	Port     int       `json:"port,omitempty"`
	InFlight int       `json:"inFlight"`
	Restarts int       `json:"restarts"`
	Started  time.Time `json:"started,omitzero"`
	// LastError says why this instance's last process failed.
	LastError string `json:"lastError,omitempty"`
}

// Status returns a snapshot of every applied function, sorted by name.
func (p *Pool) Status() []FunctionStatus {
	p.mu.Lock()
	out := make([]FunctionStatus, 0, len(p.fns))
	logs := make([]*logBuffer, 0, len(p.fns))
	for _, fs := range p.fns {
		out = append(out, p.statusLocked(fs))
		logs = append(logs, fs.logs)
	}
	p.mu.Unlock()
	for i := range out {
		if out[i].Stderr == nil { // outside Pool.mu: reading the ring copies it
			out[i].Stderr = logs[i].tail("", stderrTail)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

func (p *Pool) statusLocked(fs *fnState) FunctionStatus {
	st := FunctionStatus{
		Name:      fs.name,
		Panic:     fs.panic,
		Desired:   fs.desired,
		Waiting:   fs.waiting,
		Decisions: append([]Decision(nil), fs.decisions...),
		Restarts:  fs.restarts,
		LastError: fs.lastErr,
		Stderr:    append([]string(nil), fs.lastTail...),
	}
	var readyCur, backoffCur, old, streak int
	for _, in := range fs.instances {
		st.InFlight += in.inflight
		if in.stopping {
			continue
		}
		cur := in.gen == fs.gen
		if !cur {
			old++
		}
		if in.state == StateReady {
			st.Ready++
			if cur {
				readyCur++
			}
		}
		if cur && in.state == StateBackoff {
			backoffCur++
		}
		if cur {
			streak = max(streak, in.failStreak)
		}
	}
	switch {
	case p.state != poolRunning:
		st.State = StateStopped
	case readyCur == 0 && streak >= failedAfter:
		st.State = StateFailed
	case backoffCur > 0 && readyCur == 0:
		st.State = StateCrashLoop
	case old > 0:
		st.State = StateUpdating
	case st.Desired == 0 && st.Ready == 0:
		st.State = StateIdle
	case st.Ready >= st.Desired:
		st.State = StateReady
	case st.Ready > 0:
		st.State = StateDegraded
	default:
		st.State = StateStarting
	}
	return st
}

// Instances returns a snapshot of the function's live instances in start
// order, including those draining; nil for an unknown function.
func (p *Pool) Instances(name string) []InstanceStatus {
	p.mu.Lock()
	defer p.mu.Unlock()
	fs := p.fns[name]
	if fs == nil {
		return nil
	}
	out := make([]InstanceStatus, 0, len(fs.instances))
	for _, in := range fs.instances {
		out = append(out, InstanceStatus{
			ID: in.id, State: in.state, Generation: in.gen, PID: in.pid, Port: in.port,
			InFlight: in.inflight, Restarts: in.restarts, Started: in.started, LastError: in.lastErr,
		})
	}
	return out
}

// Logs returns the function's captured output, oldest first: at most
// Config.LogLines lines, across all its instances. Nil for an unknown
// function.
func (p *Pool) Logs(name string) []LogLine {
	p.mu.Lock()
	fs := p.fns[name]
	p.mu.Unlock()
	if fs == nil {
		return nil
	}
	return fs.logs.lines()
}

// Follow returns a channel of the function's output lines captured from now
// on. The channel holds up to 256 unread lines; when a reader falls further
// behind, the oldest unread lines are dropped (visible as gaps in
// LogLine.Seq) so that a slow reader never slows a worker down. It is closed
// when ctx ends, the function is removed or the pool stops, and returned
// already closed for an unknown function. To show history first without a
// gap, call Follow, then Logs, and skip lines of Follow whose Seq is not
// above the last one of Logs.
func (p *Pool) Follow(ctx context.Context, name string) <-chan LogLine {
	p.mu.Lock()
	fs := p.fns[name]
	p.mu.Unlock()
	if fs == nil {
		ch := make(chan LogLine)
		close(ch)
		return ch
	}
	return fs.logs.follow(ctx)
}
