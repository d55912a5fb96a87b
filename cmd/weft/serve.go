package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/redis/go-redis/v9"
	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/sync/errgroup"
	"golang.org/x/time/rate"

	"github.com/weft-dev/weft/broker"
	"github.com/weft-dev/weft/cmd/weft/internal/node"
	"github.com/weft-dev/weft/internal/resource"
	"github.com/weft-dev/weft/internal/store"
	"github.com/weft-dev/weft/router"
	"github.com/weft-dev/weft/workers"
)

var (
	_ broker.Deliverer = (*workers.Pool)(nil)
	_ broker.Deliverer = (*router.Client)(nil)
	_ node.Functions   = (*workers.Pool)(nil)
	_ node.Triggers    = (*broker.Broker)(nil)
)

type serveOptions struct {
	files         []string
	data          string
	httpAddr      string
	natsAddr      string
	routerAddr    string
	storeURL      string
	inbound       string
	node          string
	caCert        string
	caKey         string
	relaxedSync   bool
	batchStaging  string
	maxEventBytes int64
	dedupWindow   time.Duration
	trustDomain   string
	maxStoreBytes int64
	maxInflight   int
	readTimeout   time.Duration
	maxConns      int
	circuitFails  int
	circuitOpen   time.Duration
}

func newServeCmd(g *globals) *cobra.Command {
	var o serveOptions
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run a weft node: broker, triggers, worker pools and router",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := newLogger(g.stderr, g.logLevel)
			if err != nil {
				return err
			}
			return runServe(cmd.Context(), o, g, log)
		},
	}
	f := cmd.Flags()
	f.StringArrayVarP(&o.files, "file", "f", nil, "manifest file or folder to apply and watch (repeatable)")
	f.StringVar(&o.data, "data", "./.weft", "data directory (JetStream, store)")
	f.StringVar(&o.httpAddr, "http", "127.0.0.1:8080", "address of the ingress, API, health and metrics")
	f.StringVar(&o.natsAddr, "nats", "127.0.0.1:4222", `address NATS clients connect to ("" = in-process only)`)
	f.StringVar(&o.routerAddr, "router", "127.0.0.1:8081", "address of the router (workers' HTTP_PROXY)")
	f.StringVar(&o.storeURL, "store", "", `control-plane store: "" = Badger under --data, or redis://host:port/db shared by several nodes`)
	f.StringVar(&o.caCert, "ca-cert", "", "PEM certificate (and chain) of a CA to issue identities with, instead of the built-in one kept in the store")
	f.StringVar(&o.caKey, "ca-key", "", "PEM private key of --ca-cert")
	f.StringVar(&o.node, "node", "", "this node's name among those sharing a store (default: the host name)")
	f.StringVar(&o.inbound, "inbound", "", `address of the mutual-TLS listener other nodes reach this node's functions at ("" = none); with it the node announces its functions in the store's registry`)
	f.BoolVar(&o.relaxedSync, "relaxed-sync", false, "let JetStream fsync every 2 minutes instead of before each ack (faster; a machine crash can lose acknowledged events)")
	f.StringVar(&o.batchStaging, "batch-staging", broker.DefaultBatchStaging(), `memory-backed directory (tmpfs) where JetStream stages each group-commit batch before storing it; "" = under --data, at the cost of three more synchronous writes per batch`)
	f.Int64Var(&o.maxEventBytes, "max-event-bytes", 256<<10, "largest request body the ingress accepts, in bytes (64 KiB to 960 KiB)")
	f.DurationVar(&o.dedupWindow, "dedup-window", 2*time.Minute, "how long a (source, id) pair is remembered to drop duplicates")
	f.StringVar(&o.trustDomain, "trust-domain", "weft.local", "SPIFFE trust domain of the node's identities (spiffe://<domain>/fn/<function>)")
	f.Int64Var(&o.maxStoreBytes, "max-store-bytes", 0, "cap on JetStream's disk use, in bytes (0 = nats-server's default, 75% of the free disk); at 90% the ingress answers 503 and /readyz fails until use falls under 80%")
	f.IntVar(&o.maxInflight, "max-inflight", 4096, "events waiting for storage at once; beyond it the ingress answers 429")
	f.IntVar(&o.maxConns, "max-connections", 1024, "open client connections on --http at most; one more is answered 503 with Retry-After and closed")
	f.DurationVar(&o.readTimeout, "read-timeout", 10*time.Second, "time a client has to send a request's headers, and again its body; slower clients are cut off")
	f.IntVar(&o.circuitFails, "circuit-failures", 5, "consecutive failed deliveries to one subscriber that open its circuit (0 = no circuit breaker)")
	f.DurationVar(&o.circuitOpen, "circuit-open", 5*time.Second, "how long an open circuit refuses deliveries before a probe; doubles after a failed probe, up to 30s")
	return cmd
}

// isLoopback reports whether addr binds to loopback only.
func isLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// runServe wires the components; it is the only place that knows them all.
func runServe(ctx context.Context, o serveOptions, g *globals, log *slog.Logger) error {
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	if pct, ok := gcPercent(os.Getenv); ok {
		debug.SetGCPercent(pct)
	}
	if !isLoopback(o.httpAddr) && g.token == "" {
		return withCode(exitUsage, fmt.Errorf("--http %s is not loopback: the API can start processes, so set --api-token (or WEFT_API_TOKEN)", o.httpAddr))
	}
	// A bad manifest stops serve before anything starts (exit 3), as caddy does.
	if len(o.files) > 0 {
		if err := checkManifests(o.files); err != nil {
			return withCode(exitInvalidFile, err)
		}
	}
	if err := os.MkdirAll(o.data, 0o750); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	st, err := openStore(o, log.With("component", "store"))
	if err != nil {
		return err
	}
	defer func() {
		if err := st.Close(); err != nil {
			log.Error("store not closed cleanly", "err", err)
		}
	}()

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	metrics := broker.NewMetrics()
	if err := metrics.Register(reg); err != nil {
		return fmt.Errorf("metrics: %w", err)
	}

	backlog := &triggerBacklog{}
	meter := workers.NewMeter(workers.MeterConfig{}, log.With("component", "meter"))
	reg.MustRegister(meter.Collector())
	identity, nodeSVID, ca, err := nodeIdentity(ctx, st, o, log.With("component", "identity"))
	if err != nil {
		return err
	}
	workloads, err := router.NewWorkloads(ca, filepath.Join(o.data, "identities"), o.routerAddr, log.With("component", "identity"))
	if err != nil {
		return err
	}
	pool := workers.New(workers.Config{ProxyURL: "http://" + o.routerAddr, Backlog: backlog, Meter: meter, Identities: workloads,
		// Deliveries written and answered on the delivering goroutine: net/http's
		// Transport hands each between two goroutines per connection.
		Transport: router.NewTransport(nil)}, log.With("component", "workers"))
	denied := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "weft_router_denied_total", Help: "Calls to a Service refused by its allow list, by service.",
	}, []string{"service"})
	reg.MustRegister(denied)
	rcfg := router.Config{Identity: identity, Workloads: workloads, Denied: denied}
	var registry *router.Registry
	var inbound *router.Inbound
	if o.inbound != "" {
		registry, err = router.NewRegistry(router.RegistryConfig{Node: nodeName(o.node), Inbound: "https://" + o.inbound}, st, pool.Names, log.With("component", "registry"))
		if err != nil {
			return withCode(exitUsage, err)
		}
		rcfg.Remote = registry
	}
	rtr := router.New(rcfg, pool, log.With("component", "router"))
	if o.inbound != "" {
		authz, err := router.NewAuthorizerIDs(identity.Domain, nil, nil) // any identity of the trust domain
		if err != nil {
			return err
		}
		inbound = router.NewInbound(o.inbound, rtr, router.ServerTLS(identity.SVID, identity.Bundle, authz), log.With("component", "inbound"))
	}
	proxy := router.NewProxy(o.routerAddr, rtr, log.With("component", "router"))
	client := router.NewClient(nil, rtr)
	deliver := broker.DelivererFunc(func(ctx context.Context, target string, ev event.Event) (*event.Event, error) {
		if strings.HasPrefix(target, "function:") {
			return pool.Deliver(ctx, target, ev)
		}
		return client.Deliver(ctx, target, ev)
	})
	circuit := broker.CircuitConfig{ConsecutiveFailures: o.circuitFails, OpenTime: o.circuitOpen, MaxOpenTime: max(o.circuitOpen, 30*time.Second)}
	if o.circuitFails == 0 {
		circuit.ConsecutiveFailures = -1 // the flag's 0 means off; the broker's means its default
	}
	b, err := broker.New(broker.Config{
		DataDir:       o.data,
		NATSAddr:      o.natsAddr,
		RelaxedSync:   o.relaxedSync,
		BatchStaging:  o.batchStaging,
		DedupWindow:   o.dedupWindow,
		MaxStoreBytes: o.maxStoreBytes,
		MaxInflight:   o.maxInflight,
		Circuit:       circuit,
		Ingress:       broker.IngressConfig{MaxBodyBytes: o.maxEventBytes, ReadTimeout: o.readTimeout},
	}, deliver, metrics, log.With("component", "broker"))
	if err != nil {
		return withCode(exitUsage, err)
	}
	backlog.broker.Store(b)
	cp := node.NewControlPlane(st, b, pool, log.With("component", "control"))
	cp.UseServices(rtr)
	var configured atomic.Bool // store and files applied, dispatching started
	files := node.NewFiles(o.files, cp, log.With("component", "control"))
	api := &node.API{
		CP: cp, Files: files, Broker: b, Pool: pool, Meter: meter, Router: rtr, Gatherer: reg, Token: g.token, Log: log,
		Ready: func() error {
			for name, ch := range map[string]<-chan struct{}{"broker": b.Ready(), "workers": pool.Ready(), "router": proxy.Ready()} {
				select {
				case <-ch:
				default:
					return fmt.Errorf("%s not ready", name)
				}
			}
			if !configured.Load() {
				return errors.New("configuration not loaded yet")
			}
			return b.StorageError()
		},
	}
	if o.maxConns < 1 {
		return withCode(exitUsage, fmt.Errorf("--max-connections %d: want at least 1", o.maxConns))
	}
	ln, err := net.Listen("tcp", o.httpAddr)
	if err != nil {
		return fmt.Errorf("listen --http %s: %w", o.httpAddr, err)
	}
	refusedConns := prometheus.NewCounter(prometheus.CounterOpts{
		Name: "weft_http_connections_refused_total", Help: "Connections to --http answered 503 because --max-connections were open.",
	})
	reg.MustRegister(refusedConns)
	ln = node.LimitConnections(ln, o.maxConns, refusedConns.Inc)
	srv := router.NewHTTPServer(&http.Server{
		Handler:           api.Handler(),
		ReadHeaderTimeout: o.readTimeout,
		MaxHeaderBytes:    16 << 10, // beyond this the answer is 431
		IdleTimeout:       2 * time.Minute,
	}, node.IngressRequest, log.With("component", "http"))

	// At stop the broker is told to stop first: it stops dispatching and
	// drains its in-flight deliveries, and events being stored are stored
	// before it closes its connection (Broker.Run). Then the pool drains:
	// nothing new starts, and a call waiting for a function with no ready
	// instance is turned away (503), whether it came from the broker (which,
	// stopping, hands its event back for after the restart instead of
	// counting a failed attempt), the router or the API; so no HTTP request
	// holds the node's stop waiting for an instance. The pool and the router
	// stop once the broker and the API's invoke calls are done with them (or
	// when a component fails, since that ends ctx and so everything above),
	// not after the whole HTTP drain: the pool lets requests on its instances
	// finish, then ends `weft logs -f` streams with the instances' last
	// lines, which the HTTP server's drain would otherwise wait for.
	// Meanwhile the HTTP server stops taking connections and finishes its
	// requests (at most httpDrainTimeout).
	grp, ctx := errgroup.WithContext(ctx)
	lower, stopLower := context.WithCancel(context.WithoutCancel(ctx))
	defer stopLower()
	grp.Go(func() error { return pool.Run(lower) })
	grp.Go(func() error { return proxy.Run(lower) })
	grp.Go(func() error { return nodeSVID.Run(lower) })
	grp.Go(func() error { return workloads.Run(lower) })
	if inbound != nil {
		grp.Go(func() error { return inbound.Run(lower) })
		grp.Go(func() error { return registry.Run(lower) })
	}
	grp.Go(func() error { return meter.Run(lower) })
	brokerCtx, stopBroker := context.WithCancel(context.WithoutCancel(ctx))
	defer stopBroker()
	brokerDone := make(chan struct{})
	grp.Go(func() error {
		defer close(brokerDone)
		return b.Run(brokerCtx)
	})
	grp.Go(func() error {
		err := srv.Serve(ln)
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return fmt.Errorf("http: %w", err)
	})
	grp.Go(func() error {
		<-ctx.Done()
		stopBroker()
		pool.Drain() // after stopBroker, not before: see above
		<-brokerDone
		wctx, cancel := context.WithTimeout(context.Background(), httpDrainTimeout)
		if err := api.WaitInvokes(wctx); err != nil {
			log.Warn("invoke calls still open at shutdown; stopping the pool under them", "after", httpDrainTimeout, "err", err)
		}
		cancel()
		stopLower()
		return nil
	})
	grp.Go(func() error {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), httpDrainTimeout)
		defer cancel()
		if err := srv.Shutdown(sctx); err != nil {
			log.Warn("HTTP requests still open at shutdown were cut", "after", httpDrainTimeout, "err", err)
			_ = srv.Close()
		}
		return nil
	})
	grp.Go(func() error {
		select {
		case <-b.Ready():
		case <-ctx.Done():
			return nil
		}
		if err := cp.Restore(ctx); err != nil {
			return err
		}
		if err := files.Load(ctx); err != nil {
			return withCode(exitInvalidFile, err)
		}
		// Only now is the whole configuration in force: events stored before a
		// restart are matched against it, never against a partial one.
		b.StartDispatching()
		configured.Store(true)
		log.Info("weft serving", "http", ln.Addr().String(), "nats", b.NATSURL(), "router", o.routerAddr, "data", o.data)
		return files.Watch(ctx)
	})
	return grp.Wait()
}

// httpDrainTimeout bounds waiting for open HTTP requests at shutdown: twice
// the broker's publish timeout, so an ingress request always gets its answer.
const httpDrainTimeout = 10 * time.Second

// checkManifests parses every manifest without applying anything.
func checkManifests(paths []string) error {
	objs, err := resource.LoadPaths(paths...)
	if err != nil {
		return err
	}
	return node.Check(objs)
}

// triggerBacklog tells the autoscaler how many events wait in the broker for
// a function: the pending deliveries of every trigger that subscribes it.
type triggerBacklog struct {
	broker atomic.Pointer[broker.Broker] // set once the broker exists
}

func (t *triggerBacklog) Backlog(function string) int {
	b := t.broker.Load()
	if b == nil {
		return 0
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	n := 0
	for _, tr := range b.Triggers().All() {
		if tr.Subscriber.FunctionName != function {
			continue
		}
		if k, err := b.Pending(ctx, tr.Name); err == nil {
			n += k
		}
	}
	return n
}

// nodeIdentity loads (or creates, on first start) the node's CA from the
// store and issues the node's own SVID, spiffe://<domain>/node/<hostname>,
// which the router presents when it originates mutual TLS.
func nodeIdentity(ctx context.Context, st store.Store, o serveOptions, log *slog.Logger) (*router.Identity, *router.SVIDSource, *router.CA, error) {
	td, err := spiffeid.TrustDomainFromString(o.trustDomain)
	if err != nil {
		return nil, nil, nil, withCode(exitUsage, fmt.Errorf("--trust-domain %q: %w", o.trustDomain, err))
	}
	var ca *router.CA
	switch {
	case o.caCert != "" || o.caKey != "":
		certPEM, err1 := os.ReadFile(o.caCert)
		keyPEM, err2 := os.ReadFile(o.caKey)
		if err := errors.Join(err1, err2); err != nil {
			return nil, nil, nil, withCode(exitUsage, fmt.Errorf("--ca-cert/--ca-key: %w", err))
		}
		if ca, err = router.NewCAFromPEM(certPEM, keyPEM, td.Name(), router.SystemClock{}); err != nil {
			return nil, nil, nil, withCode(exitUsage, fmt.Errorf("--ca-cert/--ca-key: %w", err))
		}
	default:
		if ca, err = router.LoadOrCreateCA(ctx, st, td.Name(), router.SystemClock{}); err != nil {
			return nil, nil, nil, fmt.Errorf("certificate authority: %w", err)
		}
	}
	node := nodeName(o.node)
	id, err := spiffeid.FromSegments(td, "node", node)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("node identity: %w", err)
	}
	src, err := router.NewSVIDSource(ca, id, router.SystemClock{}, log)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("node identity: %w", err)
	}
	return &router.Identity{SVID: src, Bundle: ca.Bundle(), Domain: td}, src, ca, nil
}

// nodeName identifies this node among those sharing a store: --node, or
// the host name.
func nodeName(flag string) string {
	if flag != "" {
		return flag
	}
	host, err := os.Hostname()
	if err != nil || host == "" {
		return "local"
	}
	return host
}

// openStore opens the control-plane store --store names: Badger under
// --data by default, or a Redis shared by several nodes.
func openStore(o serveOptions, log *slog.Logger) (store.Store, error) {
	switch {
	case o.storeURL == "":
		return store.OpenBadger(filepath.Join(o.data, "store"), log)
	case strings.HasPrefix(o.storeURL, "redis://"), strings.HasPrefix(o.storeURL, "rediss://"):
		redis.SetLogger(newRedisLogger(log)) // go-redis logs to stderr otherwise
		st, err := store.OpenRedis(o.storeURL, log)
		if err != nil {
			return nil, fmt.Errorf("--store: %w", err)
		}
		return st, nil
	}
	return nil, withCode(exitUsage, fmt.Errorf("--store %q: want empty (Badger) or redis://host:port/db", o.storeURL))
}

// redisLogger routes go-redis's own messages (reconnects, dial failures)
// into weft's log at Warn, at most one per redisLogEvery: while Redis is
// down go-redis repeats itself several times a second per connection.
type redisLogger struct {
	log   *slog.Logger
	limit *rate.Sometimes
}

const redisLogEvery = 10 * time.Second

func newRedisLogger(log *slog.Logger) redisLogger {
	return redisLogger{log: log, limit: &rate.Sometimes{First: 1, Interval: redisLogEvery}}
}

func (l redisLogger) Printf(_ context.Context, format string, v ...any) {
	l.limit.Do(func() {
		l.log.Warn(fmt.Sprintf(format, v...), "source", "go-redis", "note", "similar messages are dropped for "+redisLogEvery.String())
	})
}
