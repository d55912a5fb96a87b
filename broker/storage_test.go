package broker

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/prometheus/client_golang/prometheus/testutil"

	wtest "github.com/weft-dev/weft/internal/testutil"
)

// TestStorageFullRefusesThenRecovers fills a small JetStream store while the
// subscriber holds every delivery: the ingress answers 503 storage_full with
// Retry-After and StorageError reports it (the node's /readyz uses it) before
// anything breaks; once the subscriber lets go and the deliveries drain, the
// ingress accepts again, and every event acknowledged before was delivered.
func TestStorageFullRefusesThenRecovers(t *testing.T) {
	const limit = 2 << 20
	release := make(chan struct{})
	rec := newRecorder()
	b, srv := startBrokerWith(t, rec, func(c *Config) { c.MaxStoreBytes = limit })
	b.StartDispatching()
	const target = "http://sink.example/"
	rec.set(target, func(event.Event) (*event.Event, error) { <-release; return nil, nil })
	setTriggers(t, b, triggerYAML("all", "", "{uri: "+target+"}", ""))
	if u := b.Storage(); u.Limit != limit || u.Full {
		t.Fatalf("storage at start %+v, want limit %d and room", u, limit)
	}

	body := `{"pad":"` + strings.Repeat("x", 8<<10) + `"}`
	var acked []string
	var full *http.Response
	for i := 0; full == nil; i++ {
		if i > 1000 { // 8 MiB offered to a 2 MiB store
			t.Fatalf("storage never reported full; usage %+v", b.Storage())
		}
		id := fmt.Sprintf("fill-%d", i)
		resp := postResponse(t, srv.URL, id, body)
		switch resp.StatusCode {
		case http.StatusAccepted:
			acked = append(acked, id)
		case http.StatusServiceUnavailable:
			full = resp
		default:
			t.Fatalf("event %d: status %d, want 202 or 503", i, resp.StatusCode)
		}
	}
	if full.Header.Get("Retry-After") == "" {
		t.Error("503 without Retry-After")
	}
	if err := b.StorageError(); err == nil {
		t.Error("StorageError is nil while the ingress refuses events")
	}
	if got := testutil.ToFloat64(b.metrics.Rejected.WithLabelValues("storage_full")); got < 1 {
		t.Errorf("weft_events_rejected_total{reason=storage_full} = %v", got)
	}
	u := b.Storage()
	t.Logf("acknowledged %d events before refusing; storage %d of %d bytes", len(acked), u.Used, u.Limit)

	close(release)
	// The guard also counts deliveries stored since the last sample (the
	// fan-out of the backlog now draining), so a post may still get a 503
	// until the next sample; it must be accepted soon.
	wtest.WaitFor(t, 30*time.Second, func() bool {
		if b.StorageError() != nil {
			return false
		}
		switch code := postResponse(t, srv.URL, "after", body).StatusCode; code {
		case http.StatusAccepted:
			return true
		case http.StatusServiceUnavailable:
			return false
		default:
			t.Fatalf("after draining: status %d, want 202 (or 503 for a moment)", code)
			return false
		}
	}, "the ingress never accepted again after the deliveries drained")
	acked = append(acked, "after")
	wtest.WaitFor(t, 30*time.Second, func() bool {
		got := map[string]bool{}
		for _, id := range rec.ids(target) {
			got[id] = true
		}
		for _, id := range acked {
			if !got[id] {
				return false
			}
		}
		return true
	}, "an acknowledged event was not delivered")
}

func postResponse(t *testing.T, url, id, body string) *http.Response {
	t.Helper()
	req, err := http.NewRequestWithContext(context.Background(), http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range caseBinary(id) {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp
}
