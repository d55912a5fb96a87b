package broker

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// Batch staging. For a one-replica file stream, nats-server stages every
// atomic batch in a file store of its own before committing it, under the
// stream's directory: <store>/<account>/streams/<stream>/batches/<hash>.
// Creating that store writes its meta file with O_SYNC and fsyncs its
// directory, and the staged messages are fsynced before the commit: three
// synchronous flushes per batch beside the stream's own fsync, all on the
// stream's serial loop. The staged copy serves one purpose: after a crash
// in the middle of a commit, nats-server finishes the batch from it, so that
// the batch is all or nothing.
//
// weft needs no such atomicity. It batches independent events only to share
// an fsync, acknowledges none of them before the commit's answer (which
// JetStream sends after the stream's own fsync), and a publisher's retry of
// an unacknowledged event is deduplicated by its Nats-Msg-Id. So weft points
// the batches directory of its streams at a memory-backed directory
// (Config.BatchStaging, /dev/shm by default on Linux), as nats-server itself
// stages the batches of replicated streams in memory. A staging store that
// cannot be made there (a full tmpfs) makes the server refuse that batch, and
// its events are then published one by one (commit).
//
// A weft killed mid-commit leaves the link and the staged batch: nats-server
// recovers the batch through the link at the next start, as from disk. After
// a reboot the staged copy is gone: the stream keeps the part of the batch
// it had written, the server logs that it could not finish the batch, and
// none of the batch's events had been acknowledged.

// DefaultBatchStaging is /dev/shm where there is one (Linux), else "".
func DefaultBatchStaging() string {
	if fi, err := os.Stat("/dev/shm"); err == nil && fi.IsDir() {
		return "/dev/shm"
	}
	return ""
}

// stagingDir is the directory under Config.BatchStaging that holds this
// node's staged batches: one per data directory, so that two nodes on one
// machine do not share it and a restarted node finds its own.
func stagingDir(root, dataDir string) (string, error) {
	abs, err := filepath.Abs(dataDir)
	if err != nil {
		return "", fmt.Errorf("data dir %q: %w", dataDir, err)
	}
	sum := sha256.Sum256([]byte(abs))
	return filepath.Join(root, "weft-batches-"+hex.EncodeToString(sum[:8])), nil
}

// batchesLink is where nats-server stages the atomic batches of stream.
func batchesLink(c *conn, stream string) (string, error) {
	jsc := c.ns.JetStreamConfig()
	acc := c.ns.GlobalAccount()
	if jsc == nil || acc == nil {
		return "", errors.New("no JetStream store directory")
	}
	dir := filepath.Join(jsc.StoreDir, acc.Name, "streams", stream)
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		// Another nats-server release may lay its files out otherwise.
		return "", fmt.Errorf("stream %s has no directory at %s", stream, dir)
	}
	return filepath.Join(dir, "batches"), nil
}

// linkBatchStaging points the batches directory of each stream that takes
// atomic batches at this node's staging directory, emptied first: the
// server has already recovered any batch left there (Run calls it after
// the streams are ready and before anything publishes). It returns the
// links made; on failure a stream keeps staging on disk.
func (b *Broker) linkBatchStaging(c *conn, streams ...string) []string {
	if b.cfg.BatchStaging == "" || b.cfg.RelaxedSync { // relaxed: no atomic batches
		return nil
	}
	root, err := stagingDir(b.cfg.BatchStaging, b.cfg.DataDir)
	if err == nil {
		err = os.RemoveAll(root)
	}
	if err != nil {
		b.log.Warn("atomic batches staged on disk", "error", err)
		return nil
	}
	var links []string
	for _, stream := range streams {
		link, err := linkStaging(c, stream, filepath.Join(root, stream))
		if err != nil {
			b.log.Warn("atomic batches staged on disk", "stream", stream, "error", err)
			continue
		}
		links = append(links, link)
	}
	if len(links) > 0 {
		b.log.Debug("atomic batches staged in memory", "dir", root)
	}
	return links
}

// linkStaging replaces the batches directory of stream with a link to
// target.
func linkStaging(c *conn, stream, target string) (string, error) {
	link, err := batchesLink(c, stream)
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(target, 0o700); err != nil {
		return "", fmt.Errorf("staging directory: %w", err)
	}
	// Left by a weft that was killed (a link), or made by the server
	// (a directory, empty now that no batch is in flight): os.Remove takes
	// either and refuses a directory that still holds a batch.
	if err := os.Remove(link); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("replace %s: %w", link, err)
	}
	if err := os.Symlink(target, link); err != nil {
		return "", fmt.Errorf("link %s: %w", link, err)
	}
	return link, nil
}

// unlinkBatchStaging undoes linkBatchStaging once the server has stopped:
// the streams stage on disk again until the next start, and the memory the
// staging directory holds is freed.
func (b *Broker) unlinkBatchStaging(links []string) {
	if len(links) == 0 {
		return
	}
	for _, link := range links {
		if err := os.Remove(link); err != nil {
			b.log.Warn("remove batch staging link", "link", link, "error", err)
		}
	}
	root, err := stagingDir(b.cfg.BatchStaging, b.cfg.DataDir)
	if err == nil {
		err = os.RemoveAll(root)
	}
	if err != nil {
		b.log.Warn("remove batch staging directory", "error", err)
	}
}
