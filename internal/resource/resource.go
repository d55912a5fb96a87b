package resource

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/goccy/go-yaml"
	"github.com/goccy/go-yaml/ast"
	"github.com/goccy/go-yaml/parser"
)

// Object is one decoded YAML document. Its zero value is not useful; Objects
// come from Decode and LoadPaths and are read-only afterwards, so they are safe
// to share between goroutines.
type Object struct {
	APIVersion string
	Kind       string
	Name       string
	// File is the path the document was read from ("" when it came from an API
	// request without a name); Line is the line of the document's first key.
	File string
	Line int
	// JSON is the document converted to JSON: the form schemas validate and
	// kind decoders unmarshal.
	JSON []byte

	body ast.Node
}

// Key identifies an object within a node: kinds are case-sensitive, names are
// unique per kind.
type Key struct {
	Kind string
	Name string
}

// Key returns the object's identity.
func (o Object) Key() Key { return Key{Kind: o.Kind, Name: o.Name} }

// String renders the key as "Kind/name".
func (k Key) String() string { return k.Kind + "/" + k.Name }

// Position returns the line and column of the value at the JSON pointer path
// (segments such as "spec", "filters", "0"). When the path does not exist it
// returns the position of its deepest existing ancestor, which is where the
// missing field belongs.
func (o Object) Position(path []string) (line, col int) {
	node := o.body
	line, col = o.Line, 1
	if node != nil {
		if tk := node.GetToken(); tk != nil {
			line, col = tk.Position.Line, tk.Position.Column
		}
	}
	for _, seg := range path {
		next := child(node, seg)
		if next == nil {
			return line, col
		}
		node = next
		if tk := node.GetToken(); tk != nil {
			line, col = tk.Position.Line, tk.Position.Column
		}
	}
	return line, col
}

// Detached returns o without its YAML syntax tree. The tree's tokens link
// the whole file the document came from, so an object kept after validation
// would keep all of it (10,000 Triggers in one file kept about 87 MiB more).
// Positions of a detached object are its document's line.
func (o Object) Detached() Object {
	o.body = nil
	return o
}

// FieldError builds a *FieldError for the field at path, with its position.
func (o Object) FieldError(path []string, err error) *FieldError {
	line, col := o.Position(path)
	return &FieldError{File: o.File, Line: line, Column: col, Field: FieldPath(path), Err: err}
}

func child(node ast.Node, seg string) ast.Node {
	switch n := node.(type) {
	case *ast.MappingNode:
		for _, mv := range n.Values {
			if keyString(mv.Key) == seg {
				return valueOrKey(mv)
			}
		}
	case *ast.MappingValueNode:
		if keyString(n.Key) == seg {
			return valueOrKey(n)
		}
	case *ast.SequenceNode:
		i, err := strconv.Atoi(seg)
		if err == nil && i >= 0 && i < len(n.Values) {
			return n.Values[i]
		}
	case *ast.TagNode:
		return child(n.Value, seg)
	case *ast.AnchorNode:
		return child(n.Value, seg)
	}
	return nil
}

// valueOrKey prefers the value's node but falls back to the key when the value
// is empty (a null has no useful token position of its own).
func valueOrKey(mv *ast.MappingValueNode) ast.Node {
	if mv.Value == nil || mv.Value.Type() == ast.NullType {
		return mv.Key
	}
	return mv.Value
}

func keyString(k ast.MapKeyNode) string {
	if s, ok := k.(*ast.StringNode); ok {
		return s.Value
	}
	return strings.Trim(k.String(), `"'`)
}

// FieldPath renders JSON pointer segments as a dotted field path with list
// indices in brackets: ["spec","filters","0","cesql"] → spec.filters[0].cesql.
func FieldPath(path []string) string {
	var b strings.Builder
	for _, seg := range path {
		if _, err := strconv.Atoi(seg); err == nil {
			b.WriteString("[" + seg + "]")
			continue
		}
		if b.Len() > 0 {
			b.WriteByte('.')
		}
		b.WriteString(seg)
	}
	return b.String()
}

// Decode parses one multi-document YAML file. file names the source in errors.
// Empty documents are skipped. Every document must be a mapping with apiVersion,
// kind and metadata.name; any other shape is a *FieldError.
func Decode(file string, data []byte) ([]Object, error) {
	f, err := parser.ParseBytes(data, 0)
	if err != nil {
		return nil, syntaxError(file, err)
	}
	var objs []Object
	for _, doc := range f.Docs {
		if doc.Body == nil || doc.Body.Type() == ast.NullType {
			continue
		}
		obj, err := decodeDoc(file, doc.Body)
		if err != nil {
			return nil, err
		}
		objs = append(objs, obj)
	}
	return objs, nil
}

func decodeDoc(file string, body ast.Node) (Object, error) {
	obj := Object{File: file, body: body}
	if tk := body.GetToken(); tk != nil {
		obj.Line = tk.Position.Line
	}
	var v any
	if err := yaml.NodeToValue(body, &v); err != nil {
		return obj, syntaxError(file, err)
	}
	m, ok := v.(map[string]any)
	if !ok {
		return obj, &FieldError{File: file, Line: obj.Line, Column: 1, Err: errors.New("a document must be a mapping with apiVersion, kind and metadata")}
	}
	raw, err := json.Marshal(m)
	if err != nil {
		return obj, &FieldError{File: file, Line: obj.Line, Column: 1, Err: fmt.Errorf("convert to JSON: %w", err)}
	}
	obj.JSON = raw
	var env struct {
		APIVersion any `json:"apiVersion"`
		Kind       any `json:"kind"`
		Metadata   any `json:"metadata"`
	}
	_ = json.Unmarshal(raw, &env) // raw came from json.Marshal of a map: always an object
	for _, f := range []struct {
		name string
		val  any
		dst  *string
	}{{"apiVersion", env.APIVersion, &obj.APIVersion}, {"kind", env.Kind, &obj.Kind}} {
		s, ok := f.val.(string)
		if !ok || s == "" {
			return obj, obj.FieldError([]string{f.name}, errors.New("required string is missing or empty"))
		}
		*f.dst = s
	}
	meta, ok := env.Metadata.(map[string]any)
	if !ok {
		return obj, obj.FieldError([]string{"metadata"}, errors.New("required mapping is missing"))
	}
	name, ok := meta["name"].(string)
	if !ok || name == "" {
		return obj, obj.FieldError([]string{"metadata", "name"}, errors.New("required string is missing or empty"))
	}
	if err := ValidateName(name); err != nil {
		return obj, obj.FieldError([]string{"metadata", "name"}, err)
	}
	obj.Name = name
	return obj, nil
}

// ValidateName checks a resource name: a DNS-1123 label (lower-case letters,
// digits and '-', starting and ending alphanumeric, at most 63 characters), as
// Kubernetes requires, because names become NATS subjects and URL segments.
func ValidateName(name string) error {
	if len(name) == 0 || len(name) > 63 {
		return fmt.Errorf("name %q must be 1 to 63 characters", name)
	}
	for i, r := range name {
		alnum := r >= 'a' && r <= 'z' || r >= '0' && r <= '9'
		if !alnum && (r != '-' || i == 0 || i == len(name)-1) {
			return fmt.Errorf("name %q must consist of lower-case letters, digits and '-', and start and end with a letter or digit", name)
		}
	}
	return nil
}

func syntaxError(file string, err error) error {
	fe := &FieldError{File: file, Err: err}
	var se *yaml.SyntaxError
	var te *yaml.TypeError
	var ye yaml.Error
	switch {
	case errors.As(err, &se) && se.Token != nil:
		fe.Line, fe.Column, fe.Err = se.Token.Position.Line, se.Token.Position.Column, errors.New(se.Message)
	case errors.As(err, &te) && te.Token != nil:
		fe.Line, fe.Column = te.Token.Position.Line, te.Token.Position.Column
	case errors.As(err, &ye) && ye.GetToken() != nil:
		fe.Line, fe.Column, fe.Err = ye.GetToken().Position.Line, ye.GetToken().Position.Column, errors.New(ye.GetMessage())
	}
	return fe
}

// LoadPaths reads files and folders (recursively, *.yaml and *.yml, in lexical
// order) and decodes every document. It stops at the first error.
func LoadPaths(paths ...string) ([]Object, error) {
	files, err := ExpandPaths(paths...)
	if err != nil {
		return nil, err
	}
	var objs []Object
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("read manifest: %w", err)
		}
		got, err := Decode(f, data)
		if err != nil {
			return nil, err
		}
		objs = append(objs, got...)
	}
	return objs, nil
}

// ExpandPaths lists the manifest files named by paths: files as given, folders
// walked recursively for *.yaml and *.yml.
func ExpandPaths(paths ...string) ([]string, error) {
	var files []string
	for _, p := range paths {
		st, err := os.Stat(p)
		if err != nil {
			return nil, fmt.Errorf("manifest path: %w", err)
		}
		if !st.IsDir() {
			files = append(files, p)
			continue
		}
		var found []string
		err = filepath.WalkDir(p, func(path string, d os.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if !d.IsDir() && IsManifest(path) {
				found = append(found, path)
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("walk %s: %w", p, err)
		}
		sort.Strings(found)
		files = append(files, found...)
	}
	return files, nil
}

// IsManifest reports whether path has a manifest extension (.yaml or .yml).
func IsManifest(path string) bool {
	ext := filepath.Ext(path)
	return ext == ".yaml" || ext == ".yml"
}
