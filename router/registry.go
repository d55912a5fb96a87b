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
	// Clock dates the view's entries; nil means SystemClock.
	Clock Clock
}

func (c RegistryConfig) withDefaults() RegistryConfig {
	if c.TTL <= 0 {
		c.TTL = 15 * time.Second
	}
	if c.Heartbeat <= 0 {
		c.Heartbeat = 5 * time.Second
	}
	if c.Clock == nil {
		c.Clock = SystemClock{}
	}
	return c
}

// Registry announces the functions this node runs, with a TTL refreshed by
// heartbeat, and keeps a view of every other node's, updated by the store's
// change notifications (Redis keyspace events between nodes), so the router
// can send a call for a function this node does not run to a node that
// does. Methods are safe for concurrent use.
//
// The view outlives the store's unavailability. While the store does not
// answer, nothing can expire, so the view is kept as it was: calls keep
// going to the nodes last known. An entry leaves the view when the store
// reports it deleted or expired, or when the store has answered without it
// for a whole TTL: a store that comes back empty (a Redis restarted without
// persistence) gives every live node a TTL to announce itself again before
// the others forget it. A node that finds its own announcements missing
// from the store makes them again at once, without waiting for its
// heartbeat.
type Registry struct {
	cfg   RegistryConfig
	st    store.Store
	local func() []string
	log   *slog.Logger

	// entries is the view, by registry key; only Run's goroutine (or a test
	// standing in for it) touches it, and publishes remote from it.
	entries map[string]*entry

	mu     sync.Mutex
	remote map[string][]string // function → inbound URLs of other nodes, sorted; replaced, never modified
}

// entry is one other node's announcement of one function, as the view holds
// it.
type entry struct {
	function string
	inbound  string
	// missing is when a List of the store first lacked the entry; zero while
	// the store lists it.
	missing time.Time
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
	return &Registry{cfg: cfg, st: st, local: local, log: log, entries: map[string]*entry{}, remote: map[string][]string{}}, nil
}

// Endpoints returns the inbound URLs of the other nodes that run function.
// The caller must not modify the slice.
func (g *Registry) Endpoints(function string) []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.remote[function]
}

// Run announces and watches until ctx ends, then withdraws this node's
// announcements. A store that stops answering is not an error: Run logs,
// keeps the view and carries on until the store is back.
func (g *Registry) Run(ctx context.Context) error {
	changes, err := g.st.Watch(ctx, registryPrefix)
	if err != nil {
		return fmt.Errorf("registry: watch: %w", err)
	}
	announced := map[string]bool{}
	g.heartbeat(ctx, announced)
	g.refresh(ctx, announced)
	tick := time.NewTicker(g.cfg.Heartbeat)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			g.withdraw(announced)
			return nil
		case <-tick.C:
			g.heartbeat(ctx, announced)
			g.refresh(ctx, announced) // also catches what a notification may have missed
		case c, ok := <-changes:
			if !ok {
				if ctx.Err() != nil {
					g.withdraw(announced)
					return nil
				}
				return errors.New("registry: the store's change feed closed")
			}
			g.apply(ctx, c, announced)
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

// parseKey splits a registry key into its function and node.
func parseKey(key string) (function, node string, ok bool) {
	function, node, ok = strings.Cut(strings.TrimPrefix(key, registryPrefix), "/")
	return function, node, ok && function != "" && node != "" && !strings.Contains(node, "/")
}

// apply updates the view with one change from the store's feed.
func (g *Registry) apply(ctx context.Context, c store.Change, announced map[string]bool) {
	if c.Resync {
		g.refresh(ctx, announced) // changes were lost, or the store restarted
		return
	}
	fn, node, ok := parseKey(c.Key)
	if !ok {
		return
	}
	if node == g.cfg.Node {
		if c.Deleted && announced[fn] {
			// Expired or deleted by someone else while this node runs it.
			g.heartbeat(ctx, announced)
		}
		return
	}
	if c.Deleted {
		if _, ok := g.entries[c.Key]; ok {
			delete(g.entries, c.Key)
			g.publish()
		}
		return
	}
	v, err := g.st.Get(ctx, c.Key)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return // deleted again since; its own change follows
	case err != nil:
		g.log.Warn("registry: read an announcement; keeping the last view", "key", c.Key, "err", err)
		return
	}
	var a announcement
	if json.Unmarshal(v, &a) != nil || a.Inbound == "" {
		return
	}
	if e := g.entries[c.Key]; e != nil && e.inbound == a.Inbound && e.missing.IsZero() {
		return
	}
	g.entries[c.Key] = &entry{function: fn, inbound: a.Inbound}
	g.publish()
}

// refresh brings the view of the other nodes up to the store's listing, and
// announces this node's functions again at once if the listing lacks one of
// them (the store lost them: it restarted, or they expired while this node
// could not reach it). When the store does not answer, the view is kept.
func (g *Registry) refresh(ctx context.Context, announced map[string]bool) {
	kvs, err := g.st.List(ctx, registryPrefix)
	if err != nil {
		g.log.Warn("registry: list; keeping the last view", "err", err)
		return
	}
	now := g.cfg.Clock.Now()
	listed := make(map[string]bool, len(kvs))
	own := map[string]bool{}
	for _, kv := range kvs {
		fn, node, ok := parseKey(kv.Key)
		if !ok {
			continue
		}
		if node == g.cfg.Node {
			own[fn] = true
			continue
		}
		var a announcement
		if json.Unmarshal(kv.Value, &a) != nil || a.Inbound == "" {
			continue
		}
		listed[kv.Key] = true
		g.entries[kv.Key] = &entry{function: fn, inbound: a.Inbound}
	}
	for key, e := range g.entries {
		switch {
		case listed[key]:
		case e.missing.IsZero():
			e.missing = now
			g.log.Debug("registry: announcement missing from the store; kept for a TTL", "key", key)
		case now.Sub(e.missing) >= g.cfg.TTL:
			delete(g.entries, key)
		}
	}
	g.publish()
	for fn := range announced {
		if !own[fn] {
			g.log.Info("registry: this node's announcements are missing from the store; announcing again", "function", fn)
			g.heartbeat(ctx, announced)
			return
		}
	}
}

// publish rebuilds the function → URLs map that Endpoints reads from the
// entries.
func (g *Registry) publish() {
	view := map[string][]string{}
	for _, e := range g.entries {
		view[e.function] = append(view[e.function], e.inbound)
	}
	for _, urls := range view {
		sort.Strings(urls)
	}
	g.mu.Lock()
	g.remote = view
	g.mu.Unlock()
}
