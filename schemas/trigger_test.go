package schemas_test

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"

	"github.com/weft-dev/weft/schemas"
)

// triggerJSON is a valid Trigger; cases patch it.
func triggerJSON(spec string) []byte {
	return []byte(`{"apiVersion": "eventing.knative.dev/v1", "kind": "Trigger",
		"metadata": {"name": "on-upload", "namespace": "default", "labels": {"a": "b"}, "uid": "x"},
		"spec": ` + spec + `}`)
}

func TestTriggerSchemaAccepts(t *testing.T) {
	t.Parallel()
	for name, spec := range map[string]string{
		"minimal": `{"subscriber": {"uri": "http://sink/"}}`,
		"design example": `{"broker": "default",
			"filters": [{"exact": {"type": "com.example.upload"}}, {"prefix": {"source": "/storage/"}}, {"cesql": "size > 1024"}],
			"subscriber": {"ref": {"apiVersion": "weft.dev/v1", "kind": "Function", "name": "thumbnailer"}},
			"delivery": {"retry": 5, "backoffPolicy": "exponential", "backoffDelay": "PT0.2S", "timeout": "PT10S",
				"deadLetterSink": {"uri": "http://127.0.0.1:9999/dead"}}}`,
		"knative service": `{"filter": {"attributes": {"type": "", "source": "x"}},
			"subscriber": {"ref": {"apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": "svc", "namespace": "default"}, "uri": "/path"},
			"delivery": {"retryAfterMax": "PT0S", "deadLetterSink": {"ref": {"apiVersion": "weft.dev/v1", "kind": "Function", "name": "dlq"}}}}`,
		"nested filters": `{"filters": [{"all": [{"any": [{"suffix": {"subject": ".jpg"}}, {"not": {"cesql": "EXISTS x"}}]}]}],
			"subscriber": {"uri": "http://sink/"}}`,
	} {
		if vs := schemas.Validate("Trigger", triggerJSON(spec)); vs != nil {
			t.Errorf("%s: %v", name, vs)
		}
	}
}

func TestTriggerSchemaRefuses(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		doc  []byte
		path string // of the first violation, "/"-joined
	}{
		{"wrong apiVersion", []byte(`{"apiVersion": "v1", "kind": "Trigger", "metadata": {"name": "a"}, "spec": {"subscriber": {"uri": "http://x/"}}}`), "apiVersion"},
		{"wrong kind", []byte(`{"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "metadata": {"name": "a"}, "spec": {"subscriber": {"uri": "http://x/"}}}`), "kind"},
		{"no name", []byte(`{"apiVersion": "eventing.knative.dev/v1", "kind": "Trigger", "metadata": {}, "spec": {"subscriber": {"uri": "http://x/"}}}`), "metadata"},
		{"unknown top-level field", []byte(`{"apiVersion": "eventing.knative.dev/v1", "kind": "Trigger", "metadata": {"name": "a"}, "sepc": {}}`), ""},
		{"missing subscriber", triggerJSON(`{"broker": "default"}`), "spec"},
		{"unknown spec field", triggerJSON(`{"subscriber": {"uri": "http://x/"}, "filterz": []}`), "spec"},
		{"empty subscriber", triggerJSON(`{"subscriber": {}}`), "spec/subscriber"},
		{"unknown ref field", triggerJSON(`{"subscriber": {"ref": {"apiVersion": "weft.dev/v1", "kind": "Function", "name": "f", "uid": "x"}}}`), "spec/subscriber/ref"},
		{"ref without name", triggerJSON(`{"subscriber": {"ref": {"apiVersion": "weft.dev/v1", "kind": "Function"}}}`), "spec/subscriber/ref"},
		{"exact with two keys", triggerJSON(`{"subscriber": {"uri": "http://x/"}, "filters": [{"exact": {"type": "a", "id": "b"}}]}`), "spec/filters/0/exact"},
		{"exact with an empty value", triggerJSON(`{"subscriber": {"uri": "http://x/"}, "filters": [{"exact": {"type": ""}}]}`), "spec/filters/0/exact/type"},
		{"two dialects", triggerJSON(`{"subscriber": {"uri": "http://x/"}, "filters": [{"exact": {"type": "a"}, "cesql": "true"}]}`), "spec/filters/0"},
		{"empty filter", triggerJSON(`{"subscriber": {"uri": "http://x/"}, "filters": [{}]}`), "spec/filters/0"},
		{"unknown dialect", triggerJSON(`{"subscriber": {"uri": "http://x/"}, "filters": [{"regex": {"type": "a"}}]}`), "spec/filters/0"},
		{"empty all", triggerJSON(`{"subscriber": {"uri": "http://x/"}, "filters": [{"all": []}]}`), "spec/filters/0/all"},
		{"bad nested filter", triggerJSON(`{"subscriber": {"uri": "http://x/"}, "filters": [{"not": {"any": [{"cesql": ""}]}}]}`), "spec/filters/0/not/any/0/cesql"},
		{"non-string attribute", triggerJSON(`{"subscriber": {"uri": "http://x/"}, "filter": {"attributes": {"size": 3}}}`), "spec/filter/attributes/size"},
		{"negative retry", triggerJSON(`{"subscriber": {"uri": "http://x/"}, "delivery": {"retry": -1}}`), "spec/delivery/retry"},
		{"fractional retry", triggerJSON(`{"subscriber": {"uri": "http://x/"}, "delivery": {"retry": 1.5}}`), "spec/delivery/retry"},
		{"bad backoffPolicy", triggerJSON(`{"subscriber": {"uri": "http://x/"}, "delivery": {"backoffPolicy": "quadratic"}}`), "spec/delivery/backoffPolicy"},
		{"unknown delivery field", triggerJSON(`{"subscriber": {"uri": "http://x/"}, "delivery": {"format": "json"}}`), "spec/delivery"},
	}
	for _, tc := range tests {
		vs := schemas.Validate("Trigger", tc.doc)
		if len(vs) == 0 {
			t.Errorf("%s: valid, want a violation at %q", tc.name, tc.path)
			continue
		}
		if got := strings.Join(vs[0].Path, "/"); got != tc.path {
			t.Errorf("%s: first violation at %q (%v), want %q", tc.name, got, vs, tc.path)
		}
	}
}

// TestTriggerSchemaDescribesEveryField keeps editors' hover text complete:
// every property of the Trigger schema has a description, directly or on
// the definition it refers to.
func TestTriggerSchemaDescribesEveryField(t *testing.T) {
	t.Parallel()
	raw, ok := schemas.File("Trigger")
	if !ok {
		t.Fatal("no Trigger schema")
	}
	var root map[string]any
	if err := json.Unmarshal(raw, &root); err != nil {
		t.Fatal(err)
	}
	defs, _ := root["definitions"].(map[string]any)
	var missing []string
	var walk func(path string, node map[string]any)
	walk = func(path string, node map[string]any) {
		props, _ := node["properties"].(map[string]any)
		for name, p := range props {
			prop, _ := p.(map[string]any)
			desc, _ := prop["description"].(string)
			if ref, ok := prop["$ref"].(string); ok && desc == "" {
				def, _ := defs[strings.TrimPrefix(ref, "#/definitions/")].(map[string]any)
				desc, _ = def["description"].(string)
			}
			if desc == "" {
				missing = append(missing, path+"."+name)
			}
			walk(path+"."+name, prop)
		}
	}
	walk("", root)
	for name, d := range defs {
		def, _ := d.(map[string]any)
		walk("#"+name, def)
	}
	slices.Sort(missing)
	if len(missing) > 0 {
		t.Errorf("properties without a description: %v", missing)
	}
}
