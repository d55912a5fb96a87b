package router

import (
	"errors"
	"net/http"
	"testing"

	"github.com/weft-dev/weft/internal/resource"
)

// FuzzParseService: any manifest either parses into a Service whose route
// table builds and selects without panicking, or fails with
// *resource.FieldError values.
func FuzzParseService(f *testing.F) {
	for _, s := range []string{
		"apiVersion: weft.dev/v1\nkind: Service\nmetadata: {name: s}\nspec: {endpoints: [\"http://127.0.0.1:1\"]}\n",
		"apiVersion: weft.dev/v1\nkind: Service\nmetadata: {name: s}\nspec:\n  routes:\n    - match: {pathPrefix: /v2/, headers: {x-canary: \"1\"}, method: GET}\n      backends: [{name: a}]\n    - backends: [{name: a, weight: 90}, {name: b, weight: 10}]\n",
		"apiVersion: weft.dev/v1\nkind: Service\nmetadata: {name: s}\nspec:\n  endpoints: [\"https://127.0.0.1:9443\"]\n  tls: {mode: mutual, spiffeID: spiffe://weft.local/fn/x}\n  retries: {attempts: 3, perTryTimeout: 1s, budgetPercent: 0}\n",
		"apiVersion: weft.dev/v1\nkind: Service\nmetadata: {name: s}\nspec: {routes: [{backends: [{name: s}]}]}\n",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, doc string) {
		objs, err := resource.Decode("s.yaml", []byte(doc))
		if err != nil {
			return
		}
		for _, o := range objs {
			svc, err := ParseService(o)
			if err != nil {
				var fe *resource.FieldError
				if !errors.As(err, &fe) {
					t.Fatalf("ParseService error %T %v is not a FieldError", err, err)
				}
				continue
			}
			table, err := NewRouteTable(svc)
			if err != nil {
				t.Fatalf("a parsed Service has no route table: %v", err)
			}
			req, _ := http.NewRequest(http.MethodGet, "http://s/v2/x", nil)
			table.Select(req, func() float64 { return 0.5 })
		}
	})
}
