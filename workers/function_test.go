package workers

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/weft-dev/weft/internal/resource"
	"github.com/weft-dev/weft/schemas/schematest"
)

// parseYAML decodes one manifest as if read from dir/fn.yaml (file "" for
// one without a name) and parses it.
func parseYAML(t *testing.T, file, doc string) (*Function, error) {
	t.Helper()
	objs, err := resource.Decode(file, []byte(doc))
	if err != nil {
		t.Fatalf("decode: %v", err)
	}
	if len(objs) != 1 {
		t.Fatalf("decoded %d documents, want 1", len(objs))
	}
	return Parse(objs[0])
}

// fieldErrors flattens a joined error into its *resource.FieldErrors.
func fieldErrors(err error) []*resource.FieldError {
	var out []*resource.FieldError
	var walk func(error)
	walk = func(err error) {
		var j interface{ Unwrap() []error }
		if errors.As(err, &j) {
			for _, e := range j.Unwrap() {
				walk(e)
			}
			return
		}
		var fe *resource.FieldError
		if errors.As(err, &fe) {
			out = append(out, fe)
		}
	}
	walk(err)
	return out
}

const header = "apiVersion: weft.dev/v1\nkind: Function\nmetadata:\n  name: thumbnailer\n"

func TestParse(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "fn.yaml")
	cwd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	cases := map[string]struct {
		file string
		spec string
		want Function
	}{
		"full": {file, `
spec:
  command: ["python3", "thumb.py"]
  env: [{name: LOG_LEVEL, value: debug}, {name: EMPTY}]
  concurrency: 10
  timeout: 30s
  scale: {min: 1, max: 20, target: 5}
  readiness: {path: /healthz, timeout: 2m}
`, Function{
			Name: "thumbnailer", Command: []string{"python3", "thumb.py"},
			Env: []EnvVar{{"LOG_LEVEL", "debug"}, {"EMPTY", ""}}, Dir: dir, Concurrency: 10, Timeout: 30 * time.Second,
			Scale: Scale{Min: 1, Max: 20, Target: 5}, Readiness: Readiness{Path: "/healthz", Timeout: 2 * time.Minute},
		}},
		"defaults": {file, "spec:\n  command: [./worker]\n", Function{
			Name: "thumbnailer", Command: []string{"./worker"}, Dir: dir, Scale: Scale{Target: DefaultTarget},
		}},
		"target follows concurrency": {file, "spec:\n  command: [w]\n  concurrency: 4\n", Function{
			Name: "thumbnailer", Command: []string{"w"}, Dir: dir, Concurrency: 4, Scale: Scale{Target: 4},
		}},
		"relative workingDir": {file, "spec:\n  command: [w]\n  workingDir: sub/dir\n", Function{
			Name: "thumbnailer", Command: []string{"w"}, Dir: filepath.Join(dir, "sub", "dir"), Scale: Scale{Target: DefaultTarget},
		}},
		"absolute workingDir": {file, "spec:\n  command: [w]\n  workingDir: /srv/fn\n", Function{
			Name: "thumbnailer", Command: []string{"w"}, Dir: "/srv/fn", Scale: Scale{Target: DefaultTarget},
		}},
		"no file": {"", "spec:\n  command: [w]\n", Function{
			Name: "thumbnailer", Command: []string{"w"}, Dir: cwd, Scale: Scale{Target: DefaultTarget},
		}},
		"no file, relative workingDir": {"", "spec:\n  command: [w]\n  workingDir: x\n", Function{
			Name: "thumbnailer", Command: []string{"w"}, Dir: filepath.Join(cwd, "x"), Scale: Scale{Target: DefaultTarget},
		}},
		"limits and a uid without an account": {file, "spec:\n  command: [w]\n  limits: {memory: 256Mi, openFiles: 1024}\n  user: \"4000123\"\n", Function{
			Name: "thumbnailer", Command: []string{"w"}, Dir: dir, Scale: Scale{Target: DefaultTarget},
			Limits: Limits{Memory: 256 << 20, OpenFiles: 1024}, User: &User{Name: "4000123", UID: 4000123, GID: 4000123, Home: "/"},
		}},
		"memory in bytes, uid and gid": {file, "spec:\n  command: [w]\n  limits: {memory: 268435456}\n  user: \"4000123:4000124\"\n", Function{
			Name: "thumbnailer", Command: []string{"w"}, Dir: dir, Scale: Scale{Target: DefaultTarget},
			Limits: Limits{Memory: 256 << 20}, User: &User{Name: "4000123:4000124", UID: 4000123, GID: 4000124, Home: "/"},
		}},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			fn, err := parseYAML(t, c.file, header+c.spec)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(*fn, c.want) {
				t.Errorf("Parse =\n%+v\nwant\n%+v", *fn, c.want)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	cases := map[string]struct {
		doc    string
		fields []string // every field named by the errors, sorted
	}{
		"wrong apiVersion":   {"apiVersion: weft.dev/v2\nkind: Function\nmetadata: {name: f}\nspec: {command: [w]}\n", []string{"apiVersion"}},
		"wrong kind":         {"apiVersion: weft.dev/v1\nkind: Trigger\nmetadata: {name: f}\nspec: {command: [w]}\n", []string{"kind"}},
		"no spec":            {header, []string{""}},
		"no command":         {header + "spec: {concurrency: 1}\n", []string{"spec"}},
		"empty command":      {header + "spec: {command: []}\n", []string{"spec.command"}},
		"empty program":      {header + "spec: {command: [\"\", x]}\n", []string{"spec.command[0]"}},
		"command not list":   {header + "spec: {command: python3 w.py}\n", []string{"spec.command"}},
		"unknown field":      {header + "spec: {command: [w], replicas: 3}\n", []string{"spec"}},
		"bad env name":       {header + "spec: {command: [w], env: [{name: 1X}]}\n", []string{"spec.env[0].name"}},
		"reserved env":       {header + "spec: {command: [w], env: [{name: PORT, value: '1'}, {name: WEFT_X}]}\n", []string{"spec.env[0].name", "spec.env[1].name"}},
		"duplicate env":      {header + "spec: {command: [w], env: [{name: A}, {name: A}]}\n", []string{"spec.env[1].name"}},
		"negative conc":      {header + "spec: {command: [w], concurrency: -1}\n", []string{"spec.concurrency"}},
		"bad timeout":        {header + "spec: {command: [w], timeout: 30 seconds}\n", []string{"spec.timeout"}},
		"numeric timeout":    {header + "spec: {command: [w], timeout: 30}\n", []string{"spec.timeout"}},
		"min over max":       {header + "spec: {command: [w], scale: {min: 3, max: 2}}\n", []string{"spec.scale.min"}},
		"zero max":           {header + "spec: {command: [w], scale: {max: 0}}\n", []string{"spec.scale.max"}},
		"target over limit":  {header + "spec: {command: [w], concurrency: 2, scale: {target: 5}}\n", []string{"spec.scale.target"}},
		"relative probe":     {header + "spec: {command: [w], readiness: {path: healthz}}\n", []string{"spec.readiness.path"}},
		"several":            {header + "spec: {command: [w], timeout: soon, concurrency: -2}\n", []string{"spec.concurrency", "spec.timeout"}},
		"decimal memory":     {header + "spec: {command: [w], limits: {memory: 256M}}\n", []string{"spec.limits.memory"}},
		"memory unit only":   {header + "spec: {command: [w], limits: {memory: Mi}}\n", []string{"spec.limits.memory"}},
		"memory below 1Mi":   {header + "spec: {command: [w], limits: {memory: 512Ki}}\n", []string{"spec.limits.memory"}},
		"memory bytes < 1Mi": {header + "spec: {command: [w], limits: {memory: 4096}}\n", []string{"spec.limits.memory"}},
		"memory overflow":    {header + "spec: {command: [w], limits: {memory: 99999999999Gi}}\n", []string{"spec.limits.memory"}},
		"few open files":     {header + "spec: {command: [w], limits: {openFiles: 8}}\n", []string{"spec.limits.openFiles"}},
		"unknown limit":      {header + "spec: {command: [w], limits: {cpu: 2}}\n", []string{"spec.limits"}},
		"unknown user":       {header + "spec: {command: [w], user: no-such-user-weft}\n", []string{"spec.user"}},
		"unknown group":      {header + "spec: {command: [w], user: \"nobody:no-such-group-weft\"}\n", []string{"spec.user"}},
		"user syntax":        {header + "spec: {command: [w], user: \"a:b:c\"}\n", []string{"spec.user"}},
		"uid -1":             {header + "spec: {command: [w], user: \"4294967295\"}\n", []string{"spec.user"}},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			fn, err := parseYAML(t, "fn.yaml", c.doc)
			if err == nil {
				t.Fatalf("Parse accepted it: %+v", fn)
			}
			fes := fieldErrors(err)
			var fields []string
			for _, fe := range fes {
				fields = append(fields, fe.Field)
				if fe.File != "fn.yaml" || fe.Line == 0 {
					t.Errorf("error without position: %v", fe)
				}
			}
			sort.Strings(fields)
			if !slices.Equal(fields, c.fields) {
				t.Errorf("errors name %q, want %q (%v)", fields, c.fields, err)
			}
		})
	}
}

func TestParseErrorPosition(t *testing.T) {
	doc := header + "spec:\n  command: [w]\n  timeout: 30 seconds\n"
	_, err := parseYAML(t, "fn.yaml", doc)
	fes := fieldErrors(err)
	if len(fes) != 1 {
		t.Fatalf("got %v, want one field error", err)
	}
	if fe := fes[0]; fe.Line != 7 || !strings.Contains(fe.Error(), "fn.yaml:7:") || !strings.Contains(fe.Error(), "Go duration") {
		t.Errorf("error %q at line %d, want line 7 with a duration hint", fe.Error(), fe.Line)
	}
}

func TestFingerprint(t *testing.T) {
	a := goFn("f", "A=1")
	if !a.Equal(goFn("f", "A=1")) || a.Fingerprint() != goFn("f", "A=1").Fingerprint() {
		t.Error("equal functions differ")
	}
	b := goFn("f", "A=2")
	if a.Equal(b) || a.sameProcesses(b) {
		t.Error("a changed env is not a change")
	}
	c := goFn("f", "A=1")
	c.Scale.Min = 3
	if a.Equal(c) || !a.sameProcesses(c) {
		t.Error("a scale-only change must differ but keep the processes")
	}
	var nilFn *Function
	if a.Equal(nil) || !nilFn.Equal(nil) {
		t.Error("nil handling")
	}
}

// TestSchemaMatchesSpec keeps function.schema.json and the Go decoder in
// step: every property the schema allows in spec is decoded, and every
// decoded field is in the schema.
func TestSchemaMatchesSpec(t *testing.T) {
	schematest.CheckSpec(t, Kind, reflect.TypeFor[specJSON]())
}
