package main

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// Slow-client settings: the node gets --read-timeout 1s; a slow client
// trickles one byte every slowTrickle and would take slowFor to finish.
const (
	slowClients = 100 // of each kind
	slowTrickle = 100 * time.Millisecond
	slowFor     = 30 * time.Second
)

// TestSlowClients opens slow-header and slow-body connections (one byte
// every 100 ms) while normal clients publish: every slow connection is cut by
// the read timeout (headers: closed; body: 408) long before it would have
// finished, and every normal request is acknowledged. Latencies of the normal
// clients before and during are reported, not asserted.
func TestSlowClients(t *testing.T) {
	skipShort(t)
	dir := t.TempDir()
	manifests := filepath.Join(dir, "manifests")
	if err := os.MkdirAll(manifests, 0o755); err != nil {
		t.Fatal(err)
	}
	n := startNode(t, manifests, filepath.Join(dir, "data"), "--read-timeout", "1s")

	before := normalLatencies(t, n, "before", 200)

	type cut struct {
		slowBody bool
		after    time.Duration
		answer   string // the status line the server sent, "" for a plain close
	}
	cuts := make(chan cut, 2*slowClients)
	var wg, connected sync.WaitGroup
	connected.Add(2 * slowClients)
	for i := range 2 * slowClients {
		slowBody := i%2 == 1
		wg.Go(func() {
			c, err := net.Dial("tcp", n.http)
			connected.Done()
			if err != nil {
				t.Errorf("slow client %d: %v", i, err)
				return
			}
			defer c.Close()
			start := time.Now()
			msg := "POST / HTTP/1.1\r\nHost: weft\r\nContent-Type: application/json\r\nce-specversion: 1.0\r\nce-id: slow\r\nce-source: /slow\r\nce-type: slow\r\n"
			if slowBody {
				// Headers at once, then the body byte by byte.
				body := `{"pad":"` + strings.Repeat("x", int(slowFor/slowTrickle)) + `"}`
				if _, err := fmt.Fprintf(c, "%sContent-Length: %d\r\n\r\n", msg, len(body)); err != nil {
					t.Errorf("slow body %d: %v", i, err)
					return
				}
				msg = body
			}
			answered := make(chan string, 1)
			go func() { // owned: ends when c is closed (deferred above) or answers
				line, _ := bufio.NewReader(c).ReadString('\n')
				answered <- strings.TrimSpace(line)
			}()
			tick := time.NewTicker(slowTrickle)
			defer tick.Stop()
			for j := 0; j < len(msg); j++ {
				if _, err := c.Write([]byte{msg[j]}); err != nil {
					break // cut off
				}
				select {
				case line := <-answered:
					cuts <- cut{slowBody, time.Since(start), line}
					return
				case <-tick.C:
				}
			}
			select {
			case line := <-answered:
				cuts <- cut{slowBody, time.Since(start), line}
			case <-time.After(5 * time.Second):
				t.Errorf("slow client %d (body %v) sent everything over %s and was never cut off", i, slowBody, time.Since(start))
			}
		})
	}
	connected.Wait()
	during := normalLatencies(t, n, "during", 400)
	wg.Wait()
	close(cuts)

	var headerCuts, bodyCuts []time.Duration
	for c := range cuts {
		if c.after >= slowFor {
			t.Errorf("a slow client was cut after %s, not by the 1s read timeout", c.after)
		}
		switch {
		case !c.slowBody && (c.answer == "" || strings.HasPrefix(c.answer, "HTTP/1.1 400")):
			headerCuts = append(headerCuts, c.after) // net/http closes, with a 400 once some bytes came
		case c.slowBody && strings.HasPrefix(c.answer, "HTTP/1.1 408"):
			bodyCuts = append(bodyCuts, c.after)
		default:
			t.Errorf("a slow client (body %v) got %q, want a close or 400 (slow headers), 408 (slow body)", c.slowBody, c.answer)
		}
	}
	if len(headerCuts) != slowClients || len(bodyCuts) != slowClients {
		t.Errorf("cut %d slow-header and %d slow-body clients, want %d each", len(headerCuts), len(bodyCuts), slowClients)
	}
	t.Logf("slow headers cut after p50 %s / max %s; slow bodies answered 408 after p50 %s / max %s",
		pct(headerCuts, 0.5), pct(headerCuts, 1), pct(bodyCuts, 0.5), pct(bodyCuts, 1))
	t.Logf("normal clients POST→202: before p50 %s / p99 %s; during p50 %s / p99 %s",
		pct(before, 0.5), pct(before, 0.99), pct(during, 0.5), pct(during, 0.99))
}

// normalLatencies publishes count events from four clients and returns
// their latencies; every one must be acknowledged.
func normalLatencies(t *testing.T, n *weftNode, phase string, count int) []time.Duration {
	t.Helper()
	var mu sync.Mutex
	var lat []time.Duration
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			client := &http.Client{Timeout: 10 * time.Second}
			for i := range count / 4 {
				start := time.Now()
				if code := publishLoad(client, n.http, "/normal", fmt.Sprintf("%s-%d-%d", phase, w, i)); code != http.StatusAccepted {
					t.Errorf("%s: normal request answered %d", phase, code)
					return
				}
				mu.Lock()
				lat = append(lat, time.Since(start))
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return lat
}

func pct(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	return percentile(s, p).Round(100 * time.Microsecond)
}
