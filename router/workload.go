package router

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"sync"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Workloads gives every function its identity: an SVID
// spiffe://<trust-domain>/fn/<name> kept current in files its processes read
// (WEFT_CERT_FILE, WEFT_KEY_FILE, WEFT_CA_FILE), and proxy credentials in
// HTTP_PROXY (http://<name>:<token>@<router>) by which the router knows
// which function a proxied call comes from, so it presents that function's
// SVID when it originates mutual TLS. Tokens are HMACs of the name under a
// key made at start-up: a worker cannot claim another function's identity.
// Methods are safe for concurrent use.
type Workloads struct {
	ca        *CA
	dir       string
	proxyAddr string
	key       []byte
	log       *slog.Logger

	mu      sync.Mutex
	sources map[string]*workload
	runCtx  context.Context // set by Run; nil before
	wg      sync.WaitGroup
}

// NewWorkloads keeps identity files under dir/<function>/ and hands out
// proxy URLs for the router at proxyAddr ("127.0.0.1:8081").
func NewWorkloads(ca *CA, dir, proxyAddr string, log *slog.Logger) (*Workloads, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return nil, fmt.Errorf("workload identity key: %w", err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("identity files: %w", err)
	}
	return &Workloads{ca: ca, dir: dir, proxyAddr: proxyAddr, key: key, log: log, sources: map[string]*workload{}}, nil
}

// workload is one function's identity and the end of its renewal loop.
type workload struct {
	src    *SVIDSource
	cancel context.CancelFunc // nil until Run starts the loop
}

func (w *Workloads) token(function string) string {
	m := hmac.New(sha256.New, w.key)
	m.Write([]byte(function))
	return hex.EncodeToString(m.Sum(nil)[:16])
}

// Env returns the variables weft adds to the environment of a function's
// processes: its identity files and proxy credentials. The files belong to
// uid:gid when uid ≥ 0 (a function that runs as another user). It creates
// the function's SVID on first use.
func (w *Workloads) Env(function string, uid, gid int) (map[string]string, error) {
	dir, err := w.source(function)
	if err != nil {
		return nil, err
	}
	if uid >= 0 {
		if err := chownTree(dir, uid, gid); err != nil {
			return nil, fmt.Errorf("identity files of %s: %w", function, err)
		}
	}
	proxy := "http://" + function + ":" + w.token(function) + "@" + w.proxyAddr
	return map[string]string{
		"WEFT_CERT_FILE": filepath.Join(dir, "cert.pem"),
		"WEFT_KEY_FILE":  filepath.Join(dir, "key.pem"),
		"WEFT_CA_FILE":   filepath.Join(dir, "ca.pem"),
		"HTTP_PROXY":     proxy,
		"http_proxy":     proxy,
	}, nil
}

// source makes sure the function has an SVID whose files are kept in its
// folder, and returns the folder.
func (w *Workloads) source(function string) (string, error) {
	dir := filepath.Join(w.dir, function)
	w.mu.Lock()
	defer w.mu.Unlock()
	if _, ok := w.sources[function]; ok {
		return dir, nil
	}
	id, err := spiffeid.FromSegments(w.ca.TrustDomain(), "fn", function)
	if err != nil {
		return "", fmt.Errorf("identity of %s: %w", function, err)
	}
	src, err := NewSVIDSource(w.ca, id, w.ca.clk, w.log)
	if err != nil {
		return "", fmt.Errorf("identity of %s: %w", function, err)
	}
	if err := src.WriteFiles(dir); err != nil {
		return "", fmt.Errorf("identity files of %s: %w", function, err)
	}
	wl := &workload{src: src}
	w.sources[function] = wl
	if w.runCtx != nil {
		w.start(wl)
	}
	return dir, nil
}

// start runs wl's renewal loop under Run's context until Forget or Run's
// end; w.mu must be held.
func (w *Workloads) start(wl *workload) {
	ctx, cancel := context.WithCancel(w.runCtx)
	wl.cancel = cancel
	w.wg.Go(func() { _ = wl.src.Run(ctx) })
}

// Forget ends a deleted function's identity: its SVID is no longer renewed
// and its proxy credentials no longer name a caller. Its files stay for
// processes still draining; applying the function again issues a new SVID.
func (w *Workloads) Forget(function string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	wl, ok := w.sources[function]
	if !ok {
		return
	}
	if wl.cancel != nil {
		wl.cancel()
	}
	delete(w.sources, function)
}

// Run keeps every function's SVID renewed until ctx ends.
func (w *Workloads) Run(ctx context.Context) error {
	w.mu.Lock()
	w.runCtx = ctx
	for _, wl := range w.sources {
		w.start(wl)
	}
	w.mu.Unlock()
	<-ctx.Done()
	w.wg.Wait()
	return nil
}

// Caller returns the identity of the function that made a proxied request,
// from its Proxy-Authorization credentials, or false for an anonymous or
// forged one.
func (w *Workloads) Caller(r *http.Request) (*SVIDSource, bool) {
	pr := &http.Request{Header: http.Header{"Authorization": r.Header.Values("Proxy-Authorization")}}
	name, token, ok := pr.BasicAuth()
	if !ok || !hmac.Equal([]byte(token), []byte(w.token(name))) {
		return nil, false
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	wl, ok := w.sources[name]
	if !ok {
		return nil, false
	}
	return wl.src, true
}

func chownTree(dir string, uid, gid int) error {
	return filepath.Walk(dir, func(path string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(path, uid, gid)
	})
}

type callerKey struct{}

// WithCaller marks ctx as a call made by the function whose identity src is:
// the router presents src's SVID to Services with tls.mode mutual.
func WithCaller(ctx context.Context, src *SVIDSource) context.Context {
	return context.WithValue(ctx, callerKey{}, src)
}

func callerOf(ctx context.Context) *SVIDSource {
	src, _ := ctx.Value(callerKey{}).(*SVIDSource)
	return src
}
