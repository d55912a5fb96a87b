// Package triggers turns Knative eventing.knative.dev/v1 Trigger manifests
// into compiled, immutable Triggers and matches CloudEvents against them.
//
// It owns four things: decoding and validating the YAML (Parse), the filter
// dialects (the legacy filter.attributes and the CloudEvents Subscriptions API
// filters exact, prefix, suffix, all, any, not and cesql, compiled into a
// Filter), the match Index the broker's dispatcher consults for every event,
// and the delivery Policy (retries, backoff, per-attempt timeout, Retry-After
// cap, dead-letter sink) the broker's delivery middlewares follow.
//
// Semantics follow Knative Eventing (pkg/eventfilter, pkg/kncloudevents and
// pkg/apis/eventing/v1): when spec.filters is non-empty it wins and
// spec.filter is ignored; filters entries are ANDed; an attribute the event
// lacks (or carries as an empty string) never matches; a CESQL evaluation
// error is no match. Where weft deliberately differs (per-field delivery
// defaults, a default per-attempt timeout, Retry-After honoured by default)
// the declaration's doc comment says so.
//
// Invariants:
//   - Parse refuses every invalid manifest with *resource.FieldError values
//     naming the file, line and field; it never skips a bad filter silently.
//   - A *Trigger, its Filter and an *Index are immutable once built and safe
//     for concurrent use without locks; the broker swaps whole Index values.
//
// The package is pure code: it does no network or process I/O (no NATS, no
// net/http server or client, no os/exec) and reads no files; its only global
// state is the lock that serialises CESQL parsing. It imports internal/resource,
// schemas, the CloudEvents SDK (events, and CESQL with the ANTLR runtime its
// parser is generated for) and the standard library, never broker, workers,
// router or cmd. (net/http is linked in only through the SDK's root package,
// which CESQL imports; nothing here calls it.)
package triggers
