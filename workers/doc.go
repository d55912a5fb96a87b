// Package workers runs Functions: worker processes in any language that serve
// HTTP on 127.0.0.1:$PORT and receive events as binary-mode CloudEvents POSTs
// (the worker contract in DESIGN.md). It parses the Function kind, supervises
// one OS process per instance (supervisor.go), keeps each function's instances
// and their concurrency limit (pool.go), and captures their output (logs.go).
//
// A Pool delivers to targets "function:NAME[/path]" and satisfies
// broker.Deliverer structurally; it imports neither broker, triggers nor
// router, only internal packages and schemas.
//
// Invariants:
//   - Every process is started from one goroutine locked to its OS thread for
//     the pool's lifetime, with Setpgid and Pdeathsig=SIGKILL: if weft dies,
//     even by SIGKILL, the kernel kills every worker it started.
//   - A process is stopped as a group (SIGTERM, then SIGKILL after a grace),
//     and when an instance's main process exits its group is killed before
//     the process is reaped, so no grandchild outlives its instance.
//   - An instance takes at most Function.Concurrency requests at once (0 =
//     unlimited); a caller waits, bounded by its context, for a free slot.
//   - An instance being replaced or removed receives no new requests and is
//     signalled only after its in-flight requests finished (or a drain bound
//     passed), so a re-applied Function cuts no request.
//   - Run returns only after every process is gone and every goroutine the
//     pool started has ended.
package workers
