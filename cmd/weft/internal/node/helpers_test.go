package node

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/cloudevents/sdk-go/v2/event"

	"github.com/weft-dev/weft/internal/resource"
	"github.com/weft-dev/weft/internal/store"
	"github.com/weft-dev/weft/triggers"
	"github.com/weft-dev/weft/workers"
)

// recorder stands in for the broker (Triggers) and the worker pool
// (Functions) and records every call the control plane makes.
type recorder struct {
	mu      sync.Mutex
	sets    int
	idx     *triggers.Index
	applied []*workers.Function
	removed []string
}

var (
	_ Triggers  = (*recorder)(nil)
	_ Functions = (*recorder)(nil)
)

func (r *recorder) SetTriggers(idx *triggers.Index) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.sets++
	r.idx = idx
}

func (r *recorder) Apply(fn *workers.Function) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.applied = append(r.applied, fn)
}

func (r *recorder) Remove(name string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.removed = append(r.removed, name)
}

// calls is a comparable summary of everything recorded so far.
type calls struct {
	sets             int
	applied, removed string
}

func (r *recorder) calls() calls {
	r.mu.Lock()
	defer r.mu.Unlock()
	var names []string
	for _, fn := range r.applied {
		names = append(names, fn.Name)
	}
	return calls{sets: r.sets, applied: strings.Join(names, ","), removed: strings.Join(r.removed, ",")}
}

// triggerNames lists the triggers of the last index handed over, by name.
func (r *recorder) triggerNames() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, t := range r.idx.All() {
		out = append(out, t.Name)
	}
	return out
}

// trigger returns the trigger named name in the last index.
func (r *recorder) trigger(name string) (*triggers.Trigger, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.idx.Get(name)
}

// lastApplied returns the last Function handed to Apply under name.
func (r *recorder) lastApplied(name string) *workers.Function {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := len(r.applied) - 1; i >= 0; i-- {
		if r.applied[i].Name == name {
			return r.applied[i]
		}
	}
	return nil
}

func discard() *slog.Logger { return slog.New(slog.DiscardHandler) }

// openStore opens a real Badger store in dir and closes it when the test
// ends (a second Close is harmless).
func openStore(t testing.TB, dir string) *store.Badger {
	t.Helper()
	st, err := store.OpenBadger(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	return st
}

// newCP returns a control plane over a fresh Badger store.
func newCP(t *testing.T) (*ControlPlane, *recorder, *store.Badger) {
	t.Helper()
	st := openStore(t, t.TempDir())
	rec := &recorder{}
	return NewControlPlane(st, rec, rec, discard()), rec, st
}

func triggerDoc(name, typ string) string {
	return fmt.Sprintf(`apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata:
  name: %s
spec:
  broker: default
  filters:
    - exact: {type: %s}
  subscriber:
    uri: http://127.0.0.1:9/hook
`, name, typ)
}

func functionDoc(name, level string) string {
	return fmt.Sprintf(`apiVersion: weft.dev/v1
kind: Function
metadata:
  name: %s
spec:
  command: ["./worker"]
  env: [{name: LOG_LEVEL, value: %s}]
  scale: {min: 0, max: 2}
`, name, level)
}

// join makes one multi-document YAML file of docs.
func join(docs ...string) string { return strings.Join(docs, "---\n") }

func decode(t *testing.T, file, yaml string) []resource.Object {
	t.Helper()
	objs, err := resource.Decode(file, []byte(yaml))
	if err != nil {
		t.Fatalf("decode %s: %v", file, err)
	}
	return objs
}

// lineOf returns the 1-based line of the n-th (from 1) line of text that
// contains sub, so that expected positions follow the YAML.
func lineOf(t *testing.T, text, sub string, n int) int {
	t.Helper()
	for i, l := range strings.Split(text, "\n") {
		if strings.Contains(l, sub) {
			if n--; n == 0 {
				return i + 1
			}
		}
	}
	t.Fatalf("%q not found in the YAML", sub)
	return 0
}

// fieldErrors returns every *resource.FieldError in err's tree.
func fieldErrors(t *testing.T, err error) []*resource.FieldError {
	t.Helper()
	var out []*resource.FieldError
	for _, e := range flatten(err) {
		var fe *resource.FieldError
		if !errors.As(e, &fe) {
			t.Errorf("error without a position: %v", e)
			continue
		}
		out = append(out, fe)
	}
	return out
}

// where is what a test expects of a FieldError.
type where struct {
	File  string
	Line  int
	Field string
}

func wheres(fes []*resource.FieldError) []where {
	var out []where
	for _, fe := range fes {
		out = append(out, where{File: fe.File, Line: fe.Line, Field: fe.Field})
	}
	return out
}

func storeDump(t *testing.T, st store.Store) string {
	t.Helper()
	kvs, err := st.List(t.Context(), "")
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	for _, kv := range kvs {
		fmt.Fprintf(&b, "%s=%s\n", kv.Key, kv.Value)
	}
	return b.String()
}

func storeKeys(t *testing.T, st store.Store) []string {
	t.Helper()
	kvs, err := st.List(t.Context(), "")
	if err != nil {
		t.Fatal(err)
	}
	keys := []string{}
	for _, kv := range kvs {
		keys = append(keys, kv.Key)
	}
	return keys
}

func listDump(cp *ControlPlane) string {
	var b strings.Builder
	for _, r := range cp.List("") {
		fmt.Fprintf(&b, "%s/%s %s %s\n", r.Kind, r.Name, r.Source, r.Manifest)
	}
	return b.String()
}

func mustApply(t *testing.T, cp *ControlPlane, file, yaml string) []Change {
	t.Helper()
	ch, err := cp.Apply(t.Context(), decode(t, file, yaml), sourceAPI)
	if err != nil {
		t.Fatalf("apply %s: %v", file, err)
	}
	return ch
}

func mustGet(t *testing.T, cp *ControlPlane, kind, name string) Resource {
	t.Helper()
	r, ok := cp.Get(resource.Key{Kind: kind, Name: name})
	if !ok {
		t.Fatalf("%s/%s not in force", kind, name)
	}
	return r
}

func sameChanges(a, b []Change) bool {
	key := func(c Change) string { return c.Kind + "/" + c.Name + " " + c.Action }
	ka, kb := make([]string, 0, len(a)), make([]string, 0, len(b))
	for _, c := range a {
		ka = append(ka, key(c))
	}
	for _, c := range b {
		kb = append(kb, key(c))
	}
	slices.Sort(ka)
	slices.Sort(kb)
	return slices.Equal(ka, kb)
}

// writeFile writes data to path through a temporary file and a rename, as
// editors do, creating the folder first.
func writeFile(t *testing.T, path, data string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	tmp := path + ".tmp~"
	if err := os.WriteFile(tmp, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func eventOfType(typ string) event.Event {
	ev := event.New()
	ev.SetID("1")
	ev.SetSource("/test")
	ev.SetType(typ)
	return ev
}
