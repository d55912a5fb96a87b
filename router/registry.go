package router

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/weft-dev/weft/internal/store"
)

// registryPrefix is where nodes announce their functions:
// registry/fn/<function>/<node> → {"inbound": "https://host:port"}.
const registryPrefix = "registry/fn/"

// RegistryConfig configures a Registry. Zero durations mean their defaults.
type RegistryConfig struct {
	// Node names this node; unique among the nodes sharing the store.
	Node string
	// Inbound is the URL other nodes reach this node's functions at (its
	// inbound mTLS listener), e.g. "https://10.0.0.5:8443".
	Inbound string
	// TTL is how long an announcement lives without a heartbeat: a node that
	// died disappears from the others' view after at most TTL. Default 15s.
	TTL time.Duration
	// Heartbeat is how often the node renews its announcements. Default 5s.
	Heartbeat time.Duration
}

func (c RegistryConfig) withDefaults() RegistryConfig {
	if c.TTL <= 0 {
		c.TTL = 15 * time.Second
	}
	if c.Heartbeat <= 0 {
		c.Heartbeat = 5 * time.Second
	}
	return c
}

// Registry announces the functions this node runs, with a TTL refreshed by
// heartbeat, and keeps a view of every other node's, updated by the store's
// change notifications (Redis keyspace events between nodes), so the router
// can send a call for a function this node does not run to a node that
// does. Methods are safe for concurrent use.
type Registry struct {
	cfg   RegistryConfig
	st    store.Store
	local func() []string
	log   *slog.Logger

	mu     sync.Mutex
	remote map[string][]string // function → inbound URLs of other nodes, sorted
}

type announcement struct {
	Inbound string `json:"inbound"`
}

// NewRegistry returns a registry over st; local lists the functions this
// node runs at the moment it is called.
func NewRegistry(cfg RegistryConfig, st store.Store, local func() []string, log *slog.Logger) (*Registry, error) {
	cfg = cfg.withDefaults()
	if cfg.Node == "" || cfg.Inbound == "" {
		return nil, errors.New("registry: Node and Inbound are required")
	}
	if cfg.Heartbeat >= cfg.TTL {
		return nil, fmt.Errorf("registry: heartbeat %s must be shorter than the TTL %s", cfg.Heartbeat, cfg.TTL)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Registry{cfg: cfg, st: st, local: local, log: log, remote: map[string][]string{}}, nil
}

// Endpoints returns the inbound URLs of the other nodes that run function.
func (g *Registry) Endpoints(function string) []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.remote[function]
}

// Run announces and watches until ctx ends, then withdraws this node's
// announcements.
func (g *Registry) Run(ctx context.Context) error {
	changes, err := g.st.Watch(ctx, registryPrefix)
	if err != nil {
		return fmt.Errorf("registry: watch: %w", err)
	}
	announced := map[string]bool{}
	g.heartbeat(ctx, announced)
	g.refresh(ctx)
	tick := time.NewTicker(g.cfg.Heartbeat)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			g.withdraw(announced)
			return nil
		case <-tick.C:
			g.heartbeat(ctx, announced)
			g.refresh(ctx) // also catches what a notification may have missed
		case _, ok := <-changes:
			if !ok {
				if ctx.Err() != nil {
					g.withdraw(announced)
					return nil
				}
				return errors.New("registry: the store's change feed closed")
			}
			g.refresh(ctx)
		}
	}
}

func (g *Registry) key(function string) string {
	return registryPrefix + function + "/" + g.cfg.Node
}

// heartbeat (re)announces the local functions and withdraws those gone.
func (g *Registry) heartbeat(ctx context.Context, announced map[string]bool) {
	body, _ := json.Marshal(announcement{Inbound: g.cfg.Inbound}) // a struct of strings
	now := map[string]bool{}
	for _, fn := range g.local() {
		now[fn] = true
		if err := g.st.PutTTL(ctx, g.key(fn), body, g.cfg.TTL); err != nil {
			g.log.Warn("registry: announce", "function", fn, "err", err)
		}
	}
	for fn := range announced {
		if !now[fn] {
			if err := g.st.Delete(ctx, g.key(fn)); err != nil {
				g.log.Warn("registry: withdraw", "function", fn, "err", err)
			}
			delete(announced, fn)
		}
	}
	for fn := range now {
		announced[fn] = true
	}
}

// withdraw removes this node's announcements on a clean stop, so the other
// nodes need not wait for the TTL.
func (g *Registry) withdraw(announced map[string]bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	for fn := range announced {
		_ = g.st.Delete(ctx, g.key(fn))
	}
}

// refresh rebuilds the view of the other nodes from the store.
func (g *Registry) refresh(ctx context.Context) {
	kvs, err := g.st.List(ctx, registryPrefix)
	if err != nil {
		g.log.Warn("registry: list; keeping the last view", "err", err)
		return
	}
	view := map[string][]string{}
	for _, kv := range kvs {
		fn, node, ok := strings.Cut(strings.TrimPrefix(kv.Key, registryPrefix), "/")
		if !ok || node == g.cfg.Node {
			continue
		}
		var a announcement
		if json.Unmarshal(kv.Value, &a) != nil || a.Inbound == "" {
			continue
		}
		view[fn] = append(view[fn], a.Inbound)
	}
	for _, urls := range view {
		sort.Strings(urls)
	}
	g.mu.Lock()
	g.remote = view
	g.mu.Unlock()
}
