package main

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weft-dev/weft/internal/testutil"
)

// TestRouterEndToEnd: with the real binary, a worker's plain
// http://<service>/ request (through the HTTP_PROXY weft sets) and a
// trigger's uri: subscriber naming a Service both reach the Service's
// endpoint through the router; weft invoke calls a function synchronously;
// weft get services lists the endpoint.
func TestRouterEndToEnd(t *testing.T) {
	skipShort(t)
	var mu sync.Mutex
	var hooks []string
	echo := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost {
			mu.Lock()
			hooks = append(hooks, r.URL.Path+" "+r.Header.Get("ce-id"))
			mu.Unlock()
			w.WriteHeader(http.StatusAccepted)
			return
		}
		_, _ = io.WriteString(w, "echo:"+r.URL.Path)
	}))
	defer echo.Close()

	dir := t.TempDir()
	out := filepath.Join(dir, "caller.jsonl")
	manifests := filepath.Join(dir, "manifests")
	if err := os.Mkdir(manifests, 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(manifests, "mesh.yaml"), fmt.Sprintf(`apiVersion: weft.dev/v1
kind: Service
metadata: {name: echo}
spec:
  endpoints: [%q]
---
apiVersion: weft.dev/v1
kind: Function
metadata: {name: caller}
spec:
  command: [%q]
  env: [{name: OUT, value: %q}, {name: CALL_URL, value: "http://echo/from-worker"}]
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: to-caller}
spec:
  filters: [{exact: {type: test.call}}]
  subscriber: {ref: {apiVersion: weft.dev/v1, kind: Function, name: caller}}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: to-echo}
spec:
  filters: [{exact: {type: test.uri}}]
  subscriber: {uri: "http://echo/hook"}
`, echo.URL, recorderBin, out))
	n := startNode(t, manifests, filepath.Join(dir, "data"))

	n.mustCLI(nil, "publish", "--type", "test.call", "--source", "/e2e", "--id", "c1")
	testutil.WaitFor(t, 30*time.Second, func() bool { return ids(records(t, out))["c1"] > 0 }, "the caller never ran")
	for _, r := range records(t, out) {
		if r["id"] == "c1" && r["called"] != "echo:/from-worker" {
			t.Fatalf("the worker's call through HTTP_PROXY answered %q", r["called"])
		}
	}

	n.mustCLI(nil, "publish", "--type", "test.uri", "--source", "/e2e", "--id", "u1")
	testutil.WaitFor(t, 30*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(hooks) == 1 && hooks[0] == "/hook u1"
	}, "the uri subscriber naming a Service got nothing")

	if got := n.mustCLI(nil, "invoke", "caller", "--type", "test.invoked"); !strings.Contains(got, "accepted") {
		t.Fatalf("invoke said %q", got)
	}
	var svcs []struct {
		Name      string `json:"name"`
		Endpoints []struct {
			Address string `json:"address"`
			Healthy bool   `json:"healthy"`
		} `json:"endpoints"`
	}
	n.mustCLI(&svcs, "get", "services", "-o", "json")
	if len(svcs) != 1 || svcs[0].Name != "echo" || len(svcs[0].Endpoints) != 1 || !svcs[0].Endpoints[0].Healthy {
		t.Fatalf("get services: %+v", svcs)
	}
}
