package router

import (
	"context"
	"fmt"
	"net/http"
	"strings"

	"github.com/cloudevents/sdk-go/v2/event"

	"github.com/weft-dev/weft/internal/ceclient"
)

// Client delivers CloudEvents to URL subscribers. The zero value is not
// usable; use NewClient. It is safe for concurrent use.
type Client struct {
	http *http.Client
}

// NewClient returns a Client that uses hc, or a client with sane pooling when
// hc is nil. Per-attempt deadlines come from the caller's context.
func NewClient(hc *http.Client) *Client {
	if hc == nil {
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.MaxIdleConnsPerHost = 64
		t.Proxy = nil // the router is the proxy; it must not loop through HTTP_PROXY
		hc = &http.Client{Transport: t}
	}
	return &Client{http: hc}
}

// Deliver POSTs ev in binary mode to target, an absolute http(s) URL.
func (c *Client) Deliver(ctx context.Context, target string, ev event.Event) (*event.Event, error) {
	if !strings.HasPrefix(target, "http://") && !strings.HasPrefix(target, "https://") {
		return nil, fmt.Errorf("router: target %q is not an http(s) URL", target)
	}
	return ceclient.Send(ctx, c.http, target, ev)
}
