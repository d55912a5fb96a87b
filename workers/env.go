package workers

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// passThrough lists the only variables a worker inherits from weft's own
// environment (DESIGN, worker contract). Everything else, credentials
// included, stays in weft.
var passThrough = []string{"PATH", "HOME", "LANG", "TZ"}

// noProxy keeps a worker's calls to loopback (its own port, a sidecar, weft's
// API) away from the router's proxy, so they cannot loop through it.
const noProxy = "127.0.0.1,localhost"

// buildEnv returns the environment of one instance of fn listening on port,
// built afresh in three layers, later ones winning: the pass-through
// variables found through lookup, the spec's env, and weft's own variables.
// The result is sorted by name, so equal inputs give equal environments.
func buildEnv(fn *Function, port int, proxyURL string, lookup func(string) (string, bool)) []string {
	vars := map[string]string{}
	for _, k := range passThrough {
		if v, ok := lookup(k); ok {
			vars[k] = v
		}
	}
	if fn.User != nil && fn.User.Home != "" {
		vars["HOME"] = fn.User.Home // weft's own HOME is not the user's to read
	}
	for _, e := range fn.Env {
		vars[e.Name] = e.Value
	}
	if proxyURL != "" {
		vars["HTTP_PROXY"] = proxyURL
		vars["http_proxy"] = proxyURL // curl, wget and Python's urllib read only the lower-case form
	}
	vars["NO_PROXY"] = noProxy
	vars["no_proxy"] = noProxy
	vars["PORT"] = strconv.Itoa(port)
	vars["WEFT_FUNCTION"] = fn.Name

	env := make([]string, 0, len(vars))
	for k, v := range vars {
		env = append(env, k+"="+v)
	}
	sort.Strings(env)
	return env
}

// envValue returns the value of key in env (KEY=value entries).
func envValue(env []string, key string) string {
	for _, kv := range env {
		if k, v, ok := strings.Cut(kv, "="); ok && k == key {
			return v
		}
	}
	return ""
}

// lookPath resolves the program of a command the way the worker's own shell
// would: a name containing a slash is a path, relative to dir when not
// absolute; a bare name is searched in the worker's PATH (env), not weft's,
// so a spec that sets PATH finds its own tools. The result is absolute, so
// os/exec does not resolve it against dir a second time.
func lookPath(name, dir string, env []string) (string, error) {
	if strings.Contains(name, "/") {
		p, err := within(dir, name)
		if err != nil {
			return "", err
		}
		if err := executable(p); err != nil {
			return "", err
		}
		return p, nil
	}
	for _, d := range filepath.SplitList(envValue(env, "PATH")) {
		if d == "" {
			d = "."
		}
		p, err := within(dir, filepath.Join(d, name))
		if err == nil && executable(p) == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s: not found in the worker's PATH", name)
}

// within makes p absolute, resolving a relative p from dir.
func within(dir, p string) (string, error) {
	if !filepath.IsAbs(p) {
		p = filepath.Join(dir, p)
	}
	return filepath.Abs(p)
}

func executable(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if fi.IsDir() || fi.Mode()&0o111 == 0 {
		return &fs.PathError{Op: "exec", Path: path, Err: errors.New("not an executable file")}
	}
	return nil
}

// withEnv returns env with the variables of extra set (replacing any of the
// same name), sorted by name.
func withEnv(env []string, extra map[string]string) []string {
	out := make([]string, 0, len(env)+len(extra))
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		if _, replaced := extra[k]; !replaced {
			out = append(out, kv)
		}
	}
	for k, v := range extra {
		out = append(out, k+"="+v)
	}
	sort.Strings(out)
	return out
}
