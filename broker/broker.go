package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/weft-dev/weft/triggers"
)

// Stream and subject names. Subjects carry the trigger name as their last
// token; trigger names are DNS labels, which are valid subject tokens.
const (
	eventsStream     = "WEFT_EVENTS"
	deliveriesStream = "WEFT_DELIVERIES"
	dlqStream        = "WEFT_DLQ"

	eventsSubject = "weft.events.default"
	// unmatchedSubject holds the events no trigger matched when they were
	// stored once dispatching had begun: stored, never read, purged by the
	// compactor (unmatched.go).
	unmatchedSubject = "weft.unmatched.default"
	deliverPrefix    = "weft.deliver."
	dlqPrefix        = "weft.dlq."
	ingressSubjects  = "weft.in.>"

	dispatchConsumer = "dispatch"
	// DefaultBroker is the one broker a node has; Triggers name it in spec.broker.
	DefaultBroker = "default"
)

// Config configures a Broker. The zero value of every field but DataDir means
// its documented default.
type Config struct {
	// DataDir holds JetStream's files under DataDir/jetstream. Required.
	DataDir string
	// NATSAddr is the host:port NATS clients connect to; port 0 picks a free
	// port. Empty means no listener: only in-process clients.
	NATSAddr string
	// RelaxedSync turns off SyncAlways: JetStream then fsyncs every 2 minutes
	// (its own default), which is much faster but can lose acknowledged events
	// when the machine (not just weft) crashes. Default false.
	RelaxedSync bool
	// BatchStaging is a memory-backed directory (a tmpfs such as /dev/shm)
	// where nats-server stages atomic batches before committing them
	// (staging.go); "" leaves them in DataDir, as nats-server does.
	BatchStaging string
	// DedupWindow is how long a (source, id) pair is remembered. Default 2m.
	DedupWindow time.Duration
	// MaxStoreBytes caps JetStream's file storage. Zero means nats-server's
	// default (75% of free disk).
	MaxStoreBytes int64
	// MaxInflight bounds publishes waiting for storage; beyond it Store returns
	// ErrOverloaded. Default 4096.
	MaxInflight int
	// PublishTimeout bounds waiting for JetStream to confirm storage. Default 5s.
	PublishTimeout time.Duration
	// AckWait is how long JetStream waits for a delivery's ack before handing
	// it out again; long deliveries report progress. Default 30s.
	AckWait time.Duration
	// DispatchWorkers is how many stored events are matched and fanned out at
	// once. Default 16.
	DispatchWorkers int
	// TriggerWorkers is how many deliveries of one trigger run at once.
	// Default 32.
	TriggerWorkers int
	// DrainTimeout bounds how long Run waits for in-flight deliveries when it
	// stops; the rest are redelivered after restart. Default 10s.
	DrainTimeout time.Duration
	// Ingress configures the HTTP ingress.
	Ingress IngressConfig
	// Circuit configures the per-subscriber circuit breaker of deliveries.
	Circuit CircuitConfig

	// storeEveryDelivery turns direct delivery off (direct.go): every
	// delivery is stored before its first attempt. For tests of the stored
	// path and for benchmarks comparing the two.
	storeEveryDelivery bool
	// noEarlyStart turns early dispatch off (early.go), so that events
	// stored with the dispatcher paused wait for it: for benchmarks of a
	// stored backlog.
	noEarlyStart bool
	// slotWait and slowFor tune the dispatcher's wait for a busy trigger's
	// slot (direct.go); tests lengthen them. Defaults defaultSlotWait and
	// defaultSlowFor.
	slotWait, slowFor time.Duration
}

func (c Config) withDefaults() Config {
	if c.DedupWindow == 0 {
		c.DedupWindow = 2 * time.Minute
	}
	if c.MaxInflight == 0 {
		c.MaxInflight = 4096
	}
	if c.PublishTimeout == 0 {
		c.PublishTimeout = 5 * time.Second
	}
	if c.AckWait == 0 {
		c.AckWait = 30 * time.Second
	}
	if c.DispatchWorkers == 0 {
		c.DispatchWorkers = 16
	}
	if c.TriggerWorkers == 0 {
		c.TriggerWorkers = 32
	}
	if c.DrainTimeout == 0 {
		c.DrainTimeout = 10 * time.Second
	}
	if c.slotWait == 0 {
		c.slotWait = defaultSlotWait
	}
	if c.slowFor == 0 {
		c.slowFor = defaultSlowFor
	}
	c.Ingress = c.Ingress.withDefaults()
	c.Circuit = c.Circuit.withDefaults()
	return c
}

// Validate reports the first invalid field.
func (c Config) Validate() error {
	if c.DataDir == "" {
		return errors.New("broker: DataDir is required")
	}
	if c.NATSAddr != "" {
		if _, _, err := net.SplitHostPort(c.NATSAddr); err != nil {
			return fmt.Errorf("broker: NATSAddr %q: %w", c.NATSAddr, err)
		}
	}
	if c.DedupWindow < time.Second {
		return fmt.Errorf("broker: DedupWindow %s is below 1s", c.DedupWindow)
	}
	if c.AckWait < time.Second {
		return fmt.Errorf("broker: AckWait %s is below 1s", c.AckWait)
	}
	if err := c.Circuit.Validate(); err != nil {
		return err
	}
	return c.Ingress.Validate()
}

// Broker is the event plane of one node. Create it with New, feed it triggers
// with SetTriggers (before or after Run), and run it with Run. Its methods are
// safe for concurrent use.
type Broker struct {
	cfg       Config
	log       *slog.Logger
	metrics   *Metrics
	deliverer Deliverer

	index        atomic.Pointer[triggers.Index]
	indexVersion atomic.Uint64 // bumped after each index swap (unmatched.go)
	runID        string        // random, per Broker (unmatched.go)
	lastToken    atomic.Pointer[versionToken]
	atomicMin    atomic.Int32  // atomicMin, or atomicMinStaged once batches are staged in memory
	dispatchGate chan struct{} // closed by StartDispatching
	gateOnce     sync.Once
	inflight     chan struct{} // semaphore of publishes awaiting storage
	batch        *batcher      // group commit of concurrent publishes

	storage     atomic.Pointer[StorageUsage] // last sample of watchStorage
	storedSince atomic.Int64                 // bytes the ingress and the fan-out stored since that sample
	storing     atomic.Int64                 // Store calls in flight
	settled     atomic.Uint64                // messages of the work streams acked or terminated; wakes the compactor
	direct      atomic.Int64                 // direct deliveries in flight (direct.go)
	kept        keptGoroutines               // where direct deliveries run (direct.go)
	// Early dispatch (early.go): the running dispatcher, and the events
	// Store may start early, by message id.
	dispatching  atomic.Pointer[dispatchState]
	earlyMu      sync.Mutex
	early        map[string]*earlyEvent
	earlyStarted atomic.Uint64 // events whose deliveries Store started
	// storageTripped: StorageError found the estimate above the high-water
	// mark between samples.
	storageTripped atomic.Bool
	ready          chan struct{}
	readyOnce      sync.Once
	conn           atomic.Pointer[conn] // set while running
	// connGate is held for reading by Store calls and the DLQ's (running),
	// and for writing by Run while it takes the connection away at stop:
	// events being stored when the broker stops are stored (or fail) before
	// it closes the connection, and calls that come later are refused at
	// once.
	connGate sync.RWMutex

	// swapMu serialises index swaps and the starting and stopping of
	// runners they bring; mu guards runners and runCtx and is never held
	// while a runner stops, since a runner's delivery that stores a reply
	// looks other runners up (runnerOf) before it can end.
	swapMu  sync.Mutex
	mu      sync.Mutex
	runners map[string]*runner
	runCtx  context.Context // nil until Run started the runners

	replays replays
	wg      sync.WaitGroup // runners and dispatch workers
}

// conn is the in-process connection and the JetStream handles of a running
// broker.
type conn struct {
	ns     *server.Server
	nc     *nats.Conn
	js     jetstream.JetStream
	acks   *ackInboxes // reply subjects of the ingress's pipelined publishes
	dlq    jetstream.Stream
	dels   jetstream.Stream
	events jetstream.Stream
}

// New validates cfg and returns a Broker that delivers through d. It starts
// nothing; Run does.
func New(cfg Config, d Deliverer, m *Metrics, log *slog.Logger) (*Broker, error) {
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if m == nil {
		m = NewMetrics()
	}
	b := &Broker{
		cfg:          cfg,
		log:          log,
		metrics:      m,
		deliverer:    newBreakers(cfg.Circuit, time.Now, m, d),
		inflight:     make(chan struct{}, cfg.MaxInflight),
		batch:        newBatcher(),
		kept:         keptGoroutines{work: make(chan func())},
		ready:        make(chan struct{}),
		dispatchGate: make(chan struct{}),
		runners:      map[string]*runner{},
		early:        map[string]*earlyEvent{},
		runID:        newRunID(),
	}
	b.index.Store(triggers.NewIndex(nil))
	b.atomicMin.Store(atomicMin)
	b.replays.byID = map[string]*ReplayStatus{}
	return b, nil
}

// Ready is closed once the broker stores events. Dispatching starts after
// StartDispatching.
func (b *Broker) Ready() <-chan struct{} { return b.ready }

// NATSURL is the URL external NATS clients use, or "" before Run is ready or
// when the broker has no listener.
func (b *Broker) NATSURL() string {
	c := b.conn.Load()
	if c == nil || b.cfg.NATSAddr == "" {
		return ""
	}
	return c.ns.ClientURL()
}

// Run starts the embedded nats-server, creates the streams, and dispatches
// until ctx ends; then it stops the ingress, drains in-flight deliveries for
// at most DrainTimeout, and shuts the server down.
func (b *Broker) Run(ctx context.Context) error {
	c, err := b.start()
	if err != nil {
		return err
	}
	var stagingLinks []string
	defer func() {
		b.connGate.Lock() // calls in flight end: each of their publishes is bounded by PublishTimeout
		b.conn.Store(nil)
		b.connGate.Unlock()
		c.nc.Close()
		c.ns.Shutdown()
		c.ns.WaitForShutdown()
		b.unlinkBatchStaging(stagingLinks)
	}()
	if err := b.ensureStreams(ctx, c); err != nil {
		return err
	}
	streams := []string{eventsStream, deliveriesStream} // those taking atomic batches
	stagingLinks = b.linkBatchStaging(c, streams...)
	if len(stagingLinks) == len(streams) {
		b.atomicMin.Store(atomicMinStaged)
	}
	if err := b.resetConsumers(ctx, c); err != nil {
		return err
	}
	b.conn.Store(c)

	b.sampleStorage(c)
	watchCtx, stopWatch := context.WithCancel(ctx)
	var watch sync.WaitGroup
	watch.Go(func() { b.watchStorage(watchCtx, c) })
	defer func() { stopWatch(); watch.Wait() }() // before the server shuts down
	sub, err := b.startNATSIngress(ctx, c)
	if err != nil {
		return err
	}
	b.readyOnce.Do(func() { close(b.ready) })
	b.log.Info("broker ready", "nats", b.NATSURL(), "sync_always", !b.cfg.RelaxedSync)

	// Events stored before a restart must not be matched against a partial
	// index: dispatching waits until the node's whole configuration is in
	// force (StartDispatching).
	select {
	case <-b.dispatchGate:
	case <-ctx.Done():
		sub.stop()
		return nil
	}
	b.wg.Go(func() { b.compactLoop(ctx, c) })
	stopDispatch, err := b.startDispatcher(ctx, c)
	if err != nil {
		sub.stop()
		if ctx.Err() != nil {
			return nil // stopped while starting: not a failure
		}
		return err
	}
	b.swapMu.Lock()
	b.mu.Lock()
	b.runCtx = ctx
	b.forgetStaleTriggers(ctx, c)
	gone := b.reconcileLocked(b.index.Load())
	b.mu.Unlock()
	b.stopRunners(gone)
	b.swapMu.Unlock()
	<-ctx.Done()

	sub.stop()
	stopDispatch()
	b.swapMu.Lock()
	b.mu.Lock()
	b.runCtx = nil // a SetTriggers from now on starts nothing
	running := b.runners
	b.runners = map[string]*runner{}
	b.mu.Unlock()
	for _, r := range running {
		r.stop()
	}
	b.swapMu.Unlock()
	b.wg.Wait()
	return nil
}

func (b *Broker) start() (*conn, error) {
	opts := &server.Options{
		ServerName: "weft",
		JetStream:  true,
		StoreDir:   filepath.Join(b.cfg.DataDir, "jetstream"),
		SyncAlways: !b.cfg.RelaxedSync,
		NoSigs:     true,
		NoLog:      false,
		MaxPayload: 1 << 20,
	}
	if b.cfg.MaxStoreBytes > 0 {
		opts.JetStreamMaxStore = b.cfg.MaxStoreBytes
	}
	// One consumer per busy trigger: nats-server's default of 1,000 consumers
	// per stream would refuse the 1,001st busy trigger (a stream's own -1
	// means "unset" to the server, so the limit is lifted here).
	opts.JetStreamLimits.DefaultMaxConsumers = -1
	if b.cfg.NATSAddr == "" {
		opts.DontListen = true
	} else {
		host, port, _ := net.SplitHostPort(b.cfg.NATSAddr) // checked in Validate
		p, err := strconv.Atoi(port)
		if err != nil {
			return nil, fmt.Errorf("broker: NATS port %q: %w", port, err)
		}
		if p == 0 {
			p = server.RANDOM_PORT
		}
		opts.Host, opts.Port = host, p
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("broker: start nats-server: %w", err)
	}
	ns.SetLoggerV2(natsLogger{b.log.With("component", "nats")}, false, false, false)
	go ns.Start() // owned by ns: Shutdown stops it and WaitForShutdown waits
	if !ns.ReadyForConnections(30 * time.Second) {
		ns.Shutdown()
		return nil, errors.New("broker: nats-server not ready after 30s (is the NATS port taken?)")
	}
	if jsc := ns.JetStreamConfig(); jsc == nil || jsc.SyncAlways != !b.cfg.RelaxedSync {
		ns.Shutdown()
		return nil, errors.New("broker: nats-server does not report the requested JetStream sync mode")
	}
	nc, err := nats.Connect("", nats.InProcessServer(ns), nats.Name("weft-broker"), nats.MaxReconnects(-1))
	if err != nil {
		ns.Shutdown()
		return nil, fmt.Errorf("broker: in-process connection: %w", err)
	}
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(b.cfg.MaxInflight))
	if err != nil {
		nc.Close()
		ns.Shutdown()
		return nil, fmt.Errorf("broker: jetstream: %w", err)
	}
	return &conn{ns: ns, nc: nc, js: js, acks: newAckInboxes(nc, min(b.cfg.MaxInflight, 1024))}, nil
}

func (b *Broker) ensureStreams(ctx context.Context, c *conn) error {
	cfgs := []jetstream.StreamConfig{
		{
			Name: eventsStream, Subjects: []string{eventsSubject, unmatchedSubject},
			Description: "CloudEvents accepted by the ingress, until the dispatcher fanned them out",
			Retention:   jetstream.LimitsPolicy, Storage: jetstream.FileStorage, // acknowledged ones are purged (compact.go)
			Duplicates: b.cfg.DedupWindow, MaxMsgSize: 1 << 20, AllowAtomicPublish: true,
		},
		{
			Name: deliveriesStream, Subjects: []string{deliverPrefix + ">"},
			Description: "one message per (event, matching trigger), until delivered or dead-lettered",
			Retention:   jetstream.LimitsPolicy, Storage: jetstream.FileStorage, // acknowledged ones are purged (compact.go)
			Duplicates: b.cfg.DedupWindow, MaxMsgSize: 1 << 20, AllowAtomicPublish: true, // fan-out shares fsyncs (fanout.go)
		},
		{
			Name: dlqStream, Subjects: []string{dlqPrefix + ">"},
			Description: "dead letters per trigger, kept until replayed or purged",
			Retention:   jetstream.LimitsPolicy, Storage: jetstream.FileStorage,
			MaxMsgSize: 1 << 20,
		},
	}
	for _, sc := range cfgs {
		if err := b.migrateRetention(ctx, c, &sc); err != nil {
			return err
		}
		s, err := c.js.CreateOrUpdateStream(ctx, sc)
		if err != nil {
			return fmt.Errorf("broker: stream %s: %w", sc.Name, err)
		}
		switch sc.Name {
		case dlqStream:
			c.dlq = s
		case deliveriesStream:
			c.dels = s
		case eventsStream:
			c.events = s
		}
	}
	return nil
}

// migrateRetention deals with a stream an older weft made as a work queue,
// whose retention JetStream cannot change in place: empty, it is deleted and
// made anew; holding messages, it keeps its retention (sc is changed to
// match), works as before and is switched at a later start that finds it
// empty.
func (b *Broker) migrateRetention(ctx context.Context, c *conn, sc *jetstream.StreamConfig) error {
	s, err := c.js.Stream(ctx, sc.Name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("broker: stream %s: %w", sc.Name, err)
	}
	info := s.CachedInfo()
	if info.Config.Retention == sc.Retention {
		return nil
	}
	if info.State.Msgs > 0 {
		b.log.Warn("stream keeps the retention an older weft gave it until a start finds it empty",
			"stream", sc.Name, "retention", info.Config.Retention.String(), "messages", info.State.Msgs)
		sc.Retention = info.Config.Retention
		return nil
	}
	if err := c.js.DeleteStream(ctx, sc.Name); err != nil {
		return fmt.Errorf("broker: recreate empty stream %s with %s retention: %w", sc.Name, sc.Retention, err)
	}
	b.log.Info("stream recreated with a new retention", "stream", sc.Name, "retention", sc.Retention.String())
	return nil
}

// resetConsumers deletes the consumers a previous run left on the two work
// streams. Whatever they had handed out and not settled when that run ended
// (a crash, or messages in flight to it at shutdown) would otherwise wait for
// AckWait (30 s) before anyone saw it again. Each consumer's acknowledged
// prefix is purged first, so the consumers created afresh start from its
// first unacknowledged message: what is left to do, plus what was
// acknowledged out of order above it (delivered again).
func (b *Broker) resetConsumers(ctx context.Context, c *conn) error {
	for _, s := range []jetstream.Stream{c.events, c.dels} {
		stream := s.CachedInfo().Config.Name
		names := s.ConsumerNames(ctx)
		var stale []string
		for name := range names.Name() {
			stale = append(stale, name)
		}
		if err := names.Err(); err != nil {
			return fmt.Errorf("broker: consumers of %s: %w", stream, err)
		}
		for _, name := range stale {
			if err := deleteConsumer(ctx, s, name); err != nil {
				return fmt.Errorf("broker: reset consumer %s of %s: %w", name, stream, err)
			}
		}
	}
	return nil
}

// SetTriggers swaps in a new trigger index: new triggers get a durable
// consumer, removed ones lose theirs and their pending deliveries, changed
// ones take effect on their next delivery. It never fails half-way: the index
// was validated when it was built.
func (b *Broker) SetTriggers(idx *triggers.Index) {
	b.swapMu.Lock()
	defer b.swapMu.Unlock()
	b.mu.Lock()
	b.index.Store(idx) // under mu, so the index and the runners always agree
	b.indexVersion.Add(1)
	var gone map[string]*runner
	if b.runCtx != nil {
		gone = b.reconcileLocked(idx)
	}
	b.mu.Unlock()
	b.stopRunners(gone)
}

// StartDispatching lets a running broker match stored events against the
// triggers in force. Call it once the node's whole configuration (store and
// files) is applied: until then events are stored but wait, so that events
// stored before a restart are never matched against a partial index and
// dropped. Calls after the first do nothing.
func (b *Broker) StartDispatching() {
	b.gateOnce.Do(func() { close(b.dispatchGate) })
}

// Triggers returns the index in force.
func (b *Broker) Triggers() *triggers.Index { return b.index.Load() }
