package workers

import (
	"errors"
	"testing"

	"github.com/weft-dev/weft/internal/resource"
)

// FuzzParse: any manifest either parses into a Function that satisfies the
// pool's invariants or fails with *resource.FieldError values; it never
// panics.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"apiVersion: weft.dev/v1\nkind: Function\nmetadata: {name: f}\nspec:\n  command: [python3, w.py]\n",
		"apiVersion: weft.dev/v1\nkind: Function\nmetadata: {name: f}\nspec:\n  command: [w]\n  concurrency: 4\n  scale: {min: 0, max: 3, target: 2, stableWindow: 6s, panicThreshold: 3}\n",
		"apiVersion: weft.dev/v1\nkind: Function\nmetadata: {name: f}\nspec:\n  command: [w]\n  limits: {memory: 256Mi, openFiles: 64}\n  user: \"65534\"\n",
		"apiVersion: weft.dev/v1\nkind: Function\nmetadata: {name: f}\nspec: {command: [], timeout: soon}\n",
		"apiVersion: weft.dev/v1\nkind: Function\nmetadata: {name: f}\nspec:\n  command: [w]\n  env: [{name: PORT, value: '1'}]\n",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, doc string) {
		objs, err := resource.Decode("f.yaml", []byte(doc))
		if err != nil {
			return
		}
		for _, o := range objs {
			fn, err := Parse(o)
			if err != nil {
				for _, e := range joined(err) {
					var fe *resource.FieldError
					if !errors.As(e, &fe) {
						t.Fatalf("Parse error %T %v is not a FieldError", e, e)
					}
				}
				continue
			}
			if len(fn.Command) == 0 || fn.Scale.Target < 1 || (fn.Scale.Max > 0 && fn.Scale.Min > fn.Scale.Max) {
				t.Fatalf("Parse accepted an unusable function: %+v", fn)
			}
			if err := fn.Autoscale().Validate(); err != nil {
				t.Fatalf("Parse accepted an invalid autoscale config: %v", err)
			}
		}
	})
}

func joined(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}
