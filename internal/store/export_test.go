package store

import (
	"log/slog"
	"time"
)

// OpenRedisResyncEvery is OpenRedis with the fallback watchers' resync
// interval set, so that tests of the fallback need not wait 5 s per expiry.
func OpenRedisResyncEvery(url string, log *slog.Logger, every time.Duration) (*Redis, error) {
	return openRedis(url, log, every)
}

// Keyspace reports whether the store's watchers use keyspace notifications.
func (r *Redis) Keyspace() bool { return r.keyspace }
