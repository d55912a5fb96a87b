package workers

// Process limits: a Function's spec.limits and spec.user, put on each
// process the spawner starts. A start goes through three steps:
//
//  1. prepareLimits, before the fork, checks that weft may run the process
//     as spec.user and builds the Credential. For a memory limit on a machine
//     where weft can make cgroup v2 groups with the memory controller, it
//     creates the process's group <weft's cgroup>/weft-<instance> with
//     memory.max and opens it, so the fork puts the child straight into it
//     (clone3 with CLONE_INTO_CGROUP): the limit holds from the first
//     instruction.
//  2. started, on the spawner right after the fork, sets RLIMIT_NOFILE, and
//     RLIMIT_AS when no cgroup holds the memory limit, with prlimit(2). Go's
//     os/exec has no way to set rlimits in the child, and exec.Cmd.Start
//     returns only after the execve, so the new program runs for a brief
//     window (the rest of Start and one syscall, typically microseconds)
//     before these apply: a program that opens thousands of files or maps
//     gigabytes in its very first instructions is not held to them until
//     then. Closing that window would take a re-exec shim that sets the
//     limits and then execs the worker.
//  3. release, after the process was reaped, kills whatever is left in its
//     cgroup (a daemonised grandchild that left the process group) and
//     removes the group once it is empty.
//
// RLIMIT_AS counts virtual address space, not memory in use: a Go program
// reserves about 1.2 GiB of address space at start and a JVM more, so such
// workers need generous limits under RLIMIT_AS, and an allocation beyond the
// limit fails (most runtimes then abort) instead of being OOM-killed.

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

const (
	// minMemory is the smallest memory limit Parse accepts: no worker runs
	// in less.
	minMemory = 1 << 20
	// cgroupRemoveTimeout bounds how long release waits for a killed
	// group to empty before it gives up and leaves the group behind.
	cgroupRemoveTimeout = 5 * time.Second
)

// quantityJSON is a memory quantity as a manifest gives it: a string such as
// "256Mi", or a plain number of bytes.
type quantityJSON string

func (q *quantityJSON) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err == nil {
		*q = quantityJSON(s)
		return nil
	}
	var n json.Number
	if err := json.Unmarshal(b, &n); err != nil {
		return err
	}
	*q = quantityJSON(n.String())
	return nil
}

var binarySuffixes = []struct {
	suffix string
	shift  uint
}{{"Ki", 10}, {"Mi", 20}, {"Gi", 30}, {"Ti", 40}}

// parseQuantity turns "256Mi", "2Gi" or "1048576" into bytes; "" is 0. Only
// binary suffixes are accepted: Kubernetes reads "256M" as 256×10⁶ bytes,
// and refusing it is kinder than reading it differently.
func parseQuantity(s string) (int64, error) {
	if s == "" {
		return 0, nil
	}
	digits, shift := s, uint(0)
	for _, b := range binarySuffixes {
		if d, ok := strings.CutSuffix(s, b.suffix); ok {
			digits, shift = d, b.shift
			break
		}
	}
	n, err := strconv.ParseInt(digits, 10, 64)
	if err != nil || n < 0 || digits == "" || digits[0] == '+' {
		return 0, fmt.Errorf("%q is not a quantity such as 256Mi, 2Gi or 1048576", s)
	}
	if n > math.MaxInt64>>shift {
		return 0, fmt.Errorf("%s is too large", s)
	}
	if n <<= shift; n < minMemory {
		return 0, fmt.Errorf("%s is below the minimum of 1Mi", s)
	}
	return n, nil
}

// formatQuantity renders bytes with the largest binary suffix that divides
// them, for messages.
func formatQuantity(n int64) string {
	for i := len(binarySuffixes) - 1; i >= 0; i-- {
		b := binarySuffixes[i]
		if n >= 1<<b.shift && n%(1<<b.shift) == 0 {
			return strconv.FormatInt(n>>b.shift, 10) + b.suffix
		}
	}
	return strconv.FormatInt(n, 10)
}

// lookupUser resolves spec.user, "USER" or "USER:GROUP", each a name or a
// numeric id, in the node's user and group databases. A numeric uid without
// an account is accepted, with gid = uid and no supplementary groups, as
// containers allow arbitrary uids; a name must exist.
func lookupUser(spec string) (*User, error) {
	name, group, hasGroup := strings.Cut(spec, ":")
	u := &User{Name: spec}
	uid, numeric := parseID(name)
	var acct *user.User
	var err error
	if numeric {
		acct, err = user.LookupId(name)
	} else {
		acct, err = user.Lookup(name)
	}
	var unknownID user.UnknownUserIdError
	switch {
	case err == nil:
		u.Home = acct.HomeDir
		if u.UID, err = parseAccountID(acct.Uid); err != nil {
			return nil, fmt.Errorf("user %q: uid: %w", name, err)
		}
		if u.GID, err = parseAccountID(acct.Gid); err != nil {
			return nil, fmt.Errorf("user %q: gid: %w", name, err)
		}
		gids, err := acct.GroupIds()
		if err != nil {
			return nil, fmt.Errorf("user %q: supplementary groups: %w", name, err)
		}
		for _, g := range gids {
			id, err := parseAccountID(g)
			if err != nil {
				return nil, fmt.Errorf("user %q: group id: %w", name, err)
			}
			if !slices.Contains(u.Groups, id) {
				u.Groups = append(u.Groups, id)
			}
		}
	case numeric && errors.As(err, &unknownID):
		u.UID, u.GID, u.Home = uid, uid, "/"
	case numeric:
		return nil, fmt.Errorf("look up uid %s: %w", name, err)
	default:
		var unknown user.UnknownUserError
		if errors.As(err, &unknown) {
			return nil, fmt.Errorf("unknown user %q: no such account on this node", name)
		}
		return nil, fmt.Errorf("look up user %q: %w", name, err)
	}
	if !hasGroup {
		return u, nil
	}
	if gid, ok := parseID(group); ok {
		u.GID = gid // a gid needs no entry in the group database
		return u, nil
	}
	g, err := user.LookupGroup(group)
	var unknownGroup user.UnknownGroupError
	switch {
	case errors.As(err, &unknownGroup):
		return nil, fmt.Errorf("unknown group %q: no such group on this node", group)
	case err != nil:
		return nil, fmt.Errorf("look up group %q: %w", group, err)
	}
	if u.GID, err = parseAccountID(g.Gid); err != nil {
		return nil, fmt.Errorf("group %q: gid: %w", group, err)
	}
	return u, nil
}

// parseID reports whether s is a usable numeric uid or gid. 2³²−1 is
// refused: setuid(2) reads it as "leave unchanged".
func parseID(s string) (uint32, bool) {
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil || n == math.MaxUint32 {
		return 0, false
	}
	return uint32(n), true
}

func parseAccountID(s string) (uint32, error) {
	id, ok := parseID(s)
	if !ok {
		return 0, fmt.Errorf("%q is not a numeric id", s)
	}
	return id, nil
}

// credential returns the Credential that makes a process run as u, or nil
// to keep weft's own. Only root may switch: a weft running as euid/egid
// other than 0 starts processes for u only when u is weft's own user and
// group, and then leaves the supplementary groups as they are.
func credential(u *User, euid, egid int) (*syscall.Credential, error) {
	switch {
	case u == nil:
		return nil, nil
	case euid == 0:
		// Groups is set even when empty: Go then calls setgroups(0), which
		// drops root's supplementary groups.
		return &syscall.Credential{Uid: u.UID, Gid: u.GID, Groups: slices.Clone(u.Groups)}, nil
	case int64(u.UID) == int64(euid) && int64(u.GID) == int64(egid):
		return nil, nil
	default:
		return nil, fmt.Errorf("run as user %q (uid %d, gid %d): weft runs as uid %d, not root, and cannot switch users",
			u.Name, u.UID, u.GID, euid)
	}
}

// procLimits carries one process's limits through its start; see the top of
// this file for the order of its methods. It is used by one goroutine at a
// time: the supervisor, the spawner during the fork, then the watcher.
type procLimits struct {
	limits Limits
	cred   *syscall.Credential
	group  *cgroup // nil when no cgroup holds the memory limit
	log    *slog.Logger
}

// prepareLimits checks and prepares the limits of one process of fn,
// running as instance. log gets the one-time notice of the memory mechanism
// and any warning.
func prepareLimits(fn *Function, instance string, log *slog.Logger) (*procLimits, error) {
	cred, err := credential(fn.User, os.Geteuid(), os.Getegid())
	if err != nil {
		return nil, err
	}
	pl := &procLimits{limits: fn.Limits, cred: cred, log: log}
	if fn.Limits.Memory > 0 {
		if parent := memoryCgroup(log); parent != nil {
			g, err := parent.create(instance, fn.Limits.Memory)
			if err != nil {
				// The probe succeeded, so this is unexpected (a full
				// cgroup.max.descendants, say): RLIMIT_AS still bounds it.
				log.Warn("cannot create the process's cgroup, limiting memory with RLIMIT_AS instead", "err", err)
			}
			pl.group = g
		}
	}
	return pl, nil
}

// configure sets what the fork itself must do: switch user, join the cgroup.
func (pl *procLimits) configure(attr *syscall.SysProcAttr) {
	attr.Credential = pl.cred
	if pl.group != nil {
		attr.UseCgroupFD = true
		attr.CgroupFD = pl.group.fd
	}
}

// started runs right after a successful fork of pid, before anything reaps
// it (so the pid cannot have been reused): it sets the rlimits with prlimit.
func (pl *procLimits) started(pid int) error {
	if pl.group != nil {
		pl.group.closeFD()
	}
	if n := pl.limits.OpenFiles; n > 0 {
		lim := unix.Rlimit{Cur: uint64(n), Max: uint64(n)}
		if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, &lim, nil); err != nil {
			return fmt.Errorf("set open files limit %d: %w", n, err)
		}
	}
	if m := pl.limits.Memory; m > 0 && pl.group == nil {
		lim := unix.Rlimit{Cur: uint64(m), Max: uint64(m)}
		if err := unix.Prlimit(pid, unix.RLIMIT_AS, &lim, nil); err != nil {
			return fmt.Errorf("set memory limit %s (RLIMIT_AS): %w", formatQuantity(m), err)
		}
	}
	return nil
}

// release runs once the process was reaped, or when it never started. It
// removes the process's cgroup and reports whether the OOM killer ended a
// process in it. It is safe to call more than once, and on nil.
func (pl *procLimits) release() (oomKilled bool) {
	if pl == nil || pl.group == nil {
		return false
	}
	g := pl.group
	pl.group = nil
	kills, err := g.remove()
	if err != nil {
		pl.log.Warn("cannot remove the process's cgroup", "cgroup", g.dir, "err", err)
	}
	return kills > 0
}

// oomError annotates how a process ended when the OOM killer ended it.
func (pl *procLimits) oomError(err error) error {
	return fmt.Errorf("%w: killed by the OOM killer at its memory limit %s (cgroup memory.max)", err, formatQuantity(pl.limits.Memory))
}

// memoryProbe holds the machine's memory-limit mechanism, found once per
// weft process: it is a property of the machine and of weft's own cgroup,
// not of a Pool, and probing writes to the cgroup tree.
var memoryProbe struct {
	once   sync.Once
	parent *cgroupParent
	err    error // why cgroup v2 is not used
}

// memoryCgroup returns weft's cgroup v2 group in which processes with a
// memory limit get their own group, or nil when memory limits fall back to
// RLIMIT_AS. The first call probes the machine and logs the outcome at Info.
func memoryCgroup(log *slog.Logger) *cgroupParent {
	memoryProbe.once.Do(func() {
		mountinfo, err := os.ReadFile("/proc/self/mountinfo")
		if err != nil {
			memoryProbe.err = err
		} else if self, err := os.ReadFile("/proc/self/cgroup"); err != nil {
			memoryProbe.err = err
		} else {
			memoryProbe.parent, memoryProbe.err = probeCgroup(string(mountinfo), string(self))
		}
		if memoryProbe.err != nil {
			log.Info("memory limits use RLIMIT_AS (virtual address space): cgroup v2 is not usable",
				"mechanism", "rlimit", "reason", memoryProbe.err.Error())
			return
		}
		log.Info("memory limits use a cgroup v2 group per process", "mechanism", "cgroup", "cgroup", memoryProbe.parent.dir)
	})
	return memoryProbe.parent
}

// cgroupParent is weft's own cgroup v2 group, with the memory controller
// enabled for its children.
type cgroupParent struct {
	dir string
}

// probeCgroup finds weft's cgroup v2 group from the contents of
// /proc/self/mountinfo and /proc/self/cgroup, and makes sure that child
// groups with a memory.max can be made there: the hierarchy has the memory
// controller, the group may use it, it is enabled in the group's
// cgroup.subtree_control (probeCgroup enables it when it is not), and a
// child group can be created and removed.
func probeCgroup(mountinfo, self string) (*cgroupParent, error) {
	mnt, ok := cgroup2Mount(mountinfo)
	if !ok {
		return nil, errors.New("no cgroup2 file system is mounted")
	}
	path, ok := unifiedPath(self)
	if !ok {
		return nil, errors.New("weft is in no cgroup v2 group")
	}
	if mnt.root != "/" { // a bind mount of part of the hierarchy
		rel, ok := strings.CutPrefix(path, mnt.root)
		if !ok || (rel != "" && rel[0] != '/') {
			return nil, fmt.Errorf("weft's cgroup %s is outside the cgroup2 mount at %s", path, mnt.point)
		}
		path = rel
	}
	dir := filepath.Join(mnt.point, path)
	if !hasController(filepath.Join(mnt.point, "cgroup.controllers")) {
		why := ""
		if v1Memory(mountinfo) {
			why = "; it is attached to a cgroup v1 hierarchy (hybrid mode)"
		}
		return nil, fmt.Errorf("the cgroup2 hierarchy at %s has no memory controller%s", mnt.point, why)
	}
	if !hasController(filepath.Join(dir, "cgroup.controllers")) {
		return nil, fmt.Errorf("the memory controller is not delegated to weft's cgroup %s", dir)
	}
	subtree := filepath.Join(dir, "cgroup.subtree_control")
	if !hasController(subtree) {
		if err := os.WriteFile(subtree, []byte("+memory"), 0); err != nil {
			return nil, fmt.Errorf("enable the memory controller for child groups of weft's cgroup %s: %w", dir, err)
		}
		if !hasController(subtree) {
			return nil, fmt.Errorf("the memory controller did not become enabled in %s", subtree)
		}
	}
	probe := filepath.Join(dir, "weft-probe-"+strconv.Itoa(os.Getpid()))
	if err := os.Mkdir(probe, 0o755); err != nil {
		return nil, fmt.Errorf("create a child group of weft's cgroup: %w", err)
	}
	_, statErr := os.Stat(filepath.Join(probe, "memory.max"))
	if err := unix.Rmdir(probe); err != nil {
		return nil, fmt.Errorf("remove the probe group %s: %w", probe, err)
	}
	if statErr != nil {
		return nil, fmt.Errorf("a child group of weft's cgroup has no memory.max: %w", statErr)
	}
	return &cgroupParent{dir: dir}, nil
}

type mount struct{ root, point string }

// cgroup2Mount returns the first cgroup2 mount listed in mountinfo
// (proc_pid_mountinfo(5)): /sys/fs/cgroup on a cgroup v2 machine,
// /sys/fs/cgroup/unified on a hybrid one.
func cgroup2Mount(mountinfo string) (mount, bool) {
	for line := range strings.Lines(mountinfo) {
		pre, post, ok := strings.Cut(line, " - ")
		f, g := strings.Fields(pre), strings.Fields(post)
		if ok && len(f) >= 5 && len(g) >= 1 && g[0] == "cgroup2" {
			return mount{root: unescapeMountinfo(f[3]), point: unescapeMountinfo(f[4])}, true
		}
	}
	return mount{}, false
}

// v1Memory reports whether mountinfo lists a cgroup v1 hierarchy with the
// memory controller.
func v1Memory(mountinfo string) bool {
	for line := range strings.Lines(mountinfo) {
		_, post, _ := strings.Cut(line, " - ")
		if g := strings.Fields(post); len(g) >= 3 && g[0] == "cgroup" && slices.Contains(strings.Split(g[2], ","), "memory") {
			return true
		}
	}
	return false
}

// unescapeMountinfo undoes the octal escapes (\040 for a space) of
// mountinfo's path fields.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// unifiedPath returns the cgroup v2 path of /proc/self/cgroup's "0::PATH"
// line.
func unifiedPath(self string) (string, bool) {
	for line := range strings.Lines(self) {
		if p, ok := strings.CutPrefix(strings.TrimRight(line, "\n"), "0::"); ok {
			return p, true
		}
	}
	return "", false
}

// hasController reports whether the controller list in file names memory.
func hasController(file string) bool {
	data, err := os.ReadFile(file)
	return err == nil && slices.Contains(strings.Fields(string(data)), "memory")
}

// cgroupNames holds the names of the groups this weft process created and
// has not removed yet, so that two pools (or a function removed and applied
// again while its old instance drains) never share a group.
var cgroupNames = struct {
	sync.Mutex
	used map[string]bool
}{used: map[string]bool{}}

// cgroup is the group of one process.
type cgroup struct {
	dir  string
	name string
	fd   int // open from create until started; -1 after
}

// create makes the group of one process of instance, with memory.max set to
// memory bytes, no swap, and the whole group OOM-killed together, and
// opens it for clone3. The name is weft-<instance>, with a ".N" suffix when
// this weft already uses that name. A group of that name that this weft did
// not create, left by an earlier weft process, is removed first when empty
// (if it holds processes the next suffix is tried). Two weft processes in
// one cgroup running functions of the same name could, in the moment
// between one's mkdir and its fork, remove each other's group; that start
// then fails and is retried like any other.
func (cp *cgroupParent) create(instance string, memory int64) (*cgroup, error) {
	for n := 1; n <= 100; n++ {
		name := "weft-" + instance
		if n > 1 {
			name += "." + strconv.Itoa(n)
		}
		cgroupNames.Lock()
		taken := cgroupNames.used[name]
		cgroupNames.used[name] = true
		cgroupNames.Unlock()
		if taken {
			continue
		}
		g := &cgroup{dir: filepath.Join(cp.dir, name), name: name, fd: -1}
		err := os.Mkdir(g.dir, 0o755)
		if errors.Is(err, fs.ErrExist) && unix.Rmdir(g.dir) == nil {
			err = os.Mkdir(g.dir, 0o755)
		}
		if errors.Is(err, fs.ErrExist) {
			g.forget() // a stale group with processes in it: try the next name
			continue
		}
		if err != nil {
			g.forget()
			return nil, err
		}
		if err := g.setup(memory); err != nil {
			_, _ = g.remove()
			return nil, err
		}
		return g, nil
	}
	return nil, fmt.Errorf("no free cgroup name for instance %s", instance)
}

func (g *cgroup) setup(memory int64) error {
	if err := os.WriteFile(filepath.Join(g.dir, "memory.max"), []byte(strconv.FormatInt(memory, 10)), 0); err != nil {
		return err
	}
	// Without swap accounting there is no memory.swap.max; with it, 0 makes
	// memory.max bound all of the process's memory, as in Kubernetes.
	if err := os.WriteFile(filepath.Join(g.dir, "memory.swap.max"), []byte("0"), 0); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	// Best effort (Linux 4.19+): an OOM kill ends the whole instance, not
	// one of its processes at random.
	_ = os.WriteFile(filepath.Join(g.dir, "memory.oom.group"), []byte("1"), 0)
	fd, err := unix.Open(g.dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open cgroup %s: %w", g.dir, err)
	}
	g.fd = fd
	return nil
}

func (g *cgroup) closeFD() {
	if g.fd >= 0 {
		_ = unix.Close(g.fd)
		g.fd = -1
	}
}

func (g *cgroup) forget() {
	cgroupNames.Lock()
	delete(cgroupNames.used, g.name)
	cgroupNames.Unlock()
}

// remove kills every process still in the group (cgroup.kill, Linux 5.14+),
// waits until it is empty, removes it and returns how many processes the OOM
// killer ended in it.
func (g *cgroup) remove() (oomKills int, err error) {
	g.closeFD()
	oomKills = oomKillCount(filepath.Join(g.dir, "memory.events"))
	_ = os.WriteFile(filepath.Join(g.dir, "cgroup.kill"), []byte("1"), 0)
	deadline := time.Now().Add(cgroupRemoveTimeout)
	for pause := time.Millisecond; ; pause = min(2*pause, 100*time.Millisecond) {
		err = unix.Rmdir(g.dir)
		if !errors.Is(err, unix.EBUSY) || time.Now().After(deadline) {
			break
		}
		// Killed processes leave the group when the kernel has torn them
		// down; there is no event to wait for short of inotify on
		// cgroup.events, and this is off every hot path.
		time.Sleep(pause)
	}
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return oomKills, fmt.Errorf("remove cgroup %s: %w", g.dir, err)
	}
	g.forget()
	return oomKills, nil
}

// oomKillCount reads the oom_kill counter of a memory.events file.
func oomKillCount(file string) int {
	f, err := os.Open(file)
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "oom_kill "); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(v))
			return n
		}
	}
	return 0
}
