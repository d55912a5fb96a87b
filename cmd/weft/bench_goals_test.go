package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestBenchGoals runs `weft bench goals` briefly through the command, every
// scenario with the real binary: each run in order, each goal check of each
// scenario present and measured, the counts, the table, and both nodes it
// started stopped once it returns.
func TestBenchGoals(t *testing.T) {
	skipShort(t)
	var out bytes.Buffer
	g := &globals{output: "json", stdout: &out, stderr: io.Discard}
	cmd := newBenchCmd(g)
	cmd.SetArgs([]string{"goals", "--duration", "300ms", "--rounds", "1", "--ingest-concurrency", "1,4", "--nats-concurrency", "4",
		"--router-concurrency", "1", "--samples", "2", "--steps", "0", "--settle", "0s", "--functions", "2", "--weft", weftBin})
	if err := cmd.ExecuteContext(t.Context()); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	var rep struct {
		goalsReport
		Runs []struct {
			goalsRun
			Report json.RawMessage `json:"report"`
		} `json:"runs"`
	}
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatalf("output: %v\n%s", err, out.String())
	}
	_, nginxMissing := findNginx("")
	// Each run and the goal checks it must have measured: criteria by prefix.
	want := []struct {
		name     string
		measured []string
	}{
		{"goals 1-3: ingest, one connection", []string{"1a.", "1b.", "2a.", "2a, http", "3. p50 ≤", "3. p99 ≤", "3. p50, hop", "3. p99, hop"}},
		{"goals 1-3: ingest, 4 connections", []string{"1a.", "1b.", "2a.", "2a, http"}},
		{"goal 2b: nats, 4 publishers", []string{"2b.", "2b, JetStream"}},
		{"goal 4: e2e, one connection", []string{"e2e p50", "e2e p99"}},
		{"goal 7: scale from zero", []string{"p50 ≤", "p90 ≤"}},
		{"goal 6: router, one connection", []string{"mutual TLS"}},
		{"goal 8: footprint", []string{"idle weft serve", "per idle Function", "no process"}},
	}
	if nginxMissing == "" {
		want[5].measured = append(want[5].measured, "added p50", "added p99", "throughput", "CPU per request")
	}
	if len(rep.Runs) != len(want) {
		t.Fatalf("%d runs, want %d: %s", len(rep.Runs), len(want), out.String())
	}
	checked, met := 0, 0
	for i, w := range want {
		run := rep.Runs[i]
		if run.Name != w.name || run.Error != "" || len(run.Report) == 0 || !strings.HasPrefix(run.Command, "weft bench ") {
			t.Errorf("run %d: %q, error %q, command %q, report %d bytes; want %q", i, run.Name, run.Error, run.Command, len(run.Report), w.name)
			continue
		}
		for _, prefix := range w.measured {
			i := slices.IndexFunc(run.Goals, func(g goalCheck) bool { return strings.HasPrefix(g.Criterion, prefix) })
			// Measured, whatever the figures: in rounds this short an added
			// latency can come out negative.
			if i < 0 || !run.Goals[i].Measured {
				t.Errorf("%s: no measured check %q in %+v", run.Name, prefix, run.Goals)
			}
		}
		for _, g := range run.Goals {
			if g.Measured {
				checked++
				if g.Met {
					met++
				}
			}
		}
	}
	if rep.Checked != checked || rep.Met != met || checked == 0 {
		t.Errorf("counts: %d checked, %d met; want %d and %d", rep.Checked, rep.Met, checked, met)
	}
	// The nodes of ingest and nats are gone: their ingress no longer answers.
	fields := strings.Fields(rep.Runs[0].Command)
	for _, flag := range []string{"--server", "--relaxed-server"} {
		i := slices.Index(fields, flag)
		if i < 0 || i+1 >= len(fields) {
			t.Fatalf("command %q lacks %s", rep.Runs[0].Command, flag)
		}
		c := &http.Client{Timeout: 2 * time.Second}
		if resp, err := c.Get(fields[i+1] + "/healthz"); err == nil {
			resp.Body.Close()
			t.Errorf("the node at %s still answers after bench goals returned", fields[i+1])
		}
	}

	var table bytes.Buffer
	var back goalsReport
	if err := json.Unmarshal(out.Bytes(), &back); err != nil {
		t.Fatal(err)
	}
	if err := back.writeTable(&table); err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"goals 1-3: ingest, 4 connections", "weft bench nats", "goal 8: footprint", "measured checks met", "machine:"} {
		if !strings.Contains(table.String(), s) {
			t.Errorf("table lacks %q:\n%s", s, table.String())
		}
	}
}

// TestBenchGoalsGoesOnAfterAFailure: a scenario that fails (a worker binary
// that does not exist) is reported in its run, the next scenario still runs,
// and the command exits 1.
func TestBenchGoalsGoesOnAfterAFailure(t *testing.T) {
	skipShort(t)
	var out bytes.Buffer
	g := &globals{output: "json", stdout: &out, stderr: io.Discard}
	cmd := newBenchCmd(g)
	cmd.SetArgs([]string{"goals", "--only", "e2e,footprint", "--rounds", "1", "--settle", "0s", "--functions", "0",
		"--worker", "/nonexistent/worker", "--weft", weftBin})
	err := cmd.ExecuteContext(t.Context())
	var ee *exitErr
	if !errors.As(err, &ee) || ee.code != exitError || !strings.Contains(err.Error(), "goal 4: e2e, one connection") {
		t.Fatalf("err = %v, want exit %d naming the e2e run", err, exitError)
	}
	var rep goalsReport
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatalf("output: %v\n%s", err, out.String())
	}
	if len(rep.Runs) != 2 || rep.Runs[0].Error == "" || rep.Runs[1].Error != "" || len(rep.Runs[1].Goals) == 0 || !rep.Runs[1].Goals[0].Measured {
		t.Errorf("runs: %+v", rep.Runs)
	}
}

func TestBenchGoalsUsage(t *testing.T) {
	checkBenchUsage(t, [][]string{
		{"goals", "--only", "ingest,carrier-pigeon"},
		{"goals", "--only", ""},
		{"goals", "--ingest-concurrency", "0"},
		{"goals", "--router-concurrency", "1,0"},
		{"goals", "--rounds", "0"},
		{"goals", "--duration", "0s"},
	})
}

// TestWorkerArgvResolvesRelativePaths: --worker bin/x names a file from the
// bench's folder even though a node resolves a manifest's relative command
// against the manifest's folder; a bare name is left to PATH.
func TestWorkerArgvResolvesRelativePaths(t *testing.T) {
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for worker, want := range map[string]string{
		"bin/benchworker":    filepath.Join(wd, "bin", "benchworker"),
		"./benchworker":      filepath.Join(wd, "benchworker"),
		"/opt/w/benchworker": "/opt/w/benchworker",
		"python3":            "python3",
	} {
		if got := workerArgv("/usr/bin/weft", worker); len(got) != 1 || got[0] != want {
			t.Errorf("workerArgv(%q) = %q, want [%q]", worker, got, want)
		}
	}
	if got := workerArgv("/usr/bin/weft", ""); !slices.Equal(got, []string{"/usr/bin/weft", "bench", "worker"}) {
		t.Errorf("workerArgv(\"\") = %q", got)
	}
}
