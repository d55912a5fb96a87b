package schemas

import (
	"encoding/json"
	"strings"
	"testing"
)

// designFunction is the Function example of DESIGN.md, as JSON.
const designFunction = `{
  "apiVersion": "weft.dev/v1",
  "kind": "Function",
  "metadata": {"name": "thumbnailer", "labels": {"team": "media"}},
  "spec": {
    "command": ["python3", "thumb.py"],
    "env": [{"name": "LOG_LEVEL", "value": "debug"}],
    "concurrency": 10,
    "timeout": "30s",
    "scale": {"min": 0, "max": 20, "target": 5},
    "readiness": {"path": "/healthz"}
  }
}`

func TestFunctionSchemaAcceptsDesignExample(t *testing.T) {
	if vs := Validate("Function", []byte(designFunction)); vs != nil {
		t.Fatalf("the DESIGN.md example is refused: %v", vs)
	}
}

func TestFunctionSchemaRefuses(t *testing.T) {
	cases := map[string]struct {
		set  func(spec map[string]any)
		path string
	}{
		"no command":       {func(s map[string]any) { delete(s, "command") }, "spec"},
		"empty command":    {func(s map[string]any) { s["command"] = []any{} }, "spec/command"},
		"empty program":    {func(s map[string]any) { s["command"] = []any{""} }, "spec/command/0"},
		"bad env name":     {func(s map[string]any) { s["env"] = []any{map[string]any{"name": "A-B"}} }, "spec/env/0/name"},
		"env extra key":    {func(s map[string]any) { s["env"] = []any{map[string]any{"name": "A", "valueFrom": "x"}} }, "spec/env/0"},
		"negative conc":    {func(s map[string]any) { s["concurrency"] = -1 }, "spec/concurrency"},
		"float conc":       {func(s map[string]any) { s["concurrency"] = 1.5 }, "spec/concurrency"},
		"bad timeout":      {func(s map[string]any) { s["timeout"] = "PT30S" }, "spec/timeout"},
		"zero max":         {func(s map[string]any) { s["scale"] = map[string]any{"max": 0} }, "spec/scale/max"},
		"zero target":      {func(s map[string]any) { s["scale"] = map[string]any{"target": 0} }, "spec/scale/target"},
		"relative probe":   {func(s map[string]any) { s["readiness"] = map[string]any{"path": "healthz"} }, "spec/readiness/path"},
		"unknown in spec":  {func(s map[string]any) { s["replicas"] = 2 }, "spec"},
		"empty workingDir": {func(s map[string]any) { s["workingDir"] = "" }, "spec/workingDir"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			var doc map[string]any
			if err := json.Unmarshal([]byte(designFunction), &doc); err != nil {
				t.Fatal(err)
			}
			c.set(doc["spec"].(map[string]any))
			raw, _ := json.Marshal(doc)
			vs := Validate("Function", raw)
			for _, v := range vs {
				if strings.Join(v.Path, "/") == c.path {
					return
				}
			}
			t.Errorf("violations %v, want one at %s", vs, c.path)
		})
	}
}
