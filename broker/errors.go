package broker

import "errors"

// Sentinel errors of the broker. The ingress translates them at its edge:
// ErrOverloaded → 429, ErrUnavailable → 503, both with Retry-After.
var (
	// ErrOverloaded is returned by Publish when the ingress limit of in-flight
	// publishes is reached.
	ErrOverloaded = errors.New("broker: overloaded")
	// ErrUnavailable is returned by Publish when JetStream did not confirm
	// storage (stopped, out of resources, timed out). Nothing was acknowledged.
	ErrUnavailable = errors.New("broker: storage unavailable")
	// ErrStorageFull is returned by Store while JetStream's disk use is above
	// its high-water mark (see Broker.Storage); the ingress answers 503.
	ErrStorageFull = errors.New("broker: storage full")
	// ErrBatchTooLarge is returned by Store for more events in one call than
	// can ever be in flight at once (Config.MaxInflight); the ingress answers
	// 413, as retrying cannot help.
	ErrBatchTooLarge = errors.New("broker: too many events in one request")
)
