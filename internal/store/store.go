package store

import (
	"context"
	"fmt"
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
//   - An invalid key gives an error wrapping ErrInvalidKey; after Close, every
//     call gives an error wrapping ErrClosed.
//   - A Put or Delete is atomic, and once it returns nil, every later call on
//     any handle to the same store sees it. Badger also makes it durable
//     before returning; Redis is as durable as the server is configured to be.
//   - Slices passed in are not retained, and slices returned belong to the
//     caller, who may modify them.
//
// The interface deliberately maps one to one onto GET, SET, DEL and
// SCAN+MGET, so the Redis implementation needs no transactions or scripts.
type Store interface {
	// Get returns the value stored under key, or an error wrapping ErrNotFound
	// if there is none. An empty value is returned with len 0 and a nil error:
	// the error alone tells absence from emptiness.
	Get(ctx context.Context, key string) ([]byte, error)

	// Put stores value under key, replacing any previous value. A nil value
	// is stored as an empty one.
	Put(ctx context.Context, key string, value []byte) error

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

	// Close releases the store. It waits for calls in progress to finish,
	// makes later calls fail with ErrClosed, and is idempotent: every call
	// returns the result of the first.
	Close() error
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
