package workers

import (
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/weft-dev/weft/internal/testutil"
)

// statLine renders a /proc/<pid>/stat line as Linux 6.x writes it (52
// fields), with the fields the Meter reads set and the others plausible.
func statLine(pid int, comm string, state byte, pgrp int, utime, stime, cutime, cstime uint64, rss int64) string {
	return fmt.Sprintf("%d (%s) %c 1 %d %d 0 -1 4194560 120 0 0 0 %d %d %d %d 20 0 1 0 12345 10485760 %d "+
		"18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n",
		pid, comm, state, pgrp, pgrp, utime, stime, cutime, cstime, rss)
}

func TestProcStatParse(t *testing.T) {
	t.Parallel()
	cases := map[string]struct {
		comm string
	}{
		"plain":                 {"sleep"},
		"spaces":                {"my worker"},
		"closing paren inside":  {"a) b"},
		"both parens":           {"(a) b)"},
		"looks like fields":     {"x) R 1 2 3"},
		"empty":                 {""},
		"only parens":           {")("},
		"full 15 bytes of junk": {") ) ) ) ) ) ) )"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			line := statLine(4242, tc.comm, 'S', 4200, 11, 22, 33, 44, 555)
			st, err := parseProcStat([]byte(line))
			if err != nil {
				t.Fatalf("parse %q: %v", line, err)
			}
			want := procStat{PID: 4242, Comm: tc.comm, State: 'S', PPID: 1, PGRP: 4200,
				UTime: 11, STime: 22, CUTime: 33, CSTime: 44, RSSPages: 555}
			if st != want {
				t.Fatalf("parse %q:\n got %+v\nwant %+v", line, st, want)
			}
			if st.cpuTicks() != 11+22+33+44 {
				t.Fatalf("cpuTicks = %d", st.cpuTicks())
			}
		})
	}
}

func TestProcStatParseRefusesBroken(t *testing.T) {
	t.Parallel()
	cases := map[string]string{
		"empty":          "",
		"no comm":        "12 sleep S 1 12",
		"no close paren": "12 (sleep S 1 12",
		"bad pid":        "x (sleep) S 1 12",
		"truncated":      "12 (sleep) S 1 12 12 0 -1",
		"bad number":     "12 (sleep) S 1 x 12 0 -1 4194560 120 0 0 0 1 2 3 4 20 0 1 0 12345 10485760 5",
		"bad state":      "12 (sleep) SS 1 12 12 0 -1 4194560 120 0 0 0 1 2 3 4 20 0 1 0 12345 10485760 5",
	}
	for name, line := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			if st, err := parseProcStat([]byte(line)); err == nil {
				t.Fatalf("parse %q = %+v, want an error", line, st)
			}
		})
	}
}

// TestProcStatSelf reads the test's own stat: the real kernel format.
func TestProcStatSelf(t *testing.T) {
	t.Parallel()
	b, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		t.Fatal(err)
	}
	st, err := parseProcStat(b)
	if err != nil {
		t.Fatalf("parse %q: %v", b, err)
	}
	if st.PID != os.Getpid() || st.PGRP != syscall.Getpgrp() || st.PPID != os.Getppid() {
		t.Errorf("pid/pgrp/ppid = %d/%d/%d, want %d/%d/%d", st.PID, st.PGRP, st.PPID, os.Getpid(), syscall.Getpgrp(), os.Getppid())
	}
	if st.RSSPages <= 0 {
		t.Errorf("RSS = %d pages, want > 0", st.RSSPages)
	}
	if !strings.ContainsRune("RSD", rune(st.State)) { // the main thread's state; a goroutine on another thread reads
		t.Errorf("state = %c, want R, S or D", st.State)
	}
}

// TestProcStatRealTrickyComm runs a program whose name, and so whose comm,
// holds parentheses and spaces, and reads its real stat line.
func TestProcStatRealTrickyComm(t *testing.T) {
	t.Parallel()
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Fatal(err)
	}
	name := "(a) b) c"
	link := filepath.Join(t.TempDir(), name)
	if err := os.Symlink(sleep, link); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(link, "60")
	cmd.Args[0] = "sleep"
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { killGroup(cmd) })
	pid := cmd.Process.Pid
	var st procStat
	testutil.WaitFor(t, 10*time.Second, func() bool { // comm changes at execve, just after fork
		b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
		if err != nil {
			t.Fatal(err)
		}
		if st, err = parseProcStat(b); err != nil {
			t.Fatalf("parse %q: %v", b, err)
		}
		return st.Comm == name
	}, "comm of pid %d to become %q", pid, name)
	if st.PID != pid || st.PGRP != pid || st.PPID != os.Getpid() {
		t.Errorf("stat = %+v, want pid = pgrp = %d, ppid %d", st, pid, os.Getpid())
	}
}

// TestProcStatScanGroups sums a fixture /proc tree by process group.
func TestProcStatScanGroups(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	write := func(name, content string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Join(root, name), 0o755); err != nil {
			t.Fatal(err)
		}
		if content != "" {
			if err := os.WriteFile(filepath.Join(root, name, "stat"), []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	write("100", statLine(100, "leader", 'S', 100, 10, 5, 100, 50, 1000))
	write("101", statLine(101, "(a) b)", 'R', 100, 7, 3, 0, 0, 200)) // a child in the group
	write("102", statLine(102, "zombie", 'Z', 100, 4, 1, 0, 0, 0))   // ended, not reaped: still counts
	write("200", statLine(200, "other", 'R', 200, 1000, 1000, 0, 0, 9999))
	write("300", statLine(300, "tracked", 'S', 300, 1, 1, 0, 0, 1))
	write("400", "")                                         // vanished between listing and reading: no stat file
	write("401", "garbage\n")                                // unparsable: skipped
	write("self", statLine(1, "x", 'S', 100, 1, 1, 1, 1, 1)) // not a pid
	write("sys", "")

	got, err := scanGroups(root, map[int]bool{100: true, 300: true, 999: true})
	if err != nil {
		t.Fatal(err)
	}
	page := int64(os.Getpagesize())
	want := map[int]groupStat{
		100: {ticks: 10 + 5 + 100 + 50 + 7 + 3 + 4 + 1, rssBytes: 1200 * page, procs: 3},
		300: {ticks: 2, rssBytes: page, procs: 1},
	}
	if len(got) != len(want) {
		t.Fatalf("groups = %+v, want %+v", got, want)
	}
	for pg, w := range want {
		if got[pg] != w {
			t.Errorf("group %d = %+v, want %+v", pg, got[pg], w)
		}
	}
	if _, err := scanGroups(filepath.Join(root, "missing"), map[int]bool{1: true}); err == nil {
		t.Error("scanGroups of a missing root: no error")
	}
}

// TestProcStatScanRealGroup finds a real child and its grandchild in the
// child's process group.
func TestProcStatScanRealGroup(t *testing.T) {
	t.Parallel()
	cmd := startGroup(t, "sleep 60 & sleep 60 & wait")
	var got groupStat
	waitGroup(t, cmd.Process.Pid, func(g groupStat) bool { got = g; return g.procs == 3 && g.rssBytes > 0 })
	if got.procs != 3 {
		t.Fatalf("group %d: %+v, want 3 processes", cmd.Process.Pid, got)
	}
}

func TestProcStatClockTicks(t *testing.T) {
	t.Parallel()
	// Every architecture Go supports on Linux has USER_HZ 100.
	if hz := clockTicks(); hz != 100 {
		t.Errorf("clockTicks() = %d, want 100", hz)
	}
	word := int(unsafe.Sizeof(uintptr(0)))
	vec := func(pairs ...uint64) []byte {
		b := make([]byte, len(pairs)*word)
		for i, v := range pairs {
			if word == 8 {
				binary.NativeEndian.PutUint64(b[i*word:], v)
			} else {
				binary.NativeEndian.PutUint32(b[i*word:], uint32(v))
			}
		}
		return b
	}
	if v := auxvValue(vec(6, 4096, atClkTck, 250, 0, 0), atClkTck); v != 250 {
		t.Errorf("auxvValue = %d, want 250", v)
	}
	if v := auxvValue(vec(6, 4096, 0, 0, atClkTck, 250), atClkTck); v != 0 {
		t.Errorf("auxvValue past AT_NULL = %d, want 0", v)
	}
	if v := auxvValue(vec(6, 4096)[:word+1], atClkTck); v != 0 {
		t.Errorf("auxvValue of a truncated vector = %d, want 0", v)
	}
}

// startGroup runs script with /bin/sh as the leader of a new process group
// (pgid == pid, as the Pool starts workers) and kills the whole group when
// the test ends.
func startGroup(t *testing.T, script string) *exec.Cmd {
	t.Helper()
	cmd := groupCmd(script)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { killGroup(cmd) })
	return cmd
}

// groupCmd is /bin/sh -c script in a new process group; Pdeathsig kills it
// should the test binary die first.
func groupCmd(script string) *exec.Cmd {
	cmd := exec.Command("/bin/sh", "-c", script)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	return cmd
}

// killGroup kills the command's process group and reaps the leader.
func killGroup(cmd *exec.Cmd) {
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	_ = cmd.Wait()
}

// waitGroup polls the real /proc until the process group's sum satisfies
// cond, and fails the test after 10s.
func waitGroup(t *testing.T, pgid int, cond func(groupStat) bool) {
	t.Helper()
	testutil.WaitFor(t, 10*time.Second, func() bool {
		got, err := scanGroups("/proc", map[int]bool{pgid: true})
		if err != nil {
			t.Fatal(err)
		}
		return cond(got[pgid])
	}, "process group %d", pgid)
}
