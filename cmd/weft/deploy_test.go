package main

import (
	"bufio"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/spf13/pflag"

	"github.com/weft-dev/weft/internal/resource"
	"github.com/weft-dev/weft/triggers"
	"github.com/weft-dev/weft/workers"
)

// The deploy/ folder holds no Go code; these tests load everything in it
// against the real code, so that an example cannot drift from weft (STYLE.md).
// They are fast, touch no network and run in -short mode.
const (
	deployDir   = "../../deploy"
	unitFile    = deployDir + "/systemd/weft.service"
	envFileName = deployDir + "/systemd/weft.env"
)

// TestDeployManifests loads every manifest under deploy/ with checkManifests,
// the code path `weft serve` runs at start-up, file by file and then folder by
// folder as `weft serve -f FOLDER` would see them.
func TestDeployManifests(t *testing.T) {
	t.Parallel()
	var files []string
	err := filepath.WalkDir(deployDir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && resource.IsManifest(path) {
			files = append(files, path)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("walk %s: %v", deployDir, err)
	}
	if len(files) == 0 {
		t.Fatalf("no *.yaml or *.yml under %s: wrong path?", deployDir)
	}
	folders := map[string]bool{}
	for _, f := range files {
		folders[filepath.Dir(f)] = true
		if err := checkManifests([]string{f}); err != nil {
			t.Errorf("%s: weft serve would refuse it: %v", f, err)
			continue
		}
		checkSchemaComments(t, f)
		checkFunctionFiles(t, f)
	}
	for dir := range folders {
		if err := checkManifests([]string{dir}); err != nil {
			t.Errorf("weft serve -f %s would refuse it: %v", dir, err)
			continue
		}
		checkTriggerRefs(t, dir)
	}
}

// checkSchemaComments fails when a `# yaml-language-server: $schema=` comment
// points at a schema file that does not exist.
func checkSchemaComments(t *testing.T, file string) {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile(`(?m)^#\s*yaml-language-server:\s*\$schema=(\S+)`)
	for _, m := range re.FindAllStringSubmatch(string(data), -1) {
		ref := m[1]
		if strings.Contains(ref, "://") {
			continue
		}
		if _, err := os.Stat(filepath.Join(filepath.Dir(file), ref)); err != nil {
			t.Errorf("%s: $schema=%s: %v", file, ref, err)
		}
	}
}

// checkFunctionFiles fails when a Function's command names a file (an
// argument with an extension, or a ./relative program) that is not in its
// working directory, as `python3 gone.py` would fail only at run time.
func checkFunctionFiles(t *testing.T, file string) {
	t.Helper()
	objs, err := resource.LoadPaths(file)
	if err != nil {
		t.Fatal(err) // checkManifests already passed
	}
	for _, obj := range objs {
		if obj.Kind != workers.Kind {
			continue
		}
		fn, err := workers.Parse(obj)
		if err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		for i, arg := range fn.Command {
			local := strings.HasPrefix(arg, "./") || strings.HasPrefix(arg, "../")
			script := i > 0 && !strings.HasPrefix(arg, "-") && filepath.Ext(arg) != "" && !filepath.IsAbs(arg)
			if !local && !script {
				continue
			}
			if _, err := os.Stat(filepath.Join(fn.Dir, arg)); err != nil {
				t.Errorf("%s: Function %s: command %q names %s, which is missing: %v", file, fn.Name, fn.Command, arg, err)
			}
		}
	}
}

// checkTriggerRefs fails when a Trigger in dir refers to a Function that no
// manifest in dir declares: weft accepts that, but every event would fail.
func checkTriggerRefs(t *testing.T, dir string) {
	t.Helper()
	objs, err := resource.LoadPaths(dir)
	if err != nil {
		t.Fatal(err)
	}
	fns := map[string]bool{}
	for _, obj := range objs {
		if obj.Kind == workers.Kind {
			fns[obj.Name] = true
		}
	}
	for _, obj := range objs {
		if obj.Kind != "Trigger" {
			continue
		}
		tr, err := triggers.Parse(obj)
		if err != nil {
			t.Fatalf("%s: %v", obj.File, err)
		}
		if name := tr.Subscriber.FunctionName; name != "" && !fns[name] {
			t.Errorf("%s: Trigger %s delivers to Function %s, which no manifest in %s declares", obj.File, tr.Name, name, dir)
		}
	}
}

// serveFlag looks a flag of `weft serve` up by its long name or, when short
// is set, its shorthand: first serve's own flags, then the root's persistent
// flags, which serve inherits.
func serveFlag(name string, short bool) *pflag.Flag {
	for _, set := range []*pflag.FlagSet{newServeCmd(&globals{}).Flags(), newRoot(&globals{}).PersistentFlags()} {
		var f *pflag.Flag
		if short {
			f = set.ShorthandLookup(name)
		} else {
			f = set.Lookup(name)
		}
		if f != nil {
			return f
		}
	}
	return nil
}

// envFlags maps each env twin WEFT_<NAME> to its flag, computed the way
// applyEnv computes it.
func envFlags() map[string]*pflag.Flag {
	m := map[string]*pflag.Flag{}
	add := func(f *pflag.Flag) { m["WEFT_"+strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))] = f }
	newServeCmd(&globals{}).Flags().VisitAll(add)
	newRoot(&globals{}).PersistentFlags().VisitAll(add)
	return m
}

// unit is a systemd unit file: section → key → values in file order.
type unit map[string]map[string][]string

// parseUnit reads the INI-like syntax of systemd.syntax(7): [Section]
// headers, Key=Value lines, '#' and ';' comments, and a trailing backslash
// that continues a line.
func parseUnit(path string) (unit, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	u := unit{}
	section := ""
	var pending strings.Builder
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if pending.Len() == 0 && (line == "" || line[0] == '#' || line[0] == ';') {
			continue
		}
		if pending.Len() > 0 && line != "" && (line[0] == '#' || line[0] == ';') {
			continue // comments may sit inside a continued line
		}
		if cont, ok := strings.CutSuffix(line, `\`); ok {
			pending.WriteString(cont + " ")
			continue
		}
		pending.WriteString(line)
		line = strings.TrimSpace(pending.String())
		pending.Reset()
		if strings.HasPrefix(line, "[") {
			if !strings.HasSuffix(line, "]") {
				return nil, fmt.Errorf("%s:%d: bad section header %q", path, n, line)
			}
			section = line[1 : len(line)-1]
			if u[section] == nil {
				u[section] = map[string][]string{}
			}
			continue
		}
		key, val, ok := strings.Cut(line, "=")
		if !ok || section == "" {
			return nil, fmt.Errorf("%s:%d: want Key=Value inside a [Section], got %q", path, n, line)
		}
		key = strings.TrimSpace(key)
		u[section][key] = append(u[section][key], strings.TrimSpace(val))
	}
	if pending.Len() > 0 {
		return nil, fmt.Errorf("%s: file ends in a continued line", path)
	}
	return u, sc.Err()
}

// splitCommand splits an Exec line into words as systemd.service(5) does
// for the cases a unit here uses: whitespace, and single or double quotes.
func splitCommand(s string) ([]string, error) {
	var words []string
	var w strings.Builder
	inWord := false
	var quote rune
	for _, r := range s {
		switch {
		case quote != 0 && r == quote:
			quote = 0
		case quote != 0:
			w.WriteRune(r)
		case r == '"' || r == '\'':
			quote, inWord = r, true
		case r == ' ' || r == '\t':
			if inWord {
				words = append(words, w.String())
				w.Reset()
				inWord = false
			}
		default:
			w.WriteRune(r)
			inWord = true
		}
	}
	if quote != 0 {
		return nil, fmt.Errorf("unterminated %c quote in %q", quote, s)
	}
	if inWord {
		words = append(words, w.String())
	}
	return words, nil
}

// TestDeploySystemdUnit checks that weft.service runs `weft serve` with real
// flags and values, and that its data directory is writable under the sandbox.
func TestDeploySystemdUnit(t *testing.T) {
	t.Parallel()
	u, err := parseUnit(unitFile)
	if err != nil {
		t.Fatal(err)
	}
	svc := u["Service"]
	if svc == nil {
		t.Fatalf("%s: no [Service] section", unitFile)
	}
	execs := svc["ExecStart"]
	if len(execs) != 1 {
		t.Fatalf("%s: want one ExecStart=, got %d", unitFile, len(execs))
	}
	args, err := splitCommand(strings.TrimLeft(execs[0], "@-:+!"))
	if err != nil {
		t.Fatalf("%s: ExecStart: %v", unitFile, err)
	}
	if len(args) < 2 || !filepath.IsAbs(args[0]) || filepath.Base(args[0]) != "weft" || args[1] != "serve" {
		t.Fatalf("%s: ExecStart=%s: want /absolute/path/weft serve …", unitFile, execs[0])
	}

	// Each flag must exist and accept its value, as cobra would parse it.
	values := map[string][]string{}
	for i := 2; i < len(args); i++ {
		a := args[i]
		var f *pflag.Flag
		var val string
		hasVal := false
		switch {
		case strings.HasPrefix(a, "--"):
			name, v, ok := strings.Cut(a[2:], "=")
			f, val, hasVal = serveFlag(name, false), v, ok
		case strings.HasPrefix(a, "-") && len(a) >= 2:
			f = serveFlag(a[1:2], true)
			if rest := strings.TrimPrefix(a[2:], "="); len(a) > 2 {
				val, hasVal = rest, true
			}
		default:
			t.Errorf("%s: ExecStart: positional argument %q: weft serve takes none", unitFile, a)
			continue
		}
		if f == nil {
			t.Errorf("%s: ExecStart: %s is not a flag of weft serve", unitFile, a)
			continue
		}
		if !hasVal && f.NoOptDefVal == "" {
			if i+1 >= len(args) {
				t.Errorf("%s: ExecStart: %s needs a value", unitFile, a)
				continue
			}
			i++
			val, hasVal = args[i], true
		}
		if !hasVal {
			val = f.NoOptDefVal
		}
		if err := f.Value.Set(val); err != nil {
			t.Errorf("%s: ExecStart: --%s %q: %v", unitFile, f.Name, val, err)
		}
		values[f.Name] = append(values[f.Name], val)
	}

	// ProtectSystem=strict leaves only these writable; --data must be one.
	data := values["data"]
	if len(data) == 0 {
		t.Errorf("%s: ExecStart has no --data: weft would write to ./.weft", unitFile)
	}
	var writable []string
	for _, d := range svc["StateDirectory"] {
		for _, w := range strings.Fields(d) {
			writable = append(writable, "/var/lib/"+w)
		}
	}
	for _, p := range svc["ReadWritePaths"] {
		for _, w := range strings.Fields(p) {
			writable = append(writable, strings.TrimLeft(w, "-+"))
		}
	}
	for _, d := range data {
		if !slices.Contains(writable, filepath.Clean(d)) {
			t.Errorf("%s: --data %s is neither a StateDirectory= nor in ReadWritePaths= (%v): ProtectSystem=strict makes it read-only", unitFile, d, writable)
		}
	}

	// The unit must read the environment file shipped next to it.
	envs := svc["EnvironmentFile"]
	if len(envs) == 0 || filepath.Base(strings.TrimPrefix(envs[0], "-")) != filepath.Base(envFileName) {
		t.Errorf("%s: EnvironmentFile=%v: want …/%s", unitFile, envs, filepath.Base(envFileName))
	}
}

// TestDeployEnvFile checks weft.env: every WEFT_ variable it names is the env
// twin of a real flag; each `#WEFT_X=value` line (a commented-out setting)
// shows the flag's real default; each active `WEFT_X=value` line parses; and
// every flag `weft serve` reads is listed.
func TestDeployEnvFile(t *testing.T) {
	t.Parallel()
	data, err := os.ReadFile(envFileName)
	if err != nil {
		t.Fatal(err)
	}
	flags := envFlags()
	mention := regexp.MustCompile(`\bWEFT_[A-Z0-9_]+`)
	setting := regexp.MustCompile(`^(#?)(WEFT_[A-Z0-9_]+)=(.*)$`)
	listed := map[string]bool{} // names with a line of their own
	seen := map[string]bool{}   // the same, keyed "#NAME" or "NAME"
	for n, line := range strings.Split(string(data), "\n") {
		pos := fmt.Sprintf("%s:%d", envFileName, n+1)
		for _, name := range mention.FindAllString(line, -1) {
			if flags[name] == nil {
				t.Errorf("%s: %s is not the env twin of any weft flag", pos, name)
			}
		}
		trimmed := strings.TrimSpace(line)
		m := setting.FindStringSubmatch(trimmed)
		if m == nil {
			if trimmed != "" && !strings.HasPrefix(trimmed, "#") {
				t.Errorf("%s: want a comment or WEFT_NAME=value, got %q", pos, line)
			}
			continue
		}
		commented, name, val := m[1] == "#", m[2], m[3]
		f := flags[name]
		if f == nil {
			continue // reported above
		}
		// One commented default and one active setting may sit side by side.
		if seen[m[1]+name] {
			t.Errorf("%s: %s%s= appears twice", pos, m[1], name)
		}
		seen[m[1]+name], listed[name] = true, true
		if commented {
			def := f.DefValue
			if def == "[]" { // an empty stringArray
				def = ""
			}
			if val != def {
				t.Errorf("%s: #%s=%s, but the default of --%s is %q", pos, name, val, f.Name, def)
			}
			continue
		}
		if err := f.Value.Set(val); err != nil {
			t.Errorf("%s: %s=%s: %v", pos, name, val, err)
		}
	}

	// Every flag serve reads must be documented: its own, and the two
	// persistent flags it uses (--server and --output are for client verbs).
	want := map[string]bool{"api-token": true, "log-level": true}
	newServeCmd(&globals{}).Flags().VisitAll(func(f *pflag.Flag) { want[f.Name] = true })
	delete(want, "help")
	for env, f := range flags {
		if want[f.Name] && !listed[env] {
			t.Errorf("%s: --%s of weft serve is not listed: add #%s=%s", envFileName, f.Name, env, f.DefValue)
		}
	}
}
