package router

import (
	"context"
	"fmt"
	"net/http"
	"net/url"

	"github.com/cloudevents/sdk-go/v2/event"

	"github.com/weft-dev/weft/internal/ceclient"
)

// Client delivers CloudEvents to URL subscribers: a URL whose host names a
// Service or Function goes through the Router, any other URL directly. The
// zero value is not usable; use NewClient. It is safe for concurrent use.
type Client struct {
	http   *http.Client
	routed *http.Client // nil without a router
	router *Router
}

// NewClient returns a Client that uses hc for plain URLs (nil: a client with
// sane pooling) and r for Services and Functions (nil: none). Per-attempt
// deadlines come from the caller's context.
func NewClient(hc *http.Client, r *Router) *Client {
	if hc == nil {
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.MaxIdleConnsPerHost = 64
		t.Proxy = nil // the router is the proxy; it must not loop through HTTP_PROXY
		hc = &http.Client{Transport: t}
	}
	c := &Client{http: hc, router: r}
	if r != nil {
		c.routed = &http.Client{Transport: r}
	}
	return c
}

// Deliver POSTs ev in binary mode to target, an absolute http(s) URL.
func (c *Client) Deliver(ctx context.Context, target string, ev event.Event) (*event.Event, error) {
	u, err := url.Parse(target)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("router: target %q is not an http(s) URL", target)
	}
	if c.router != nil && u.Scheme == "http" && c.router.Resolves(u.Host) {
		return ceclient.Send(ctx, c.routed, target, ev)
	}
	return ceclient.Send(ctx, c.http, target, ev)
}
