// Package node is the control plane and HTTP API of one weft node. It is the
// only code that knows every component: it decodes manifests into Triggers
// and Functions, validates a whole change before any of it takes effect,
// persists API-applied resources in the Store, hands the trigger index to the
// broker and functions to the worker pool, watches the files given to
// `weft serve -f`, and serves /api/v1 for the CLI.
//
// Invariant: an apply is all or nothing. Every document is parsed and the new
// trigger index is built before anything is stored or swapped in; on any
// error the previous state stays in force.
package node
