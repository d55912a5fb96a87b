package router

import (
	"encoding/json"
	"errors"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/weft-dev/weft/internal/resource"
	"github.com/weft-dev/weft/schemas"
	"github.com/weft-dev/weft/schemas/schematest"
)

// designService is the Service example of DESIGN.md, verbatim.
const designService = `apiVersion: weft.dev/v1
kind: Service
metadata:
  name: payments
spec:
  endpoints: ["https://127.0.0.1:9443"]   # or discovered through the store's registry
  tls: {mode: mutual, caFile: ca.pem, serverName: payments}
  loadBalancer: p2c-ewma                   # or round-robin, least-request
  timeout: 10s
  retries: {attempts: 3, perTryTimeout: 2s, budgetPercent: 20}
  outlierDetection: {consecutiveFailures: 5, ejectionTime: 30s}
  allow: ["spiffe://weft.local/fn/thumbnailer"]   # who may call; empty = anyone in the trust domain
  routes:                                  # optional traffic management; first match wins
    - match: {pathPrefix: /v2/, headers: {x-canary: "1"}}
      backends: [{name: payments-v2}]      # a Service or Function name
    - backends: [{name: payments-v1, weight: 90}, {name: payments-v2, weight: 10}]
`

// serviceHeader starts every test manifest; spec: is on line 5.
const serviceHeader = "apiVersion: weft.dev/v1\nkind: Service\nmetadata:\n  name: payments\n"

// parseServiceYAML decodes one manifest as if read from file and parses it.
func parseServiceYAML(t testing.TB, file, doc string) (*Service, error) {
	t.Helper()
	objs, err := resource.Decode(file, []byte(doc))
	if err != nil {
		t.Fatalf("decode: %v", err)
	}
	if len(objs) != 1 {
		t.Fatalf("decoded %d documents, want 1", len(objs))
	}
	return ParseService(objs[0])
}

// serviceFieldErrors flattens a joined error into its *resource.FieldErrors.
func serviceFieldErrors(err error) []*resource.FieldError {
	var out []*resource.FieldError
	var walk func(error)
	walk = func(err error) {
		if j, ok := err.(interface{ Unwrap() []error }); ok {
			for _, e := range j.Unwrap() {
				walk(e)
			}
			return
		}
		var fe *resource.FieldError
		if errors.As(err, &fe) {
			out = append(out, fe)
		}
	}
	walk(err)
	return out
}

func TestParseServiceDesignExample(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s, err := parseServiceYAML(t, filepath.Join(dir, "payments.yaml"), designService)
	if err != nil {
		t.Fatal(err)
	}
	want := &Service{
		Name:             "payments",
		Endpoints:        []*url.URL{{Scheme: "https", Host: "127.0.0.1:9443"}},
		TLS:              ServiceTLS{Mode: TLSMutual, CAFile: filepath.Join(dir, "ca.pem"), ServerName: "payments"},
		LoadBalancer:     LoadBalancerP2CEWMA,
		Timeout:          10 * time.Second,
		Retries:          ServiceRetries{Attempts: 3, PerTryTimeout: 2 * time.Second, BudgetPercent: 20},
		OutlierDetection: ServiceOutlierDetection{ConsecutiveFailures: 5, EjectionTime: 30 * time.Second},
		Allow:            []spiffeid.ID{spiffeid.RequireFromString("spiffe://weft.local/fn/thumbnailer")},
		Routes: []Route{
			{Match: RouteMatch{PathPrefix: "/v2/", Headers: map[string]string{"X-Canary": "1"}},
				Backends: []RouteBackend{{Name: "payments-v2", Weight: 1}}},
			{Backends: []RouteBackend{{Name: "payments-v1", Weight: 90}, {Name: "payments-v2", Weight: 10}}},
		},
	}
	if !reflect.DeepEqual(s, want) {
		t.Errorf("ParseService =\n%+v\nwant\n%+v", s, want)
	}
	if got := s.BackendNames(); !slices.Equal(got, []string{"payments-v1", "payments-v2"}) {
		t.Errorf("BackendNames = %v", got)
	}
}

func TestParseService(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	file := filepath.Join(dir, "svc.yaml")
	cwd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	base := Service{
		Name: "payments", TLS: ServiceTLS{Mode: TLSDisable}, LoadBalancer: LoadBalancerP2CEWMA,
		Timeout: DefaultServiceTimeout, Retries: ServiceRetries{Attempts: 1, BudgetPercent: 20},
		OutlierDetection: ServiceOutlierDetection{ConsecutiveFailures: 5, EjectionTime: 30 * time.Second},
	}
	with := func(f func(s *Service)) Service {
		s := base
		f(&s)
		return s
	}
	cases := map[string]struct {
		file, spec string
		want       Service
	}{
		"no spec: every default": {file, "", base},
		"empty spec":             {file, "spec: {}\n", base},
		"http endpoints, explicit zeroes": {file, `spec:
  endpoints: ["http://10.0.0.5:8080/", "http://[::1]:8081"]
  loadBalancer: round-robin
  timeout: "0"
  retries: {attempts: 2, budgetPercent: 0, retryOn5xx: true}
  outlierDetection: {consecutiveFailures: 1, ejectionTime: 1m}
`, with(func(s *Service) {
			s.Endpoints = []*url.URL{{Scheme: "http", Host: "10.0.0.5:8080"}, {Scheme: "http", Host: "[::1]:8081"}}
			s.LoadBalancer, s.Timeout = LoadBalancerRoundRobin, 0
			s.Retries = ServiceRetries{Attempts: 2, RetryOn5xx: true}
			s.OutlierDetection = ServiceOutlierDetection{ConsecutiveFailures: 1, EjectionTime: time.Minute}
		})},
		"https endpoints default to simple TLS": {file, `spec:
  endpoints: ["https://api.example.com:443"]
  tls: {serverName: api.example.com, spiffeID: "spiffe://example.com/api"}
  loadBalancer: least-request
  retries: {budgetPercent: 12.5}
`, with(func(s *Service) {
			s.Endpoints = []*url.URL{{Scheme: "https", Host: "api.example.com:443"}}
			s.TLS = ServiceTLS{Mode: TLSSimple, ServerName: "api.example.com", SPIFFEID: spiffeid.RequireFromString("spiffe://example.com/api")}
			s.LoadBalancer, s.Retries.BudgetPercent = LoadBalancerLeastRequest, 12.5
		})},
		"mutual without endpoints, absolute and relative files": {file, `spec:
  tls: {mode: mutual, caFile: /etc/weft/ca.pem, certFile: certs/c.pem, keyFile: ./certs/k.pem}
`, with(func(s *Service) {
			s.TLS = ServiceTLS{Mode: TLSMutual, CAFile: "/etc/weft/ca.pem",
				CertFile: filepath.Join(dir, "certs", "c.pem"), KeyFile: filepath.Join(dir, "certs", "k.pem")}
		})},
		"no file: relative to the current directory": {"", "spec:\n  tls: {mode: mutual, caFile: ca.pem}\n", with(func(s *Service) {
			s.TLS = ServiceTLS{Mode: TLSMutual, CAFile: filepath.Join(cwd, "ca.pem")}
		})},
		"routes": {file, `spec:
  endpoints: ["http://127.0.0.1:8080"]
  routes:
    - match: {method: POST, headers: {X-Tenant: acme, accept: "application/json"}}
      backends: [{name: billing, weight: 3}, {name: billing-next, weight: 0}]
      timeout: 2s
    - match: {pathPrefix: /admin}
      backends: [{name: admin}]
`, with(func(s *Service) {
			s.Endpoints = []*url.URL{{Scheme: "http", Host: "127.0.0.1:8080"}}
			s.Routes = []Route{
				{Match: RouteMatch{Method: "POST", Headers: map[string]string{"X-Tenant": "acme", "Accept": "application/json"}},
					Backends: []RouteBackend{{"billing", 3}, {"billing-next", 0}}, Timeout: 2 * time.Second},
				{Match: RouteMatch{PathPrefix: "/admin"}, Backends: []RouteBackend{{"admin", 1}}},
			}
		})},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			s, err := parseServiceYAML(t, c.file, serviceHeader+c.spec)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(*s, c.want) {
				t.Errorf("ParseService =\n%+v\nwant\n%+v", *s, c.want)
			}
		})
	}
}

// TestParseServiceRefuses checks that each bad manifest gives exactly one
// *resource.FieldError, naming the file, the line and the field.
func TestParseServiceRefuses(t *testing.T) {
	t.Parallel()
	const file = "/srv/weft/payments.yaml"
	cases := map[string]struct {
		doc   string
		line  int
		field string
	}{
		"wrong apiVersion":      {strings.Replace(serviceHeader, "weft.dev/v1", "weft.dev/v2", 1), 1, "apiVersion"},
		"wrong kind":            {strings.Replace(serviceHeader, "Service", "Function", 1), 2, "kind"},
		"unknown field in spec": {serviceHeader + "spec:\n  timeout: 5s\n  replicas: 2\n", 6, "spec"},
		"unknown field in a backend": {serviceHeader + "spec:\n  routes:\n    - backends:\n        - {name: a, wieght: 5}\n",
			8, "spec.routes[0].backends[0]"},
		"bad URL scheme": {serviceHeader + "spec:\n  endpoints: [\"ftp://files:21\"]\n", 6, "spec.endpoints[0]"},
		"URL without port": {serviceHeader + "spec:\n  endpoints:\n    - http://a:1\n    - http://b\n",
			8, "spec.endpoints[1]"},
		"URL with a path":    {serviceHeader + "spec:\n  endpoints: [\"http://a:1/api\"]\n", 6, "spec.endpoints[0]"},
		"URL port too large": {serviceHeader + "spec:\n  endpoints:\n    - http://a:1\n    - http://b:99999\n", 8, "spec.endpoints[1]"},
		"mixed schemes":      {serviceHeader + "spec:\n  endpoints:\n    - http://a:1\n    - https://b:2\n", 8, "spec.endpoints[1]"},
		"endpoint twice":     {serviceHeader + "spec:\n  endpoints:\n    - http://a:1\n    - http://a:1/\n", 8, "spec.endpoints[1]"},
		"bad duration":       {serviceHeader + "spec:\n  timeout: 10 seconds\n", 6, "spec.timeout"},
		"bad perTryTimeout":  {serviceHeader + "spec:\n  retries:\n    perTryTimeout: PT2S\n", 7, "spec.retries.perTryTimeout"},
		"perTryTimeout over timeout": {serviceHeader + "spec:\n  timeout: 1s\n  retries: {attempts: 2, perTryTimeout: 2s}\n",
			7, "spec.retries.perTryTimeout"},
		"zero ejectionTime": {serviceHeader + "spec:\n  outlierDetection:\n    ejectionTime: \"0\"\n", 7, "spec.outlierDetection.ejectionTime"},
		"zero attempts":     {serviceHeader + "spec:\n  retries: {attempts: 0}\n", 6, "spec.retries.attempts"},
		"budget over 100":   {serviceHeader + "spec:\n  retries: {budgetPercent: 150}\n", 6, "spec.retries.budgetPercent"},
		"bad spiffe ID (schema)": {serviceHeader + "spec:\n  allow:\n    - spiffe://weft.local/fn/a\n    - https://weft.local/fn/b\n",
			8, "spec.allow[1]"},
		"bad spiffe ID (dot segment)": {serviceHeader + "spec:\n  allow: [\"spiffe://weft.local/fn/../admin\"]\n", 6, "spec.allow[0]"},
		"bad peer spiffe ID": {serviceHeader + "spec:\n  endpoints: [\"https://a:1\"]\n  tls:\n    spiffeID: spiffe://weft.local/./x\n",
			8, "spec.tls.spiffeID"},
		"unknown loadBalancer": {serviceHeader + "spec:\n  loadBalancer: random\n", 6, "spec.loadBalancer"},
		"unknown tls mode":     {serviceHeader + "spec:\n  tls: {mode: strict}\n", 6, "spec.tls.mode"},
		"disable with https":   {serviceHeader + "spec:\n  endpoints: [\"https://a:1\"]\n  tls:\n    mode: disable\n", 8, "spec.tls.mode"},
		"mutual with http":     {serviceHeader + "spec:\n  endpoints: [\"http://a:1\"]\n  tls:\n    mode: mutual\n", 8, "spec.tls.mode"},
		"caFile without TLS":   {serviceHeader + "spec:\n  tls:\n    caFile: ca.pem\n", 7, "spec.tls.caFile"},
		"certFile without keyFile": {serviceHeader + "spec:\n  tls:\n    mode: mutual\n    certFile: c.pem\n",
			8, "spec.tls.certFile"},
		"client certificate with simple": {serviceHeader + "spec:\n  tls:\n    mode: simple\n    certFile: c.pem\n    keyFile: k.pem\n",
			8, "spec.tls.certFile"},
		"weights all zero": {serviceHeader + "spec:\n  routes:\n    - match: {method: GET}\n      backends:\n        - {name: a, weight: 0}\n        - {name: b, weight: 0}\n",
			9, "spec.routes[0].backends"},
		"negative weight": {serviceHeader + "spec:\n  routes:\n    - backends: [{name: a, weight: -1}]\n", 7, "spec.routes[0].backends[0].weight"},
		"no backends":     {serviceHeader + "spec:\n  routes:\n    - backends: []\n", 7, "spec.routes[0].backends"},
		"backend is the service itself": {serviceHeader + "spec:\n  routes:\n    - backends:\n        - {name: v2, weight: 1}\n        - {name: payments, weight: 9}\n",
			9, "spec.routes[0].backends[1].name"},
		"backend twice": {serviceHeader + "spec:\n  routes:\n    - backends:\n        - {name: v2}\n        - {name: v2}\n",
			9, "spec.routes[0].backends[1].name"},
		"bad backend name": {serviceHeader + "spec:\n  routes:\n    - backends:\n        - name: Payments_V2\n", 8, "spec.routes[0].backends[0].name"},
		"route after a catch-all": {serviceHeader + "spec:\n  routes:\n    - backends: [{name: a}]\n    - match: {pathPrefix: /v2/}\n      backends: [{name: b}]\n",
			8, "spec.routes[1]"},
		"relative pathPrefix": {serviceHeader + "spec:\n  routes:\n    - match: {pathPrefix: v2/}\n      backends: [{name: b}]\n", 7, "spec.routes[0].match.pathPrefix"},
		"lower-case method":   {serviceHeader + "spec:\n  routes:\n    - match:\n        method: get\n      backends: [{name: b}]\n", 8, "spec.routes[0].match.method"},
		"bad header name": {serviceHeader + "spec:\n  routes:\n    - match:\n        headers:\n          \"x canary\": \"1\"\n      backends: [{name: b}]\n",
			9, "spec.routes[0].match.headers.x canary"},
		"header twice in other case": {serviceHeader + "spec:\n  routes:\n    - match:\n        headers: {x-canary: \"1\", X-Canary: \"2\"}\n      backends: [{name: b}]\n",
			8, "spec.routes[0].match.headers.x-canary"},
		"zero route timeout": {serviceHeader + "spec:\n  routes:\n    - backends: [{name: b}]\n      timeout: \"0\"\n", 8, "spec.routes[0].timeout"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			_, err := parseServiceYAML(t, file, c.doc)
			if err == nil {
				t.Fatal("accepted")
			}
			fes := serviceFieldErrors(err)
			if len(fes) != 1 {
				t.Fatalf("want one *resource.FieldError, got %d: %v", len(fes), err)
			}
			fe := fes[0]
			if fe.File != file || fe.Line != c.line || fe.Field != c.field {
				t.Errorf("got %s:%d %q, want %s:%d %q (%v)", fe.File, fe.Line, fe.Field, file, c.line, c.field, err)
			}
			if fe.Err == nil || fe.Err.Error() == "" {
				t.Errorf("no message: %#v", fe)
			}
		})
	}
}

// TestParseServiceJoinsErrorsInLineOrder: several problems come back
// together, ordered by line, so a user fixes them in one pass.
func TestParseServiceJoinsErrorsInLineOrder(t *testing.T) {
	t.Parallel()
	doc := serviceHeader + `spec:
  endpoints: ["http://a:1"]
  allow: ["spiffe://weft.local/fn/../x"]
  routes:
    - backends: [{name: payments}]
    - backends: [{name: a, weight: 0}]
`
	_, err := parseServiceYAML(t, "s.yaml", doc)
	var got []string
	for _, fe := range serviceFieldErrors(err) {
		got = append(got, fe.Field)
	}
	want := []string{"spec.allow[0]", "spec.routes[0].backends[0].name", "spec.routes[1]", "spec.routes[1].backends"}
	if !slices.Equal(got, want) {
		t.Errorf("fields %v, want %v (%v)", got, want, err)
	}
}

func TestServiceFingerprint(t *testing.T) {
	t.Parallel()
	a, err := parseServiceYAML(t, "a.yaml", designService)
	if err != nil {
		t.Fatal(err)
	}
	b, err := parseServiceYAML(t, "a.yaml", designService)
	if err != nil {
		t.Fatal(err)
	}
	if a.Fingerprint() != b.Fingerprint() || !a.Equal(b) {
		t.Error("the same manifest gives two fingerprints")
	}
	c, err := parseServiceYAML(t, "a.yaml", strings.Replace(designService, "weight: 90", "weight: 50", 1))
	if err != nil {
		t.Fatal(err)
	}
	if a.Fingerprint() == c.Fingerprint() || a.Equal(c) {
		t.Error("a weight change keeps the fingerprint")
	}
	d, err := parseServiceYAML(t, "a.yaml", serviceHeader)
	if err != nil {
		t.Fatal(err)
	}
	if d.Fingerprint() == "" || d.Equal(nil) || !(*Service)(nil).Equal(nil) {
		t.Error("zero TLS SPIFFE ID or nil handling")
	}
}

// TestServiceSchemaMatchesSpec keeps service.schema.json and the Go decoder
// in step: every property the schema allows in spec is decoded, and every
// decoded field is in the schema.
func TestServiceSchemaMatchesSpec(t *testing.T) {
	t.Parallel()
	schematest.CheckSpec(t, ServiceKind, reflect.TypeFor[svcSpecJSON]())
}

// TestServiceSchemaDescribesEveryField keeps editors' hover text complete:
// every property and list item of the Service schema has a description,
// directly or on the definition it refers to.
func TestServiceSchemaDescribesEveryField(t *testing.T) {
	t.Parallel()
	raw, _ := schemas.File(ServiceKind)
	var root map[string]any
	if err := json.Unmarshal(raw, &root); err != nil {
		t.Fatal(err)
	}
	defs, _ := root["definitions"].(map[string]any)
	var missing []string
	var walk func(path string, node map[string]any)
	walk = func(path string, node map[string]any) {
		desc, _ := node["description"].(string)
		if ref, ok := node["$ref"].(string); ok && desc == "" {
			def, _ := defs[strings.TrimPrefix(ref, "#/definitions/")].(map[string]any)
			desc, _ = def["description"].(string)
		}
		if desc == "" {
			missing = append(missing, path)
		}
		props, _ := node["properties"].(map[string]any)
		for name, p := range props {
			prop, _ := p.(map[string]any)
			walk(path+"."+name, prop)
		}
		if items, ok := node["items"].(map[string]any); ok {
			walk(path+"[]", items)
		}
	}
	walk("", root)
	for name, d := range defs {
		def, _ := d.(map[string]any)
		walk("#"+name, def)
	}
	slices.Sort(missing)
	if len(missing) > 0 {
		t.Errorf("schema nodes without a description: %v", missing)
	}
}

// TestServiceSchemaLoadBalancers keeps the schema's enum and the
// LoadBalancer constants the same set.
func TestServiceSchemaLoadBalancers(t *testing.T) {
	t.Parallel()
	raw, _ := schemas.File(ServiceKind)
	var root struct {
		Properties struct {
			Spec struct {
				Properties struct {
					LoadBalancer struct {
						Enum []LoadBalancer `json:"enum"`
					} `json:"loadBalancer"`
				} `json:"properties"`
			} `json:"spec"`
		} `json:"properties"`
	}
	if err := json.Unmarshal(raw, &root); err != nil {
		t.Fatal(err)
	}
	got := root.Properties.Spec.Properties.LoadBalancer.Enum
	want := []LoadBalancer{LoadBalancerP2CEWMA, LoadBalancerRoundRobin, LoadBalancerLeastRequest}
	if !slices.Equal(got, want) {
		t.Errorf("schema enum %v, constants %v", got, want)
	}
}
