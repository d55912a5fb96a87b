// Package testutil holds helpers that weft's tests share: WaitFor, to wait on
// a condition without bare sleeps, and loopback address helpers, to run real
// servers on kernel-chosen ports.
//
// It is for tests only: production packages must not import it (the root
// dependency test enforces this). It imports only the standard library.
package testutil
