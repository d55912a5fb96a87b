// Package store holds weft's control-plane state: applied resources, the CA's
// keys, the registry of endpoints and long-window dedup keys. Events and
// delivery progress do not live here; they live in JetStream (see DESIGN.md,
// "Where state lives").
//
// Store is the interface; Badger is the embedded implementation used by a
// single node (under <data>/store), and Redis (OpenRedis, --store redis://…)
// shares one view between several nodes. Every implementation must pass
// storetest.Run, which pins down the semantics documented on Store.
//
// Besides reads and writes, a Store keeps keys with a TTL (PutTTL, for
// registry entries that a heartbeat refreshes), sets keys only if absent
// (PutIfAbsent, for dedup keys), and reports changes under a prefix (Watch),
// from every node for Redis. How each backend watches, and its limits, is
// told at the top of badger_watch.go and redis_watch.go.
//
// Invariants:
//   - A Put or Delete that returned nil is durable: Badger fsyncs it before
//     returning, so kill -9 at any moment loses no acknowledged write.
//   - Keys are opaque byte strings compared bytewise; Badger's reserved
//     "!badger!" namespace and Redis's glob syntax never leak into weft's keys.
//     In Redis they live under "weft:", so a server can be shared.
//   - A watcher never slows writers down: each has a queue of WatchBuffer
//     changes, and on overflow gets Change{Resync: true} instead of the rest.
//   - Every goroutine a store starts (Badger's value-log GC, subscription
//     and expiry sweep; one per watcher and one per Redis watch connection)
//     ends before Close returns.
//
// The package imports only the standard library and the storage clients,
// never another weft package outside internal/.
package store
