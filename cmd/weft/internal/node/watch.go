package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/weft-dev/weft/internal/resource"
)

// Files keeps the resources declared in the files given to serve -f in
// force: it loads them once, then watches their folders (editors replace
// files, so the folder is watched, not the file) and re-applies the whole set
// after a change settles. A bad change is refused, logged, and kept as
// LastError; the previous state stays in force.
type Files struct {
	paths []string
	cp    *ControlPlane
	log   *slog.Logger

	named map[string]bool // the paths as given; owned by Watch

	mu      sync.Mutex
	lastErr error
	loads   int
}

// NewFiles returns a watcher of paths (files or folders).
func NewFiles(paths []string, cp *ControlPlane, log *slog.Logger) *Files {
	return &Files{paths: paths, cp: cp, log: log}
}

// Load reads every path and applies the result as the complete file-sourced
// state.
func (f *Files) Load(ctx context.Context) error {
	objs, err := resource.LoadPaths(f.paths...)
	if err == nil {
		var changes []Change
		changes, err = f.cp.ReplaceFiles(ctx, objs)
		if err == nil {
			n := 0
			for _, c := range changes {
				if c.Action != "unchanged" {
					n++
				}
			}
			f.log.Info("manifests applied", "files", len(f.paths), "changes", n)
		}
	}
	f.mu.Lock()
	f.lastErr = err
	f.loads++
	f.mu.Unlock()
	return err
}

// Status returns how many loads ran and the last load's error (nil when the
// files in force are the files on disk).
func (f *Files) Status() (loads int, lastErr error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.loads, f.lastErr
}

// settle is how long the watcher waits after the last file event before it
// reloads, so an editor's write-rename-chmod burst is one reload.
const settle = 150 * time.Millisecond

// Bounds of the wait before a load refused by an unavailable store is tried
// again (var for tests).
var storeRetryMin, storeRetryMax = 2 * time.Second, 30 * time.Second

// Watch reloads on changes until ctx ends.
func (f *Files) Watch(ctx context.Context) error {
	if len(f.paths) == 0 {
		<-ctx.Done()
		return nil
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watch manifests: %w", err)
	}
	// Files named explicitly count whatever their extension.
	f.named = map[string]bool{}
	for _, p := range f.paths {
		f.named[filepath.Clean(p)] = true
	}
	defer w.Close()
	if err := f.addDirs(w); err != nil {
		return err
	}
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	// A load refused only because the store was unreachable is tried again,
	// backing off, until it goes through or the files change again.
	retryWait := time.Duration(0)
	reload := func() {
		err := f.Load(ctx)
		switch {
		case err == nil:
			retryWait = 0
		case errors.Is(err, ErrStore):
			retryWait = min(max(2*retryWait, storeRetryMin), storeRetryMax)
			f.log.Warn("manifest change not applied: the store is unavailable; retrying", "in", retryWait, "err", err)
			timer.Reset(retryWait)
		default:
			retryWait = 0
			f.log.Error("manifest change refused; previous state stays in force", "err", err)
		}
	}
	// A change made after the caller's Load but before the watches were in
	// place gave no event: read the files once more now that they are.
	reload()
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return nil
			}
			if ev.Has(fsnotify.Create) {
				if st, err := os.Stat(ev.Name); err == nil && st.IsDir() {
					// A new sub-folder, made here or moved in whole: watch
					// it and the folders under it, and reload, since its
					// manifests may predate the watch and give no event.
					if err := addTree(w, ev.Name); err != nil {
						f.log.Warn("manifest watcher", "err", err)
					}
					timer.Reset(settle)
				}
			}
			if resource.IsManifest(ev.Name) || f.named[filepath.Clean(ev.Name)] || ev.Has(fsnotify.Remove) || ev.Has(fsnotify.Rename) {
				timer.Reset(settle)
			}
		case err, ok := <-w.Errors:
			if !ok {
				return nil
			}
			// An overflow means events were lost: reload to be sure.
			f.log.Warn("manifest watcher; reloading", "err", err)
			timer.Reset(settle)
		case <-timer.C:
			reload()
		}
	}
}

func (f *Files) addDirs(w *fsnotify.Watcher) error {
	for _, p := range f.paths {
		st, err := os.Stat(p)
		if err != nil {
			return fmt.Errorf("watch %s: %w", p, err)
		}
		if !st.IsDir() {
			if err := w.Add(filepath.Dir(p)); err != nil {
				return fmt.Errorf("watch %s: %w", p, err)
			}
			continue
		}
		if err := addTree(w, p); err != nil {
			return err
		}
	}
	return nil
}

// addTree watches dir and every folder under it.
func addTree(w *fsnotify.Watcher, dir string) error {
	err := filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			return w.Add(path)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("watch %s: %w", dir, err)
	}
	return nil
}
