package workers

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/weft-dev/weft/internal/testutil"
)

func TestParseQuantity(t *testing.T) {
	cases := []struct {
		in   string
		want int64
		ok   bool
	}{
		{"", 0, true},
		{"256Mi", 256 << 20, true},
		{"1Gi", 1 << 30, true},
		{"1024Ki", 1 << 20, true},
		{"2Ti", 2 << 40, true},
		{"1048576", 1 << 20, true},
		{"1Ki", 0, false},       // below 1Mi
		{"256M", 0, false},      // decimal suffixes are refused
		{"1.5Gi", 0, false},     // Kubernetes allows it; the schema does not
		{"-1Gi", 0, false},      // negative
		{"+1Gi", 0, false},      // signed
		{"Mi", 0, false},        // no number
		{"8388608Ti", 0, false}, // overflows int64
	}
	for _, c := range cases {
		got, err := parseQuantity(c.in)
		if (err == nil) != c.ok || got != c.want {
			t.Errorf("parseQuantity(%q) = %d, %v; want %d, ok %v", c.in, got, err, c.want, c.ok)
		}
	}
	for n, want := range map[int64]string{256 << 20: "256Mi", 1 << 30: "1Gi", 1536 << 20: "1536Mi", 1000: "1000"} {
		if got := formatQuantity(n); got != want {
			t.Errorf("formatQuantity(%d) = %s, want %s", n, got, want)
		}
	}
}

// nobody returns the nobody account as lookupUser should resolve it,
// computed here with os/user directly.
func nobody(t *testing.T) *User {
	t.Helper()
	acct, err := user.Lookup("nobody")
	if err != nil {
		t.Fatalf("this machine has no nobody account: %v", err)
	}
	uid, _ := strconv.ParseUint(acct.Uid, 10, 32)
	gid, _ := strconv.ParseUint(acct.Gid, 10, 32)
	u := &User{Name: "nobody", UID: uint32(uid), GID: uint32(gid)}
	gids, err := acct.GroupIds()
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range gids {
		id, _ := strconv.ParseUint(g, 10, 32)
		u.Groups = append(u.Groups, uint32(id))
	}
	return u
}

func TestLookupUser(t *testing.T) {
	nb := nobody(t)
	root := &User{Name: "root", UID: 0, GID: 0, Groups: []uint32{0}}
	withName := func(u User, name string) *User { u.Name = name; return &u }
	cases := map[string]*User{
		"nobody":                     nb,
		strconv.Itoa(int(nb.UID)):    withName(*nb, strconv.Itoa(int(nb.UID))),
		"nobody:0":                   {Name: "nobody:0", UID: nb.UID, GID: 0, Groups: nb.Groups},
		"root":                       root,
		"4000123":                    {Name: "4000123", UID: 4000123, GID: 4000123},
		"4000123:root":               {Name: "4000123:root", UID: 4000123, GID: 0},
		"4000123:4000999":            {Name: "4000123:4000999", UID: 4000123, GID: 4000999},
		"no-such-user-weft":          nil,
		"nobody:no-such-group-weft":  nil,
		"4000123:no-such-group-weft": nil,
	}
	for spec, want := range cases {
		got, err := lookupUser(spec)
		switch {
		case want == nil && err == nil:
			t.Errorf("lookupUser(%q) = %+v, want an error", spec, got)
		case want == nil:
			if !strings.Contains(err.Error(), "no-such") {
				t.Errorf("lookupUser(%q): %v, want it to name what is unknown", spec, err)
			}
		case err != nil:
			t.Errorf("lookupUser(%q): %v", spec, err)
		case got.Name != want.Name || got.UID != want.UID || got.GID != want.GID || !slices.Equal(got.Groups, want.Groups):
			t.Errorf("lookupUser(%q) = %+v, want %+v", spec, got, want)
		}
	}
}

func TestUserCredential(t *testing.T) {
	u := &User{Name: "app", UID: 1000, GID: 1001, Groups: []uint32{1001, 27}}
	cred, err := credential(u, 0, 0)
	if err != nil || cred == nil || cred.Uid != 1000 || cred.Gid != 1001 || !slices.Equal(cred.Groups, u.Groups) || cred.NoSetGroups {
		t.Errorf("as root: %+v, %v; want uid 1000, gid 1001 and the groups set", cred, err)
	}
	// An account without supplementary groups must not keep root's: Go
	// calls setgroups(0) when Groups is empty and NoSetGroups false.
	if cred, _ := credential(&User{Name: "4000123", UID: 4000123, GID: 4000123}, 0, 0); cred == nil || len(cred.Groups) != 0 || cred.NoSetGroups {
		t.Errorf("as root, no groups: %+v", cred)
	}
	if cred, err := credential(nil, 1000, 1000); cred != nil || err != nil {
		t.Errorf("no user: %+v, %v; want weft's own", cred, err)
	}
	if cred, err := credential(u, 1000, 1001); cred != nil || err != nil {
		t.Errorf("not root, own user: %+v, %v; want no switch and no error", cred, err)
	}
	for _, ids := range [][2]int{{1002, 1001}, {1000, 1000}} {
		_, err := credential(u, ids[0], ids[1])
		if err == nil || !strings.Contains(err.Error(), "not root") || !strings.Contains(err.Error(), `"app"`) {
			t.Errorf("not root (uid %d gid %d), other user: %v; want a clear refusal", ids[0], ids[1], err)
		}
	}
}

func TestLimitsCgroupProbe(t *testing.T) {
	const v1 = "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n"
	// fake lays out a cgroup2 mount under a temporary directory: files maps
	// paths relative to it to their contents.
	fake := func(t *testing.T, files map[string]string) string {
		root := t.TempDir()
		for name, content := range files {
			p := filepath.Join(root, name)
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		return root
	}
	line := func(root, point string) string {
		return "41 31 0:38 " + root + " " + strings.ReplaceAll(point, " ", `\040`) + " rw,relatime - cgroup2 cgroup2 rw\n"
	}
	cases := map[string]struct {
		files     map[string]string
		mountinfo func(dir string) string
		self      string
		want      string // in the error
	}{
		"no cgroup2": {nil, func(string) string { return v1 }, "4:memory:/x\n", "no cgroup2"},
		"hybrid, memory on v1": {map[string]string{"cgroup.controllers": "hugetlb\n"},
			func(d string) string { return v1 + line("/", d) }, "4:memory:/\n0::/\n", "hybrid"},
		"v1 only process": {map[string]string{"cgroup.controllers": "memory\n"},
			func(d string) string { return line("/", d) }, "4:memory:/\n", "no cgroup v2 group"},
		"not delegated": {map[string]string{"cgroup.controllers": "cpu memory\n", "svc/cgroup.controllers": "cpu\n"},
			func(d string) string { return line("/", d) }, "0::/svc\n", "not delegated"},
		"subtree not enabled": {map[string]string{"cgroup.controllers": "memory\n", "svc/cgroup.controllers": "memory\n", "svc/cgroup.subtree_control": ""},
			func(d string) string { return line("/", d) }, "0::/svc\n", "did not become enabled"},
		"no memory.max in children": {map[string]string{"cgroup.controllers": "memory\n", "a b/cgroup.controllers": "memory\n", "a b/cgroup.subtree_control": "memory\n"},
			func(d string) string { return line("/", d) }, "0::/a b\n", "no memory.max"},
		"outside a bind mount": {map[string]string{"cgroup.controllers": "memory\n"},
			func(d string) string { return line("/kubepods", d) }, "0::/system.slice\n", "outside"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			dir := fake(t, c.files)
			cp, err := probeCgroup(c.mountinfo(dir), c.self)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("probe = %+v, %v; want an error about %q", cp, err, c.want)
			}
			if entries, _ := filepath.Glob(filepath.Join(dir, "*", "weft-probe-*")); len(entries) > 0 {
				t.Errorf("probe groups left behind: %v", entries)
			}
		})
	}
}

// TestLimitsCgroupPlacement runs the cgroup plumbing that a memory limit
// uses (a group per process, clone3 into it, cgroup.kill, removal) on the
// machine's real cgroup2 hierarchy, without the memory controller, so that
// it is exercised also where memory limits fall back to RLIMIT_AS.
func TestLimitsCgroupPlacement(t *testing.T) {
	mountinfo, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	self, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	mnt, ok := cgroup2Mount(string(mountinfo))
	path, ok2 := unifiedPath(string(self))
	if !ok || !ok2 {
		if cp, err := probeCgroup(string(mountinfo), string(self)); err == nil {
			t.Fatalf("no cgroup2 here, yet the probe chose %s", cp.dir)
		}
		t.Log("no cgroup v2 hierarchy on this machine: only the fallback is checked")
		return
	}
	parent := filepath.Join(mnt.point, path, fmt.Sprintf("weft-test-%d", os.Getpid()))
	if err := os.Mkdir(parent, 0o755); err != nil {
		t.Fatalf("root cannot create a cgroup in %s: %v", mnt.point, err)
	}
	t.Cleanup(func() { _ = unix.Rmdir(parent) })
	g := &cgroup{dir: filepath.Join(parent, "weft-place-1"), name: "test:weft-place-1", fd: -1}
	if err := os.Mkdir(g.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if g.fd, err = unix.Open(g.dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0); err != nil {
		t.Fatal(err)
	}
	// A daemon that leaves its process group: only the cgroup still holds it.
	cmd := exec.Command("sh", "-c", "setsid sleep 300 & echo $!; wait")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, UseCgroupFD: true, CgroupFD: g.fd}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start into a cgroup (clone3 CLONE_INTO_CGROUP): %v", err)
	}
	g.closeFD()
	line, _ := bufio.NewReader(out).ReadString('\n')
	daemon, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil {
		t.Fatalf("daemon pid %q: %v", line, err)
	}
	want := "0::" + filepath.Join(path, filepath.Base(parent), "weft-place-1")
	for _, pid := range []int{cmd.Process.Pid, daemon} {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
		if err != nil || !strings.Contains(string(data), want+"\n") {
			t.Errorf("pid %d is in %q (%v), want %s", pid, data, err, want)
		}
	}
	t.Logf("clone3 placed pid %d and its daemon %d in %s", cmd.Process.Pid, daemon, g.dir)
	if _, err := g.remove(); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err == nil {
		t.Error("the group's processes survived its removal")
	}
	waitFor(t, 10*time.Second, func() bool { return dead(daemon) })
	if _, err := os.Stat(g.dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("group %s not removed: %v", g.dir, err)
	}
}

// recorder is a slog.Handler that keeps every record.
type recorder struct {
	mu   sync.Mutex
	recs []slog.Record
}

func (r *recorder) Enabled(context.Context, slog.Level) bool { return true }
func (r *recorder) Handle(_ context.Context, rec slog.Record) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.recs = append(r.recs, rec.Clone())
	return nil
}
func (r *recorder) WithAttrs([]slog.Attr) slog.Handler { return r }
func (r *recorder) WithGroup(string) slog.Handler      { return r }

// mechanismLogs returns the "mechanism" attribute of every record that
// announces how memory is limited.
func (r *recorder) mechanismLogs() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, rec := range r.recs {
		rec.Attrs(func(a slog.Attr) bool {
			if a.Key == "mechanism" && rec.Level == slog.LevelInfo {
				out = append(out, a.Value.String())
			}
			return true
		})
	}
	return out
}

// limitReply is the data of the limit worker's reply.
type limitReply struct {
	PID    int                  `json:"pid"`
	UID    int                  `json:"uid"`
	EUID   int                  `json:"euid"`
	GID    int                  `json:"gid"`
	Groups []int                `json:"groups"`
	NoFile struct{ Cur uint64 } `json:"nofile"`
	AS     struct{ Cur uint64 } `json:"as"`
	Cgroup string               `json:"cgroup"`
}

func sendLimit(p *Pool, name string, data any) (limitReply, error) {
	var r limitReply
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ev, err := p.Deliver(ctx, "function:"+name, newEvent(data))
	if err != nil {
		return r, err
	}
	if ev == nil {
		return r, errors.New("no reply event")
	}
	return r, json.Unmarshal(ev.Data(), &r)
}

// buildLimitWorker builds testdata/limitworker into a folder every user may
// enter, so that it can also run as nobody.
func buildLimitWorker(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "weft-limitworker-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "limitworker")
	if out, err := exec.Command("go", "build", "-o", bin, "./testdata/limitworker").CombinedOutput(); err != nil {
		t.Fatalf("build the limit worker: %v\n%s", err, out)
	}
	return bin
}

// procLimit returns the soft and hard values of a /proc/PID/limits row.
func procLimit(t *testing.T, pid int, row string) (soft, hard string) {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/limits", pid))
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(data)) {
		if rest, ok := strings.CutPrefix(line, row); ok {
			if f := strings.Fields(rest); len(f) >= 2 {
				return f[0], f[1]
			}
		}
	}
	t.Fatalf("no %q row in /proc/%d/limits:\n%s", row, pid, data)
	return "", ""
}

// procStatus returns the fields of a /proc/PID/status line such as "Uid".
func procStatus(t *testing.T, pid int, key string) []string {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(data)) {
		if rest, ok := strings.CutPrefix(line, key+":"); ok {
			return strings.Fields(rest)
		}
	}
	t.Fatalf("no %s in /proc/%d/status", key, pid)
	return nil
}

// readyPID waits for the function's single instance to be ready and returns
// its pid.
func readyPID(t *testing.T, p *Pool, name string) int {
	t.Helper()
	var pid int
	waitFor(t, 20*time.Second, func() bool {
		in := p.Instances(name)
		if len(in) == 1 && in[0].State == StateReady {
			pid = in[0].PID
		}
		return pid != 0
	})
	return pid
}

// TestLimitsEnforced runs the limit worker under each limit and checks from
// outside (/proc, the cgroup files) that it holds. The memory limit is
// enforced by whichever mechanism this machine offers; the test asserts
// which one was chosen and checks that one.
func TestLimitsEnforced(t *testing.T) {
	bin := buildLimitWorker(t)
	unprobed := memoryProbe.parent == nil && memoryProbe.err == nil
	rec := &recorder{}
	p := startPool(t, Config{})
	fn := func(name string) *Function {
		return &Function{Name: name, Command: []string{bin}, Dir: filepath.Dir(bin), Scale: Scale{Min: 1, Target: 1}}
	}

	t.Run("open files", func(t *testing.T) {
		f := fn("lim-nofile")
		f.Limits.OpenFiles = 1024
		p.Apply(f)
		pid := readyPID(t, p, f.Name)
		waitFor(t, 5*time.Second, func() bool {
			soft, hard := procLimit(t, pid, "Max open files")
			return soft == "1024" && hard == "1024"
		})
		r, err := sendLimit(p, f.Name, map[string]any{})
		if err != nil || r.NoFile.Cur != 1024 {
			t.Errorf("the worker sees RLIMIT_NOFILE %d (%v), want 1024", r.NoFile.Cur, err)
		}
		if soft, _ := procLimit(t, pid, "Max address space"); soft != "unlimited" {
			t.Errorf("address space limited to %s without a memory limit", soft)
		}
	})

	t.Run("memory", func(t *testing.T) {
		// Probe through prepareLimits with a recording logger, as a start does.
		pl, err := prepareLimits(&Function{Limits: Limits{Memory: minMemory}}, "lim-probe-1", slog.New(rec))
		if err != nil {
			t.Fatal(err)
		}
		pl.release()
		mechanism := "rlimit"
		if memoryProbe.parent != nil {
			mechanism = "cgroup"
		}
		t.Logf("memory limits here use %s (cgroup v2 refused because: %v)", mechanism, memoryProbe.err)
		if unprobed {
			if got := rec.mechanismLogs(); !slices.Equal(got, []string{mechanism}) {
				t.Errorf("mechanism logged at Info: %q, want exactly [%s]", got, mechanism)
			}
		}
		if mnt, ok := cgroup2Mount(readFile(t, "/proc/self/mountinfo")); !ok || !hasController(filepath.Join(mnt.point, "cgroup.controllers")) {
			if mechanism != "rlimit" {
				t.Fatalf("the cgroup2 hierarchy has no memory controller, yet the probe chose %s", mechanism)
			}
		}

		f := fn("lim-mem")
		// Under a cgroup the limit counts memory in use; under RLIMIT_AS it
		// counts address space, of which a Go program reserves ~1.2 GiB at
		// start. Either way, allocating as much as the limit exceeds it.
		f.Limits.Memory = 64 << 20
		if mechanism == "rlimit" {
			f.Limits.Memory = 2 << 30
		}
		p.Apply(f)
		pid := readyPID(t, p, f.Name)
		r, err := sendLimit(p, f.Name, map[string]any{})
		if err != nil {
			t.Fatal(err)
		}
		checkMemoryLimit(t, mechanism, pid, r, f.Limits.Memory)

		if _, err := sendLimit(p, f.Name, map[string]any{"alloc_mib": f.Limits.Memory >> 20}); err == nil {
			t.Fatal("allocating beyond the memory limit succeeded")
		}
		waitFor(t, 20*time.Second, func() bool {
			s := statusOf(t, p, f.Name)
			return s.Restarts == 1 && s.State == StateReady
		})
		s := statusOf(t, p, f.Name)
		switch mechanism {
		case "cgroup":
			if !strings.Contains(s.LastError, "signal: killed") || !strings.Contains(s.LastError, "OOM killer") {
				t.Errorf("last error %q, want an OOM kill", s.LastError)
			}
		case "rlimit":
			// The status keeps the last stderr lines, which are the tail of
			// the runtime's goroutine dump; the reason comes first.
			oom := slices.ContainsFunc(p.Logs(f.Name), func(l LogLine) bool {
				return l.Stream == Stderr && strings.HasPrefix(l.Text, "fatal error: out of memory")
			})
			if !strings.Contains(s.LastError, "exit status 2") || !oom {
				t.Errorf("last error %q (runtime out of memory logged: %v), want the Go runtime's out-of-memory abort", s.LastError, oom)
			}
		}
		if !gone(pid) {
			t.Errorf("pid %d survived exceeding its memory limit", pid)
		}
		pid = readyPID(t, p, f.Name)
		r, err = sendLimit(p, f.Name, map[string]any{})
		if err != nil {
			t.Fatal(err)
		}
		checkMemoryLimit(t, mechanism, pid, r, f.Limits.Memory) // the restarted process has it too
		group := r.Cgroup
		p.Remove(f.Name)
		waitFor(t, 20*time.Second, func() bool { return gone(pid) })
		if mechanism == "cgroup" {
			mnt, _ := cgroup2Mount(readFile(t, "/proc/self/mountinfo"))
			testutil.WaitFor(t, 10*time.Second, func() bool {
				_, err := os.Stat(filepath.Join(mnt.point, group))
				return errors.Is(err, os.ErrNotExist)
			}, "cgroup %s removed", group)
		}
	})

	t.Run("user", func(t *testing.T) {
		u, err := lookupUser("nobody")
		if err != nil {
			t.Fatal(err)
		}
		want := nobody(t)
		f := fn("lim-user")
		f.User = u
		p.Apply(f)
		pid := readyPID(t, p, f.Name)
		ids := func(n ...uint32) []string {
			var out []string
			for _, id := range n {
				out = append(out, strconv.FormatUint(uint64(id), 10))
			}
			return out
		}
		if got := procStatus(t, pid, "Uid"); !slices.Equal(got, ids(want.UID, want.UID, want.UID, want.UID)) {
			t.Errorf("Uid (real, effective, saved, fs) %q, want nobody's %d", got, want.UID)
		}
		if got := procStatus(t, pid, "Gid"); !slices.Equal(got, ids(want.GID, want.GID, want.GID, want.GID)) {
			t.Errorf("Gid %q, want %d", got, want.GID)
		}
		if got := procStatus(t, pid, "Groups"); !slices.Equal(got, ids(want.Groups...)) {
			t.Errorf("supplementary groups %q, want nobody's %v (not root's)", got, want.Groups)
		}
		r, err := sendLimit(p, f.Name, map[string]any{})
		if err != nil || r.UID != int(want.UID) || r.EUID != int(want.UID) || r.GID != int(want.GID) {
			t.Errorf("the worker reports %+v (%v), want uid %d gid %d", r, err, want.UID, want.GID)
		}
	})
}

// checkMemoryLimit checks that the process pid, whose reply is r, is held to
// limit bytes by mechanism.
func checkMemoryLimit(t *testing.T, mechanism string, pid int, r limitReply, limit int64) {
	t.Helper()
	as, _ := procLimit(t, pid, "Max address space")
	switch mechanism {
	case "cgroup":
		mnt, _ := cgroup2Mount(readFile(t, "/proc/self/mountinfo"))
		if !strings.Contains(filepath.Base(r.Cgroup), "weft-lim-mem-") {
			t.Errorf("the worker is in cgroup %q, want its own weft-lim-mem-N group", r.Cgroup)
		}
		if got := strings.TrimSpace(readFile(t, filepath.Join(mnt.point, r.Cgroup, "memory.max"))); got != strconv.FormatInt(limit, 10) {
			t.Errorf("memory.max %s, want %d", got, limit)
		}
		if as != "unlimited" {
			t.Errorf("RLIMIT_AS %s as well as the cgroup", as)
		}
	case "rlimit":
		if soft, hard := procLimit(t, pid, "Max address space"); soft != strconv.FormatInt(limit, 10) || hard != soft {
			t.Errorf("Max address space %s/%s, want %d", soft, hard, limit)
		}
		if r.AS.Cur != uint64(limit) {
			t.Errorf("the worker sees RLIMIT_AS %d, want %d", r.AS.Cur, limit)
		}
	}
}

func readFile(t *testing.T, name string) string {
	t.Helper()
	data, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}
