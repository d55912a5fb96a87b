package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/weft-dev/weft/internal/testutil"
)

// Binaries built once per test run: the real weft (with the race detector)
// and the Go test function.
var weftBin, recorderBin string

func TestMain(m *testing.M) {
	if os.Getenv(benchParentEnv) != "" {
		benchParent() // never returns: TestBenchChildrenDieWithTheBench kills it
	}
	flag.Parse()
	if testing.Short() {
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "weft-e2e-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	weftBin, recorderBin = filepath.Join(dir, "weft"), filepath.Join(dir, "recorder")
	for _, b := range [][]string{
		{"build", "-race", "-o", weftBin, "."},
		{"build", "-o", recorderBin, "./testdata/recorder"},
	} {
		cmd := exec.Command("go", b...)
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "build:", err)
			os.Exit(1)
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// weftNode is a real `weft serve` process on free loopback ports.
type weftNode struct {
	t         *testing.T
	data      string
	http      string
	nats      string
	router    string
	manifests string
	extra     []string // more serve flags
	bin       string   // the weft binary; "" means weftBin
	cmd       *exec.Cmd
	log       *syncBuffer
	exited    chan struct{}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func skipShort(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end test: runs the real binary; skipped with -short")
	}
}

// startNode runs weft serve -f manifests on data, with any extra serve
// flags, and waits for /readyz.
func startNode(t *testing.T, manifests, data string, extra ...string) *weftNode {
	t.Helper()
	return startNodeBin(t, weftBin, manifests, data, extra...)
}

// startNodeBin is startNode with another weft binary (one built without the
// race detector, for memory figures).
func startNodeBin(t *testing.T, bin, manifests, data string, extra ...string) *weftNode {
	t.Helper()
	n := &weftNode{t: t, data: data, manifests: manifests, extra: extra, bin: bin,
		http: testutil.FreeAddr(t), nats: testutil.FreeAddr(t), router: testutil.FreeAddr(t)}
	n.start()
	return n
}

func (n *weftNode) start() {
	t := n.t
	t.Helper()
	n.log = &syncBuffer{}
	n.exited = make(chan struct{})
	args := append([]string{"serve", "-f", n.manifests, "--data", n.data,
		"--http", n.http, "--nats", n.nats, "--router", n.router, "--log-level", "debug"}, n.extra...)
	bin := n.bin
	if bin == "" {
		bin = weftBin
	}
	n.cmd = exec.Command(bin, args...)
	n.cmd.Stdout, n.cmd.Stderr = n.log, n.log
	if err := n.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	cmd, exited := n.cmd, n.exited
	go func() { _ = cmd.Wait(); close(exited) }() // owned: stop and kill9 wait on exited
	t.Cleanup(n.stop)
	testutil.WaitFor(t, 90*time.Second, func() bool {
		select {
		case <-exited:
			t.Fatalf("weft serve exited early:\n%s", n.log.String())
		default:
		}
		resp, err := http.Get("http://" + n.http + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}, "weft serve not ready")
}

// stop sends SIGTERM and waits; a node that does not stop in 30s is killed
// and the test fails.
func (n *weftNode) stop() {
	select {
	case <-n.exited:
		return
	default:
	}
	_ = n.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-n.exited:
		if code := n.cmd.ProcessState.ExitCode(); code != 0 {
			n.t.Errorf("weft serve exited %d after SIGTERM:\n%s", code, tail(n.log.String(), 40))
		}
	case <-time.After(30 * time.Second):
		_ = n.cmd.Process.Kill()
		<-n.exited
		n.t.Errorf("weft serve did not stop within 30s of SIGTERM")
	}
	if n.t.Failed() {
		n.t.Logf("weft serve log (tail):\n%s", tail(n.log.String(), 60))
	}
}

func (n *weftNode) kill9() {
	_ = n.cmd.Process.Signal(syscall.SIGKILL)
	<-n.exited
}

// cli runs a client verb against the node and returns stdout, stderr and
// the exit code.
func (n *weftNode) cli(args ...string) (string, string, int) {
	n.t.Helper()
	cmd := exec.Command(weftBin, append([]string{"--server", "http://" + n.http}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			n.t.Fatalf("weft %v: %v", args, err)
		}
		code = ee.ExitCode()
	}
	return out.String(), errb.String(), code
}

// mustCLI runs a client verb that must succeed and decodes its -o json
// output into out when out is not nil.
func (n *weftNode) mustCLI(out any, args ...string) string {
	n.t.Helper()
	stdout, stderr, code := n.cli(args...)
	if code != 0 {
		n.t.Fatalf("weft %v: exit %d: %s", args, code, stderr)
	}
	if out != nil {
		if err := json.Unmarshal([]byte(stdout), out); err != nil {
			n.t.Fatalf("weft %v: %v in %q", args, err, stdout)
		}
	}
	return stdout
}

func (n *weftNode) post(contentType string, headers map[string]string, body string) int {
	n.t.Helper()
	req, err := http.NewRequest(http.MethodPost, "http://"+n.http+"/", strings.NewReader(body))
	if err != nil {
		n.t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		n.t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// records reads the JSON lines a test function appended to path.
func records(t *testing.T, path string) []map[string]string {
	t.Helper()
	f, err := os.Open(path)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []map[string]string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var m map[string]string
		if json.Unmarshal(sc.Bytes(), &m) == nil { // a line cut by kill -9 is skipped
			out = append(out, m)
		}
	}
	return out
}

func ids(recs []map[string]string) map[string]int {
	out := map[string]int{}
	for _, r := range recs {
		out[r["id"]]++
	}
	return out
}

// writeFile writes path, creating its folder when missing.
func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	// Write then rename, as editors do, so the watcher never reads half a file.
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func tail(s string, lines int) string {
	parts := strings.Split(s, "\n")
	if len(parts) > lines {
		parts = parts[len(parts)-lines:]
	}
	return strings.Join(parts, "\n")
}

// writeLoadManifests writes, into manifests, a Function name running the
// recorder (its records go to out; each request takes delay) with the given
// concurrency and scale, and a Trigger that sends it every event with 10
// retries 50 ms apart: the set-up of the crash and shutdown tests.
func writeLoadManifests(t *testing.T, manifests, name, out, delay string, concurrency int, scale string) {
	t.Helper()
	if err := os.MkdirAll(manifests, 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(manifests, "load.yaml"), fmt.Sprintf(`apiVersion: weft.dev/v1
kind: Function
metadata: {name: %s}
spec:
  command: [%q]
  env: [{name: OUT, value: %q}, {name: DELAY, value: %s}]
  concurrency: %d
  scale: %s
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: everything}
spec:
  subscriber: {ref: {apiVersion: weft.dev/v1, kind: Function, name: %s}}
  delivery: {retry: 10, backoffDelay: PT0.05S}
`, name, recorderBin, out, delay, concurrency, scale, name))
}

// publishLoad posts one binary-mode event of type test.load and returns the
// status, or 0 when the request failed (weft gone: nothing acknowledged).
func publishLoad(client *http.Client, addr, source, id string) int {
	req, _ := http.NewRequest(http.MethodPost, "http://"+addr+"/", strings.NewReader(`{}`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("ce-specversion", "1.0")
	req.Header.Set("ce-id", id)
	req.Header.Set("ce-source", source)
	req.Header.Set("ce-type", "test.load")
	resp, err := client.Do(req)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// waitDelivered polls until every id in acked was recorded in out, and
// fails naming some missing ones at the deadline.
func waitDelivered(t *testing.T, out string, acked *sync.Map, timeout time.Duration) {
	t.Helper()
	var missing []string
	for deadline := time.Now().Add(timeout); ; {
		got := ids(records(t, out))
		missing = missing[:0]
		acked.Range(func(k, _ any) bool {
			if got[k.(string)] == 0 {
				missing = append(missing, k.(string))
			}
			return true
		})
		if len(missing) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d acknowledged events never delivered, e.g. %v", len(missing), missing[:min(5, len(missing))])
		}
		<-time.After(50 * time.Millisecond) // a polling interval
	}
}

// duplicates counts the ids recorded in out more than once.
func duplicates(t *testing.T, out string) (distinct, dups int) {
	t.Helper()
	got := ids(records(t, out))
	for _, c := range got {
		if c > 1 {
			dups++
		}
	}
	return len(got), dups
}
