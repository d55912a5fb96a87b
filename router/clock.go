package router

import "time"

// Clock tells the time. Certificate rotation, outlier ejection, latency
// averages and retry budgets read it, so their tests can move time forward
// instead of waiting.
type Clock interface {
	Now() time.Time
}

// SystemClock is the real Clock.
type SystemClock struct{}

// Now returns time.Now().
func (SystemClock) Now() time.Time { return time.Now() }
