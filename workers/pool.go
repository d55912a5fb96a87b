package workers

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"

	"github.com/weft-dev/weft/internal/ceclient"
	"github.com/weft-dev/weft/internal/resource"
)

// Config configures a Pool. The zero value is usable: every zero or negative
// duration or size takes the default its comment names.
type Config struct {
	// ProxyURL is set as HTTP_PROXY and http_proxy in every worker's
	// environment, normally the router's "http://127.0.0.1:PORT". Empty
	// leaves both unset.
	ProxyURL string
	// ReadyTimeout bounds how long a new process may take to become ready
	// when its Function sets no readiness.timeout. Default 60s, since a
	// `go run .` compiles first.
	ReadyTimeout time.Duration
	// StopGrace is the time between SIGTERM and SIGKILL when a process is
	// stopped. Default 10s.
	StopGrace time.Duration
	// DrainTimeout bounds how long a stopping instance waits for its
	// in-flight requests before it is signalled; a Function's timeout, when
	// longer, is used instead. Default 30s.
	DrainTimeout time.Duration
	// Backoff paces the restarts of failing instances.
	Backoff Backoff
	// LogLines is how many lines of output the pool keeps per function.
	// Default 1000.
	LogLines int
	// Backlog, when set, reports how many events of a function's triggers
	// wait in the broker, not yet handed to any instance; the autoscaler adds
	// them to the demand so a queue grows the pool before requests are in
	// flight. It is called once per SampleEvery per function, without locks
	// held, and must be safe for concurrent use.
	Backlog Backlog
	// Identities, when set, gives each function's processes their identity:
	// extra environment (certificate files, proxy credentials) that replaces
	// weft's defaults of the same name. A failure fails the start.
	Identities Identities
	// Meter, when set, is told of every request to an instance and of every
	// process started and ended. Nil meters nothing.
	Meter *Meter
	// SampleEvery is how often the autoscaler observes each function's
	// demand; it decides every AutoscaleTick. Default 1s.
	SampleEvery time.Duration
	// Transport carries deliveries to instances (plain HTTP on loopback,
	// keep-alive). Nil: an http.Transport without proxy or compression.
	Transport http.RoundTripper
}

// Identities hands out a function's identity; see Config.Identities. uid and
// gid are the account its processes run as, -1 when weft's own. Forget is
// told when a function is removed.
type Identities interface {
	Env(function string, uid, gid int) (map[string]string, error)
	Forget(function string)
}

// Backlog reports a function's waiting events; see Config.Backlog.
type Backlog interface {
	Backlog(function string) int
}

// maxDecisions is how many scaling decisions a function's status keeps.
const maxDecisions = 20

// Backoff paces restarts: the first restart waits Initial, each further one
// twice as long up to Max, and an instance that stayed up for Reset starts
// over at Initial.
type Backoff struct {
	Initial time.Duration // default 100ms
	Max     time.Duration // default 30s
	Reset   time.Duration // default 60s
}

func (c Config) withDefaults() Config {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&c.ReadyTimeout, 60*time.Second)
	def(&c.StopGrace, 10*time.Second)
	def(&c.DrainTimeout, 30*time.Second)
	def(&c.Backoff.Initial, 100*time.Millisecond)
	def(&c.Backoff.Max, 30*time.Second)
	def(&c.Backoff.Reset, 60*time.Second)
	c.Backoff.Max = max(c.Backoff.Max, c.Backoff.Initial)
	if c.LogLines <= 0 {
		c.LogLines = 1000
	}
	def(&c.SampleEvery, time.Second)
	return c
}

type poolState int

const (
	poolIdle poolState = iota
	poolRunning
	poolDraining // Drain was called: nothing new starts, see Drain
	poolStopped
)

// Pool runs the instances of every applied Function and delivers events to
// them. Create it with New, start it with Run; Apply, Remove, Deliver,
// Status, Instances, Logs and Follow are safe for concurrent use at any time,
// before, during or after Run. Functions applied before Run start when Run
// does.
//
// Lock order: Pool.mu, then a function's log buffer lock. A process's own
// lock is never held together with either.
type Pool struct {
	cfg         Config
	log         *slog.Logger
	client      *http.Client // deliveries: keep-alive per instance, no proxy
	probeClient *http.Client // readiness probes: no keep-alive, no proxy

	spawnc chan spawnRequest // unbuffered: requests go straight to the spawner
	ready  chan struct{}     // closed when Run has started
	quit   chan struct{}     // closed when Run's context ended
	wg     sync.WaitGroup    // supervisors, process watchers and rollouts

	mu    sync.Mutex
	state poolState
	fns   map[string]*fnState
	ports map[int]bool // held by live processes; see reservePort
	// identq holds new functions whose identity is not issued yet;
	// preparing is set while a goroutine issues them (see prepareIdentities).
	identq    []*fnState
	preparing bool
}

// fnState is one applied function; its fields are guarded by Pool.mu.
type fnState struct {
	name      string
	spec      *Function
	gen       int         // counts changed specs; instances of older ones are being replaced
	instances []*instance // live instances of every generation, in start order
	seq       int         // numbers instance IDs
	rr        int         // rotates the first candidate so equal loads spread
	restarts  int
	lastErr   string
	lastTail  []string
	logs      *logBuffer // set once; has its own lock
	changed   chan struct{}

	scaler      *Autoscaler // rebuilt when the spec's scale settings change
	desired     int         // the autoscaler's last decision: instances of the current spec to run
	waiting     int         // Deliver calls waiting for a slot: the requests the activator holds
	backlog     int         // the broker's backlog of the function's triggers at the last sample
	burstDemand int         // the demand burstLocked last observed since the last sample
	panic       bool        // the autoscaler's mode at its last decision
	decisions   []Decision  // the latest changes of desired, oldest first, at most maxDecisions
}

// setDesiredLocked records a decision that changes the instance count and
// reconciles toward it.
func (p *Pool) setDesiredLocked(fs *fnState, d Decision) {
	if d.Desired == fs.desired {
		return
	}
	p.log.Info("function scaled", "function", fs.name, "from", fs.desired, "to", d.Desired, "panic", d.Panic, "reason", d.Reason)
	fs.desired = d.Desired
	fs.decisions = append(fs.decisions, d)
	if len(fs.decisions) > maxDecisions {
		fs.decisions = fs.decisions[len(fs.decisions)-maxDecisions:]
	}
	p.reconcileLocked(fs)
	fs.notify()
}

// currentLocked counts the instances of the current spec that are starting
// or ready: the capacity the autoscaler decides from.
func (fs *fnState) currentLocked() int {
	n := 0
	for _, in := range fs.instances {
		if in.gen == fs.gen && !in.stopping {
			n++
		}
	}
	return n
}

// demandLocked is the function's in-flight requests plus those held waiting.
func (fs *fnState) demandLocked() int {
	n := fs.waiting
	for _, in := range fs.instances {
		n += in.inflight
	}
	return n
}

// waitCh returns a channel closed at the next notify: an instance became
// ready, freed a slot, stopped, or the function changed.
func (fs *fnState) waitCh() <-chan struct{} {
	if fs.changed == nil {
		fs.changed = make(chan struct{})
	}
	return fs.changed
}

// notify wakes every waiter; it allocates nothing when nobody waits.
func (fs *fnState) notify() {
	if fs.changed != nil {
		close(fs.changed)
		fs.changed = nil
	}
}

// instance is one slot of a function, run by one supervise goroutine through
// successive processes. Fields below stop are guarded by Pool.mu.
type instance struct {
	id   string
	fs   *fnState
	spec *Function
	gen  int
	stop chan struct{} // closed by stopInstanceLocked

	stopping bool
	state    State
	pid      int
	port     int
	inflight int
	restarts int
	// failStreak counts failures since the instance was last ready; at
	// failedAfter the function reports failed.
	failStreak int
	started    time.Time
	lastErr    string
}

func (in *instance) stopRequested() bool {
	select {
	case <-in.stop:
		return true
	default:
		return false
	}
}

// New returns a Pool that is not yet running. A nil log discards.
func New(cfg Config, log *slog.Logger) *Pool {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	transport := cfg.Transport
	if transport == nil {
		dialer := &net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}
		transport = &http.Transport{
			Proxy:               nil, // instances are on loopback; weft's own proxy settings must not apply
			DialContext:         dialer.DialContext,
			MaxIdleConnsPerHost: 64,
			IdleConnTimeout:     90 * time.Second,
			DisableCompression:  true,
		}
	}
	return &Pool{
		cfg:         cfg.withDefaults(),
		log:         log,
		client:      &http.Client{Transport: transport},
		probeClient: &http.Client{Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}},
		spawnc:      make(chan spawnRequest),
		ready:       make(chan struct{}),
		quit:        make(chan struct{}),
		fns:         map[string]*fnState{},
		ports:       map[int]bool{},
	}
}

// Ready returns a channel closed once Run has started: the pool accepts
// deliveries and starts processes. It does not wait for any function's
// instances, so one failing function cannot hold the node back.
func (p *Pool) Ready() <-chan struct{} { return p.ready }

// Run starts the instances of the applied functions and blocks until ctx
// ends. Then it stops every instance (draining in-flight requests, SIGTERM to
// the process group, SIGKILL after Config.StopGrace) and returns nil only
// when every process is gone and every goroutine of the pool has ended.
// Waiting Deliver calls return ErrStopped. Run may be called once.
func (p *Pool) Run(ctx context.Context) error {
	p.mu.Lock()
	if p.state != poolIdle {
		p.mu.Unlock()
		return errors.New("workers: Run called more than once")
	}
	p.state = poolRunning
	spawnStop, spawnDone := make(chan struct{}), make(chan struct{})
	go p.spawner(spawnStop, spawnDone) // owned by Run, which waits on spawnDone
	for _, fs := range p.fns {
		p.reconcileLocked(fs)
	}
	p.startPreparingLocked()
	p.wg.Add(1)
	go p.autoscale() // owned by Run through wg; ends at quit
	p.mu.Unlock()
	close(p.ready)
	p.log.Info("worker pool running")

	<-ctx.Done()
	p.mu.Lock()
	p.state = poolStopped
	close(p.quit)
	for _, fs := range p.fns {
		for _, in := range fs.instances {
			p.stopInstanceLocked(in)
		}
		fs.notify()
	}
	p.mu.Unlock()
	p.wg.Wait()
	close(spawnStop)
	<-spawnDone
	p.mu.Lock()
	for _, fs := range p.fns {
		fs.logs.close()
	}
	p.mu.Unlock()
	p.client.CloseIdleConnections()
	p.log.Info("worker pool stopped")
	return nil
}

// Drain is the first step of a node's stop, before Run's context ends: the
// pool starts nothing new (no cold start, no scale-up, no rollout) and a
// request waiting for a slot of a function with no ready instance gives up at
// once with ErrStopping, as does any later one for such a function. Requests
// on an instance run on, and those waiting for a function that has a ready
// instance get the slots its requests free, until Run's context ends. So a
// node whose function never becomes ready stops at once instead of holding a
// queued request for its whole drain. Drain before Run, or after Run's
// context ended, does nothing.
func (p *Pool) Drain() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.state != poolRunning {
		return
	}
	p.state = poolDraining
	for _, fs := range p.fns {
		fs.notify() // waiters look again
	}
	p.log.Info("worker pool draining")
}

// Apply makes fn the desired state of function fn.Name. A new function gets
// its instances started. A function whose spec changed only in Scale keeps
// its instances and adds or stops some. Any other change starts instances of
// the new spec; once they are ready the old ones get no new requests and are
// stopped after their in-flight requests finished, so nothing is cut, and
// until then the old ones keep serving (also when the new spec never becomes
// ready). An unchanged fn is a no-op. Apply does not block on processes.
// fn must not be nil and should come from Parse; the pool keeps it and
// never modifies it.
func (p *Pool) Apply(fn *Function) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fs := p.fns[fn.Name]
	switch {
	case fs == nil:
		fs = &fnState{name: fn.Name, spec: fn, gen: 1, logs: newLogBuffer(p.cfg.LogLines),
			scaler: NewAutoscaler(fn.Autoscale()), desired: fn.Scale.Min}
		p.fns[fn.Name] = fs
		p.log.Info("function applied", "function", fn.Name, "min", fn.Scale.Min)
		if p.cfg.Identities != nil {
			p.identq = append(p.identq, fs)
			p.startPreparingLocked()
		}
	case fs.spec.Equal(fn):
		return
	case fs.spec.sameProcesses(fn):
		fs.spec = fn
		p.rescaleLocked(fs)
		p.log.Info("function rescaled", "function", fn.Name, "instances", fs.desired)
	default:
		fs.spec = fn
		fs.gen++
		p.rescaleLocked(fs)
		fs.notify() // a rollout of a superseded spec sees the new generation and ends
		p.log.Info("function changed, replacing instances", "function", fn.Name, "generation", fs.gen)
		if p.state == poolRunning && len(fs.instances) > 0 {
			p.wg.Add(1)
			go p.rollout(fs, fs.gen)
		}
	}
	p.reconcileLocked(fs)
}

// startPreparingLocked starts prepareIdentities when the pool runs, functions
// wait for their identity, and it is not running yet.
func (p *Pool) startPreparingLocked() {
	if p.state != poolRunning || p.preparing || len(p.identq) == 0 {
		return
	}
	p.preparing = true
	p.wg.Add(1)
	go p.prepareIdentities() // owned by Run through wg; ends when identq is empty or the pool stops
}

// prepareIdentities issues the identity of each new function in identq, one
// at a time, so that its first process, often a cold start from zero, does
// not wait for it: a key, a certificate and three files, about 2 ms here
// (issue 5, goal 7). A start that comes first issues it itself, and one that
// comes during the issue waits for it (Identities is safe for concurrent
// use). An error is left to the start, which reports it.
func (p *Pool) prepareIdentities() {
	defer p.wg.Done()
	for {
		p.mu.Lock()
		if p.state != poolRunning || len(p.identq) == 0 {
			p.identq, p.preparing = nil, false
			p.mu.Unlock()
			return
		}
		fs := p.identq[0]
		p.identq[0] = nil
		p.identq = p.identq[1:]
		if p.fns[fs.name] != fs { // removed (or removed and applied again) meanwhile
			p.mu.Unlock()
			continue
		}
		uid, gid := -1, -1
		if u := fs.spec.User; u != nil {
			uid, gid = int(u.UID), int(u.GID)
		}
		p.mu.Unlock()
		if _, err := p.cfg.Identities.Env(fs.name, uid, gid); err != nil {
			p.log.Debug("identity not issued ahead of a start", "function", fs.name, "err", err)
		}
		p.mu.Lock()
		if p.fns[fs.name] == nil {
			// Removed while its identity was issued: Remove's Forget may
			// have come first, so forget it again.
			p.cfg.Identities.Forget(fs.name)
		}
		p.mu.Unlock()
	}
}

// rescaleLocked takes a changed spec's scale settings: a new autoscaler
// (its windows restart) and the desired count clamped to the new bounds.
func (p *Pool) rescaleLocked(fs *fnState) {
	cfg := fs.spec.Autoscale()
	fs.scaler = NewAutoscaler(cfg)
	fs.desired = max(fs.desired, cfg.Min)
	if cfg.Max > 0 {
		fs.desired = min(fs.desired, cfg.Max)
	}
}

// Remove stops every instance of the function, draining in-flight requests
// first, and forgets it: later Deliver calls, and those waiting now, fail
// with ErrUnknownFunction, and its Follow channels close. It returns at once;
// the processes end in the background and Run waits for them. Removing an
// unknown function is a no-op.
func (p *Pool) Remove(name string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fs := p.fns[name]
	if fs == nil {
		return
	}
	if p.cfg.Identities != nil {
		p.cfg.Identities.Forget(name)
	}
	delete(p.fns, name)
	for _, in := range fs.instances {
		p.stopInstanceLocked(in)
	}
	fs.notify()
	fs.logs.close()
	p.log.Info("function removed", "function", name)
}

// reconcileLocked starts or stops instances of the current generation until
// their number is the function's desired count. Surplus instances go least
// useful first: not ready, then the newest.
func (p *Pool) reconcileLocked(fs *fnState) {
	if p.state != poolRunning {
		return
	}
	var cur []*instance
	for _, in := range fs.instances {
		if in.gen == fs.gen && !in.stopping {
			cur = append(cur, in)
		}
	}
	want := fs.desired
	for n := len(cur); n < want; n++ {
		p.startInstanceLocked(fs)
	}
	extra := len(cur) - want
	for pass := 0; pass < 2 && extra > 0; pass++ {
		for i := len(cur) - 1; i >= 0 && extra > 0; i-- {
			in := cur[i]
			if in.stopping || (pass == 0 && in.state == StateReady) {
				continue
			}
			p.stopInstanceLocked(in)
			extra--
		}
	}
}

func (p *Pool) startInstanceLocked(fs *fnState) {
	fs.seq++
	in := &instance{
		id:    fs.name + "-" + strconv.Itoa(fs.seq),
		fs:    fs,
		spec:  fs.spec,
		gen:   fs.gen,
		stop:  make(chan struct{}),
		state: StateStarting,
	}
	fs.instances = append(fs.instances, in)
	p.wg.Add(1)
	go p.supervise(in)
}

// stopInstanceLocked takes the instance out of rotation and asks its
// supervisor to drain and stop it.
func (p *Pool) stopInstanceLocked(in *instance) {
	if in.stopping {
		return
	}
	in.stopping = true
	in.state = StateDraining
	close(in.stop)
	in.fs.notify()
}

// forget drops an instance whose supervisor has ended.
func (p *Pool) forget(in *instance) {
	p.mu.Lock()
	defer p.mu.Unlock()
	in.state = StateStopped
	fs := in.fs
	for i, x := range fs.instances {
		if x == in {
			fs.instances = append(fs.instances[:i], fs.instances[i+1:]...)
			break
		}
	}
	fs.notify()
}

// rollout waits until generation gen of fs has its desired number of ready
// instances, then stops every older instance. It gives up when gen is
// superseded, the function removed or the pool stopped.
func (p *Pool) rollout(fs *fnState, gen int) {
	defer p.wg.Done()
	p.mu.Lock()
	defer p.mu.Unlock()
	for p.state == poolRunning && fs.gen == gen && p.fns[fs.name] == fs {
		ready := 0
		for _, in := range fs.instances {
			if in.gen == gen && in.servingLocked() {
				ready++
			}
		}
		if ready >= fs.desired {
			for _, in := range fs.instances {
				if in.gen < gen {
					p.stopInstanceLocked(in)
				}
			}
			p.log.Info("function replaced", "function", fs.name, "generation", gen)
			return
		}
		ch := fs.waitCh()
		p.mu.Unlock()
		select {
		case <-ch:
		case <-p.quit:
		}
		p.mu.Lock()
	}
}

// Deliver sends ev to a ready instance of the function named by target,
// "function:NAME" or "function:NAME/path" (the path, default "/", is the
// request's). It picks the instance with the fewest requests in flight among
// those with a free slot under the Function's concurrency; when none has one
// (all busy, or none ready yet because the function is starting or
// restarting) it waits until one does or ctx ends. The request is bounded by
// ctx and by the Function's timeout. A non-2xx answer is a
// *ceclient.StatusError; see errors.go for the sentinels. Deliver satisfies
// broker.Deliverer and is safe for concurrent use.
func (p *Pool) Deliver(ctx context.Context, target string, ev event.Event) (*event.Event, error) {
	name, path, err := parseTarget(target)
	if err != nil {
		return nil, err
	}
	in, port, err := p.acquire(ctx, name)
	if err != nil {
		return nil, err
	}
	defer p.release(in)
	if t := in.spec.Timeout; t > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, t)
		defer cancel()
	}
	start := time.Now() // after acquire: waiting for a free slot is not billed
	reply, err := ceclient.Send(ctx, p.client, "http://127.0.0.1:"+strconv.Itoa(port)+path, ev)
	p.cfg.Meter.Invocation(name, start, time.Since(start), err != nil)
	if err != nil {
		return nil, fmt.Errorf("function %q instance %s: %w", name, in.id, err)
	}
	return reply, nil
}

// Names lists the applied functions, sorted.
func (p *Pool) Names() []string {
	p.mu.Lock()
	names := make([]string, 0, len(p.fns))
	for name := range p.fns {
		names = append(names, name)
	}
	p.mu.Unlock()
	sort.Strings(names)
	return names
}

// Has reports whether a function of that name is applied.
func (p *Pool) Has(name string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	_, ok := p.fns[name]
	return ok
}

// Acquire reserves a slot on a ready instance of the function, as Deliver
// does (holding the caller while the function scales from zero or every
// instance is busy, bounded by ctx), and returns the instance's address
// ("127.0.0.1:PORT") for a plain HTTP request: the router's path to
// functions. The caller must call release exactly once when its request
// ended, with the request's outcome (nil for a 2xx answer), which is metered.
func (p *Pool) Acquire(ctx context.Context, name string) (addr string, release func(err error), err error) {
	in, port, err := p.acquire(ctx, name)
	if err != nil {
		return "", nil, err
	}
	start := time.Now()
	var once sync.Once
	return "127.0.0.1:" + strconv.Itoa(port), func(err error) {
		once.Do(func() {
			p.cfg.Meter.Invocation(name, start, time.Since(start), err != nil)
			p.release(in)
		})
	}, nil
}

// parseTarget splits "function:NAME[/path]".
func parseTarget(target string) (name, path string, err error) {
	rest, ok := strings.CutPrefix(target, "function:")
	if !ok {
		return "", "", fmt.Errorf("%w %q: want function:NAME[/path]", ErrInvalidTarget, target)
	}
	name, path = rest, "/"
	if i := strings.IndexByte(rest, '/'); i >= 0 {
		name, path = rest[:i], rest[i:]
	}
	if err := resource.ValidateName(name); err != nil {
		return "", "", fmt.Errorf("%w %q: %w", ErrInvalidTarget, target, err)
	}
	return name, path, nil
}

// acquire reserves a slot on an instance of the function, waiting for one.
func (p *Pool) acquire(ctx context.Context, name string) (*instance, int, error) {
	p.mu.Lock()
	for {
		if p.state == poolStopped {
			p.mu.Unlock()
			return nil, 0, fmt.Errorf("function %q: %w", name, ErrStopped)
		}
		fs := p.fns[name]
		if fs == nil {
			p.mu.Unlock()
			return nil, 0, fmt.Errorf("function %q: %w", name, ErrUnknownFunction)
		}
		if in := fs.pickLocked(); in != nil {
			in.inflight++
			p.burstLocked(fs)
			port := in.port
			p.mu.Unlock()
			return in, port, nil
		}
		if p.state == poolDraining && !fs.hasReadyLocked() {
			p.mu.Unlock()
			return nil, 0, fmt.Errorf("function %q has no ready instance: %w", name, ErrStopping)
		}
		// The activator: hold the request, count it as demand, and when the
		// function has no instance at all, start one now (a cold start)
		// rather than at the autoscaler's next tick.
		fs.waiting++
		if fs.desired == 0 && p.state == poolRunning {
			now := time.Now()
			fs.scaler.Record(now, float64(fs.demandLocked()), 0)
			d := fs.scaler.Decide(now, fs.currentLocked())
			d.Desired = max(d.Desired, 1)
			if d.Reason == "" {
				d.Reason = "cold start: a request is waiting"
			}
			p.setDesiredLocked(fs, d)
		} else {
			p.burstLocked(fs)
		}
		ch := fs.waitCh()
		p.mu.Unlock()
		select {
		case <-ch:
		case <-p.quit:
		case <-ctx.Done():
			p.mu.Lock()
			fs.waiting--
			p.mu.Unlock()
			return nil, 0, fmt.Errorf("function %q: no ready instance with a free slot: %w", name, context.Cause(ctx))
		}
		p.mu.Lock()
		fs.waiting--
	}
}

func (p *Pool) release(in *instance) {
	p.mu.Lock()
	in.inflight--
	in.fs.notify()
	p.mu.Unlock()
}

// hasReadyLocked reports whether an instance of fs is ready and not being
// stopped: one whose requests in flight will free a slot.
func (fs *fnState) hasReadyLocked() bool {
	for _, in := range fs.instances {
		if in.servingLocked() {
			return true
		}
	}
	return false
}

// servingLocked reports whether in takes requests: ready, and not being
// stopped.
func (in *instance) servingLocked() bool { return in.state == StateReady && !in.stopping }

// pickLocked returns the ready instance with a free slot and the fewest
// requests in flight, or nil. Ties go round-robin.
func (fs *fnState) pickLocked() *instance {
	var best *instance
	n := len(fs.instances)
	for k := range n {
		in := fs.instances[(fs.rr+k)%n]
		if !in.servingLocked() {
			continue
		}
		if c := in.spec.Concurrency; c > 0 && in.inflight >= c {
			continue
		}
		if best == nil || in.inflight < best.inflight {
			best = in
		}
	}
	if n > 0 {
		fs.rr = (fs.rr + 1) % n
	}
	return best
}
