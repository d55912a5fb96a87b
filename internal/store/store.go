package store

import (
	"context"
	"fmt"
	"time"
)

// MaxKeyLen is the longest key, in bytes, that every implementation accepts.
// Badger refuses keys over ~64 KB and Redis accepts 512 MB; a common, small
// limit keeps the implementations interchangeable and the suite able to test
// the boundary. Callers whose keys come from unbounded input (an event's
// source and id, for dedup) should hash them.
const MaxKeyLen = 1024

// Store holds control-plane state as keys mapped to opaque byte values.
//
// Keys are non-empty strings of at most MaxKeyLen bytes, compared bytewise; any
// byte is allowed. By convention they are '/'-separated paths whose first
// segment names the owner ("resources/Trigger/on-upload", "ca/root"), so that
// List can read one owner's keys. Values are small records (KiB, not MiB):
// this is not a blob store.
//
// All methods are safe for concurrent use by multiple goroutines, and every
// method other than Close obeys these rules:
//   - If ctx is already done, the method returns an error wrapping ctx.Err()
//     and has no effect.
//   - An invalid key gives an error wrapping ErrInvalidKey, an invalid TTL one
//     wrapping ErrInvalidTTL; after Close, every call gives an error wrapping
//     ErrClosed.
//   - A write (Put, PutTTL, PutIfAbsent, Delete) is atomic, and once it
//     returns nil, every later call on any handle to the same store sees it.
//     Badger also makes it durable before returning; Redis is as durable as
//     the server is configured to be.
//   - Slices passed in are not retained, and slices returned belong to the
//     caller, who may modify them.
//
// The interface deliberately maps one to one onto GET, SET (with PX and NX),
// DEL, SCAN+MGET and keyspace notifications, so the Redis implementation needs
// no transactions or scripts.
type Store interface {
	// Get returns the value stored under key, or an error wrapping ErrNotFound
	// if there is none. An empty value is returned with len 0 and a nil error:
	// the error alone tells absence from emptiness. An expired key is absent.
	Get(ctx context.Context, key string) ([]byte, error)

	// Put stores value under key, replacing any previous value and clearing
	// any TTL the key had: the key stays until it is deleted. A nil value is
	// stored as an empty one.
	Put(ctx context.Context, key string, value []byte) error

	// PutTTL is Put for a key that disappears by itself, as if deleted, once
	// ttl has passed, unless another PutTTL (which restarts the clock) or Put
	// (which clears the TTL) comes first. Heartbeats use it: a node refreshes
	// its registry entries, and a dead node's entries vanish. ttl must be
	// positive (ErrInvalidTTL otherwise). Precision depends on the backend:
	// Redis expires to the millisecond (reads never see an expired key;
	// Watch reports the expiry within about 100 ms); Badger counts whole
	// seconds, so a key lives at least ttl and at most ttl + 1 s.
	PutTTL(ctx context.Context, key string, value []byte, ttl time.Duration) error

	// PutIfAbsent stores value under key only if the key holds no value (an
	// expired key holds none), and reports whether it did; concurrent calls
	// for one key, from any handle, store exactly once. ttl 0 means no TTL;
	// a positive ttl works as in PutTTL; a negative one is ErrInvalidTTL.
	// A present key is left as it is, TTL included. Dedup keys use it.
	PutIfAbsent(ctx context.Context, key string, value []byte, ttl time.Duration) (bool, error)

	// Delete removes key. Deleting an absent key is not an error, so that
	// Delete can be retried safely.
	Delete(ctx context.Context, key string) error

	// List returns every pair whose key starts with prefix, sorted by key in
	// byte order; the empty prefix lists everything. The prefix is literal:
	// no character in it is special. No match gives an empty result and a nil
	// error. A key that is neither written nor deleted during the call appears
	// if and only if it was present; keys changed concurrently may or may not
	// appear, because not every implementation can read a snapshot. The whole
	// result is held in memory, which suits control-plane sizes (thousands).
	List(ctx context.Context, prefix string) ([]KV, error)

	// Watch reports changes to keys that start with prefix (literal, as in
	// List; "" watches everything) until ctx ends or the store is closed,
	// when the channel is closed. It returns once the watch is in place:
	// every change made after Watch returns, through any handle on the same
	// store (for Redis, on any node), is reported. The usual pattern is
	// Watch, then List, then apply each Change (Get the key again, or treat
	// Resync as "List again").
	//
	// A Change names a key that was put (Put, PutTTL, a PutIfAbsent that
	// stored), deleted, or expired; it carries no value, so read the key for
	// its current state. Changes to one key arrive in the order they
	// happened. A watcher may see a Change that altered nothing (a Delete of
	// an absent key, a Deleted repeated after an expiry): handling a Change
	// must be idempotent.
	//
	// A watcher that does not keep up never slows writers down. Each watcher
	// has a queue of WatchBuffer changes; when it overflows, the queued
	// changes are dropped and the next one received is Change{Resync: true}:
	// changes were lost, List again. Resync also follows anything else that
	// may have lost changes (a reconnection to Redis), and, on Redis servers
	// that refuse keyspace notifications, arrives periodically instead of
	// expiry reports; see the implementation's doc. The channel is
	// unbuffered: the queue is the buffer.
	Watch(ctx context.Context, prefix string) (<-chan Change, error)

	// Close releases the store. It waits for calls in progress to finish,
	// ends every Watch (closing its channel), makes later calls fail with
	// ErrClosed, and is idempotent: every call returns the result of the
	// first.
	Close() error
}

// WatchBuffer is how many changes a watcher may fall behind before they are
// replaced by one Change{Resync: true}. A control plane changes a few keys a
// second, so only a stuck watcher or a burst of thousands overflows it.
const WatchBuffer = 256

// Change is one notification from Watch.
type Change struct {
	// Key is the key that changed; "" when Resync is set.
	Key string
	// Deleted is true if the key was deleted or expired, false if it was put.
	Deleted bool
	// Resync means changes may have been lost: the watcher must List the
	// prefix again to learn the current state. Key and Deleted are zero.
	Resync bool
}

// KV is one key and its value, as returned by List.
type KV struct {
	Key   string
	Value []byte
}

// checkKey refuses keys that not every implementation can store.
func checkKey(key string) error {
	switch {
	case key == "":
		return fmt.Errorf("empty key: %w", ErrInvalidKey)
	case len(key) > MaxKeyLen:
		return fmt.Errorf("key of %d bytes, over %d: %w", len(key), MaxKeyLen, ErrInvalidKey)
	}
	return nil
}

// checkTTL refuses a TTL that PutTTL (positive only) or PutIfAbsent (zero
// allowed, meaning none) cannot apply.
func checkTTL(ttl time.Duration, zeroOK bool) error {
	if ttl < 0 || ttl == 0 && !zeroOK {
		return fmt.Errorf("ttl %v: %w", ttl, ErrInvalidTTL)
	}
	return nil
}
