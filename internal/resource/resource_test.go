package resource

import "testing"

// TestDetachedKeepsTheDocument: a detached object keeps everything but its
// syntax tree; positions fall back to its document's line.
func TestDetachedKeepsTheDocument(t *testing.T) {
	objs, err := Decode("t.yaml", []byte(`apiVersion: v1
kind: Thing
metadata: {name: a}
---
apiVersion: v1
kind: Thing
metadata:
  name: b
spec:
  deep:
    field: 1
`))
	if err != nil {
		t.Fatal(err)
	}
	o := objs[1]
	path := []string{"spec", "deep", "field"}
	if line, col := o.Position(path); line != 11 || col != 12 {
		t.Fatalf("Position(%v) = %d:%d, want 11:12", path, line, col)
	}
	d := o.Detached()
	if line, col := d.Position(path); line != o.Line || col != 1 {
		t.Errorf("detached Position(%v) = %d:%d, want the document's line %d:1", path, line, col, o.Line)
	}
	if d.Key() != o.Key() || string(d.JSON) != string(o.JSON) || d.File != o.File || d.Line != o.Line {
		t.Errorf("detached %+v differs from %+v beyond its syntax tree", d, o)
	}
	if o.body == nil {
		t.Error("Detached changed the object it was called on")
	}
}
