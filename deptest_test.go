package weft_test

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// module is weft's module path; packages under it are "weft packages".
const module = "github.com/weft-dev/weft"

// depRule says what the packages in one folder of the module may depend on,
// directly or not. It is STYLE.md's dependency graph (after tailscale's
// deptest): dependencies point one way, and components meet through
// interfaces the consumer declares, never by importing each other.
type depRule struct {
	dir     string   // folder relative to the module root; the rule covers it and everything below
	anyWeft bool     // may depend on every weft package (cmd wires them all)
	allow   []string // weft folders it may depend on besides its own, each with everything below
	forbid  []string // other import paths it must not depend on, each with everything below
	why     string   // the reason, for failure messages
}

var depRules = []depRule{
	{dir: "cmd", anyWeft: true, why: "cmd wires the components"},
	{
		dir: "broker", allow: []string{"triggers", "internal", "schemas"},
		why: "broker hands deliveries to an interface that workers and router satisfy",
	},
	{
		dir: "triggers", allow: []string{"internal/resource", "schemas"},
		forbid: []string{"github.com/nats-io", "os/exec"},
		why:    "triggers is pure code: no NATS, no processes, no other component",
	},
	{dir: "workers", allow: []string{"internal", "schemas"}, why: "workers never imports broker, triggers or router"},
	{dir: "router", allow: []string{"internal", "schemas"}, why: "router never imports broker, triggers or workers"},
	{dir: "internal", allow: []string{"internal"}, why: "internal/* is shared below the components"},
	{dir: "schemas", why: "schemas is a leaf package"},
	{dir: "examples", why: "example functions stand alone: they show what a user writes, without weft packages"},
}

// TestDependencies runs `go list -deps` on every package of the module and
// fails when one depends on something its rule forbids. Test files are not
// covered (go list -deps lists what the package itself builds with), so tests
// may import anything.
func TestDependencies(t *testing.T) {
	if _, err := os.Stat("go.mod"); err != nil {
		t.Fatalf("run from the module root: %v", err)
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("go command not found: %v", err)
	}
	out, err := goList(goBin, "-e", "-f", "{{.ImportPath}}", "./...")
	if err != nil {
		t.Fatalf("go list ./...: %v", err)
	}
	pkgs := strings.Fields(out)
	seen := map[string]bool{}
	for _, pkg := range pkgs {
		rel, ok := relPath(pkg)
		if !ok {
			continue
		}
		var rule *depRule
		if rel != "" { // the module root holds only tests: nothing to check
			if rule = ruleFor(rel); rule == nil {
				t.Errorf("package %s has no dependency rule: add one to depRules in deptest_test.go", rel)
				continue
			}
			seen[rule.dir] = true
		}
		t.Run(displayName(rel), func(t *testing.T) {
			t.Parallel()
			checkDeps(t, goBin, pkg, rel, rule)
		})
	}
	for _, r := range depRules {
		if !seen[r.dir] {
			t.Logf("%s: no package yet, skipped", r.dir)
		}
	}
}

// checkDeps lists pkg's dependencies and reports each one rule forbids.
func checkDeps(t *testing.T, goBin, pkg, rel string, rule *depRule) {
	pattern := "./" + rel
	if rel == "" {
		pattern = "."
	}
	// Each line is a package and its direct imports, so that a violation
	// can be reported with the chain that leads to it.
	out, err := goList(goBin, "-deps", "-f", "{{.ImportPath}}{{range .Imports}} {{.}}{{end}}", pattern)
	if err != nil {
		if absent(err.Error(), rel) {
			t.Skipf("%s: no buildable package: %v", displayName(rel), err)
		}
		t.Fatalf("go list -deps %s: %v", pattern, err)
	}
	imports := map[string][]string{}
	var deps []string
	for line := range strings.Lines(out) {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		imports[f[0]] = f[1:]
		if f[0] != pkg {
			deps = append(deps, f[0])
		}
	}

	bad := map[string]string{} // forbidden dependency → why
	for _, dep := range deps {
		if why := forbidden(rel, rule, dep); why != "" {
			bad[dep] = why
		}
	}
	slices.Sort(deps)
	for _, dep := range deps {
		why, ok := bad[dep]
		if !ok {
			continue
		}
		chain := importChain(imports, pkg, dep)
		// Report where the forbidden graph is entered: when triggers pulls in
		// nats.go, name nats.go, not the dozen packages under it.
		if slices.ContainsFunc(chain[1:len(chain)-1], func(p string) bool { _, ok := bad[p]; return ok }) {
			continue
		}
		t.Errorf("%s depends on %s, which it must not (%s)\n\tvia %s",
			displayName(rel), dep, why, strings.Join(chain, " → "))
	}
}

// absent reports whether go list's error msg says that the package at rel
// itself has nothing to build: its folder holds no Go files for this platform
// (or only tests), or vanished since it was listed. Only then is it skipped;
// any other error, such as a missing import, fails the test, because an
// existing package must not escape the check.
func absent(msg, rel string) bool {
	wd, err := os.Getwd()
	if err != nil {
		return false
	}
	if !strings.Contains(msg, filepath.Join(wd, filepath.FromSlash(rel))) {
		return false
	}
	for _, s := range []string{"no Go files", "no non-test Go files", "build constraints exclude all Go files", "cannot find", "directory not found", "no such file"} {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}

// forbidden returns why the package at rel (under rule) must not depend on
// dep, or "" if it may.
func forbidden(rel string, rule *depRule, dep string) string {
	depRel, weft := relPath(dep)
	if weft && isTestHelper(depRel) && !isTestHelper(rel) {
		return "test helpers are for tests only"
	}
	if rule == nil {
		return ""
	}
	if weft {
		if rule.anyWeft || under(depRel, rule.dir) || slices.ContainsFunc(rule.allow, func(a string) bool { return under(depRel, a) }) {
			return ""
		}
		return rule.why
	}
	if slices.ContainsFunc(rule.forbid, func(f string) bool { return under(dep, f) }) {
		return rule.why
	}
	return ""
}

// ruleFor returns the rule of the deepest folder containing rel, or nil.
func ruleFor(rel string) *depRule {
	var best *depRule
	for i := range depRules {
		r := &depRules[i]
		if under(rel, r.dir) && (best == nil || len(r.dir) > len(best.dir)) {
			best = r
		}
	}
	return best
}

// isTestHelper reports whether the weft package at rel exists for tests:
// internal/testutil and packages named like httptest (storetest, brokertest).
func isTestHelper(rel string) bool {
	base := path.Base(rel)
	return base == "testutil" || strings.HasSuffix(base, "test")
}

// importChain returns the shortest import path from pkg to dep, both included.
func importChain(imports map[string][]string, pkg, dep string) []string {
	prev := map[string]string{pkg: ""}
	queue := []string{pkg}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		if p == dep {
			var chain []string
			for ; p != ""; p = prev[p] {
				chain = append(chain, p)
			}
			slices.Reverse(chain)
			return chain
		}
		for _, next := range imports[p] {
			if _, ok := prev[next]; !ok {
				prev[next] = p
				queue = append(queue, next)
			}
		}
	}
	return []string{pkg, "…", dep}
}

// relPath returns pkg relative to the module root ("" for the root itself),
// and whether pkg is a weft package at all.
func relPath(pkg string) (string, bool) {
	if pkg == module {
		return "", true
	}
	rel, ok := strings.CutPrefix(pkg, module+"/")
	return rel, ok
}

// under reports whether p is dir or inside it, by whole path elements.
func under(p, dir string) bool {
	return p == dir || strings.HasPrefix(p, dir+"/")
}

func displayName(rel string) string {
	if rel == "" {
		return "root"
	}
	return rel
}

// goList runs `go list args...` in the module root; a failure carries go's
// stderr, which says why (no Go files, cannot find package, a parse error).
func goList(goBin string, args ...string) (string, error) {
	cmd := exec.Command(goBin, append([]string{"list"}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", errors.New(strings.TrimSpace(stderr.String() + " (" + err.Error() + ")"))
	}
	return string(out), nil
}
