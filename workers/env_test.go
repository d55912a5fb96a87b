package workers

import (
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

func TestBuildEnv(t *testing.T) {
	weft := map[string]string{"PATH": "/bin", "LANG": "C.UTF-8", "SECRET": "x", "HTTP_PROXY": "http://corp:3128"}
	lookup := func(k string) (string, bool) { v, ok := weft[k]; return v, ok }
	fn := &Function{Name: "env", Env: []EnvVar{{"FOO", "bar"}, {"LANG", "de_DE.UTF-8"}}}

	got := buildEnv(fn, 8123, "http://127.0.0.1:8081", lookup)
	want := []string{
		"FOO=bar",
		"HTTP_PROXY=http://127.0.0.1:8081",
		"LANG=de_DE.UTF-8", // the spec wins over weft's
		"NO_PROXY=127.0.0.1,localhost",
		"PATH=/bin",
		"PORT=8123",
		"WEFT_FUNCTION=env",
		"http_proxy=http://127.0.0.1:8081",
		"no_proxy=127.0.0.1,localhost",
	}
	if !slices.Equal(got, want) {
		t.Errorf("buildEnv =\n%q\nwant\n%q", got, want)
	}
	if noProxy := buildEnv(fn, 1, "", lookup); slices.ContainsFunc(noProxy, func(kv string) bool {
		return strings.HasPrefix(strings.ToUpper(kv), "HTTP_PROXY=")
	}) {
		t.Errorf("with no ProxyURL the proxy variables must be unset, got %q", noProxy)
	}
}

func TestLookPath(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "bin")
	if err := os.Mkdir(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"bin/tool", "local"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "data"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	env := []string{"PATH=" + bin}
	cases := map[string]struct {
		name string
		want string // "" = an error
	}{
		"relative to dir": {"./local", filepath.Join(dir, "local")},
		"in worker PATH":  {"tool", filepath.Join(bin, "tool")},
		"absolute":        {filepath.Join(bin, "tool"), filepath.Join(bin, "tool")},
		"dotted":          {"bin/../local", filepath.Join(dir, "local")},
		"not in PATH":     {"local", ""},
		"not executable":  {"./data", ""},
		"missing":         {"./nope", ""},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			got, err := lookPath(c.name, dir, env)
			if c.want == "" {
				if err == nil {
					t.Errorf("lookPath(%q) = %q, want an error", c.name, got)
				}
				return
			}
			if err != nil || got != c.want {
				t.Errorf("lookPath(%q) = %q, %v; want %q", c.name, got, err, c.want)
			}
		})
	}
}

// TestWorkerEnvironment checks what a real worker sees: only the allowed
// variables, never the rest of weft's environment.
func TestWorkerEnvironment(t *testing.T) {
	t.Setenv("WEFT_TEST_CANARY", "must not leak")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "must not leak either")
	t.Setenv("LANG", "C.UTF-8")
	t.Setenv("TZ", "UTC")
	const proxy = "http://127.0.0.1:8081"
	p := startPool(t, Config{ProxyURL: proxy})
	fn := goFn("env", "FOO=bar")
	fn.Command = []string{"./" + filepath.Base(goWorker)} // relative to Dir
	fn.Dir = filepath.Dir(goWorker)
	p.Apply(fn)
	r := mustSend(t, p, "function:env", map[string]any{})

	seen := map[string]string{}
	for _, kv := range r.Env {
		k, v, _ := strings.Cut(kv, "=")
		seen[k] = v
	}
	want := map[string]string{
		"FOO": "bar", "LANG": "C.UTF-8", "TZ": "UTC", "PORT": r.Port, "WEFT_FUNCTION": "env",
		"HTTP_PROXY": proxy, "http_proxy": proxy, "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
	}
	for _, k := range []string{"PATH", "HOME"} {
		if v, ok := os.LookupEnv(k); ok {
			want[k] = v
		}
	}
	for k, v := range want {
		if seen[k] != v {
			t.Errorf("worker sees %s=%q, want %q", k, seen[k], v)
		}
	}
	for k := range seen {
		if _, ok := want[k]; !ok {
			t.Errorf("worker sees %s, which is not an allowed variable", k)
		}
	}
	if port, err := strconv.Atoi(r.Port); err != nil || port == 0 {
		t.Errorf("PORT %q", r.Port)
	}
	if r.Cwd != fn.Dir {
		t.Errorf("worker runs in %s, want %s", r.Cwd, fn.Dir)
	}
}

// TestEnvHomeOfUser: a worker that runs as another user gets that user's
// home, not weft's (which it usually cannot read).
func TestEnvHomeOfUser(t *testing.T) {
	fn := &Function{Name: "f", User: &User{Name: "nobody", UID: 65534, GID: 65534, Home: "/nonexistent"}}
	env := buildEnv(fn, 8080, "", func(k string) (string, bool) {
		if k == "HOME" {
			return "/root", true
		}
		return "", false
	})
	if got := envValue(env, "HOME"); got != "/nonexistent" {
		t.Fatalf("HOME=%q, want the user's home", got)
	}
}

func TestWithEnvReplaces(t *testing.T) {
	got := withEnv([]string{"A=1", "HTTP_PROXY=http://plain", "Z=9"}, map[string]string{"HTTP_PROXY": "http://fn:tok@r", "WEFT_CERT_FILE": "/c"})
	want := []string{"A=1", "HTTP_PROXY=http://fn:tok@r", "WEFT_CERT_FILE=/c", "Z=9"}
	if !slices.Equal(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
}
