package store

import "errors"

// Sentinel errors of every Store implementation. Callers check them with
// errors.Is; implementations wrap them with the operation and key.
var (
	// ErrNotFound is returned by Get when the key holds no value.
	ErrNotFound = errors.New("store: not found")
	// ErrInvalidKey is returned when a key is empty or longer than MaxKeyLen.
	ErrInvalidKey = errors.New("store: invalid key")
	// ErrInvalidTTL is returned when PutTTL gets a TTL that is not positive,
	// or PutIfAbsent a negative one.
	ErrInvalidTTL = errors.New("store: invalid ttl")
	// ErrClosed is returned by every method except Close once Close was called.
	ErrClosed = errors.New("store: closed")
)
