package main

// serveGCPercent is weft serve's garbage-collection target (GOGC) when the
// environment sets none. Under sustained ingest most of the live heap is
// JetStream's dedup window: an entry per (source, id) of the last
// --dedup-window, over a million small objects with pointers at 10,000
// events/s, which every collection marks again. Collecting when the heap
// reaches three times the live heap instead of twice makes that half as
// frequent: +9.6 % events/s at 64 connections with --relaxed-sync and +5.5 %
// with fsync per ack at 256 (A/B in both orders, docs/performance.md), for a
// peak heap up to 1.5 times larger. 300 gave 3 % more than 200.
const serveGCPercent = 200

// gcPercent returns the GC target weft serve sets, and false when GOGC is
// set: the operator's value stands (the runtime has applied it).
func gcPercent(getenv func(string) string) (int, bool) {
	if getenv("GOGC") != "" {
		return 0, false
	}
	return serveGCPercent, true
}
