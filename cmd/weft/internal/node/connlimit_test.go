package node

import (
	"io"
	"net"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/weft-dev/weft/internal/testutil"
)

// TestLimitConnections: with two connections held open, a third client gets
// 503 with Retry-After (not a reset, not a hang); once one closes, new
// clients are served again.
func TestLimitConnections(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var refused atomic.Int64
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusAccepted)
	})}
	go func() { _ = srv.Serve(LimitConnections(ln, 2, func() { refused.Add(1) })) }() // owned: Close below ends it
	t.Cleanup(func() { srv.Close() })
	url := "http://" + ln.Addr().String() + "/"

	held := make([]*http.Client, 2)
	for i := range held {
		held[i] = &http.Client{Transport: &http.Transport{MaxConnsPerHost: 1}}
		if code := getStatus(t, held[i], url); code != http.StatusAccepted {
			t.Fatalf("client %d: %d", i, code)
		}
	}
	third := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := third.Post(url, "application/json", nil)
	if err != nil {
		t.Fatalf("third client: %v (want a 503 answer, not a transport error)", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") != "1" {
		t.Fatalf("third client: %d Retry-After %q %s", resp.StatusCode, resp.Header.Get("Retry-After"), body)
	}
	if refused.Load() != 1 {
		t.Errorf("refused counted %d, want 1", refused.Load())
	}
	held[0].CloseIdleConnections()
	testutil.WaitFor(t, 10*time.Second, func() bool {
		resp, err := third.Get(url)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusAccepted
	}, "a freed slot was never reused")
}

func getStatus(t *testing.T, c *http.Client, url string) int {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}
