package store

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weft-dev/weft/internal/testutil"
)

func TestBadgerSyncWrites(t *testing.T) {
	t.Parallel()
	b, err := OpenBadger(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := b.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	if !b.db.Opts().SyncWrites {
		t.Fatal("SyncWrites is off: an acknowledged Put could be lost on power loss")
	}
}

// TestBadgerValueLogGC runs the GC loop at a short interval over a value log
// with garbage in it, and checks that passes complete without warnings. That
// Close stops the loop is checked by goleak in TestMain.
func TestBadgerValueLogGC(t *testing.T) {
	t.Parallel()
	rec := &recorder{}
	b, err := openBadger(t.TempDir(), slog.New(rec), time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	// Values over the 1 MiB value threshold go to the value log; rewriting
	// the same key leaves the earlier ones there as garbage.
	big := bytes.Repeat([]byte{'x'}, 2<<20)
	for range 4 {
		if err := b.Put(t.Context(), "big", big); err != nil {
			t.Fatal(err)
		}
	}
	testutil.WaitFor(t, 10*time.Second, func() bool { return b.gcPasses.Load() >= 3 },
		"three value-log GC passes")
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if msgs := rec.messages(); len(msgs) > 0 {
		t.Fatalf("GC logged: %q", msgs)
	}
}

// TestBadgerLogger checks that Badger's warnings and errors reach slog and
// its info and debug lines do not, even when the handler would take them.
func TestBadgerLogger(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	l := badgerLogger{slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))}
	l.Debugf("debug line %d\n", 1)
	l.Infof("All %d tables opened\n", 3)
	l.Warningf("disk %s\n", "slow")
	l.Errorf("compaction failed: %v\n", "boom")
	out := buf.String()
	for _, want := range []string{`level=WARN msg="disk slow" backend=badger`, `level=ERROR msg="compaction failed: boom"`} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %s:\n%s", want, out)
		}
	}
	if strings.Contains(out, "debug line") || strings.Contains(out, "tables opened") {
		t.Errorf("info or debug line passed:\n%s", out)
	}
}

// recorder is a slog.Handler that keeps the messages of Warn and above.
type recorder struct {
	mu   sync.Mutex
	msgs []string
}

func (r *recorder) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelWarn }

func (r *recorder) Handle(_ context.Context, rec slog.Record) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.msgs = append(r.msgs, rec.Message)
	return nil
}

func (r *recorder) WithAttrs([]slog.Attr) slog.Handler { return r }
func (r *recorder) WithGroup(string) slog.Handler      { return r }

func (r *recorder) messages() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.msgs...)
}

// A store whose directory is removed under it cannot flush its memtable, and
// Badger retries that flush for ever; Close must still return, so that a node
// stops on SIGTERM. Once the directory is back, the flush succeeds and the
// database closes in the background.
func TestBadgerCloseWithoutItsDirectory(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "store")
	b, err := OpenBadger(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	b.closeWait = 500 * time.Millisecond
	if err := b.Put(t.Context(), "k", []byte("v")); err != nil { // in the memtable, to be flushed
		t.Fatal(err)
	}
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	returned := make(chan error, 1)
	go func() { returned <- b.Close() }()
	select {
	case err := <-returned:
		if !errors.Is(err, ErrCloseTimeout) {
			t.Fatalf("Close without its directory: %v, want ErrCloseTimeout", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Close still waits 30 s after its directory was removed (it should give up after 500 ms)")
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		t.Fatal(err)
	}
	select {
	case <-b.dbClosed:
	case <-time.After(30 * time.Second):
		t.Fatal("the database did not close once its directory was back")
	}
}
