package router

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"

	"github.com/weft-dev/weft/internal/ceclient"
)

func TestClientDeliversAndReportsStatus(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("ce-id") == "fail" {
			http.Error(w, "nope", http.StatusConflict)
			return
		}
		w.WriteHeader(http.StatusAccepted)
	}))
	defer srv.Close()
	c := NewClient(nil, nil)
	ev := event.New()
	ev.SetID("ok")
	ev.SetSource("/t")
	ev.SetType("t")
	if reply, err := c.Deliver(context.Background(), srv.URL, ev); err != nil || reply != nil {
		t.Fatalf("deliver: %v, %v", reply, err)
	}
	ev.SetID("fail")
	_, err := c.Deliver(context.Background(), srv.URL, ev)
	if se, ok := ceclient.IsStatus(err); !ok || se.Code != http.StatusConflict || string(se.Body) != "nope\n" {
		t.Fatalf("want a 409 StatusError, got %v", err)
	}
	if _, err := c.Deliver(context.Background(), "function:x", ev); err == nil {
		t.Fatal("a non-URL target was accepted")
	}
}

// TestProxyForwardsPlainHTTP uses the proxy the way a worker does through
// HTTP_PROXY: an absolute-form request for another host.
func TestProxyForwardsPlainHTTP(t *testing.T) {
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "hello from "+r.URL.Path)
	}))
	defer upstream.Close()
	p := NewProxy("127.0.0.1:0", nil, slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("proxy.Run: %v", err)
		}
	}()
	select {
	case <-p.Ready():
	case err := <-done:
		t.Fatal(err)
	case <-time.After(10 * time.Second):
		t.Fatal("proxy not ready")
	}
	proxyURL, _ := url.Parse("http://" + p.Addr())
	client := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(proxyURL)}}
	resp, err := client.Get(upstream.URL + "/path")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || string(body) != "hello from /path" {
		t.Fatalf("%d %q", resp.StatusCode, body)
	}
}
