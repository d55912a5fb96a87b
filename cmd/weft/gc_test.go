package main

import (
	"os"
	"path/filepath"
	"testing"
)

// TestServeSetsItsGCTarget: a node started without GOGC collects at
// serveGCPercent, as its Go metrics report.
func TestServeSetsItsGCTarget(t *testing.T) {
	skipShort(t)
	if os.Getenv("GOGC") != "" {
		t.Skip("GOGC is set for this run, and weft serve keeps it")
	}
	dir := t.TempDir()
	manifests := filepath.Join(dir, "manifests")
	if err := os.Mkdir(manifests, 0o750); err != nil {
		t.Fatal(err)
	}
	n := startNode(t, manifests, filepath.Join(dir, "data"))
	if got := metricSum(t, n, "go_gc_gogc_percent"); got != serveGCPercent {
		t.Fatalf("go_gc_gogc_percent = %v, want %d", got, serveGCPercent)
	}
}

func TestGCPercentKeepsGOGC(t *testing.T) {
	env := func(v string) func(string) string {
		return func(name string) string {
			if name == "GOGC" {
				return v
			}
			return ""
		}
	}
	if pct, ok := gcPercent(env("")); !ok || pct != serveGCPercent {
		t.Errorf("without GOGC: %d, %v; want %d, true", pct, ok, serveGCPercent)
	}
	for _, v := range []string{"50", "off"} {
		if _, ok := gcPercent(env(v)); ok {
			t.Errorf("GOGC=%s: weft serve would override it", v)
		}
	}
}
