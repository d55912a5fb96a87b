package router

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// stoppingError is a pool's error while its node stops (workers.ErrStopping
// has the same method).
type stoppingError string

func (e stoppingError) Error() string   { return string(e) }
func (stoppingError) Unavailable() bool { return true }

// stoppingFunctions stands in for a node's worker pool that is stopping: it
// has the function but turns every call away.
type stoppingFunctions struct{}

func (stoppingFunctions) Has(string) bool { return true }
func (stoppingFunctions) Acquire(_ context.Context, name string) (string, func(error), error) {
	return "", nil, fmt.Errorf("function %q has no ready instance: %w", name, stoppingError("pool stopping"))
}

// TestUnavailableFunctionAnswers503: a call the pool turns away because its
// node stops is answered 503 with Retry-After, through the workers' proxy
// and through the inbound listener of calls from other nodes, not 502.
func TestUnavailableFunctionAnswers503(t *testing.T) {
	rtr := New(Config{}, stoppingFunctions{}, nil)
	in := NewInbound("127.0.0.1:0", rtr, nil, nil)
	for name, serve := range map[string]http.HandlerFunc{"proxy": rtr.ServeHTTP, "inbound": in.serve} {
		w := httptest.NewRecorder()
		serve(w, httptest.NewRequest(http.MethodPost, "http://fn/", strings.NewReader("{}")))
		if w.Code != http.StatusServiceUnavailable || w.Header().Get("Retry-After") == "" {
			t.Errorf("%s: status %d, Retry-After %q; want 503 with Retry-After", name, w.Code, w.Header().Get("Retry-After"))
		}
	}
	if err := fmt.Errorf("call: %w", fmt.Errorf("function: %w", stoppingError("x"))); !IsUnavailable(err) {
		t.Errorf("IsUnavailable(%v) = false through two wrappings", err)
	}
	if err := errors.New("connection refused"); IsUnavailable(err) {
		t.Errorf("IsUnavailable(%v) = true", err)
	}
}
