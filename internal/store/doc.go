// Package store holds weft's control-plane state: applied resources, the CA's
// keys, the registry of endpoints and long-window dedup keys. Events and
// delivery progress do not live here; they live in JetStream (see DESIGN.md,
// "Where state lives").
//
// Store is the interface; Badger is the embedded implementation used by a
// single node (under <data>/store), and a Redis implementation shares one view
// between several nodes. Every implementation must pass storetest.Run, which
// pins down the semantics documented on Store.
//
// Invariants:
//   - A Put or Delete that returned nil is durable: Badger fsyncs it before
//     returning, so kill -9 at any moment loses no acknowledged write.
//   - Keys are opaque byte strings compared bytewise; Badger's reserved
//     "!badger!" namespace and Redis's glob syntax never leak into weft's keys.
//
// The package imports only the standard library and the storage clients,
// never another weft package outside internal/.
package store
