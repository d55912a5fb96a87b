package workers

import (
	"slices"
	"sync"
	"testing"
	"time"
)

// recordedIdentities is an Identities that records its calls in order.
// When hold is set, Env says so on entered and waits until hold closes.
type recordedIdentities struct {
	mu      sync.Mutex
	calls   []string
	hold    chan struct{}
	entered chan struct{}
}

func (r *recordedIdentities) Env(function string, _, _ int) (map[string]string, error) {
	if r.hold != nil {
		r.entered <- struct{}{}
		<-r.hold
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, "env "+function)
	return map[string]string{"WEFT_TEST_IDENTITY": function}, nil
}

func (r *recordedIdentities) Forget(function string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, "forget "+function)
}

func (r *recordedIdentities) seen() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.calls)
}

// TestIdentityIssuedWhenApplied: a function at zero gets its identity when
// it is applied, with no process started, so its first cold start does not
// issue it; that start still hands the identity to its process.
func TestIdentityIssuedWhenApplied(t *testing.T) {
	ids := &recordedIdentities{}
	p := startPool(t, Config{Identities: ids})
	fn := goFn("at-zero")
	fn.Scale.Min = 0
	p.Apply(fn)
	waitFor(t, 10*time.Second, func() bool { return slices.Contains(ids.seen(), "env at-zero") })
	if in := p.Instances("at-zero"); len(in) != 0 {
		t.Fatalf("identity issued by a start, not at apply: instances %+v", in)
	}
	r := mustSend(t, p, "function:at-zero", map[string]any{})
	if !slices.Contains(r.Env, "WEFT_TEST_IDENTITY=at-zero") {
		t.Errorf("the cold-started process lacks its identity: env %q", r.Env)
	}
}

// TestIdentityOfARemovedFunctionIsForgotten: a function removed while its
// identity is being issued ends up forgotten, even though Remove's own
// Forget came before the identity existed.
func TestIdentityOfARemovedFunctionIsForgotten(t *testing.T) {
	ids := &recordedIdentities{hold: make(chan struct{}), entered: make(chan struct{}, 1)}
	p := startPool(t, Config{Identities: ids})
	fn := goFn("short-lived")
	fn.Scale.Min = 0
	p.Apply(fn)
	select {
	case <-ids.entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the identity was not issued at apply")
	}
	p.Remove("short-lived") // Forget, before the identity exists
	close(ids.hold)
	want := []string{"forget short-lived", "env short-lived", "forget short-lived"}
	waitFor(t, 10*time.Second, func() bool { return slices.Equal(ids.seen(), want) })
}
