package triggers

import (
	"encoding/json"
	"reflect"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/weft-dev/weft/schemas"
)

// TestSchemaMatchesTypes fails when schemas/trigger.schema.json and the Go
// types Parse decodes into drift apart: every object the schema closes with
// additionalProperties false must list exactly the JSON fields of its type.
func TestSchemaMatchesTypes(t *testing.T) {
	t.Parallel()
	raw, ok := schemas.File(Kind)
	if !ok {
		t.Fatal("no Trigger schema")
	}
	var s map[string]any
	if err := json.Unmarshal(raw, &s); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		path []string // through the schema, to an object with "properties"
		typ  any
	}{
		{[]string{"properties", "spec"}, spec{}},
		{[]string{"properties", "spec", "properties", "filter"}, legacyFilterSpec{}},
		{[]string{"definitions", "filter"}, filterSpec{}},
		{[]string{"definitions", "destination"}, destinationSpec{}},
		{[]string{"definitions", "destination", "properties", "ref"}, refSpec{}},
		{[]string{"definitions", "delivery"}, deliverySpec{}},
	}
	for _, tc := range tests {
		node := any(s)
		for _, seg := range tc.path {
			m, _ := node.(map[string]any)
			node = m[seg]
		}
		obj, _ := node.(map[string]any)
		if obj == nil {
			t.Errorf("%s: not in the schema", strings.Join(tc.path, "."))
			continue
		}
		if obj["additionalProperties"] != false {
			t.Errorf("%s: additionalProperties is not false", strings.Join(tc.path, "."))
		}
		props, _ := obj["properties"].(map[string]any)
		var inSchema []string
		for k := range props {
			inSchema = append(inSchema, k)
		}
		sort.Strings(inSchema)
		if got := jsonFields(tc.typ); !slices.Equal(got, inSchema) {
			t.Errorf("%s: schema properties %v, Go fields of %T %v", strings.Join(tc.path, "."), inSchema, tc.typ, got)
		}
	}
}

func jsonFields(v any) []string {
	rt := reflect.TypeOf(v)
	var out []string
	for i := range rt.NumField() {
		name, _, _ := strings.Cut(rt.Field(i).Tag.Get("json"), ",")
		if name != "" && name != "-" {
			out = append(out, name)
		}
	}
	sort.Strings(out)
	return out
}
