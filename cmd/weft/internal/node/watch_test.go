package node

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/weft-dev/weft/internal/resource"
	"github.com/weft-dev/weft/internal/store"
	"github.com/weft-dev/weft/internal/testutil"
)

// watchWait bounds every wait for the watcher: a reload takes the settle
// delay plus a parse, far less than this.
const watchWait = 10 * time.Second

// startWatch loads paths into a fresh control plane and runs Watch until the
// test ends. It returns once the watcher is armed: Watch reloads once after
// its watches are in place, so that changes made between Load and Watch are
// not lost, and that second load is the signal.
func startWatch(t *testing.T, paths ...string) (*Files, *ControlPlane, *recorder) {
	t.Helper()
	cp, rec, _ := newCP(t)
	f := NewFiles(paths, cp, discard())
	if err := f.Load(t.Context()); err != nil {
		t.Fatalf("Load: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.Watch(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Watch: %v", err)
			}
		case <-time.After(watchWait):
			t.Error("Watch did not return after its context ended")
		}
	})
	testutil.WaitFor(t, watchWait, func() bool {
		loads, _ := f.Status()
		return loads >= 2
	}, "the watcher's first reload")
	if _, err := f.Status(); err != nil {
		t.Fatalf("first reload: %v", err)
	}
	return f, cp, rec
}

// waitTriggers waits until the broker's index holds exactly names.
func waitTriggers(t *testing.T, rec *recorder, names ...string) {
	t.Helper()
	testutil.WaitFor(t, watchWait, func() bool {
		return slices.Equal(rec.triggerNames(), names)
	}, "triggers %v in force", names)
}

func TestFilesWatchAppliesEdits(t *testing.T) {
	dir := t.TempDir()
	a := filepath.Join(dir, "a.yaml")
	b := filepath.Join(dir, "sub", "b.yml")
	writeFile(t, a, triggerDoc("t1", "a"))
	writeFile(t, b, join(triggerDoc("t2", "b"), functionDoc("fb", "info")))
	writeFile(t, filepath.Join(dir, "notes.txt"), "not a manifest")

	f, cp, rec := startWatch(t, dir)
	if n := rec.triggerNames(); !slices.Equal(n, []string{"t1", "t2"}) {
		t.Fatalf("loaded %v, want [t1 t2]", n)
	}
	if r := mustGet(t, cp, "Function", "fb"); r.Source != b {
		t.Errorf("fb's source %q, want %q", r.Source, b)
	}

	// An edit, saved the way editors save: write a temporary, rename it over.
	writeFile(t, a, join(triggerDoc("t1", "a2"), triggerDoc("t3", "c")))
	waitTriggers(t, rec, "t1", "t2", "t3")
	if tr, _ := rec.trigger("t1"); !tr.Match(eventOfType("a2")) {
		t.Error("t1 was not replaced by its edited version")
	}
	if _, err := f.Status(); err != nil {
		t.Errorf("Status after a good edit: %v", err)
	}

	// A bad edit is refused; the last good state stays in force.
	before, beforeCalls := listDump(cp), rec.calls()
	bad := join(triggerDoc("t1", "a3"), strings.Replace(triggerDoc("t3", "c"), "- exact: {type: c}", `- cesql: "type = "`, 1))
	writeFile(t, a, bad)
	var lastErr error
	testutil.WaitFor(t, watchWait, func() bool {
		_, lastErr = f.Status()
		return lastErr != nil
	}, "the bad edit reported by Status")
	got := wheres(fieldErrors(t, lastErr))
	if want := []where{{a, lineOf(t, bad, "cesql:", 1), "spec.filters[0].cesql"}}; !slices.Equal(got, want) {
		t.Errorf("Status error %+v, want %+v", got, want)
	}
	if listDump(cp) != before || rec.calls() != beforeCalls {
		t.Error("a refused edit changed what is in force")
	}

	// Fixing the file clears the error.
	writeFile(t, a, join(triggerDoc("t1", "a3"), triggerDoc("t3", "c")))
	testutil.WaitFor(t, watchWait, func() bool {
		tr, ok := rec.trigger("t1")
		_, err := f.Status()
		return ok && tr.Match(eventOfType("a3")) && err == nil
	}, "the fixed edit in force")

	// A deleted file takes its resources with it.
	if err := os.Remove(b); err != nil {
		t.Fatal(err)
	}
	waitTriggers(t, rec, "t1", "t3")
	testutil.WaitFor(t, watchWait, func() bool { return rec.calls().removed == "fb" }, "fb removed from the pool")
	if _, ok := cp.Get(resource.Key{Kind: "Function", Name: "fb"}); ok {
		t.Error("fb still in force after its file was deleted")
	}
}

// TestFilesWatchNewFolders covers folders that appear under a watched one,
// created in place or moved in whole.
func TestFilesWatchNewFolders(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "a.yaml"), triggerDoc("t1", "a"))
	_, _, rec := startWatch(t, dir)

	writeFile(t, filepath.Join(dir, "made", "m.yaml"), triggerDoc("made", "m"))
	waitTriggers(t, rec, "made", "t1")

	// Regression: a folder moved in already holding manifests (mv, git
	// checkout, tar) gives one event, for the folder; it was watched but not
	// read, so its manifests were ignored until some other change. Folders
	// below it were not watched at all.
	outside := t.TempDir()
	writeFile(t, filepath.Join(outside, "moved", "x.yaml"), triggerDoc("moved", "x"))
	writeFile(t, filepath.Join(outside, "moved", "deeper", "y.yaml"), triggerDoc("deeper", "y"))
	if err := os.Rename(filepath.Join(outside, "moved"), filepath.Join(dir, "moved")); err != nil {
		t.Fatal(err)
	}
	waitTriggers(t, rec, "deeper", "made", "moved", "t1")

	writeFile(t, filepath.Join(dir, "moved", "deeper", "z.yaml"), triggerDoc("later", "z"))
	waitTriggers(t, rec, "deeper", "later", "made", "moved", "t1")

	// Removing a folder removes what it declared.
	if err := os.RemoveAll(filepath.Join(dir, "moved")); err != nil {
		t.Fatal(err)
	}
	waitTriggers(t, rec, "made", "t1")
}

// TestFilesWatchSingleFile watches a file given by name (serve -f x.yaml):
// its folder is watched, so a rename over it is seen, and other manifests in
// that folder are not loaded.
func TestFilesWatchSingleFile(t *testing.T) {
	dir := t.TempDir()
	a := filepath.Join(dir, "a.yaml")
	writeFile(t, a, triggerDoc("t1", "a"))
	writeFile(t, filepath.Join(dir, "other.yaml"), triggerDoc("other", "o"))
	f, _, rec := startWatch(t, a)
	waitTriggers(t, rec, "t1")

	writeFile(t, a, join(triggerDoc("t1", "a"), triggerDoc("t2", "b")))
	waitTriggers(t, rec, "t1", "t2")

	loads, _ := f.Status()
	writeFile(t, filepath.Join(dir, "other.yaml"), triggerDoc("other", "o2"))
	testutil.WaitFor(t, watchWait, func() bool { n, _ := f.Status(); return n > loads }, "a reload after a change next to the file")
	if n := rec.triggerNames(); !slices.Equal(n, []string{"t1", "t2"}) {
		t.Errorf("in force %v: a manifest that was not given was loaded", n)
	}

	// The watched file itself deleted: the reload fails, the state stays.
	if err := os.Remove(a); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, watchWait, func() bool { _, err := f.Status(); return errors.Is(err, os.ErrNotExist) }, "the missing file reported")
	if n := rec.triggerNames(); !slices.Equal(n, []string{"t1", "t2"}) {
		t.Errorf("in force %v after the file vanished, want the last good [t1 t2]", n)
	}
}

func TestFilesLoadRefusesBadStartup(t *testing.T) {
	dir := t.TempDir()
	yaml := strings.Replace(triggerDoc("t1", "a"), "broker: default", "broker: other", 1)
	writeFile(t, filepath.Join(dir, "a.yaml"), yaml)
	cp, rec, _ := newCP(t)
	f := NewFiles([]string{dir}, cp, discard())
	err := f.Load(t.Context())
	got := wheres(fieldErrors(t, err))
	if want := []where{{filepath.Join(dir, "a.yaml"), lineOf(t, yaml, "broker: other", 1), "spec.broker"}}; !slices.Equal(got, want) {
		t.Errorf("Load problems %+v, want %+v", got, want)
	}
	if loads, st := f.Status(); loads != 1 || st == nil {
		t.Errorf("Status = %d, %v; want 1 load and its error", loads, st)
	}
	if rec.calls() != (calls{}) {
		t.Error("a refused start-up load reached the broker or pool")
	}
}

// TestFilesWatchCatchesUpAfterLoad is a regression test: serve calls Load,
// then Watch, and a file changed between the two gave no event, so the
// change stayed unapplied until some later edit. Watch now reads the files
// once more after its watches are in place.
func TestFilesWatchCatchesUpAfterLoad(t *testing.T) {
	dir := t.TempDir()
	a := filepath.Join(dir, "a.yaml")
	writeFile(t, a, triggerDoc("t1", "a"))
	cp, rec, _ := newCP(t)
	f := NewFiles([]string{dir}, cp, discard())
	if err := f.Load(t.Context()); err != nil {
		t.Fatal(err)
	}
	writeFile(t, a, join(triggerDoc("t1", "a"), triggerDoc("t2", "b"))) // before Watch runs

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.Watch(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Watch: %v", err)
		}
	})
	waitTriggers(t, rec, "t1", "t2")
}

// flakyStore is a real Badger store whose writes fail while down is set: an
// injected outage of the store (Redis going away, for a node that uses it).
type flakyStore struct {
	*store.Badger
	down atomic.Bool
}

var errStoreDown = errors.New("connection refused (injected)")

func (s *flakyStore) Put(ctx context.Context, key string, v []byte) error {
	if s.down.Load() {
		return errStoreDown
	}
	return s.Badger.Put(ctx, key, v)
}

func (s *flakyStore) Delete(ctx context.Context, key string) error {
	if s.down.Load() {
		return errStoreDown
	}
	return s.Badger.Delete(ctx, key)
}

// TestFilesWatchRetriesWhileStoreDown: a file change that arrives while the
// store cannot record it is refused as a whole (the old state stays), and is
// applied by itself once the store is back, without another edit.
func TestFilesWatchRetriesWhileStoreDown(t *testing.T) {
	defer func(lo, hi time.Duration) { storeRetryMin, storeRetryMax = lo, hi }(storeRetryMin, storeRetryMax)
	storeRetryMin, storeRetryMax = 20*time.Millisecond, 100*time.Millisecond

	dir := t.TempDir()
	file := filepath.Join(dir, "t.yaml")
	writeFile(t, file, join(triggerDoc("t1", "a"), triggerDoc("t2", "b")))
	st := &flakyStore{Badger: openStore(t, t.TempDir())}
	rec := &recorder{}
	cp := NewControlPlane(st, rec, rec, discard())
	f := NewFiles([]string{dir}, cp, discard())
	if err := f.Load(t.Context()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.Watch(ctx) }()
	defer func() { cancel(); <-done }()
	testutil.WaitFor(t, watchWait, func() bool { loads, _ := f.Status(); return loads >= 2 }, "the watcher's first reload")

	st.down.Store(true)
	writeFile(t, file, triggerDoc("t1", "a")) // t2 removed: a store delete
	testutil.WaitFor(t, watchWait, func() bool { _, err := f.Status(); return errors.Is(err, ErrStore) }, "the change was not refused for the store")
	if n := rec.triggerNames(); !slices.Equal(n, []string{"t1", "t2"}) {
		t.Fatalf("during the outage triggers %v, want the old [t1 t2]", n)
	}
	loads, _ := f.Status()
	testutil.WaitFor(t, watchWait, func() bool { l, _ := f.Status(); return l >= loads+2 }, "no retry while the store is down")

	st.down.Store(false)
	waitTriggers(t, rec, "t1")
	if _, err := f.Status(); err != nil {
		t.Errorf("after the store came back: %v", err)
	}
}
