// Command goworker is the Go test worker of package workers. It follows the
// worker contract (serve HTTP on 127.0.0.1:$PORT, receive binary-mode
// CloudEvents) and misbehaves on demand, driven by the event's JSON data:
//
//	{"sleep_ms": 50}            hold the request this long
//	{"wait_file": "/tmp/x"}     hold the request until the file exists
//	{"status": 503}             answer with this status
//	{"crash": true}             print to stderr and exit 3 mid-request
//	{"stdout": "a", "stderr": "b"}  print these lines first
//
// and by its environment: CRASH_ON_START=1 exits 2 before listening,
// READY_DELAY=300ms makes GET /healthz answer 503 for that long,
// IGNORE_TERM=1 ignores SIGTERM, SPAWN_CHILD=1 starts a `sleep` child in its
// process group. The reply is a CloudEvent whose JSON data reports the
// worker's pid, port, environment and the most requests it ever held at once.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"sync"
	"syscall"
	"time"
)

type request struct {
	SleepMS  int    `json:"sleep_ms"`
	WaitFile string `json:"wait_file"`
	Status   int    `json:"status"`
	Crash    bool   `json:"crash"`
	Stdout   string `json:"stdout"`
	Stderr   string `json:"stderr"`
}

var (
	mu          sync.Mutex
	inflight    int
	maxInflight int
	childPID    int
	readyAt     time.Time
)

func main() {
	port := os.Getenv("PORT")
	fmt.Printf("worker starting pid=%d port=%s\n", os.Getpid(), port)
	if os.Getenv("CRASH_ON_START") == "1" {
		fmt.Fprintln(os.Stderr, "crash on start")
		os.Exit(2)
	}
	if os.Getenv("IGNORE_TERM") == "1" {
		signal.Ignore(syscall.SIGTERM)
	}
	if os.Getenv("SPAWN_CHILD") == "1" {
		c := exec.Command("sleep", "300")
		if err := c.Start(); err != nil {
			fmt.Fprintln(os.Stderr, "spawn child:", err)
			os.Exit(1)
		}
		childPID = c.Process.Pid
	}
	readyAt = time.Now()
	if d, err := time.ParseDuration(os.Getenv("READY_DELAY")); err == nil {
		readyAt = readyAt.Add(d)
	}

	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		if time.Now().Before(readyAt) {
			http.Error(w, "warming up", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("POST /", handle)
	srv := &http.Server{Addr: "127.0.0.1:" + port, Handler: mux}

	if os.Getenv("IGNORE_TERM") != "1" { // Notify would undo signal.Ignore
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
		defer stop()
		go func() {
			<-ctx.Done()
			fmt.Println("worker stopping")
			_ = srv.Shutdown(context.Background()) // finish in-flight requests
		}()
	}
	if err := srv.ListenAndServe(); !errors.Is(err, http.ErrServerClosed) {
		fmt.Fprintln(os.Stderr, "serve:", err)
		os.Exit(1)
	}
}

func handle(w http.ResponseWriter, r *http.Request) {
	mu.Lock()
	inflight++
	maxInflight = max(maxInflight, inflight)
	mu.Unlock()
	defer func() {
		mu.Lock()
		inflight--
		mu.Unlock()
	}()

	body, _ := io.ReadAll(r.Body)
	var req request
	_ = json.Unmarshal(body, &req)
	if req.Stdout != "" {
		fmt.Println(req.Stdout)
	}
	if req.Stderr != "" {
		fmt.Fprintln(os.Stderr, req.Stderr)
	}
	if req.Crash {
		fmt.Fprintln(os.Stderr, "crashing on demand")
		os.Exit(3)
	}
	if req.WaitFile != "" {
		for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
			if _, err := os.Stat(req.WaitFile); err == nil {
				break
			}
		}
	}
	time.Sleep(time.Duration(req.SleepMS) * time.Millisecond)
	if req.Status != 0 {
		http.Error(w, "failing on demand", req.Status)
		return
	}

	mu.Lock()
	peak := maxInflight
	mu.Unlock()
	cwd, _ := os.Getwd()
	data, _ := json.Marshal(map[string]any{
		"worker":       "go",
		"pid":          os.Getpid(),
		"port":         os.Getenv("PORT"),
		"path":         r.URL.Path,
		"id":           r.Header.Get("Ce-Id"),
		"type":         r.Header.Get("Ce-Type"),
		"max_inflight": peak,
		"env":          os.Environ(),
		"version":      os.Getenv("VERSION"),
		"cwd":          cwd,
		"ready":        !time.Now().Before(readyAt),
		"child_pid":    childPID,
	})
	w.Header().Set("Ce-Specversion", "1.0")
	w.Header().Set("Ce-Id", "reply-"+r.Header.Get("Ce-Id"))
	w.Header().Set("Ce-Source", "/workers/testdata/goworker")
	w.Header().Set("Ce-Type", "dev.weft.test.reply")
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(data)
}
