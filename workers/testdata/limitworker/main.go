// Command limitworker is the test worker of package workers' process limits.
// It follows the worker contract (serve HTTP on 127.0.0.1:$PORT, receive
// binary-mode CloudEvents) and answers each event with a CloudEvent whose
// JSON data reports what it runs under: its pid, uid, gid and supplementary
// groups, its RLIMIT_NOFILE and RLIMIT_AS, and its cgroup v2 path. An event
// with data {"alloc_mib": N} first allocates N MiB and touches every page,
// so that a memory limit stops it: the OOM killer under a cgroup, a failed
// allocation (the Go runtime aborts) under RLIMIT_AS.
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"syscall"
)

var hoard [][]byte // keeps allocations alive

type rlimit struct {
	Cur uint64 `json:"cur"`
	Max uint64 `json:"max"`
}

func main() {
	fmt.Printf("limitworker starting pid=%d uid=%d\n", os.Getpid(), os.Getuid())
	http.HandleFunc("POST /", handle)
	err := http.ListenAndServe("127.0.0.1:"+os.Getenv("PORT"), nil)
	if !errors.Is(err, http.ErrServerClosed) {
		fmt.Fprintln(os.Stderr, "serve:", err)
		os.Exit(1)
	}
}

func handle(w http.ResponseWriter, r *http.Request) {
	var req struct {
		AllocMiB int `json:"alloc_mib"`
	}
	body, _ := io.ReadAll(r.Body)
	_ = json.Unmarshal(body, &req)
	if req.AllocMiB > 0 {
		fmt.Fprintf(os.Stderr, "allocating %d MiB\n", req.AllocMiB)
		b := make([]byte, req.AllocMiB<<20)
		for i := 0; i < len(b); i += 4096 {
			b[i] = 1
		}
		hoard = append(hoard, b)
	}
	groups, _ := os.Getgroups()
	data, _ := json.Marshal(map[string]any{
		"pid":       os.Getpid(),
		"uid":       os.Getuid(),
		"euid":      os.Geteuid(),
		"gid":       os.Getgid(),
		"groups":    groups,
		"nofile":    getrlimit(syscall.RLIMIT_NOFILE),
		"as":        getrlimit(syscall.RLIMIT_AS),
		"cgroup":    cgroupPath(),
		"alloc_mib": req.AllocMiB,
	})
	w.Header().Set("Ce-Specversion", "1.0")
	w.Header().Set("Ce-Id", "reply-"+r.Header.Get("Ce-Id"))
	w.Header().Set("Ce-Source", "/workers/testdata/limitworker")
	w.Header().Set("Ce-Type", "dev.weft.test.reply")
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(data)
}

func getrlimit(resource int) rlimit {
	var l syscall.Rlimit
	_ = syscall.Getrlimit(resource, &l)
	return rlimit{Cur: l.Cur, Max: l.Max}
}

// cgroupPath returns the cgroup v2 path of /proc/self/cgroup.
func cgroupPath() string {
	data, _ := os.ReadFile("/proc/self/cgroup")
	for _, line := range strings.Split(string(data), "\n") {
		if p, ok := strings.CutPrefix(line, "0::"); ok {
			return p
		}
	}
	return ""
}
