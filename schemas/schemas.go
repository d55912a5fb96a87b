// Package schemas holds the JSON Schemas (draft-07) of weft's YAML kinds and
// validates decoded documents against them. Editors use the same files through
// "# yaml-language-server: $schema=…".
//
// It is a leaf package: it imports only the standard library and the schema
// validator, never another weft package.
package schemas

import (
	"bytes"
	"embed"
	"fmt"
	"sort"
	"strings"
	"sync"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"golang.org/x/text/language"
	"golang.org/x/text/message"
)

//go:embed *.schema.json
var files embed.FS

// Violation is one way a document breaks its schema. Path holds the JSON
// pointer segments of the offending value ("spec", "filters", "0").
type Violation struct {
	Path    []string
	Message string
}

// Kinds maps each kind to its schema file.
var Kinds = map[string]string{
	"Trigger":  "trigger.schema.json",
	"Function": "function.schema.json",
	"Service":  "service.schema.json",
}

var (
	compileOnce sync.Once
	compiled    map[string]*jsonschema.Schema
	compileErr  error
)

func compile() (map[string]*jsonschema.Schema, error) {
	compileOnce.Do(func() {
		c := jsonschema.NewCompiler()
		c.DefaultDraft(jsonschema.Draft7)
		out := map[string]*jsonschema.Schema{}
		for kind, name := range Kinds {
			data, err := files.ReadFile(name)
			if err != nil {
				compileErr = fmt.Errorf("schema %s: %w", name, err)
				return
			}
			doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(data))
			if err != nil {
				compileErr = fmt.Errorf("schema %s: %w", name, err)
				return
			}
			if err := c.AddResource(name, doc); err != nil {
				compileErr = fmt.Errorf("schema %s: %w", name, err)
				return
			}
			s, err := c.Compile(name)
			if err != nil {
				compileErr = fmt.Errorf("schema %s: %w", name, err)
				return
			}
			out[kind] = s
		}
		compiled = out
	})
	return compiled, compileErr
}

// Validate checks the JSON document doc against the schema of kind. It returns
// nil when the document is valid, and the violations sorted by path otherwise.
// An unknown kind or an unparsable document is reported as one violation at
// the root.
func Validate(kind string, doc []byte) []Violation {
	all, err := compile()
	if err != nil {
		panic(err) // the embedded schemas are part of the binary; a test compiles them
	}
	s, ok := all[kind]
	if !ok {
		return []Violation{{Path: []string{"kind"}, Message: fmt.Sprintf("unknown kind %q", kind)}}
	}
	inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(doc))
	if err != nil {
		return []Violation{{Message: fmt.Sprintf("not JSON: %v", err)}}
	}
	err = s.Validate(inst)
	if err == nil {
		return nil
	}
	ve, ok := err.(*jsonschema.ValidationError)
	if !ok {
		return []Violation{{Message: err.Error()}}
	}
	p := message.NewPrinter(language.English)
	var out []Violation
	var walk func(e *jsonschema.ValidationError)
	walk = func(e *jsonschema.ValidationError) {
		if len(e.Causes) == 0 {
			out = append(out, Violation{Path: e.InstanceLocation, Message: e.ErrorKind.LocalizedString(p)})
			return
		}
		for _, c := range e.Causes {
			walk(c)
		}
	}
	walk(ve)
	sort.SliceStable(out, func(i, j int) bool {
		return strings.Join(out[i].Path, "/") < strings.Join(out[j].Path, "/")
	})
	return out
}

// File returns the raw schema file for kind, for serving to editors.
func File(kind string) ([]byte, bool) {
	name, ok := Kinds[kind]
	if !ok {
		return nil, false
	}
	data, err := files.ReadFile(name)
	return data, err == nil
}
