package node

import (
	"context"
	"fmt"
	"runtime"
	"testing"

	"github.com/weft-dev/weft/internal/resource"
)

// BenchmarkAppliedTriggerMemory reports the heap a node keeps per Trigger in
// force, 10,000 of them applied from one file as `weft serve -f` does: the
// control plane's state and the trigger index, measured after a collection.
//
//	go test -run '^$' -bench BenchmarkAppliedTriggerMemory -benchtime 3x ./cmd/weft/internal/node
func BenchmarkAppliedTriggerMemory(b *testing.B) {
	const n = 10_000
	docs := make([]string, n)
	for i := range docs {
		docs[i] = triggerDoc(fmt.Sprintf("t%05d", i), fmt.Sprintf("com.example.t%d", i))
	}
	yaml := []byte(join(docs...))
	var kept uint64
	for range b.N {
		before := heapInUse()
		rec := &recorder{}
		cp := NewControlPlane(openStore(b, b.TempDir()), rec, rec, discard())
		objs, err := resource.Decode("triggers.yaml", yaml)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := cp.ReplaceFiles(context.Background(), objs); err != nil {
			b.Fatal(err)
		}
		objs = nil
		kept = heapInUse() - before
		runtime.KeepAlive(cp)
	}
	b.ReportMetric(float64(kept)/n, "heap-B/trigger")
	b.ReportMetric(float64(len(yaml))/n, "yaml-B/trigger")
}

// heapInUse is the live heap after a full collection.
func heapInUse() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}
