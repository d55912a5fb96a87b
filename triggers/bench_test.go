package triggers

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
)

// matchBenchSizes are the trigger counts of BenchmarkMatch; min(n, 10) of
// them match the bench event.
var matchBenchSizes = []int{1, 10, 100, 10_000}

// BenchmarkMatch measures Index.MatchBroker, as the dispatcher calls it, with
// 1, 10, 100 and 10,000 triggers of which min(n, 10) match the event: legacy
// filter.attributes, exact, prefix and suffix filters and CESQL, among
// triggers of the same shapes with other values (matchBenchTriggers). It
// reports ns/op (one event), matches/op and ns/match.
//
// The ratio sub-benchmark times the sizes in interleaved rounds and reports
// matches per second at 10,000 triggers over 1 (ratio_10k_vs_1, issue 5's
// proportionality goal applied to matching: the work per match should not
// grow with the triggers) and over 10 triggers that are the same 10
// matching ones (ratio_10k_vs_10: what the 9,990 others cost).
//
//	go test -run '^$' -bench BenchmarkMatch -benchmem ./triggers
func BenchmarkMatch(b *testing.B) {
	ev := matchBenchEvent()
	for _, n := range matchBenchSizes {
		b.Run(fmt.Sprintf("triggers=%d", n), func(b *testing.B) {
			x := NewIndex(matchBenchTriggers(b, n)) // built outside the timed loop
			b.ReportAllocs()
			matched := 0
			for b.Loop() {
				matched += len(x.MatchBroker(DefaultBroker, ev))
			}
			b.ReportMetric(float64(matched)/float64(b.N), "matches/op")
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(matched), "ns/match")
		})
	}
	b.Run("ratio", func(b *testing.B) {
		idx := map[int]*Index{}
		for _, n := range matchBenchSizes {
			idx[n] = NewIndex(matchBenchTriggers(b, n))
		}
		// Each round times every size for about the same wall time;
		// the rates are medians over rounds.
		const rounds, perRound = 7, 20 * time.Millisecond
		rates := map[int][]float64{}
		for range rounds {
			for _, n := range matchBenchSizes {
				x, matched, start := idx[n], 0, time.Now()
				for time.Since(start) < perRound {
					for range 100 {
						matched += len(x.MatchBroker(DefaultBroker, ev))
					}
				}
				rates[n] = append(rates[n], float64(matched)/time.Since(start).Seconds())
			}
		}
		for b.Loop() { // the rounds above are the measurement
		}
		med := func(n int) float64 {
			s := slices.Clone(rates[n])
			slices.Sort(s)
			return s[len(s)/2]
		}
		for _, n := range matchBenchSizes {
			b.ReportMetric(med(n), fmt.Sprintf("t%d-matches/s", n))
		}
		b.ReportMetric(med(10_000)/med(1), "ratio_10k_vs_1")
		b.ReportMetric(med(10_000)/med(10), "ratio_10k_vs_10")
	})
}

// matchBenchEvent is the event the first ten bench triggers match.
func matchBenchEvent() event.Event {
	ev := event.New()
	ev.SetID("evt-1")
	ev.SetSource("/storage/bucket-1")
	ev.SetType("com.example.t0")
	ev.SetSubject("photos/cat.jpg")
	ev.SetExtension("region", "eu-west-1")
	ev.SetExtension("size", 2048)
	ev.SetExtension("knativebrokerttl", 255)
	_ = ev.SetData(event.ApplicationJSON, map[string]string{"blob": "x"})
	return ev
}

// matchBenchTriggers builds n triggers: the first min(n, 10) match
// matchBenchEvent, the rest have the same shapes with other values (other
// types, tenants, file kinds, regions; one in a thousand is a CESQL
// expression alone) and match nothing. The broker's BenchmarkDispatch uses
// the same set, as YAML.
func matchBenchTriggers(tb testing.TB, n int) []*Trigger {
	tb.Helper()
	cesql := func(src string) Filter {
		f, err := newCESQL(src)
		if err != nil {
			tb.Fatal(err)
		}
		return f
	}
	big := cesql("size > 1024") // shared, as compiling 1,400 copies is set-up, not matching
	matching := []Filter{
		newAttributes(map[string]string{"type": "com.example.t0"}),
		newAttributes(map[string]string{"type": "com.example.t0", "source": "/storage/bucket-1"}),
		newAll([]Filter{newExact("type", "com.example.t0"), newPrefix("source", "/storage/")}),
		newPrefix("source", "/storage/bucket-"),
		newSuffix("subject", ".jpg"),
		newAll([]Filter{newExact("type", "com.example.t0"), big}),
		cesql("region = 'eu-west-1' AND size > 1024"),
		newAll([]Filter{newExact("region", "eu-west-1"), newSuffix("subject", ".jpg")}),
		newAttributes(map[string]string{"type": "com.example.t0", "region": ""}),
		newAll([]Filter{newPrefix("subject", "photos/"), newExact("type", "com.example.t0")}),
	}
	other := func(i int) Filter {
		typ := fmt.Sprintf("com.example.t%d", i)
		if i%1000 == 999 {
			return cesql(fmt.Sprintf("region = 'r%d' AND size > 1024", i))
		}
		switch i % 7 {
		case 0:
			return newAttributes(map[string]string{"type": typ})
		case 1:
			return newAll([]Filter{newExact("type", typ), newPrefix("source", "/storage/")})
		case 2:
			return newPrefix("source", fmt.Sprintf("/tenant-%d/", i))
		case 3:
			return newSuffix("subject", fmt.Sprintf(".ext%d", i))
		case 4:
			return newAll([]Filter{newExact("type", typ), big})
		case 5:
			return newExact("region", fmt.Sprintf("r%d", i))
		default:
			return newAll([]Filter{newPrefix("subject", fmt.Sprintf("tenant-%d/", i)), newExact("type", typ)})
		}
	}
	trs := make([]*Trigger, n)
	for i := range trs {
		f := matching[min(i, len(matching)-1)]
		if i >= len(matching) {
			f = other(i)
		}
		trs[i] = &Trigger{Name: fmt.Sprintf("t%05d", i), Broker: DefaultBroker, Filter: f,
			Subscriber: Destination{FunctionName: "fn"}, Delivery: DefaultPolicy()}
	}
	if got, want := len(NewIndex(trs).MatchBroker(DefaultBroker, matchBenchEvent())), min(n, len(matching)); got != want {
		tb.Fatalf("%d of %d bench triggers match, want %d", got, n, want)
	}
	return trs
}
