package main

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/weft-dev/weft/internal/testutil"
)

// TestSIGTERMUnderLoad stops weft with SIGTERM while events are published
// and delivered: it exits 0 within its drain bounds, leaves no worker
// process behind, and after a restart every acknowledged event reaches the
// function (in-flight work either finished or was left for redelivery).
func TestSIGTERMUnderLoad(t *testing.T) {
	skipShort(t)
	dir := t.TempDir()
	out := filepath.Join(dir, "received.jsonl")
	manifests := filepath.Join(dir, "manifests")
	writeLoadManifests(t, manifests, "slow", out, "20ms", 8, "{min: 1, max: 2, target: 4}")
	n := startNode(t, manifests, filepath.Join(dir, "data"))

	var acked sync.Map
	var nAcked atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	stopLoad := sync.OnceFunc(func() { close(stop); wg.Wait() })
	defer stopLoad() // also when the test fails half-way
	client := &http.Client{Timeout: 10 * time.Second}
	for w := range 4 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				id := fmt.Sprintf("term-%d-%d", w, i)
				if publishLoad(client, n.http, "/sigterm", id) == http.StatusAccepted {
					acked.Store(id, true)
					nAcked.Add(1)
				}
			}
		})
	}
	testutil.WaitFor(t, 30*time.Second, func() bool { return nAcked.Load() >= 300 }, "load never got going")

	var pids []int
	for _, in := range n.function(t, "slow").Instances {
		pids = append(pids, in.PID)
	}
	took := n.terminate()
	stopLoad()
	t.Logf("exited %v after SIGTERM with %d events acknowledged", took.Round(time.Millisecond), nAcked.Load())
	for _, pid := range pids {
		if pid > 0 && syscall.Kill(pid, 0) != syscall.ESRCH {
			t.Errorf("worker %d outlived weft", pid)
		}
	}

	n.start()
	r := checkDelivery(t, n, out, &acked, "everything")
	if r.Delivered != r.Acked {
		t.Errorf("not every acknowledged event was delivered: %v", r)
	}
	t.Logf("after restart: %v", r)
}

// TestSIGTERMWithAFunctionNeverReady stops a node whose only delivery waits
// for a function that never becomes ready (its command does not exist yet):
// the draining pool turns the waiting delivery away at once, so the node
// exits well before its 10 s drain instead of waiting it out, and the event
// is handed back uncounted. The trigger allows one attempt, so a turned-away
// delivery counted as a failed attempt would be dead-lettered; instead, once
// the command exists and the node restarts, the event is delivered.
func TestSIGTERMWithAFunctionNeverReady(t *testing.T) {
	skipShort(t)
	dir := t.TempDir()
	out := filepath.Join(dir, "received.jsonl")
	worker := filepath.Join(dir, "worker") // created only before the restart
	manifests := filepath.Join(dir, "manifests")
	writeFile(t, filepath.Join(manifests, "late.yaml"), fmt.Sprintf(`apiVersion: weft.dev/v1
kind: Function
metadata: {name: late}
spec:
  command: [%q]
  env: [{name: OUT, value: %q}]
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: to-late}
spec:
  subscriber: {ref: {apiVersion: weft.dev/v1, kind: Function, name: late}}
  delivery: {retry: 0}
`, worker, out))
	n := startNode(t, manifests, filepath.Join(dir, "data"))
	if code := publishLoad(http.DefaultClient, n.http, "/sigterm", "waits"); code != http.StatusAccepted {
		t.Fatalf("publish: status %d", code)
	}
	// Two calls wait for the function too: one through the API (weft
	// invoke) and one through the router, as a worker calls a function.
	invoked := make(chan *http.Response, 1)
	go func() { invoked <- postOrNil("http://"+n.http+"/api/v1/invoke/late", nil) }()
	proxied := make(chan *http.Response, 1)
	go func() {
		proxy := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(&url.URL{Scheme: "http", Host: n.router})}}
		proxied <- postOrNil("http://late/", proxy)
	}()
	testutil.WaitFor(t, 30*time.Second, func() bool {
		f := n.function(t, "late")
		return f.Restarts > 0 && f.Waiting == 3
	}, "the delivery and the two calls were not all waiting for the function's instance")

	// The broker's drain is 10 s, and so is the HTTP server's; a node that
	// waited for the queued delivery took 11.6 s here, and one that
	// waited for the API's call 10.1 s.
	took := n.terminate()
	if took >= 8*time.Second {
		t.Errorf("weft took %v to exit: it waited out a drain for a delivery or a call no instance could take", took.Round(time.Millisecond))
	}
	t.Logf("exited %v after SIGTERM", took.Round(time.Millisecond))
	for name, ch := range map[string]chan *http.Response{"through the API": invoked, "through the router": proxied} {
		resp := <-ch // the node exited: the call has its answer or lost its connection
		switch {
		case resp == nil:
			t.Errorf("call %s: no answer before the node exited", name)
		case resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "":
			t.Errorf("call %s: status %d, Retry-After %q; want 503 with Retry-After", name, resp.StatusCode, resp.Header.Get("Retry-After"))
		}
	}

	if err := os.Symlink(recorderBin, worker); err != nil {
		t.Fatal(err)
	}
	n.start()
	testutil.WaitFor(t, 30*time.Second, func() bool { return ids(records(t, out))["waits"] > 0 },
		"the event was not delivered after the restart")
	if dead := dlqEventIDs(t, n, "to-late"); len(dead) > 0 {
		t.Errorf("dead-lettered %v: the turned-away delivery was counted as its one attempt", dead)
	}
}

// terminate sends SIGTERM and waits for the node to exit 0, at most 60 s;
// it returns how long the node took.
func (n *weftNode) terminate() time.Duration {
	start := time.Now()
	n.sigterm()
	return n.waitExit(start)
}

// sigterm sends SIGTERM to the node.
func (n *weftNode) sigterm() {
	n.t.Helper()
	if err := n.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		n.t.Fatal(err)
	}
}

// waitExit waits for the node to exit 0, at most 60 s, and returns the time
// since start.
func (n *weftNode) waitExit(start time.Time) time.Duration {
	t := n.t
	t.Helper()
	select {
	case <-n.exited:
	case <-time.After(60 * time.Second):
		t.Fatal("weft did not exit within 60s of SIGTERM")
	}
	took := time.Since(start)
	if code := n.cmd.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("weft exited %d after SIGTERM:\n%s", code, tail(n.log.String(), 30))
	}
	return took
}

// postOrNil POSTs an empty CloudEvent to target with client (the default
// client when nil) and returns the answer, its body read, or nil when there
// was none.
func postOrNil(target string, client *http.Client) *http.Response {
	if client == nil {
		client = http.DefaultClient
	}
	req, err := http.NewRequest(http.MethodPost, target, strings.NewReader(`{}`))
	if err != nil {
		return nil
	}
	req.Header.Set("Content-Type", "application/json")
	for k, v := range map[string]string{"ce-specversion": "1.0", "ce-id": "call", "ce-source": "/sigterm", "ce-type": "test.call"} {
		req.Header.Set(k, v)
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp
}

// TestSIGTERMWithCallsOpen stops weft while a `weft invoke` is on an
// instance and a `weft logs -f` follows the function: the node waits for the
// call, which calls a Service through the router on its way and gets its
// answer, and then ends the log stream cleanly with the instance's last
// line, instead of holding its stop for the HTTP server's 10 s drain and
// cutting the stream.
func TestSIGTERMWithCallsOpen(t *testing.T) {
	skipShort(t)
	dir := t.TempDir()
	hold := filepath.Join(dir, "hold")
	writeFile(t, hold, "")
	manifests := filepath.Join(dir, "manifests")
	echo := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "echo:"+r.URL.Path)
	}))
	defer echo.Close()
	out := filepath.Join(dir, "received.jsonl")
	writeFile(t, filepath.Join(manifests, "held.yaml"), fmt.Sprintf(`apiVersion: weft.dev/v1
kind: Service
metadata: {name: echo}
spec:
  endpoints: [%q]
---
apiVersion: weft.dev/v1
kind: Function
metadata: {name: held}
spec:
  command: [%q]
  env: [{name: OUT, value: %q}, {name: HOLD_FLAG, value: %q}, {name: CALL_URL, value: "http://echo/from-held"}]
  scale: {min: 1}
`, echo.URL, recorderBin, out, hold))
	n := startNode(t, manifests, filepath.Join(dir, "data"))
	testutil.WaitFor(t, 30*time.Second, func() bool { return len(n.function(t, "held").Instances) == 1 },
		"the function's instance did not start")

	type stream struct {
		body string
		err  error
	}
	followed, following := make(chan stream, 1), make(chan struct{})
	go func() {
		resp, err := http.Get("http://" + n.http + "/api/v1/functions/held/logs?follow=1")
		close(following) // the stream's head is in: it follows
		if err != nil {
			followed <- stream{err: err}
			return
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		followed <- stream{string(body), err}
	}()
	select {
	case <-following:
	case <-time.After(30 * time.Second):
		t.Fatal("the log stream did not begin")
	}
	invoked := make(chan *http.Response, 1)
	go func() { invoked <- postOrNil("http://"+n.http+"/api/v1/invoke/held?type=test.call", nil) }() // .call: it calls echo
	testutil.WaitFor(t, 30*time.Second, func() bool { return n.function(t, "held").InFlight == 1 },
		"the call did not reach the instance")

	start := time.Now()
	n.sigterm()
	testutil.WaitFor(t, 10*time.Second, func() bool { return strings.Contains(n.log.String(), "worker pool draining") },
		"the node did not begin to stop")
	select {
	case <-n.exited:
		t.Fatal("weft exited while a call was on its instance")
	case resp := <-invoked:
		t.Fatalf("the call ended while its instance still held it: %v", resp)
	default:
	}
	if err := os.Remove(hold); err != nil { // the instance answers now
		t.Fatal(err)
	}
	took := n.waitExit(start)
	if took >= 8*time.Second {
		t.Errorf("weft took %v to exit: the open log stream held its stop", took.Round(time.Millisecond))
	}
	t.Logf("exited %v after SIGTERM", took.Round(time.Millisecond))
	if resp := <-invoked; resp == nil || resp.StatusCode != http.StatusNoContent {
		t.Errorf("the call on the instance: %v, want its answer (204)", resp)
	}
	if recs := records(t, out); len(recs) != 1 || recs[0]["called"] != "echo:/from-held" {
		t.Errorf("the instance's records %v; want one, whose call through the router got echo's answer", recs)
	}
	s := <-followed
	if s.err != nil {
		t.Errorf("the log stream was cut: %v", s.err)
	}
	if !strings.Contains(s.body, ": SIGTERM") {
		t.Errorf("the log stream ended without the instance's last line; it held:\n%s", s.body)
	}
}
