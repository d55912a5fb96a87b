package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/binding"
	"github.com/cloudevents/sdk-go/v2/event"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/weft-dev/weft/internal/testutil"
)

// e2eTriggers declares the triggers of TestEndToEnd; %s are the go prefix
// and the dead-letter sink's URL.
const e2eTriggers = `apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: to-python}
spec:
  filters: [{exact: {type: test.py}}]
  subscriber: {ref: {apiVersion: weft.dev/v1, kind: Function, name: pyfunc}}
  delivery: {retry: 1, backoffDelay: PT0.01S}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: to-go}
spec:
  filters: [{prefix: {type: %s}}]
  subscriber: {ref: {apiVersion: serving.knative.dev/v1, kind: Service, name: gofunc}}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: reply-me}
spec:
  filter: {attributes: {type: test.reply.me}}
  subscriber: {ref: {apiVersion: weft.dev/v1, kind: Function, name: pyfunc}}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: chain}
spec:
  filters: [{cesql: "type = 'test.replied' AND source = '/pyfunc'"}]
  subscriber: {ref: {apiVersion: weft.dev/v1, kind: Function, name: gofunc}}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: to-sink}
spec:
  filters: [{exact: {type: test.sink}}]
  subscriber: {ref: {apiVersion: weft.dev/v1, kind: Function, name: pyfunc}}
  delivery:
    retry: 2
    backoffPolicy: exponential
    backoffDelay: PT0.01S
    deadLetterSink: {uri: %s}
`

// TestEndToEnd drives the real weft binary with real Python and Go worker
// processes through every path of the walking skeleton.
func TestEndToEnd(t *testing.T) {
	skipShort(t)
	dir := t.TempDir()
	manifests := filepath.Join(dir, "manifests")
	if err := os.Mkdir(manifests, 0o755); err != nil {
		t.Fatal(err)
	}
	pyOut, goOut, failFlag := filepath.Join(dir, "py.jsonl"), filepath.Join(dir, "go.jsonl"), filepath.Join(dir, "py.fail")
	py, err := os.ReadFile("testdata/pyfunc.py")
	if err != nil {
		t.Fatal(err)
	}
	// The Python function's command is relative: it resolves from the
	// manifest's folder, per the worker contract.
	writeFile(t, filepath.Join(manifests, "pyfunc.py"), string(py))
	writeFile(t, filepath.Join(manifests, "functions.yaml"), fmt.Sprintf(`apiVersion: weft.dev/v1
kind: Function
metadata: {name: pyfunc}
spec:
  command: [python3, pyfunc.py]
  env: [{name: OUT, value: %q}, {name: FAIL_FLAG, value: %q}]
---
apiVersion: weft.dev/v1
kind: Function
metadata: {name: gofunc}
spec:
  command: [%q]
  env: [{name: OUT, value: %q}]
  concurrency: 4
`, pyOut, failFlag, recorderBin, goOut))

	sink := newEventSink(t)
	triggersFile := filepath.Join(manifests, "triggers.yaml")
	writeFile(t, triggersFile, fmt.Sprintf(e2eTriggers, "test.go.", sink.URL))
	n := startNode(t, manifests, filepath.Join(dir, "data"))

	got := func(path string) map[string]map[string]string {
		out := map[string]map[string]string{}
		for _, r := range records(t, path) {
			out[r["id"]] = r
		}
		return out
	}
	waitIDs := func(path string, want ...string) {
		t.Helper()
		testutil.WaitFor(t, 30*time.Second, func() bool {
			g := got(path)
			for _, id := range want {
				if g[id] == nil {
					return false
				}
			}
			return true
		}, "%s never received %v", filepath.Base(path), want)
	}

	t.Run("cli publish reaches the Python function in binary mode", func(t *testing.T) {
		n.mustCLI(nil, "publish", "--type", "test.py", "--source", "/e2e", "--id", "p1", "--data", `{"a":1}`, "--ext", "tenant=acme")
		waitIDs(pyOut, "p1")
		r := got(pyOut)["p1"]
		if r["type"] != "test.py" || r["source"] != "/e2e" || r["tenant"] != "acme" || r["data"] != `{"a":1}` {
			t.Fatalf("python got %v", r)
		}
		if _, leaked := r["knativebrokerttl"]; leaked {
			t.Errorf("the hop counter reached the function: %v", r)
		}
	})

	t.Run("http binary, structured and batch reach the Go function", func(t *testing.T) {
		bin := map[string]string{"ce-specversion": "1.0", "ce-id": "g1", "ce-source": "/e2e", "ce-type": "test.go.bin"}
		if s := n.post("application/json", bin, `{"b":1}`); s != http.StatusAccepted {
			t.Fatalf("binary: %d", s)
		}
		structured := `{"specversion":"1.0","id":"g2","source":"/e2e","type":"test.go.structured","data":{"s":1}}`
		if s := n.post("application/cloudevents+json", nil, structured); s != http.StatusAccepted {
			t.Fatalf("structured: %d", s)
		}
		batch := `[{"specversion":"1.0","id":"g3","source":"/e2e","type":"test.go.batch"},{"specversion":"1.0","id":"g4","source":"/e2e","type":"test.go.batch"}]`
		if s := n.post("application/cloudevents-batch+json", nil, batch); s != http.StatusAccepted {
			t.Fatalf("batch: %d", s)
		}
		// Matches no trigger: must reach nobody.
		other := map[string]string{"ce-specversion": "1.0", "ce-id": "x1", "ce-source": "/e2e", "ce-type": "test.other"}
		if s := n.post("application/json", other, `{}`); s != http.StatusAccepted {
			t.Fatalf("unmatched: %d", s)
		}
		waitIDs(goOut, "g1", "g2", "g3", "g4")
	})

	t.Run("nats publish is acknowledged after storage and delivered", func(t *testing.T) {
		nc, err := nats.Connect("nats://" + n.nats)
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		ack, err := nc.Request("weft.in.e2e", []byte(`{"specversion":"1.0","id":"g5","source":"/nats","type":"test.go.nats"}`), 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if string(ack.Data) != `{"stored":1}` {
			t.Fatalf("ack %s", ack.Data)
		}
		waitIDs(goOut, "g5")
	})

	t.Run("a reply re-enters the broker and fires the next trigger", func(t *testing.T) {
		n.mustCLI(nil, "publish", "--type", "test.reply.me", "--source", "/e2e", "--id", "r1")
		waitIDs(goOut, "r1-reply")
		if r := got(goOut)["r1-reply"]; r["type"] != "test.replied" || r["source"] != "/pyfunc" {
			t.Fatalf("reply arrived as %v", r)
		}
	})

	t.Run("nothing reached a function it did not match", func(t *testing.T) {
		n.settled(t)
		for _, f := range []string{pyOut, goOut} {
			if r := got(f)["x1"]; r != nil {
				t.Errorf("%s received the unmatched event: %v", filepath.Base(f), r)
			}
		}
		if r := got(pyOut)["g1"]; r != nil {
			t.Errorf("python received a Go event")
		}
	})

	t.Run("retries then deadLetterSink with knative error extensions", func(t *testing.T) {
		writeFile(t, failFlag, "")
		n.mustCLI(nil, "publish", "--type", "test.sink", "--source", "/e2e", "--id", "s1")
		ev := sink.wait(t, "s1")
		ext := ev.Extensions()
		if fmt.Sprint(ext["knativeerrorcode"]) != "500" || ext["knativeerrordest"] != "function:pyfunc" {
			t.Errorf("extensions %v", ext)
		}
		if ext["knativeerrordata"] != base64.StdEncoding.EncodeToString([]byte("python says no")) {
			t.Errorf("knativeerrordata %v", ext["knativeerrordata"])
		}
	})

	t.Run("node DLQ keeps history and replay delivers it", func(t *testing.T) {
		// The fail flag is still there: to-python has retry 1 and no sink.
		n.mustCLI(nil, "publish", "--type", "test.py", "--source", "/e2e", "--id", "d1")
		var entries []struct {
			ID       uint64 `json:"id"`
			Trigger  string `json:"trigger"`
			Attempts []struct {
				Status int `json:"status"`
			} `json:"attempts"`
		}
		testutil.WaitFor(t, 30*time.Second, func() bool {
			n.mustCLI(&entries, "dlq", "ls", "--trigger", "to-python", "-o", "json")
			return len(entries) == 1
		}, "no dead letter for d1")
		if e := entries[0]; len(e.Attempts) != 2 || e.Attempts[0].Status != 500 {
			t.Fatalf("entry %+v", e)
		}
		show := n.mustCLI(nil, "dlq", "show", fmt.Sprint(entries[0].ID))
		if !strings.Contains(show, "d1") || !strings.Contains(show, "500") {
			t.Fatalf("dlq show:\n%s", show)
		}
		if err := os.Remove(failFlag); err != nil {
			t.Fatal(err)
		}
		out := n.mustCLI(nil, "dlq", "replay", "--trigger", "to-python")
		if !strings.Contains(out, "1 delivered") {
			t.Fatalf("replay said %q", out)
		}
		waitIDs(pyOut, "d1")
		n.mustCLI(&entries, "dlq", "ls", "-o", "json")
		if len(entries) != 0 {
			t.Fatalf("DLQ after replay: %+v", entries)
		}
	})

	t.Run("a changed trigger file is applied without restart", func(t *testing.T) {
		writeFile(t, triggersFile, fmt.Sprintf(e2eTriggers, "test.gonew.", sink.URL))
		testutil.WaitFor(t, 20*time.Second, func() bool {
			out, _, _ := n.cli("get", "triggers", "to-go", "-o", "json")
			return strings.Contains(out, "test.gonew.")
		}, "changed trigger not applied")
		n.mustCLI(nil, "publish", "--type", "test.gonew.x", "--source", "/e2e", "--id", "h1")
		waitIDs(goOut, "h1")
	})

	t.Run("a bad change is refused and the last good state stays", func(t *testing.T) {
		bad := strings.Replace(fmt.Sprintf(e2eTriggers, "test.gonew.", sink.URL), `source = '/pyfunc'"`, `source = "`, 1)
		writeFile(t, triggersFile, bad)
		var st struct {
			FileError string `json:"fileError"`
		}
		testutil.WaitFor(t, 20*time.Second, func() bool {
			resp, err := http.Get("http://" + n.http + "/api/v1/status")
			if err != nil {
				return false
			}
			defer resp.Body.Close()
			return json.NewDecoder(resp.Body).Decode(&st) == nil && st.FileError != ""
		}, "bad change not reported")
		if !strings.Contains(st.FileError, "triggers.yaml:") || !strings.Contains(st.FileError, "spec.filters[0].cesql") {
			t.Errorf("error does not name file, line and field: %s", st.FileError)
		}
		n.mustCLI(nil, "publish", "--type", "test.gonew.y", "--source", "/e2e", "--id", "h2")
		waitIDs(goOut, "h2")
	})

	t.Run("apply, get and delete on a running node", func(t *testing.T) {
		extra := filepath.Join(dir, "extra.yaml")
		writeFile(t, extra, `apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: extra}
spec:
  filters: [{exact: {type: test.extra}}]
  subscriber: {ref: {apiVersion: weft.dev/v1, kind: Function, name: gofunc}}
`)
		n.mustCLI(nil, "apply", "-f", extra)
		n.mustCLI(nil, "publish", "--type", "test.extra", "--source", "/e2e", "--id", "e1")
		waitIDs(goOut, "e1")
		if out := n.mustCLI(nil, "get", "triggers"); !strings.Contains(out, "extra") {
			t.Fatalf("get triggers:\n%s", out)
		}
		n.mustCLI(nil, "delete", "trigger", "extra")
		if _, _, code := n.cli("get", "triggers", "extra"); code != exitNotFound {
			t.Fatalf("get of a deleted trigger exited %d, want %d", code, exitNotFound)
		}
		badFile := filepath.Join(dir, "bad.yaml")
		writeFile(t, badFile, "apiVersion: weft.dev/v1\nkind: Function\nmetadata: {name: broken}\nspec:\n  command: [x]\n  concurrency: lots\n")
		_, stderr, code := n.cli("apply", "-f", badFile)
		if code != exitInvalidFile || !strings.Contains(stderr, "bad.yaml:6") || !strings.Contains(stderr, "spec.concurrency") {
			t.Fatalf("bad apply: exit %d, %s", code, stderr)
		}
	})

	t.Run("unreachable server exits 6", func(t *testing.T) {
		cmd := exec.Command(weftBin, "--server", "http://"+testutil.RefusingAddr(t), "get", "triggers")
		if err := cmd.Run(); err == nil || cmd.ProcessState.ExitCode() != exitUnreachable {
			t.Fatalf("exit %v, want %d", err, exitUnreachable)
		}
	})
}

// TestServeRefusesBadManifest: a bad file at start-up stops serve with
// exit 3 and an error naming the file, the line and the field.
func TestServeRefusesBadManifest(t *testing.T) {
	skipShort(t)
	dir := t.TempDir()
	bad := filepath.Join(dir, "t.yaml")
	writeFile(t, bad, "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {name: t}\nspec:\n  subscriber: {uri: http://x/}\n  delivery: {backoffDelay: soon}\n")
	cmd := exec.Command(weftBin, "serve", "-f", bad, "--data", filepath.Join(dir, "data"),
		"--http", testutil.FreeAddr(t), "--nats", testutil.FreeAddr(t), "--router", testutil.FreeAddr(t))
	out, err := cmd.CombinedOutput()
	if err == nil || cmd.ProcessState.ExitCode() != exitInvalidFile {
		t.Fatalf("serve exited %v, want %d:\n%s", err, exitInvalidFile, out)
	}
	if !strings.Contains(string(out), "t.yaml:6") || !strings.Contains(string(out), "spec.delivery.backoffDelay") {
		t.Fatalf("error does not name file, line and field:\n%s", out)
	}
}

// settled waits until every stored event was dispatched and every delivery
// settled: weft's two work-queue streams hold no message.
func (n *weftNode) settled(t *testing.T) {
	t.Helper()
	nc, err := nats.Connect("nats://" + n.nats)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, 30*time.Second, func() bool {
		for _, stream := range []string{"WEFT_EVENTS", "WEFT_DELIVERIES"} {
			// A message stays until it is acknowledged and the compactor
			// purged it, whether or not its trigger has a consumer now.
			st, err := js.Stream(context.Background(), stream)
			if err != nil {
				return false
			}
			info, err := st.Info(context.Background())
			if err != nil || info.State.Msgs > 0 {
				return false
			}
		}
		return true
	}, "deliveries never settled")
}

// eventSink is an HTTP dead-letter sink that keeps what it receives.
type eventSink struct {
	*httptest.Server
	mu  sync.Mutex
	got map[string]event.Event
}

func newEventSink(t *testing.T) *eventSink {
	s := &eventSink{got: map[string]event.Event{}}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ev, err := binding.ToEvent(r.Context(), cehttp.NewMessageFromHttpRequest(r))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		s.mu.Lock()
		s.got[ev.ID()] = *ev
		s.mu.Unlock()
		w.WriteHeader(http.StatusAccepted)
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *eventSink) wait(t *testing.T, id string) event.Event {
	t.Helper()
	var ev event.Event
	testutil.WaitFor(t, 30*time.Second, func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		var ok bool
		ev, ok = s.got[id]
		return ok
	}, "sink never received %s", id)
	return ev
}
