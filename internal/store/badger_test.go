package store_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/weft-dev/weft/internal/store"
	"github.com/weft-dev/weft/internal/store/storetest"
)

// crashChildEnv makes the test binary act as the writer that
// TestBadgerSurvivesKill9 kills; its value is the store directory.
const crashChildEnv = "WEFT_STORE_CRASH_CHILD_DIR"

// TestMain checks, after all tests, that every store was closed and that
// Close stopped the value-log GC loop and Badger's own goroutines.
func TestMain(m *testing.M) {
	if dir := os.Getenv(crashChildEnv); dir != "" {
		os.Exit(crashChild(dir))
	}
	goleak.VerifyTestMain(m)
}

func TestBadger(t *testing.T) {
	t.Parallel()
	base := t.TempDir()
	storetest.Run(t, func(t *testing.T) store.Store {
		// The directory is named after the test, so a second open in the
		// same test reopens the same data, as Run requires.
		log := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
		s, err := store.OpenBadger(filepath.Join(base, t.Name()), log)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}, storetest.Options{
		// Badger locks its directory: one handle, hence one process, per
		// store, so there is no second handle whose changes to watch.
		SharedWatch: false,
	})
}

// TestOpenBadgerTwice checks that a second handle on a directory in use is
// refused (Badger's directory lock), as two nodes sharing a data dir must be.
func TestOpenBadgerTwice(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s, err := store.OpenBadger(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { closeStore(t, s) })
	s2, err := store.OpenBadger(dir, nil)
	if err == nil {
		_ = s2.Close()
		t.Fatal("second OpenBadger on the same directory succeeded")
	}
	if !strings.Contains(err.Error(), dir) {
		t.Errorf("error %q does not name the directory", err)
	}
}

// TestBadgerSurvivesKill9 kills a writer with SIGKILL mid-stream and checks
// that every write it acknowledged (Put returned) is there after reopening:
// the store recovers from an unclean exit without losing acknowledged state.
// Losing power is what sync writes guard against beyond this; a test cannot
// cut power, so TestBadgerSyncWrites checks that they are on.
func TestBadgerSurvivesKill9(t *testing.T) {
	if testing.Short() {
		t.Skip("crash test; skipped with -short")
	}
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "store")
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), crashChildEnv+"="+dir)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}

	const killAfter = 50
	var acked []string
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		key, ok := strings.CutPrefix(sc.Text(), "ack ")
		if !ok {
			continue
		}
		// Acks already in the pipe when the kill lands count too: each was
		// printed only after its Put returned.
		acked = append(acked, key)
		if len(acked) == killAfter {
			if err := cmd.Process.Kill(); err != nil {
				t.Fatalf("kill writer: %v", err)
			}
		}
	}
	waitErr := cmd.Wait()
	if len(acked) < killAfter {
		t.Fatalf("writer stopped after %d acks (%v):\n%s", len(acked), waitErr, stderr.String())
	}

	s, err := store.OpenBadger(dir, nil)
	if err != nil {
		t.Fatalf("reopen after kill -9: %v", err)
	}
	t.Cleanup(func() { closeStore(t, s) })
	for _, key := range acked {
		got, err := s.Get(t.Context(), key)
		if err != nil {
			t.Fatalf("acknowledged %q lost after kill -9: %v (%d acked)", key, err, len(acked))
		}
		if want := crashValue(key); string(got) != want {
			t.Fatalf("after kill -9, %q = %q, want %q", key, got, want)
		}
	}
	t.Logf("%d acknowledged writes survived kill -9", len(acked))
}

// crashChild writes keys to the store in dir until it is killed, printing
// "ack KEY" after each Put returns. It never closes the store on purpose.
func crashChild(dir string) int {
	s, err := store.OpenBadger(dir, slog.New(slog.NewTextHandler(os.Stderr, nil)))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ctx := context.Background()
	// Bounded, so an orphan cannot run forever; the parent kills it long
	// before, and a write to the pipe of a dead parent ends it too (SIGPIPE).
	for i := range 100_000 {
		key := fmt.Sprintf("crash/%06d", i)
		if err := s.Put(ctx, key, []byte(crashValue(key))); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		// os.Stdout is unbuffered: the ack is in the pipe when this returns.
		if _, err := fmt.Fprintf(os.Stdout, "ack %s\n", key); err != nil {
			return 1
		}
	}
	return 0
}

func crashValue(key string) string { return "value of " + key }

func closeStore(t *testing.T, s store.Store) {
	if err := s.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
}
