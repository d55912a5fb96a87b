package broker

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/nats-io/nats.go"

	wtest "github.com/weft-dev/weft/internal/testutil"
)

// streamBatchesDir is where nats-server 2.15 stages the atomic batches of a
// one-replica file stream, spelled out here rather than taken from
// batchesLink so that a wrong path there fails the tests.
func streamBatchesDir(dataDir, stream string) string {
	return filepath.Join(dataDir, "jetstream", "jetstream", "$G", "streams", stream, "batches")
}

// runStagingBroker runs a broker on dataDir that stages batches under
// staging, until the returned stop is called.
func runStagingBroker(t *testing.T, dataDir, staging string) (*Broker, func()) {
	t.Helper()
	cfg := Config{DataDir: dataDir, BatchStaging: staging, DrainTimeout: time.Second}
	b, err := New(cfg, newRecorder(), nil, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("broker.Run: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	select {
	case <-b.Ready():
	case err := <-done:
		done <- err
		t.Fatalf("broker exited before ready: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("broker not ready after 30s")
	}
	return b, stop
}

// TestBatchStagingInMemory: the streams that take atomic batches stage them
// in the node's directory under Config.BatchStaging. nats-server puts a
// batch whose commit has not come yet there, concurrent Store calls still
// commit atomically, and a stop takes the links and the directory away.
func TestBatchStagingInMemory(t *testing.T) {
	dataDir, staging := t.TempDir(), t.TempDir()
	b, stop := runStagingBroker(t, dataDir, staging)
	root, err := stagingDir(staging, dataDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, stream := range []string{eventsStream, deliveriesStream} {
		got, err := os.Readlink(streamBatchesDir(dataDir, stream))
		if err != nil {
			t.Fatalf("%s: %v", stream, err)
		}
		if want := filepath.Join(root, stream); got != want {
			t.Fatalf("%s stages batches in %s, want %s", stream, got, want)
		}
	}

	if got := b.atomicMin.Load(); got != atomicMinStaged {
		t.Fatalf("atomic batches from %d events, want %d with staging in memory", got, atomicMinStaged)
	}

	// The first message of a batch, without its commit: the server stages it.
	msg := nats.NewMsg(eventsSubject)
	msg.Data = []byte(`{}`)
	msg.Header.Set(hdrBatchID, "staged-in-memory")
	msg.Header.Set(hdrBatchSeq, "1")
	if err := b.conn.Load().nc.PublishMsg(msg); err != nil {
		t.Fatal(err)
	}
	wtest.WaitFor(t, 10*time.Second, func() bool {
		entries, err := os.ReadDir(filepath.Join(root, eventsStream))
		return err == nil && len(entries) > 0
	}, "the uncommitted batch was not staged under BatchStaging")

	const workers, per = 2 * atomicMin, 20
	storeFromWorkers(t, b, "/staging", workers, per, func(int) int { return 1 })
	if got := streamMsgs(t, b); got != workers*per {
		t.Fatalf("stream holds %d events, want %d", got, workers*per)
	}
	if bt := b.batcher(); bt.atomicBatches.Load() == 0 || bt.fallbacks.Load() != 0 {
		t.Fatalf("%d atomic batches, %d fell back: want some and none", bt.atomicBatches.Load(), bt.fallbacks.Load())
	}

	stop()
	if _, err := os.Lstat(streamBatchesDir(dataDir, eventsStream)); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("after the stop the batches link is still there: %v", err)
	}
	if _, err := os.Stat(root); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("after the stop the staging directory is still there: %v", err)
	}
}

// TestBatchStagingLeftByKilledNode: a node killed while running leaves its
// links and staging directory; the next start replaces both and stores.
func TestBatchStagingLeftByKilledNode(t *testing.T) {
	dataDir, staging := t.TempDir(), t.TempDir()
	_, stop := runStagingBroker(t, dataDir, staging)
	stop()
	root, err := stagingDir(staging, dataDir)
	if err != nil {
		t.Fatal(err)
	}
	// What a kill leaves: a link per stream, and a staging directory with a
	// batch in it.
	stale := filepath.Join(root, eventsStream, "stale-batch")
	if err := os.MkdirAll(stale, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, stream := range []string{eventsStream, deliveriesStream} {
		if err := os.Symlink(filepath.Join(root, stream), streamBatchesDir(dataDir, stream)); err != nil {
			t.Fatal(err)
		}
	}

	b, _ := runStagingBroker(t, dataDir, staging)
	if _, err := os.Stat(stale); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("the staged batch of the killed node is still there: %v", err)
	}
	if got, err := os.Readlink(streamBatchesDir(dataDir, eventsStream)); err != nil || got != filepath.Join(root, eventsStream) {
		t.Fatalf("batches link %q, %v; want %s", got, err, filepath.Join(root, eventsStream))
	}
	if err := b.Store(context.Background(), []event.Event{testEvent("/staging", "after-kill")}); err != nil {
		t.Fatal(err)
	}
}

// TestBatchStagingUnusable: a staging directory that cannot be made leaves
// the streams staging on disk, and atomic batches still commit.
func TestBatchStagingUnusable(t *testing.T) {
	dataDir := t.TempDir()
	file := filepath.Join(t.TempDir(), "not-a-directory")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	b, _ := runStagingBroker(t, dataDir, file)
	if fi, err := os.Lstat(streamBatchesDir(dataDir, eventsStream)); err == nil && fi.Mode()&fs.ModeSymlink != 0 {
		t.Fatal("batches linked to an unusable staging directory")
	}
	if got := b.atomicMin.Load(); got != atomicMin {
		t.Fatalf("atomic batches from %d events, want %d with staging on disk", got, atomicMin)
	}
	commitDirect(t, b, "disk", atomicMin)
	wantBatches(t, b, 1, 0)
}

// TestBatchStagingLostFallsBack: when the server cannot stage a batch (here
// the staging directory vanished under a running node, as a full tmpfs
// refuses one), it refuses the batch, and its events are published one by
// one: all stored, none lost.
func TestBatchStagingLostFallsBack(t *testing.T) {
	dataDir, staging := t.TempDir(), t.TempDir()
	b, _ := runStagingBroker(t, dataDir, staging)
	root, err := stagingDir(staging, dataDir)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(root); err != nil {
		t.Fatal(err)
	}
	commitDirect(t, b, "lost", atomicMinStaged)
	wantBatches(t, b, 0, 1)
	if got := streamMsgs(t, b); got != atomicMinStaged {
		t.Fatalf("stream holds %d events, want %d", got, atomicMinStaged)
	}
}

// commitDirect commits n new events as one batch, as the committer would,
// and fails t if they are not all stored.
func commitDirect(t *testing.T, b *Broker, idPrefix string, n int) {
	t.Helper()
	evs := make([]event.Event, n)
	for i := range evs {
		evs[i] = testEvent("/staging", fmt.Sprintf("%s-%d", idPrefix, i))
	}
	its, call := storeItems(t, b, evs)
	b.commit(b.batcher(), its)
	if err := callErr(t, call); err != nil {
		t.Fatal(err)
	}
}

// wantBatches fails t unless b committed atomic batches and fell back to
// publishing one by one as many times as given.
func wantBatches(t *testing.T, b *Broker, atomic, fallbacks uint64) {
	t.Helper()
	if bt := b.batcher(); bt.atomicBatches.Load() != atomic || bt.fallbacks.Load() != fallbacks {
		t.Fatalf("%d atomic batches, %d fell back: want %d and %d", bt.atomicBatches.Load(), bt.fallbacks.Load(), atomic, fallbacks)
	}
}
