package router

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/weft-dev/weft/internal/resource"
	"github.com/weft-dev/weft/schemas"
)

// ServiceAPIVersion and ServiceKind identify a Service manifest.
const (
	ServiceAPIVersion = "weft.dev/v1"
	ServiceKind       = "Service"
)

// Defaults ParseService fills in for fields a manifest leaves out.
const (
	// DefaultServiceTimeout bounds one call, retries included.
	DefaultServiceTimeout = 10 * time.Second
	// DefaultRetryAttempts is one try: no retry unless the manifest asks.
	DefaultRetryAttempts = 1
	// DefaultRetryBudgetPercent lets retries add at most 20% to the recent
	// requests, Linkerd's default retry ratio.
	DefaultRetryBudgetPercent = 20.0
	// DefaultConsecutiveFailures ejects an endpoint after 5 failures in a row.
	DefaultConsecutiveFailures = 5
	// DefaultEjectionTime keeps an ejected endpoint out for 30s.
	DefaultEjectionTime = 30 * time.Second
)

// LoadBalancer names how a request picks one of a Service's endpoints.
type LoadBalancer string

// The load-balancing policies a Service may name.
const (
	// LoadBalancerP2CEWMA, the default, takes the better of two random
	// endpoints by peak-EWMA latency (Linkerd's balancer).
	LoadBalancerP2CEWMA LoadBalancer = "p2c-ewma"
	// LoadBalancerRoundRobin takes the endpoints in turn.
	LoadBalancerRoundRobin LoadBalancer = "round-robin"
	// LoadBalancerLeastRequest takes the better of two random endpoints by
	// requests in flight.
	LoadBalancerLeastRequest LoadBalancer = "least-request"
)

// TLSMode says whether and how the router secures its connections to a
// Service's endpoints.
type TLSMode string

// The TLS modes of a Service.
const (
	// TLSDisable is plain HTTP; the endpoints are http://.
	TLSDisable TLSMode = "disable"
	// TLSSimple verifies the server only; the endpoints are https://.
	TLSSimple TLSMode = "simple"
	// TLSMutual also presents a client certificate: the user's, or weft's
	// own SVID.
	TLSMutual TLSMode = "mutual"
)

// Service is a parsed, validated Service resource: where a service's
// endpoints are, how the router calls them, who may call, and how requests
// are routed to other backends. ParseService fills every default, so the
// zero value of a field below means what its comment says, never "unset".
// A Service is immutable once parsed and safe to share between goroutines.
type Service struct {
	// Name is metadata.name, a DNS-1123 label: workers call http://<Name>/.
	Name string
	// Endpoints are the static endpoints in manifest order, each with only
	// Scheme ("http" or "https") and Host ("host:port") set. Empty when the
	// endpoints come from the registry or routes send every request elsewhere.
	Endpoints []*url.URL
	// TLS says how connections to the endpoints are secured.
	TLS ServiceTLS
	// LoadBalancer picks an endpoint per request; default LoadBalancerP2CEWMA.
	LoadBalancer LoadBalancer
	// Timeout bounds one call, retries included; default
	// DefaultServiceTimeout (10s). 0 (written "0") means no bound beyond
	// the caller's context.
	Timeout time.Duration
	// Retries says when a failed call is tried again.
	Retries ServiceRetries
	// OutlierDetection says when a failing endpoint is ejected.
	OutlierDetection ServiceOutlierDetection
	// Allow lists the SPIFFE IDs that may call the service; empty means any
	// authenticated peer of weft's trust domain.
	Allow []spiffeid.ID
	// Routes are checked in order by a RouteTable; empty sends every
	// request to the service's own endpoints.
	Routes []Route
}

// ServiceTLS is a Service's TLS settings. File paths are absolute.
type ServiceTLS struct {
	// Mode is TLSDisable for http endpoints and TLSSimple or TLSMutual for
	// https ones. When the manifest gives none it is TLSSimple if the
	// endpoints are https and TLSDisable otherwise.
	Mode TLSMode
	// CAFile holds PEM roots that verify the server; "" means the system's
	// roots (TLSSimple) or weft's trust bundle (TLSMutual).
	CAFile string
	// CertFile and KeyFile are a client certificate and its key, both set or
	// both empty, only with TLSMutual; empty means weft's own SVID.
	CertFile, KeyFile string
	// ServerName is sent in SNI and verified; "" means the endpoint's host.
	ServerName string
	// SPIFFEID, when not zero, is the ID the server's certificate must carry.
	SPIFFEID spiffeid.ID
}

// ServiceRetries is a Service's retry policy.
type ServiceRetries struct {
	// Attempts is the most tries of one call, the first included;
	// default DefaultRetryAttempts (1: no retry).
	Attempts int
	// PerTryTimeout bounds each try; 0 means only the Service's Timeout does.
	PerTryTimeout time.Duration
	// BudgetPercent caps retries at this percentage of recent requests,
	// 0 to 100; default DefaultRetryBudgetPercent (20). 0 allows no retry.
	BudgetPercent float64
	// RetryOn5xx retries 5xx answers to non-idempotent methods too.
	RetryOn5xx bool
}

// ServiceOutlierDetection says when an endpoint is ejected and for how long.
type ServiceOutlierDetection struct {
	// ConsecutiveFailures in a row eject an endpoint; default
	// DefaultConsecutiveFailures (5).
	ConsecutiveFailures int
	// EjectionTime is how long it stays out; default DefaultEjectionTime
	// (30s). Always greater than 0.
	EjectionTime time.Duration
}

// svcSpecJSON mirrors the schema's spec object; TestServiceSchemaMatchesSpec
// keeps the two in step. Pointers tell "absent" from an explicit zero.
type svcSpecJSON struct {
	Endpoints        []string       `json:"endpoints"`
	TLS              svcTLSJSON     `json:"tls"`
	LoadBalancer     string         `json:"loadBalancer"`
	Timeout          *string        `json:"timeout"`
	Retries          svcRetriesJSON `json:"retries"`
	OutlierDetection svcOutlierJSON `json:"outlierDetection"`
	Allow            []string       `json:"allow"`
	Routes           []svcRouteJSON `json:"routes"`
}

type svcTLSJSON struct {
	Mode       string `json:"mode"`
	CAFile     string `json:"caFile"`
	CertFile   string `json:"certFile"`
	KeyFile    string `json:"keyFile"`
	ServerName string `json:"serverName"`
	SPIFFEID   string `json:"spiffeID"`
}

type svcRetriesJSON struct {
	Attempts      int      `json:"attempts"`
	PerTryTimeout string   `json:"perTryTimeout"`
	BudgetPercent *float64 `json:"budgetPercent"`
	RetryOn5xx    bool     `json:"retryOn5xx"`
}

type svcOutlierJSON struct {
	ConsecutiveFailures int     `json:"consecutiveFailures"`
	EjectionTime        *string `json:"ejectionTime"`
}

// ParseService turns a decoded manifest into a Service. It checks apiVersion
// and kind, validates the document against schemas' Service schema, then
// checks what a schema cannot: endpoint URLs, durations, SPIFFE IDs, TLS
// settings that fit the endpoints, and routes (a route whose weights are all
// 0, a backend naming the service itself, a route after a catch-all).
//
// Every problem is a *resource.FieldError naming obj's file, the line and
// the field (spec.routes[1].backends); several are joined with errors.Join
// in the order of their lines, so errors.As finds the first. Relative TLS
// file paths resolve from the folder of obj.File, or from the current
// directory when obj.File is empty; the files are read when the router
// builds its TLS configuration, not here.
func ParseService(obj resource.Object) (*Service, error) {
	if obj.APIVersion != ServiceAPIVersion {
		return nil, obj.FieldError([]string{"apiVersion"}, fmt.Errorf("%q is not %s", obj.APIVersion, ServiceAPIVersion))
	}
	if obj.Kind != ServiceKind {
		return nil, obj.FieldError([]string{"kind"}, fmt.Errorf("%q is not %s", obj.Kind, ServiceKind))
	}
	p := &serviceParser{obj: obj}
	if vs := schemas.Validate(ServiceKind, obj.JSON); len(vs) > 0 {
		for _, v := range vs {
			p.fail(errors.New(serviceViolation(obj.JSON, v)), v.Path...)
		}
		return nil, p.err()
	}
	var doc struct {
		Spec svcSpecJSON `json:"spec"`
	}
	if err := json.Unmarshal(obj.JSON, &doc); err != nil {
		return nil, obj.FieldError([]string{"spec"}, err) // the schema let through a shape Go cannot decode
	}
	s := p.service(doc.Spec)
	if err := p.err(); err != nil {
		return nil, err
	}
	return s, nil
}

// serviceParser collects the problems of one manifest.
type serviceParser struct {
	obj  resource.Object
	errs []*resource.FieldError
}

func (p *serviceParser) fail(err error, path ...string) {
	p.errs = append(p.errs, p.obj.FieldError(path, err))
}

// err orders the problems by position and joins them; nil when there are
// none, the *resource.FieldError itself when there is one.
func (p *serviceParser) err() error {
	if len(p.errs) == 0 {
		return nil
	}
	sort.SliceStable(p.errs, func(i, j int) bool {
		a, b := p.errs[i], p.errs[j]
		if a.Line != b.Line {
			return a.Line < b.Line
		}
		return a.Column < b.Column
	})
	if len(p.errs) == 1 {
		return p.errs[0]
	}
	out := make([]error, len(p.errs))
	for i, e := range p.errs {
		out[i] = e
	}
	return errors.Join(out...)
}

func (p *serviceParser) service(sp svcSpecJSON) *Service {
	s := &Service{
		Name:         p.obj.Name,
		LoadBalancer: LoadBalancer(sp.LoadBalancer),
		Timeout:      DefaultServiceTimeout,
		Retries: ServiceRetries{
			Attempts:      sp.Retries.Attempts,
			BudgetPercent: DefaultRetryBudgetPercent,
			RetryOn5xx:    sp.Retries.RetryOn5xx,
		},
		OutlierDetection: ServiceOutlierDetection{
			ConsecutiveFailures: sp.OutlierDetection.ConsecutiveFailures,
			EjectionTime:        DefaultEjectionTime,
		},
	}
	if s.LoadBalancer == "" {
		s.LoadBalancer = LoadBalancerP2CEWMA
	}
	if s.Retries.Attempts == 0 {
		s.Retries.Attempts = DefaultRetryAttempts
	}
	if sp.Retries.BudgetPercent != nil {
		s.Retries.BudgetPercent = *sp.Retries.BudgetPercent
	}
	if s.OutlierDetection.ConsecutiveFailures == 0 {
		s.OutlierDetection.ConsecutiveFailures = DefaultConsecutiveFailures
	}
	if sp.Timeout != nil {
		s.Timeout = p.duration(*sp.Timeout, "spec", "timeout")
	}
	s.Retries.PerTryTimeout = p.duration(sp.Retries.PerTryTimeout, "spec", "retries", "perTryTimeout")
	if s.Timeout > 0 && s.Retries.PerTryTimeout > s.Timeout {
		p.fail(fmt.Errorf("%s is longer than the service's timeout %s", s.Retries.PerTryTimeout, s.Timeout), "spec", "retries", "perTryTimeout")
	}
	if sp.OutlierDetection.EjectionTime != nil {
		s.OutlierDetection.EjectionTime = p.positive(*sp.OutlierDetection.EjectionTime, "spec", "outlierDetection", "ejectionTime")
	}
	s.Endpoints = p.endpoints(sp.Endpoints)
	s.TLS = p.tls(sp.TLS, s.Endpoints)
	for i, a := range sp.Allow {
		if id, ok := p.spiffeID(a, "spec", "allow", strconv.Itoa(i)); ok {
			s.Allow = append(s.Allow, id)
		}
	}
	s.Routes = p.routes(sp.Routes)
	return s
}

// duration parses a Go duration; "" is 0. The schema already checked the
// syntax, so an error here means the schema and Go disagree.
func (p *serviceParser) duration(v string, path ...string) time.Duration {
	if v == "" {
		return 0
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		p.fail(err, path...)
		return 0
	}
	if d < 0 {
		p.fail(fmt.Errorf("duration %s is negative", v), path...)
		return 0
	}
	return d
}

// positive parses a duration that must be greater than 0.
func (p *serviceParser) positive(v string, path ...string) time.Duration {
	n := len(p.errs)
	d := p.duration(v, path...)
	if d == 0 && len(p.errs) == n {
		p.fail(fmt.Errorf("want a duration greater than 0, got %q; leave it out for the default", v), path...)
	}
	return d
}

func (p *serviceParser) endpoints(raw []string) []*url.URL {
	var out []*url.URL
	for i, e := range raw {
		path := []string{"spec", "endpoints", strconv.Itoa(i)}
		u, err := parseEndpoint(e)
		if err != nil {
			p.fail(err, path...)
			continue
		}
		if len(out) > 0 && u.Scheme != out[0].Scheme {
			p.fail(fmt.Errorf("%s is %s but %s is %s: one service's endpoints share one scheme", e, u.Scheme, out[0], out[0].Scheme), path...)
			continue
		}
		if slices.ContainsFunc(out, func(o *url.URL) bool { return *o == *u }) {
			p.fail(fmt.Errorf("%s is listed twice", u), path...)
			continue
		}
		out = append(out, u)
	}
	return out
}

// parseEndpoint checks one endpoint URL and returns it as scheme://host:port.
func parseEndpoint(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("want a URL such as https://10.0.0.5:9443: %w", err)
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return nil, fmt.Errorf("want an http:// or https:// URL, got %q", raw)
	case u.User != nil || u.RawQuery != "" || u.Fragment != "" || u.Path != "" && u.Path != "/":
		return nil, fmt.Errorf("want only scheme://host:port, got %q", raw)
	case u.Hostname() == "":
		return nil, fmt.Errorf("%q has no host", raw)
	}
	port, err := strconv.Atoi(u.Port())
	if err != nil || port < 1 || port > 65535 {
		return nil, fmt.Errorf("%q needs a port from 1 to 65535", raw)
	}
	return &url.URL{Scheme: u.Scheme, Host: u.Host}, nil
}

func (p *serviceParser) tls(t svcTLSJSON, endpoints []*url.URL) ServiceTLS {
	out := ServiceTLS{Mode: TLSMode(t.Mode), ServerName: t.ServerName}
	scheme := ""
	if len(endpoints) > 0 {
		scheme = endpoints[0].Scheme
	}
	mode := []string{"spec", "tls", "mode"}
	switch {
	case out.Mode == "" && scheme == "https":
		out.Mode = TLSSimple
	case out.Mode == "":
		out.Mode = TLSDisable
	case out.Mode == TLSDisable && scheme == "https":
		p.fail(errors.New("the endpoints are https: use mode simple or mutual, or http endpoints"), mode...)
	case out.Mode != TLSDisable && scheme == "http":
		p.fail(fmt.Errorf("mode %s needs https endpoints, and spec.endpoints are http", out.Mode), mode...)
	}
	if out.Mode == TLSDisable {
		for _, f := range []struct{ name, val string }{{"caFile", t.CAFile}, {"certFile", t.CertFile},
			{"keyFile", t.KeyFile}, {"serverName", t.ServerName}, {"spiffeID", t.SPIFFEID}} {
			if f.val != "" {
				p.fail(errors.New("has no effect without TLS: set mode simple or mutual"), "spec", "tls", f.name)
			}
		}
		return out
	}
	switch {
	case out.Mode != TLSMutual && t.CertFile != "":
		p.fail(errors.New("a client certificate is sent only with mode mutual"), "spec", "tls", "certFile")
	case out.Mode != TLSMutual && t.KeyFile != "":
		p.fail(errors.New("a client certificate is sent only with mode mutual"), "spec", "tls", "keyFile")
	case t.CertFile != "" && t.KeyFile == "":
		p.fail(errors.New("certFile needs keyFile"), "spec", "tls", "certFile")
	case t.KeyFile != "" && t.CertFile == "":
		p.fail(errors.New("keyFile needs certFile"), "spec", "tls", "keyFile")
	}
	out.CAFile = p.file(t.CAFile, "spec", "tls", "caFile")
	out.CertFile = p.file(t.CertFile, "spec", "tls", "certFile")
	out.KeyFile = p.file(t.KeyFile, "spec", "tls", "keyFile")
	if t.SPIFFEID != "" {
		out.SPIFFEID, _ = p.spiffeID(t.SPIFFEID, "spec", "tls", "spiffeID")
	}
	return out
}

// file makes a manifest-relative path absolute; "" stays "".
func (p *serviceParser) file(name string, path ...string) string {
	if name == "" {
		return ""
	}
	if !filepath.IsAbs(name) {
		base := "."
		if p.obj.File != "" {
			base = filepath.Dir(p.obj.File)
		}
		name = filepath.Join(base, name)
	}
	abs, err := filepath.Abs(name)
	if err != nil {
		p.fail(fmt.Errorf("resolve path: %w", err), path...)
	}
	return abs
}

func (p *serviceParser) spiffeID(v string, path ...string) (spiffeid.ID, bool) {
	id, err := spiffeid.FromString(v)
	if err != nil {
		p.fail(fmt.Errorf("want a SPIFFE ID such as spiffe://weft.local/fn/thumbnailer, got %q: %w", v, err), path...)
		return spiffeid.ID{}, false
	}
	return id, true
}

// serviceHints replaces the schema validator's message for fields whose rule
// is a pattern: an example tells a user more than a regular expression.
// Paths use "*" for list indices.
var serviceHints = map[string]string{
	"spec/endpoints/*":                   "a base URL http://host:port or https://host:port, such as https://10.0.0.5:9443",
	"spec/timeout":                       "a Go duration such as 10s, 1m30s or 500ms",
	"spec/retries/perTryTimeout":         "a Go duration such as 2s or 500ms",
	"spec/outlierDetection/ejectionTime": "a Go duration such as 30s or 1m",
	"spec/routes/*/timeout":              "a Go duration such as 5s",
	"spec/tls/spiffeID":                  "a SPIFFE ID such as spiffe://weft.local/fn/thumbnailer",
	"spec/allow/*":                       "a SPIFFE ID such as spiffe://weft.local/fn/thumbnailer",
	"spec/routes/*/match/pathPrefix":     "a path prefix starting with /, such as /v2/",
	"spec/routes/*/match/method":         "an upper-case HTTP method such as GET or POST",
	"spec/routes/*/backends/*/name":      "a Service or Function name: lower-case letters, digits and '-'",
	"spec/loadBalancer":                  "one of p2c-ewma, round-robin, least-request",
	"spec/tls/mode":                      "one of disable, simple, mutual",
}

// serviceViolation returns v's message, or for a hinted field "want HINT, got
// VALUE".
func serviceViolation(doc []byte, v schemas.Violation) string {
	var val any
	if err := json.Unmarshal(doc, &val); err != nil {
		return v.Message
	}
	key := make([]string, len(v.Path))
	for i, seg := range v.Path {
		key[i] = seg
		switch x := val.(type) {
		case map[string]any:
			val = x[seg]
		case []any:
			key[i] = "*"
			n, _ := strconv.Atoi(seg)
			if n < 0 || n >= len(x) {
				return v.Message
			}
			val = x[n]
		default:
			return v.Message
		}
	}
	hint, ok := serviceHints[strings.Join(key, "/")]
	if !ok {
		return v.Message
	}
	got, _ := json.Marshal(val)
	return fmt.Sprintf("want %s, got %s", hint, got)
}

// Fingerprint returns a digest of everything in s. Two Services with the same
// fingerprint behave identically, so re-applying an unchanged Service can be
// a no-op; any change (a weight, a timeout, an endpoint) changes it.
func (s *Service) Fingerprint() string {
	data, err := json.Marshal(s)
	if err != nil {
		panic(err) // strings, numbers, URLs and SPIFFE IDs always marshal
	}
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])
}

// Equal reports whether s and o describe the same service in every field.
// Two nil Services are equal.
func (s *Service) Equal(o *Service) bool {
	if s == nil || o == nil {
		return s == o
	}
	return s.Fingerprint() == o.Fingerprint()
}
