// Package schematest helps tests keep a kind's JSON Schema and its Go
// decoder in step. Only tests import it.
package schematest

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	"github.com/weft-dev/weft/schemas"
)

// CheckSpec fails t for every property the schema of kind allows in spec
// that spec (the decoder's type) lacks, and for every decoded field the
// schema does not allow, walking nested objects and arrays of objects.
func CheckSpec(t testing.TB, kind string, spec reflect.Type) {
	t.Helper()
	raw, ok := schemas.File(kind)
	if !ok {
		t.Fatalf("no %s schema", kind)
	}
	type node struct {
		Properties map[string]node `json:"properties"`
		Items      *node           `json:"items"`
	}
	var root node
	if err := json.Unmarshal(raw, &root); err != nil {
		t.Fatal(err)
	}
	var check func(path string, props map[string]node, typ reflect.Type)
	check = func(path string, props map[string]node, typ reflect.Type) {
		tags := map[string]reflect.Type{}
		for f := range typ.Fields() {
			tags[strings.Split(f.Tag.Get("json"), ",")[0]] = f.Type
		}
		for name, sub := range props {
			ft, ok := tags[name]
			if !ok {
				t.Errorf("schema has %s.%s, the decoder does not", path, name)
				continue
			}
			for ft.Kind() == reflect.Pointer || ft.Kind() == reflect.Slice {
				ft = ft.Elem()
			}
			if sub.Items != nil && sub.Items.Properties != nil {
				sub = *sub.Items
			}
			if ft.Kind() == reflect.Struct {
				check(path+"."+name, sub.Properties, ft)
			}
		}
		for name := range tags {
			if _, ok := props[name]; !ok {
				t.Errorf("the decoder has %s.%s, the schema does not", path, name)
			}
		}
	}
	check("spec", root.Properties["spec"].Properties, spec)
}
