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
	ErrStopped = errors.New("workers: pool stopped")
	// ErrStopping is returned by Deliver, once the pool drains (Drain), for
	// a function with no ready instance: nothing would start one.
	ErrStopping = errors.New("workers: pool stopping")
)
