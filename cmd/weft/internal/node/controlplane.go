package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"

	"github.com/weft-dev/weft/broker"
	"github.com/weft-dev/weft/internal/resource"
	"github.com/weft-dev/weft/internal/store"
	"github.com/weft-dev/weft/router"
	"github.com/weft-dev/weft/triggers"
	"github.com/weft-dev/weft/workers"
)

// Sources of a resource: the files given to serve -f, or the API.
const sourceAPI = "api"

// storePrefix is where API-applied resources persist. Resources from files
// are not persisted: the files are their truth, read again at start-up.
const storePrefix = "resources/"

// Triggers is what the control plane needs from the broker.
type Triggers interface {
	SetTriggers(idx *triggers.Index)
}

// Services is what the control plane needs from the router: a whole set of
// Services is prepared (TLS files loaded) before anything changes, and
// installed once the change is committed.
type Services interface {
	Prepare(svcs []*router.Service) (*router.Table, error)
	Install(t *router.Table)
}

// Functions is what the control plane needs from the worker pool.
type Functions interface {
	Apply(fn *workers.Function)
	Remove(name string)
}

// applied is one resource in force.
type applied struct {
	obj    resource.Object
	source string // sourceAPI or the file it came from
	trig   *triggers.Trigger
	fn     *workers.Function
	svc    *router.Service
}

// ControlPlane holds the resources in force. Methods are safe for concurrent
// use; changes are serialised.
type ControlPlane struct {
	log   *slog.Logger
	store store.Store
	trigs Triggers
	fns   Functions
	svcs  Services // nil: Service manifests are refused

	mu    sync.Mutex // serialises changes; guards state
	state map[resource.Key]applied
}

// NewControlPlane returns an empty control plane.
func NewControlPlane(st store.Store, t Triggers, f Functions, log *slog.Logger) *ControlPlane {
	return &ControlPlane{log: log, store: st, trigs: t, fns: f, state: map[resource.Key]applied{}}
}

// UseServices lets the control plane put Services in force through s. Call
// it before the first change.
func (cp *ControlPlane) UseServices(s Services) { cp.svcs = s }

// Change reports what an apply or delete did to one resource.
type Change struct {
	Kind   string `json:"kind"`
	Name   string `json:"name"`
	Action string `json:"action"` // created, configured, unchanged, deleted
}

// parse turns a decoded object into its component's form.
func parse(obj resource.Object) (applied, error) {
	a := applied{obj: obj.Detached()} // kept while in force; errors come from obj
	var err error
	switch obj.Kind {
	case "Trigger":
		a.trig, err = triggers.Parse(obj)
		if err == nil && a.trig.Broker != "" && a.trig.Broker != broker.DefaultBroker {
			err = obj.FieldError([]string{"spec", "broker"}, fmt.Errorf("broker %q does not exist; a node has one broker, %q", a.trig.Broker, broker.DefaultBroker))
		}
	case "Function":
		a.fn, err = workers.Parse(obj)
	case "Service":
		a.svc, err = router.ParseService(obj)
	default:
		err = obj.FieldError([]string{"kind"}, fmt.Errorf("unknown kind %q (want Trigger, Function or Service)", obj.Kind))
	}
	return a, err
}

// Restore loads API-applied resources from the store. Called once at
// start-up, before files are applied.
func (cp *ControlPlane) Restore(ctx context.Context) error {
	kvs, err := cp.store.List(ctx, storePrefix)
	if err != nil {
		return fmt.Errorf("restore resources: %w", err)
	}
	var objs []resource.Object
	for _, kv := range kvs {
		file, manifest := unwrapStored(kv.Value)
		got, err := resource.Decode("store:"+kv.Key, manifest)
		if err != nil {
			return fmt.Errorf("restore %s: %w", kv.Key, err)
		}
		for i := range got {
			// The file an API apply named is where relative paths of the
			// resource (a Function's command and folder) resolve from.
			got[i].File = file
		}
		objs = append(objs, got...)
	}
	if _, err = cp.Apply(ctx, objs, sourceAPI); err != nil {
		return fmt.Errorf("restore resources from the store: %w", err)
	}
	return nil
}

// stored is how an API-applied resource persists: its manifest and the file
// the apply named (empty when none), which a Function needs to find its
// folder again after a restart.
type stored struct {
	File     string          `json:"file"`
	Manifest json.RawMessage `json:"manifest"`
}

// unwrapStored reads a stored record; a bare manifest (as written before
// records carried their file) has no file.
func unwrapStored(v []byte) (file string, manifest []byte) {
	var rec stored
	if err := json.Unmarshal(v, &rec); err == nil && len(rec.Manifest) > 0 {
		return rec.File, rec.Manifest
	}
	return "", v
}

// Apply validates objs as one change and puts them in force. source is
// sourceAPI or a file set's marker; API-applied resources persist.
func (cp *ControlPlane) Apply(ctx context.Context, objs []resource.Object, source string) ([]Change, error) {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	next := cp.copyState()
	changes, err := cp.stage(next, objs, source)
	if err != nil {
		return nil, err
	}
	return changes, cp.commit(ctx, next, changes)
}

// stage parses objs into next; it changes nothing in force.
func (cp *ControlPlane) stage(next map[resource.Key]applied, objs []resource.Object, source string) ([]Change, error) {
	var errs []error
	var changes []Change
	seen := map[resource.Key]string{}
	for _, obj := range objs {
		if first, dup := seen[obj.Key()]; dup {
			errs = append(errs, obj.FieldError([]string{"metadata", "name"}, fmt.Errorf("%s is declared twice (first in %s)", obj.Key(), first)))
			continue
		}
		seen[obj.Key()] = obj.File
		a, err := parse(obj)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if source != sourceAPI {
			a.source = obj.File
		} else {
			a.source = sourceAPI
		}
		action := "created"
		if old, ok := next[obj.Key()]; ok {
			action = "configured"
			if string(old.obj.JSON) == string(obj.JSON) && old.source == a.source && old.obj.File == obj.File {
				action = "unchanged"
			}
		}
		next[obj.Key()] = a
		changes = append(changes, Change{Kind: obj.Kind, Name: obj.Name, Action: action})
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return changes, nil
}

// commit persists API resources, then swaps the new state in: the trigger
// index first (it was built from valid triggers and cannot fail), then the
// functions.
func (cp *ControlPlane) commit(ctx context.Context, next map[resource.Key]applied, changes []Change) error {
	// Once validated, a change is carried through even if the caller goes
	// away, so the store is not left half-written by a dropped connection.
	ctx = context.WithoutCancel(ctx)
	idx := buildIndex(next)
	var svcs []*router.Service
	for _, a := range next {
		if a.svc != nil {
			svcs = append(svcs, a.svc)
		}
	}
	var table *router.Table
	if cp.svcs != nil {
		t, err := cp.svcs.Prepare(svcs) // loads TLS files: the last check before anything changes
		if err != nil {
			return fmt.Errorf("%w: %w", ErrInvalid, err)
		}
		table = t
	} else if len(svcs) > 0 {
		return errors.New("this node has no router: Service manifests cannot be applied")
	}
	for _, ch := range changes {
		k := resource.Key{Kind: ch.Kind, Name: ch.Name}
		a, ok := next[k]
		key := storePrefix + k.Kind + "/" + k.Name
		switch {
		case ok && a.source == sourceAPI && ch.Action != "unchanged":
			rec, err := json.Marshal(stored{File: a.obj.File, Manifest: a.obj.JSON})
			if err != nil {
				return fmt.Errorf("persist %s: %w", k, err)
			}
			if err := cp.store.Put(ctx, key, rec); err != nil {
				return fmt.Errorf("persist %s: %w: %w", k, ErrStore, err)
			}
		case ch.Action != "unchanged" && (!ok || a.source != sourceAPI):
			if err := cp.store.Delete(ctx, key); err != nil {
				return fmt.Errorf("forget %s: %w: %w", k, ErrStore, err)
			}
		}
	}
	old := cp.state
	cp.state = next
	cp.trigs.SetTriggers(idx)
	if table != nil {
		cp.svcs.Install(table)
	}
	for k, a := range next {
		if a.fn != nil {
			if o, ok := old[k]; !ok || string(o.obj.JSON) != string(a.obj.JSON) || o.obj.File != a.obj.File {
				cp.fns.Apply(a.fn)
			}
		}
	}
	for k, o := range old {
		if _, ok := next[k]; !ok && o.fn != nil {
			cp.fns.Remove(k.Name)
		}
	}
	for _, ch := range changes {
		if ch.Action != "unchanged" {
			cp.log.Info("resource "+ch.Action, "kind", ch.Kind, "name", ch.Name)
		}
	}
	return nil
}

func buildIndex(state map[resource.Key]applied) *triggers.Index {
	var trs []*triggers.Trigger
	for _, a := range state {
		if a.trig != nil {
			trs = append(trs, a.trig)
		}
	}
	return triggers.NewIndex(trs)
}

func (cp *ControlPlane) copyState() map[resource.Key]applied {
	next := make(map[resource.Key]applied, len(cp.state))
	for k, v := range cp.state {
		next[k] = v
	}
	return next
}

// Delete removes resources by key. Unknown keys are an error wrapping
// ErrNotFound, and then nothing is deleted.
func (cp *ControlPlane) Delete(ctx context.Context, keys []resource.Key) ([]Change, error) {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	next := cp.copyState()
	var changes []Change
	for _, k := range keys {
		if _, ok := next[k]; !ok {
			return nil, fmt.Errorf("%s: %w", k, ErrNotFound)
		}
		delete(next, k)
		changes = append(changes, Change{Kind: k.Kind, Name: k.Name, Action: "deleted"})
	}
	return changes, cp.commit(ctx, next, changes)
}

// ReplaceFiles makes objs the complete set of file-sourced resources: those
// from files that are no longer declared are deleted, API-applied resources
// are left alone.
func (cp *ControlPlane) ReplaceFiles(ctx context.Context, objs []resource.Object) ([]Change, error) {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	next := cp.copyState()
	declared := map[resource.Key]bool{}
	for _, o := range objs {
		declared[o.Key()] = true
	}
	var removed []Change
	for k, a := range next {
		if a.source != sourceAPI && !declared[k] {
			delete(next, k)
			removed = append(removed, Change{Kind: k.Kind, Name: k.Name, Action: "deleted"})
		}
	}
	changes, err := cp.stage(next, objs, "files")
	if err != nil {
		return nil, err
	}
	changes = append(changes, removed...)
	return changes, cp.commit(ctx, next, changes)
}

// Resource is one resource in force, as the API shows it.
type Resource struct {
	Kind     string          `json:"kind"`
	Name     string          `json:"name"`
	Source   string          `json:"source"`
	Manifest json.RawMessage `json:"manifest"`
}

// List returns the resources of kind ("" = all), sorted by kind and name.
func (cp *ControlPlane) List(kind string) []Resource {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	var out []Resource
	for k, a := range cp.state {
		if kind == "" || k.Kind == kind {
			out = append(out, Resource{Kind: k.Kind, Name: k.Name, Source: a.source, Manifest: a.obj.JSON})
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Kind != out[j].Kind {
			return out[i].Kind < out[j].Kind
		}
		return out[i].Name < out[j].Name
	})
	return out
}

// Get returns one resource, or false.
func (cp *ControlPlane) Get(k resource.Key) (Resource, bool) {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	a, ok := cp.state[k]
	if !ok {
		return Resource{}, false
	}
	return Resource{Kind: k.Kind, Name: k.Name, Source: a.source, Manifest: a.obj.JSON}, true
}

// ErrInvalid marks a change refused for what it asks, beyond what a
// manifest's fields show (a Service's TLS file that cannot be read).
var ErrInvalid = errors.New("invalid")

// ErrNotFound is returned for a resource that is not in force.
var ErrNotFound = errors.New("not found")

// ErrStore marks a change refused because the store could not record it (a
// Redis outage, say): nothing changed, and the same change may succeed later.
var ErrStore = errors.New("store unavailable")

// Check parses objs as an apply would, changing nothing.
func Check(objs []resource.Object) error {
	cp := &ControlPlane{state: map[resource.Key]applied{}}
	_, err := cp.stage(cp.state, objs, "files")
	return err
}
