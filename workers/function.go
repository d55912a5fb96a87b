package workers

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/weft-dev/weft/internal/resource"
	"github.com/weft-dev/weft/schemas"
)

// APIVersion and Kind identify a Function manifest.
const (
	APIVersion = "weft.dev/v1"
	Kind       = "Function"
)

// DefaultTarget is the autoscaler's in-flight target per instance when the
// manifest gives none (Knative's container-concurrency-target-default).
const DefaultTarget = 100

// Function is a parsed, validated Function resource: how to run the worker
// processes of one function. It is immutable once parsed and safe to share;
// the Pool keeps the pointer it is given and never modifies it.
type Function struct {
	// Name is metadata.name, a DNS-1123 label.
	Name string
	// Command is the program and its arguments, run without a shell.
	Command []string
	// Env holds the spec's variables in manifest order.
	Env []EnvVar
	// Dir is the absolute working directory of the processes.
	Dir string
	// Concurrency is the most in-flight requests per instance; 0 = unlimited.
	Concurrency int
	// Timeout bounds one request to an instance; 0 = only the caller's
	// context bounds it.
	Timeout time.Duration
	// Scale bounds the number of instances.
	Scale Scale
	// Readiness says when a new instance may receive events.
	Readiness Readiness
	// Limits bounds the resources of each process; the zero value sets none.
	Limits Limits
	// User, when not nil, is the account the processes run as (weft must
	// run as root to switch to another one); nil keeps weft's own.
	User *User
}

// Limits bounds the resources of each process of a Function. limits.go
// enforces them when a process starts.
type Limits struct {
	// Memory is the most memory one process may use, in bytes; 0 = no limit.
	// It is the memory.max of a cgroup v2 group per process where weft can
	// create one, and otherwise RLIMIT_AS, which counts virtual address space
	// (a Go or Java worker reserves far more than it uses).
	Memory int64
	// OpenFiles is each process's RLIMIT_NOFILE, soft and hard; 0 leaves the
	// limit weft's processes get by default.
	OpenFiles int
}

// User is the account a Function's processes run as, resolved when the
// manifest is parsed.
type User struct {
	// Name is the manifest's value: "nobody", "1000" or "app:staff".
	Name string
	// UID and GID are the process's user and primary group.
	UID, GID uint32
	// Groups are the supplementary groups: the account's, from the group
	// database; none for a numeric uid without an account.
	Groups []uint32
	// Home is the account's home directory, the worker's HOME; "/" for a
	// numeric uid without an account.
	Home string
}

// EnvVar is one environment variable of a Function's spec.
type EnvVar struct {
	Name  string
	Value string
}

// Scale holds a Function's instance bounds and autoscaler settings; zero
// durations and rates mean AutoscaleConfig's defaults (Knative's KPA).
type Scale struct {
	// Min is the fewest instances kept running; 0 allows scale to zero.
	Min int
	// Max is the most instances; 0 = no bound.
	Max int
	// Target is the in-flight requests per instance the autoscaler aims for;
	// Parse sets it (DefaultTarget, or Concurrency when smaller).
	Target int
	// StableWindow is the autoscaler's averaging window; default 60s.
	StableWindow time.Duration
	// PanicWindowPercent sizes the panic window as a share of StableWindow;
	// default 10.
	PanicWindowPercent float64
	// PanicThreshold is the multiple of current capacity that panic-window
	// demand must reach to enter panic mode; default 2.
	PanicThreshold float64
	// ScaleToZeroGrace is how long an idle function with Min 0 keeps its last
	// instance; default 30s.
	ScaleToZeroGrace time.Duration
}

// Autoscale returns the autoscaler configuration of f.
func (f *Function) Autoscale() AutoscaleConfig {
	return AutoscaleConfig{
		Min: f.Scale.Min, Max: f.Scale.Max, Target: float64(f.Scale.Target),
		StableWindow: f.Scale.StableWindow, PanicWindowPercent: f.Scale.PanicWindowPercent,
		PanicThreshold: f.Scale.PanicThreshold, ScaleToZeroGrace: f.Scale.ScaleToZeroGrace,
	}.WithDefaults()
}

// Readiness says when a new instance is ready.
type Readiness struct {
	// Path, when set, is probed with HTTP GET expecting a 2xx answer;
	// empty means a TCP connect to the instance's port.
	Path string
	// Timeout bounds how long a new instance may take to become ready;
	// 0 means the pool's Config.ReadyTimeout.
	Timeout time.Duration
}

// specJSON mirrors the schema's spec object; TestSchemaMatchesSpec keeps
// the two in step.
type specJSON struct {
	Command     []string   `json:"command"`
	Env         []envJSON  `json:"env"`
	Concurrency int        `json:"concurrency"`
	Timeout     string     `json:"timeout"`
	WorkingDir  string     `json:"workingDir"`
	Scale       scaleJSON  `json:"scale"`
	Readiness   readyJSON  `json:"readiness"`
	Limits      limitsJSON `json:"limits"`
	User        string     `json:"user"`
}

type limitsJSON struct {
	Memory    quantityJSON `json:"memory"`
	OpenFiles int          `json:"openFiles"`
}

type envJSON struct {
	Name  string `json:"name"`
	Value string `json:"value"`
}

type scaleJSON struct {
	Min                int     `json:"min"`
	Max                int     `json:"max"`
	Target             *int    `json:"target"`
	StableWindow       string  `json:"stableWindow"`
	PanicWindowPercent float64 `json:"panicWindowPercent"`
	PanicThreshold     float64 `json:"panicThreshold"`
	ScaleToZeroGrace   string  `json:"scaleToZeroGrace"`
}

type readyJSON struct {
	Path    string `json:"path"`
	Timeout string `json:"timeout"`
}

// Parse turns a decoded manifest into a Function. Every problem is a
// *resource.FieldError naming the file, line and field; several problems are
// joined with errors.Join. Relative paths resolve from the folder of
// obj.File, or from the current directory when obj.File is empty.
func Parse(obj resource.Object) (*Function, error) {
	if obj.APIVersion != APIVersion {
		return nil, obj.FieldError([]string{"apiVersion"}, fmt.Errorf("%q is not %s", obj.APIVersion, APIVersion))
	}
	if obj.Kind != Kind {
		return nil, obj.FieldError([]string{"kind"}, fmt.Errorf("%q is not %s", obj.Kind, Kind))
	}
	if vs := schemas.Validate(Kind, obj.JSON); len(vs) > 0 {
		errs := make([]error, 0, len(vs))
		for _, v := range vs {
			errs = append(errs, obj.FieldError(v.Path, errors.New(friendly(obj.JSON, v))))
		}
		return nil, errors.Join(errs...)
	}
	var doc struct {
		Spec specJSON `json:"spec"`
	}
	if err := json.Unmarshal(obj.JSON, &doc); err != nil {
		return nil, obj.FieldError([]string{"spec"}, err) // the schema let through a shape Go cannot decode
	}
	s := doc.Spec
	fn := &Function{
		Name:        obj.Name,
		Command:     s.Command,
		Concurrency: s.Concurrency,
		Scale: Scale{Min: s.Scale.Min, Max: s.Scale.Max,
			PanicWindowPercent: s.Scale.PanicWindowPercent, PanicThreshold: s.Scale.PanicThreshold},
		Readiness: Readiness{Path: s.Readiness.Path},
	}
	var errs []error
	field := func(err error, path ...string) {
		errs = append(errs, obj.FieldError(path, err))
	}

	seen := map[string]bool{}
	for i, e := range s.Env {
		switch {
		case reservedEnv(e.Name):
			field(fmt.Errorf("%s is set by weft and cannot be overridden", e.Name), "spec", "env", strconv.Itoa(i), "name")
		case seen[e.Name]:
			field(fmt.Errorf("%s is set twice", e.Name), "spec", "env", strconv.Itoa(i), "name")
		}
		seen[e.Name] = true
		fn.Env = append(fn.Env, EnvVar(e))
	}
	var err error
	if fn.Timeout, err = parseDuration(s.Timeout); err != nil {
		field(err, "spec", "timeout")
	}
	if fn.Readiness.Timeout, err = parseDuration(s.Readiness.Timeout); err != nil {
		field(err, "spec", "readiness", "timeout")
	}
	if fn.Scale.StableWindow, err = parseDuration(s.Scale.StableWindow); err != nil {
		field(err, "spec", "scale", "stableWindow")
	}
	if fn.Scale.ScaleToZeroGrace, err = parseDuration(s.Scale.ScaleToZeroGrace); err != nil {
		field(err, "spec", "scale", "scaleToZeroGrace")
	}
	if fn.Limits.Memory, err = parseQuantity(string(s.Limits.Memory)); err != nil {
		field(err, "spec", "limits", "memory")
	}
	fn.Limits.OpenFiles = s.Limits.OpenFiles
	if s.User != "" {
		if fn.User, err = lookupUser(s.User); err != nil {
			field(err, "spec", "user")
		}
	}
	if fn.Scale.Max > 0 && fn.Scale.Min > fn.Scale.Max {
		field(fmt.Errorf("min %d is greater than max %d", fn.Scale.Min, fn.Scale.Max), "spec", "scale", "min")
	}
	switch {
	case s.Scale.Target == nil:
		fn.Scale.Target = DefaultTarget
		if fn.Concurrency > 0 && fn.Concurrency < DefaultTarget {
			fn.Scale.Target = fn.Concurrency
		}
	case fn.Concurrency > 0 && *s.Scale.Target > fn.Concurrency:
		field(fmt.Errorf("target %d exceeds concurrency %d: an instance never holds more", *s.Scale.Target, fn.Concurrency), "spec", "scale", "target")
	default:
		fn.Scale.Target = *s.Scale.Target
	}

	if len(errs) == 0 {
		if err := fn.Autoscale().Validate(); err != nil {
			field(err, "spec", "scale")
		}
	}

	base := "."
	if obj.File != "" {
		base = filepath.Dir(obj.File)
	}
	dir := base
	if s.WorkingDir != "" {
		dir = s.WorkingDir
		if !filepath.IsAbs(dir) {
			dir = filepath.Join(base, dir)
		}
	}
	if fn.Dir, err = filepath.Abs(dir); err != nil {
		field(fmt.Errorf("resolve working directory: %w", err), "spec", "workingDir")
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return fn, nil
}

// hints replaces the schema validator's message for fields whose rule is a
// pattern: a regular expression tells a user less than an example does.
// Paths use "*" for list indices.
var hints = map[string]string{
	"spec/timeout":                "a Go duration such as 30s, 1m30s or 500ms",
	"spec/readiness/timeout":      "a Go duration such as 30s, 1m30s or 500ms",
	"spec/scale/stableWindow":     "a Go duration such as 60s or 2m",
	"spec/scale/scaleToZeroGrace": "a Go duration such as 30s",
	"spec/readiness/path":         "an absolute HTTP path such as /healthz",
	"spec/env/*/name":             "an environment variable name: letters, digits and '_', not starting with a digit",
	"spec/limits/memory":          "a quantity of bytes such as 256Mi, 2Gi or 1048576 (suffixes Ki, Mi, Gi, Ti)",
	"spec/user":                   `a user name or uid, optionally with a group: "nobody", "1000" or "app:staff"`,
}

// friendly returns v's message, or for a hinted field "want HINT, got VALUE".
func friendly(doc []byte, v schemas.Violation) string {
	key := make([]string, len(v.Path))
	for i, seg := range v.Path {
		key[i] = seg
		if _, err := strconv.Atoi(seg); err == nil {
			key[i] = "*"
		}
	}
	hint, ok := hints[strings.Join(key, "/")]
	if !ok {
		return v.Message
	}
	var val any
	if err := json.Unmarshal(doc, &val); err != nil {
		return v.Message
	}
	for _, seg := range v.Path {
		switch x := val.(type) {
		case map[string]any:
			val = x[seg]
		case []any:
			i, _ := strconv.Atoi(seg)
			if i < 0 || i >= len(x) {
				return v.Message
			}
			val = x[i]
		default:
			return v.Message
		}
	}
	got, _ := json.Marshal(val)
	return fmt.Sprintf("want %s, got %s", hint, got)
}

// parseDuration accepts an empty string as zero; the schema already checked
// the syntax, so an error here means the schema and Go disagree.
func parseDuration(s string) (time.Duration, error) {
	if s == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, err
	}
	if d < 0 {
		return 0, fmt.Errorf("duration %s is negative", s)
	}
	return d, nil
}

// reservedEnv reports whether weft owns the variable name, as Knative
// reserves PORT and K_*.
func reservedEnv(name string) bool {
	return name == "PORT" || strings.HasPrefix(name, "WEFT_")
}

// Fingerprint returns a digest of everything in f. Two Functions with the same
// fingerprint run identically; the pool treats a re-applied Function with an
// unchanged fingerprint as a no-op.
func (f *Function) Fingerprint() string {
	data, err := json.Marshal(f)
	if err != nil {
		panic(err) // a struct of strings, ints and slices always marshals
	}
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])
}

// Equal reports whether f and g describe the same function in every field.
// Two nil Functions are equal.
func (f *Function) Equal(g *Function) bool {
	if f == nil || g == nil {
		return f == g
	}
	return f.Fingerprint() == g.Fingerprint()
}

// sameProcesses reports whether f and g differ at most in Scale: then the
// running instances can stay and only their number changes.
func (f *Function) sameProcesses(g *Function) bool {
	a, b := *f, *g
	a.Scale, b.Scale = Scale{}, Scale{}
	return a.Equal(&b)
}
