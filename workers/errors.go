package workers

import "errors"

// Sentinel errors of the pool. Deliver wraps them with the function's name;
// check with errors.Is. A worker's non-2xx answer is a *ceclient.StatusError
// instead, and a caller's deadline is the context's error.
var (
	// ErrUnknownFunction is returned by Deliver for a target naming no
	// applied Function (never applied, or removed while the call waited).
	ErrUnknownFunction = errors.New("workers: unknown function")
	// ErrInvalidTarget is returned by Deliver for a target that is not
	// "function:NAME" or "function:NAME/path".
	ErrInvalidTarget = errors.New("workers: invalid target")
	// ErrStopped is returned by Deliver once the pool's Run has ended.
	ErrStopped error = unavailableError("workers: pool stopped")
	// ErrStopping is returned by Deliver, once the pool drains (Drain), for
	// a function with no ready instance: nothing would start one.
	ErrStopping error = unavailableError("workers: pool stopping")
)

// unavailableError is an error after which the function may serve again (on
// this node after its restart, or on another): the router answers a call
// that met it 503 Service Unavailable, not 502 (router.IsUnavailable).
type unavailableError string

func (e unavailableError) Error() string { return string(e) }

// Unavailable marks the error for router.IsUnavailable.
func (unavailableError) Unavailable() bool { return true }
