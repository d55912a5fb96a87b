//go:build race

package triggers

// raceEnabled reports a -race build, whose instrumentation changes
// allocation counts.
const raceEnabled = true
