package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/weft-dev/weft/internal/testutil"
)

// registryTTL is the registry's default announcement TTL (router.RegistryConfig);
// serve has no flag for it, so the outage outlasts the real one.
const registryTTL = 15 * time.Second

// Phases of TestRedisOutage, recorded with each acknowledged event.
const (
	phaseBefore int32 = iota
	phaseOutage
	phaseAfter
)

// TestRedisOutage runs two real nodes over one redis-server: node b runs
// function echo-b; node a runs nothing and reaches echo-b through its
// router, from a trigger whose subscriber is uri: http://echo-b/ and from
// weft invoke. While events are published to a, redis-server is killed for
// longer than the registry TTL and then started again, empty, on the same
// port. It checks that dispatch and invokes go on from the cached view
// during the outage and after the restart, that both nodes stay ready, that
// every acknowledged event reaches echo-b, and that the registry reconciles:
// b's announcement is back in Redis, and a function applied on b after the
// restart becomes reachable from a.
func TestRedisOutage(t *testing.T) {
	skipShort(t)
	rs := testutil.RunRedis(t)
	dir := t.TempDir()
	out, outLate := filepath.Join(dir, "echo-b.jsonl"), filepath.Join(dir, "late.jsonl")
	manA, manB := filepath.Join(dir, "manifests-a"), filepath.Join(dir, "manifests-b")
	for _, d := range []string{manA, manB} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	writeFile(t, filepath.Join(manB, "echo.yaml"), fmt.Sprintf(`apiVersion: weft.dev/v1
kind: Function
metadata: {name: echo-b}
spec:
  command: [%q]
  env: [{name: OUT, value: %q}]
  scale: {min: 1}
`, recorderBin, out))
	writeFile(t, filepath.Join(manA, "trigger.yaml"), `apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: to-b}
spec:
  filters: [{exact: {type: test.load}}]
  subscriber: {uri: "http://echo-b/"}
  delivery: {retry: 10, backoffDelay: PT0.1S}
`)
	storeURL := rs.URL() + "/0"
	b := startNode(t, manB, filepath.Join(dir, "data-b"), "--store", storeURL, "--inbound", testutil.FreeAddr(t), "--node", "b")
	a := startNode(t, manA, filepath.Join(dir, "data-a"), "--store", storeURL, "--inbound", testutil.FreeAddr(t), "--node", "a")

	// invoke calls fn on node a (it runs on b) through a's API, as weft
	// invoke does, and counts the outcome; failures of echo-b are kept.
	var invokeFailures []string
	invokeClient := &http.Client{Timeout: 30 * time.Second}
	invoke := func(fn string, ok, failed *int) bool {
		resp, err := invokeClient.Post("http://"+a.http+"/api/v1/invoke/"+fn+"?type=test.invoke", "application/json", strings.NewReader(`{}`))
		status, body := 0, ""
		if err == nil {
			raw, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			status, body = resp.StatusCode, strings.TrimSpace(string(raw))
		}
		if err != nil || status/100 != 2 {
			*failed++
			if fn == "echo-b" && len(invokeFailures) < 5 {
				invokeFailures = append(invokeFailures, fmt.Sprintf("%d %s %v", status, body, err))
			}
			return false
		}
		*ok++
		return true
	}
	var warmOK, warmFailed int
	testutil.WaitFor(t, 30*time.Second, func() bool { return invoke("echo-b", &warmOK, &warmFailed) },
		"node a never reached echo-b on node b")
	invokeFailures = nil

	// Load: one event every 20 ms to node a, each acknowledged id kept with
	// the phase it was published in.
	var acked sync.Map // id → phase
	var phase atomic.Int32
	var refused atomic.Int64
	stopPub := make(chan struct{})
	var pubWG sync.WaitGroup
	var stopOnce sync.Once
	stopPublishing := func() { stopOnce.Do(func() { close(stopPub) }); pubWG.Wait() }
	t.Cleanup(stopPublishing) // before the nodes stop
	pubWG.Go(func() {
		client := &http.Client{Timeout: 10 * time.Second}
		pace := time.NewTicker(20 * time.Millisecond) // the load's rate, not a synchronisation
		defer pace.Stop()
		for i := 1; ; i++ {
			select {
			case <-stopPub:
				return
			case <-pace.C:
			}
			id := fmt.Sprintf("ev-%05d", i)
			p := phase.Load()
			if publishLoad(client, a.http, "/redis-outage", id) == http.StatusAccepted {
				acked.Store(id, p)
			} else {
				refused.Add(1)
			}
		}
	})
	testutil.WaitFor(t, 30*time.Second, func() bool { return len(ids(records(t, out))) >= 50 },
		"events published to node a never reached echo-b on node b")

	ready := func(n *weftNode) bool {
		resp, err := http.Get("http://" + n.http + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}
	// deliveredIn counts the events of phase p that echo-b recorded.
	deliveredIn := func(p int32) int {
		got, n := ids(records(t, out)), 0
		acked.Range(func(k, v any) bool {
			if v.(int32) == p && got[k.(string)] > 0 {
				n++
			}
			return true
		})
		return n
	}

	// The outage: longer than the TTL, so that an announcement would have
	// expired had Redis stayed up.
	rs.Kill()
	down := time.Now()
	phase.Store(phaseOutage)
	testutil.WaitFor(t, 20*time.Second, func() bool {
		return strings.Contains(a.log.String(), "redis connection lost") && strings.Contains(b.log.String(), "redis connection lost")
	}, "the nodes never noticed that Redis was gone")
	var outOK, outFailed, notReady int
	pace := time.NewTicker(50 * time.Millisecond) // the invokes' rate, not a synchronisation
	for time.Since(down) < registryTTL+2*time.Second {
		<-pace.C
		invoke("echo-b", &outOK, &outFailed)
		if !ready(a) || !ready(b) {
			notReady++
		}
	}
	pace.Stop()
	// The verb itself, once, with Redis still down.
	if stdout, stderr, code := a.cli("invoke", "echo-b", "--type", "test.invoke"); code != 0 {
		t.Errorf("weft invoke echo-b on a during the outage: exit %d: %s", code, stderr)
	} else if !strings.Contains(stdout, "accepted") {
		t.Errorf("weft invoke echo-b on a during the outage said %q", stdout)
	}
	duringOutage := deliveredIn(phaseOutage)
	if duringOutage == 0 {
		t.Errorf("no event published during the outage was delivered before Redis returned")
	}

	// Redis comes back empty on the same port, as after a restart without
	// persistence: every announcement and applied resource is gone.
	rs.Start()
	up := time.Now()
	phase.Store(phaseAfter)
	rdb := redis.NewClient(&redis.Options{Addr: rs.Addr()})
	defer rdb.Close()
	ctx := context.Background()

	var afterOK, afterFailed int
	testutil.WaitFor(t, 20*time.Second, func() bool {
		invoke("echo-b", &afterOK, &afterFailed)
		n, err := rdb.Exists(ctx, "weft:registry/fn/echo-b/b").Result()
		return err == nil && n == 1
	}, "node b never announced echo-b again in the restarted Redis")
	announced := time.Since(up)
	testutil.WaitFor(t, 20*time.Second, func() bool {
		return strings.Contains(a.log.String(), "watcher resyncs") && strings.Contains(b.log.String(), "watcher resyncs")
	}, "the nodes' store watchers never resubscribed")
	flags, err := rdb.ConfigGet(ctx, "notify-keyspace-events").Result()
	if err != nil || !strings.Contains(flags["notify-keyspace-events"], "K") {
		t.Errorf("keyspace notifications not turned on again in the restarted Redis: %v %v", flags, err)
	}

	// A function applied on b after the restart is announced in the new
	// Redis and becomes reachable from a.
	late := filepath.Join(dir, "late.yaml")
	writeFile(t, late, fmt.Sprintf(`apiVersion: weft.dev/v1
kind: Function
metadata: {name: late}
spec:
  command: [%q]
  env: [{name: OUT, value: %q}]
`, recorderBin, outLate))
	applied := time.Now()
	b.mustCLI(nil, "apply", "-f", late)
	if n, err := rdb.Exists(ctx, "weft:resources/Function/late").Result(); err != nil || n != 1 {
		t.Errorf("the function applied after the restart is not in Redis: %d %v", n, err)
	}
	var lateOK, lateFailed int
	testutil.WaitFor(t, 30*time.Second, func() bool {
		invoke("echo-b", &afterOK, &afterFailed)
		return invoke("late", &lateOK, &lateFailed)
	}, "a function applied on b after Redis returned never became reachable from a")
	lateReachable := time.Since(applied)

	stopPublishing()
	if !ready(a) || !ready(b) {
		t.Errorf("a node is not ready after the outage")
	}
	var total int
	perPhase := map[int32]int{}
	acked.Range(func(_, v any) bool { total++; perPhase[v.(int32)]++; return true })
	waitDelivered(t, out, &acked, 60*time.Second)
	distinct, dups := duplicates(t, out)

	t.Logf("outage %v (registry TTL %v); announcement back in Redis %v after restart; function applied on b after restart reachable from a in %v",
		up.Sub(down).Round(time.Millisecond), registryTTL, announced.Round(time.Millisecond), lateReachable.Round(time.Millisecond))
	t.Logf("events: acked %d (before %d, during outage %d, after %d), refused %d, lost 0, delivered during the outage %d, %d distinct ids at echo-b (invokes included), %d delivered more than once",
		total, perPhase[phaseBefore], perPhase[phaseOutage], perPhase[phaseAfter], refused.Load(), duringOutage, distinct, dups)
	t.Logf("invokes from a: during outage %d ok / %d failed; after restart %d ok / %d failed; late %d failed before reachable; readiness lost %d times",
		outOK, outFailed, afterOK, afterFailed, lateFailed, notReady)
	if outFailed > 0 || afterFailed > 0 {
		t.Errorf("invokes of echo-b failed: %d during the outage, %d after the restart, e.g. %q", outFailed, afterFailed, invokeFailures)
	}
	if refused.Load() > 0 {
		t.Errorf("node a refused %d events: its ingress must not depend on Redis", refused.Load())
	}
	if notReady > 0 {
		t.Errorf("a node reported not ready %d times during the outage", notReady)
	}
}
