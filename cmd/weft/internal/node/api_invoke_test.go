package node

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weft-dev/weft/router"
)

// oneFunction stands in for a node's worker pool running one function, at
// addr.
type oneFunction struct{ name, addr string }

func (f oneFunction) Has(name string) bool { return name == f.name }
func (f oneFunction) Acquire(context.Context, string) (string, func(error), error) {
	return f.addr, func(error) {}, nil
}

// TestWaitInvokesWaitsForInvokeCalls: while an invoke call is on its
// function's instance, WaitInvokes waits (here until its context ends); once
// the call is answered it returns at once.
func TestWaitInvokesWaitsForInvokeCalls(t *testing.T) {
	arrived, release := make(chan struct{}), make(chan struct{})
	instance := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		close(arrived)
		<-release
		w.WriteHeader(http.StatusOK)
	}))
	defer instance.Close()
	unblock := sync.OnceFunc(func() { close(release) })
	api := &API{Router: router.New(router.Config{}, oneFunction{"f", instance.Listener.Addr().String()}, nil), Log: discard()}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /api/v1/invoke/{name}", api.invoke)
	srv := httptest.NewServer(mux)
	defer srv.Close()
	defer unblock() // before the servers' Close, which waits for the held call

	if err := api.WaitInvokes(t.Context()); err != nil {
		t.Fatalf("WaitInvokes with no call: %v", err)
	}
	answered := make(chan int, 1)
	go func() {
		resp, err := http.Post(srv.URL+"/api/v1/invoke/f", "application/json", strings.NewReader(`{}`))
		if err != nil {
			answered <- 0
			return
		}
		resp.Body.Close()
		answered <- resp.StatusCode
	}()
	select {
	case <-arrived:
	case <-time.After(30 * time.Second):
		t.Fatal("the invoke call did not reach the instance")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	if err := api.WaitInvokes(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WaitInvokes while a call is on its instance: %v, want it to wait until its context ends", err)
	}
	unblock()
	if code := <-answered; code != http.StatusNoContent {
		t.Fatalf("invoke answered %d, want 204", code)
	}
	if err := api.WaitInvokes(t.Context()); err != nil {
		t.Fatalf("WaitInvokes after the call was answered: %v", err)
	}
}
