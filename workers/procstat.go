package workers

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"unsafe"
)

// procStat is what the Meter reads from /proc/<pid>/stat; see proc(5) for
// the fields.
type procStat struct {
	PID   int
	Comm  string // the executable's name, up to 15 bytes; may hold spaces and parentheses
	State byte   // R, S, D, Z, ...
	PPID  int
	PGRP  int
	// UTime and STime are the CPU time the process spent in user and kernel
	// mode; CUTime and CSTime those of its children that ended and that it
	// waited for (reaped). All four count clock ticks (see clockTicks).
	UTime, STime, CUTime, CSTime uint64
	// RSSPages is the resident set in pages (os.Getpagesize() bytes each).
	// The kernel keeps it per thread and folds it in lazily, so it may lag
	// by a few pages; a zombie's is 0.
	RSSPages int64
}

// cpuTicks is the CPU time of the process and of its reaped children.
func (s procStat) cpuTicks() uint64 { return s.UTime + s.STime + s.CUTime + s.CSTime }

// statFields is how many fields after comm parseProcStat needs: up to
// field 24 (rss), field 3 being the first after comm.
const statFields = 24 - 2

// parseProcStat parses the one line of /proc/<pid>/stat. The second field,
// comm, is set by the process itself (prctl PR_SET_NAME, or the name of the
// executable) and may contain spaces and parentheses, so it is taken as
// everything between the first '(' and the LAST ')'; the kernel writes no
// ')' after it. The other fields are split on spaces.
func parseProcStat(b []byte) (procStat, error) {
	var st procStat
	open := bytes.IndexByte(b, '(')
	end := bytes.LastIndexByte(b, ')')
	if open < 0 || end < open {
		return st, errors.New("proc stat: no (comm)")
	}
	pid, err := strconv.Atoi(string(bytes.TrimSpace(b[:open])))
	if err != nil {
		return st, fmt.Errorf("proc stat: pid: %w", err)
	}
	st.PID = pid
	st.Comm = string(b[open+1 : end])
	f := bytes.Fields(b[end+1:])
	if len(f) < statFields {
		return st, fmt.Errorf("proc stat of %d: %d fields after comm, want at least %d", pid, len(f), statFields)
	}
	if len(f[0]) != 1 {
		return st, fmt.Errorf("proc stat of %d: state %q", pid, f[0])
	}
	st.State = f[0][0]
	// field n of proc(5) is f[n-3]
	num := func(n int) int64 {
		if err != nil {
			return 0
		}
		var v int64
		if v, err = strconv.ParseInt(string(f[n-3]), 10, 64); err != nil {
			err = fmt.Errorf("proc stat of %d: field %d: %w", pid, n, err)
		}
		return v
	}
	st.PPID, st.PGRP = int(num(4)), int(num(5))
	// utime and stime are unsigned in the kernel; cutime, cstime and rss
	// signed but never negative in practice.
	st.UTime, st.STime = uint64(max(num(14), 0)), uint64(max(num(15), 0))
	st.CUTime, st.CSTime = uint64(max(num(16), 0)), uint64(max(num(17), 0))
	st.RSSPages = max(num(24), 0)
	if err != nil {
		return procStat{}, err
	}
	return st, nil
}

// groupStat sums the processes of one process group at one moment.
type groupStat struct {
	ticks    uint64 // CPU of every member and of the children they reaped, in clock ticks
	rssBytes int64  // resident memory of every member (shared pages counted in each, as ps does)
	procs    int    // members found, zombies included
}

// scanGroups reads the stat of every process under root (normally "/proc")
// and sums, per process group in pgids, those whose pgrp is that group.
// Processes that end during the scan are skipped; an error means root itself
// could not be listed.
//
// A group's CPU includes each member's reaped children (cutime, cstime):
// when a member such as `go run` or a shell waits for a child, the kernel
// moves the child's CPU into its parent's counters, so the group's total
// stays continuous and the child's CPU is not lost at the moment it ends.
// What is lost is the CPU a member used since the last scan when it is
// reaped by a process outside the group (an orphan re-parented to init),
// and CPU in children reaped by nobody.
func scanGroups(root string, pgids map[int]bool) (map[int]groupStat, error) {
	d, err := os.Open(root)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", root, err)
	}
	names, err := d.Readdirnames(-1)
	_ = d.Close()
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", root, err)
	}
	page := int64(os.Getpagesize())
	out := make(map[int]groupStat, len(pgids))
	buf := make([]byte, 0, 1024) // a stat line is ~300 bytes; comm is at most 64
	for _, name := range names {
		if name == "" || name[0] < '0' || name[0] > '9' {
			continue
		}
		buf, err = readSmall(filepath.Join(root, name, "stat"), buf[:0])
		if err != nil {
			continue // ended since the listing, or not ours to read
		}
		st, err := parseProcStat(buf)
		if err != nil || !pgids[st.PGRP] {
			continue
		}
		g := out[st.PGRP]
		g.ticks += st.cpuTicks()
		g.rssBytes += st.RSSPages * page
		g.procs++
		out[st.PGRP] = g
	}
	return out, nil
}

// readSmall reads a whole small file into buf, reusing its storage.
func readSmall(path string, buf []byte) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return buf, err
	}
	defer f.Close()
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := f.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if errors.Is(err, io.EOF) {
			return buf, nil
		}
		if err != nil {
			return buf, err
		}
	}
}

// atClkTck is the auxiliary-vector key of the clock-tick rate (USER_HZ).
const atClkTck = 17

// clockTicks returns how many clock ticks make a second in /proc's CPU
// times: sysconf(_SC_CLK_TCK), which glibc and musl take from the AT_CLKTCK
// entry of the auxiliary vector that the kernel hands every process. It is
// USER_HZ, 100 on every architecture Go supports on Linux whatever the
// kernel's internal HZ, and 100 is also the answer when the vector cannot be
// read.
var clockTicks = sync.OnceValue(func() int64 {
	b, err := os.ReadFile("/proc/self/auxv")
	if err != nil {
		return 100
	}
	if hz := auxvValue(b, atClkTck); hz > 0 {
		return int64(hz)
	}
	return 100
})

// auxvValue returns the value of key in an auxiliary vector of native words,
// or 0 when it is absent.
func auxvValue(b []byte, key uint64) uint64 {
	word := int(unsafe.Sizeof(uintptr(0)))
	read := func(p []byte) uint64 {
		if word == 8 {
			return binary.NativeEndian.Uint64(p)
		}
		return uint64(binary.NativeEndian.Uint32(p))
	}
	for i := 0; i+2*word <= len(b); i += 2 * word {
		k, v := read(b[i:]), read(b[i+word:])
		if k == 0 { // AT_NULL ends the vector
			break
		}
		if k == key {
			return v
		}
	}
	return 0
}
