package triggers

import (
	"fmt"
	"math/rand/v2"
	"net/url"
	"slices"
	"testing"

	"github.com/cloudevents/sdk-go/sql/v2/utils"
	"github.com/cloudevents/sdk-go/v2/event"
)

func names(trs []*Trigger) []string {
	out := make([]string, len(trs))
	for i, t := range trs {
		out[i] = t.Name
	}
	return out
}

func parseNamed(tb testing.TB, name, specLines string) *Trigger {
	tb.Helper()
	tr, err := parseYAML(tb, manifest(name, specLines+"\n"+fnSubscriber))
	if err != nil {
		tb.Fatalf("%s: %v", name, err)
	}
	return tr
}

func TestIndexMatch(t *testing.T) {
	t.Parallel()
	trs := []*Trigger{
		parseNamed(t, "zeta-all", "broker: default"),
		parseNamed(t, "b-upload", "filters: [{exact: {type: com.example.upload}}]"),
		parseNamed(t, "a-upload-legacy", "filter: {attributes: {type: com.example.upload}}"),
		parseNamed(t, "c-delete", "filters: [{exact: {type: com.example.delete}}]"),
		parseNamed(t, "d-storage", "filters: [{prefix: {source: /storage/}}]"),
		parseNamed(t, "e-any-type", "filters: [{any: [{exact: {type: com.example.delete}}, {exact: {type: com.example.upload}}]}]"),
		parseNamed(t, "f-big", `filters: [{exact: {type: com.example.upload}}, {cesql: "size > 4096"}]`),
		parseNamed(t, "g-other-broker", "broker: audit\nfilters: [{exact: {type: com.example.upload}}]"),
		parseNamed(t, "h-legacy-any-type", `filter: {attributes: {type: ""}}`),
		nil,
	}
	x := NewIndex(trs)
	if x.Len() != 9 {
		t.Fatalf("Len() = %d, want 9", x.Len())
	}
	tests := []struct {
		name   string
		broker string // "" for Match
		ev     event.Event
		want   []string
	}{
		{"upload, every broker", "", testEvent(),
			[]string{"a-upload-legacy", "b-upload", "d-storage", "e-any-type", "g-other-broker", "h-legacy-any-type", "zeta-all"}},
		{"upload, default broker", DefaultBroker, testEvent(),
			[]string{"a-upload-legacy", "b-upload", "d-storage", "e-any-type", "h-legacy-any-type", "zeta-all"}},
		{"big upload", DefaultBroker, testEvent(withExt("size", 8192)),
			[]string{"a-upload-legacy", "b-upload", "d-storage", "e-any-type", "f-big", "h-legacy-any-type", "zeta-all"}},
		{"audit broker", "audit", testEvent(), []string{"g-other-broker"}},
		{"unknown broker", "nope", testEvent(), nil},
		{"delete", DefaultBroker, bare(withType("com.example.delete")),
			[]string{"c-delete", "e-any-type", "h-legacy-any-type", "zeta-all"}},
		{"unrelated", DefaultBroker, bare(), []string{"h-legacy-any-type", "zeta-all"}},
		{"zero event", "", event.Event{}, nil},
	}
	for _, tc := range tests {
		var got []*Trigger
		if tc.broker == "" {
			got = x.Match(tc.ev)
		} else {
			got = x.MatchBroker(tc.broker, tc.ev)
		}
		if !slices.Equal(names(got), tc.want) {
			t.Errorf("%s: got %v, want %v", tc.name, names(got), tc.want)
		}
	}
}

// buckets renders where x filed each trigger: "attr=value" (exact),
// "attr^value" (prefix), "attr$value" (suffix), "open".
func buckets(x *Index) map[string][]string {
	out := map[string][]string{}
	add := func(b string, l []int32) {
		for _, k := range l {
			out[b] = append(out[b], x.all[k].Name)
		}
	}
	for _, a := range x.attrs {
		for v, l := range a.exact {
			add(a.name+"="+v, l)
		}
		for v, l := range a.prefix.byValue {
			add(a.name+"^"+v, l)
		}
		for v, l := range a.suffix.byValue {
			add(a.name+"$"+v, l)
		}
	}
	add("open", x.open)
	return out
}

func TestIndexBuckets(t *testing.T) {
	t.Parallel()
	x := NewIndex([]*Trigger{
		parseNamed(t, "exact", "filters: [{exact: {type: a}}]"),
		// type=a is shared by five triggers, source=x by none: the smaller
		// bucket wins.
		parseNamed(t, "legacy", "filter: {attributes: {type: a, source: x}}"),
		parseNamed(t, "all", "filters: [{prefix: {source: /}}, {exact: {type: b}}]"),
		parseNamed(t, "any", "filters: [{any: [{exact: {type: a}}, {all: [{exact: {type: c}}]}, {exact: {type: a}}]}]"),
		parseNamed(t, "any-open", "filters: [{any: [{exact: {type: a}}, {prefix: {source: /}}]}]"),
		parseNamed(t, "any-not", "filters: [{any: [{exact: {type: a}}, {not: {exact: {type: b}}}]}]"),
		parseNamed(t, "not", "filters: [{not: {exact: {type: a}}}]"),
		parseNamed(t, "cesql", `filters: [{cesql: "type = 'a'"}]`),
		parseNamed(t, "cesql-or", `filters: [{cesql: "type = 'a' OR type = 'b'"}]`),
		parseNamed(t, "suffix", "filters: [{suffix: {subject: .jpg}}, {cesql: \"size > 10\"}]"),
		parseNamed(t, "everything", "broker: default"),
	})
	want := map[string][]string{
		"type=a":       {"any", "any-open", "cesql", "exact"},
		"type=b":       {"all"},
		"type=c":       {"any"},
		"source=x":     {"legacy"},
		"source^/":     {"any-open"},
		"subject$.jpg": {"suffix"},
		"open":         {"any-not", "cesql-or", "everything", "not"},
	}
	got := buckets(x)
	for b, ws := range want {
		if !slices.Equal(got[b], ws) {
			t.Errorf("bucket %q = %v, want %v", b, got[b], ws)
		}
	}
	if len(got) != len(want) {
		t.Errorf("buckets %v, want %v", got, want)
	}
}

func TestCESQLKeys(t *testing.T) {
	t.Parallel()
	tests := map[string][]string{ // expression → attr=value of each key set
		"type = 'a'":                          {"type=a"},
		"'a' = type":                          {"type=a"},
		"TYPE = \"a\"":                        {"type=a"},
		"type = 'a' AND size > 10":            {"type=a"},
		"(type = 'a') AND (region = 'eu')":    {"type=a", "region=eu"},
		"type = 'a' AND (x = 'b' OR y = 'c')": {"type=a"},
		"size = '5'":                          {"size=5"},
		"type = 'it\\'s'":                     {"type=it's"},
		"'5' = size":                          nil, // the literal is cast to the attribute's type: '05' = 5
		"source = '/x'":                       nil, // CESQL renders a URI-reference its own way
		"time = 'x'":                          nil,
		"type = 'a' OR type = 'b'":            nil,
		"NOT type = 'a'":                      nil,
		"type <> 'a'":                         nil,
		"type = ''":                           nil,
		"type = subject":                      nil,
		"type LIKE 'a%'":                      nil,
	}
	for src, want := range tests {
		f, err := newCESQL(src)
		if err != nil {
			t.Fatalf("%s: %v", src, err)
		}
		var got []string
		for _, set := range keyAlternatives(f, shortestSet) {
			for _, k := range set {
				got = append(got, k.attr+"="+k.value)
			}
		}
		if !slices.Equal(got, want) {
			t.Errorf("%s: keys %v, want %v", src, got, want)
		}
	}
}

func TestIndexGetAllLen(t *testing.T) {
	t.Parallel()
	first := parseNamed(t, "dup", "filters: [{exact: {type: a}}]")
	second := parseNamed(t, "dup", "filters: [{exact: {type: b}}]")
	other := parseNamed(t, "alpha", "broker: default")
	x := NewIndex([]*Trigger{first, other, second})
	if got, ok := x.Get("dup"); !ok || got != first {
		t.Errorf("Get(dup) = %v, %v; want the first", got, ok)
	}
	if _, ok := x.Get("nope"); ok {
		t.Error("Get(nope) found something")
	}
	all := x.All()
	if !slices.Equal(names(all), []string{"alpha", "dup", "dup"}) || all[1] != first {
		t.Errorf("All() = %v", names(all))
	}
	all[0] = nil // callers may not change the index through All
	if x.All()[0] != other {
		t.Error("All shares its slice with the index")
	}
	if got := names(x.Match(bare(withType("b")))); !slices.Equal(got, []string{"alpha", "dup"}) {
		t.Errorf("Match = %v", got)
	}

	var empty *Index
	if empty.Len() != 0 || empty.All() != nil || empty.Match(testEvent()) != nil || empty.MatchBroker("default", testEvent()) != nil {
		t.Error("nil Index is not empty")
	}
	if _, ok := empty.Get("x"); ok {
		t.Error("nil Index Get found something")
	}
	if NewIndex(nil).Match(testEvent()) != nil {
		t.Error("empty Index matched")
	}
}

// TestIndexAgreesWithScan checks the bucketed index against evaluating every
// trigger in name order, over random triggers and events.
func TestIndexAgreesWithScan(t *testing.T) {
	t.Parallel()
	rng := rand.New(rand.NewPCG(1, 2))
	types := []string{"a", "b", "c", "d"}
	pick := func() string { return types[rng.IntN(len(types))] }
	specs := []func() string{
		func() string { return fmt.Sprintf("filters: [{exact: {type: %s}}]", pick()) },
		func() string { return fmt.Sprintf("filter: {attributes: {type: %s}}", pick()) },
		func() string { return fmt.Sprintf(`filter: {attributes: {type: "", region: %s}}`, pick()) },
		func() string {
			return fmt.Sprintf("filters: [{any: [{exact: {type: %s}}, {exact: {type: %s}}]}, {exact: {region: %s}}]", pick(), pick(), pick())
		},
		func() string { return fmt.Sprintf("filters: [{not: {exact: {type: %s}}}]", pick()) },
		func() string {
			return fmt.Sprintf(`filters: [{cesql: "type = '%s' OR region = '%s'"}]`, pick(), pick())
		},
		func() string { return fmt.Sprintf("broker: other\nfilters: [{exact: {type: %s}}]", pick()) },
		func() string { return "broker: default" },
		func() string { return fmt.Sprintf("filter: {attributes: {type: %s, region: %s}}", pick(), pick()) },
		func() string { return fmt.Sprintf("filters: [{prefix: {source: /%s}}]", pick()) },
		func() string {
			return fmt.Sprintf("filters: [{suffix: {subject: %s.jpg}}, {prefix: {type: %s}}]", pick(), pick())
		},
		func() string {
			return fmt.Sprintf("filters: [{prefix: {subject: %s}}, {suffix: {region: %s}}]", pick(), pick())
		},
		func() string {
			return fmt.Sprintf("filters: [{any: [{prefix: {source: /%s}}, {all: [{exact: {region: %s}}, {suffix: {type: %s}}]}]}]", pick(), pick(), pick())
		},
		func() string {
			return fmt.Sprintf(`filters: [{cesql: "region = '%s' AND (type = '%s' OR subject = '%s')"}]`, pick(), pick(), pick())
		},
		func() string { return fmt.Sprintf(`filters: [{cesql: "'%s' = type AND size > 1"}]`, pick()) },
		func() string { return fmt.Sprintf(`filters: [{cesql: "level = '%d'"}]`, rng.IntN(3)) },
		func() string { return fmt.Sprintf(`filters: [{cesql: "when = '%s'"}]`, pick()) },
	}
	var trs []*Trigger
	for range 600 {
		trs = append(trs, parseNamed(t, fmt.Sprintf("t-%03d", rng.IntN(1000)), specs[rng.IntN(len(specs))]()))
	}
	x := NewIndex(trs)
	sorted := x.All()
	for range 200 {
		ev := bare(withType(pick()))
		if rng.IntN(2) == 0 {
			ev.SetExtension("region", pick())
		}
		ev.SetSource("/" + pick() + "/x")
		if rng.IntN(2) == 0 {
			ev.SetSubject(pick() + "/" + pick() + ".jpg")
		}
		if rng.IntN(2) == 0 {
			ev.SetExtension("size", rng.IntN(3))
		}
		switch rng.IntN(3) { // a plain integer, or a type CESQL renders its own way
		case 0:
			ev.SetExtension("level", rng.IntN(3))
		case 1:
			ev.SetExtension("level", &url.URL{Scheme: "https", Host: "example.com"})
		}
		if rng.IntN(2) == 0 {
			ev.SetExtension("when", testTime)
		}
		for _, broker := range []string{"", DefaultBroker, "other"} {
			var want []*Trigger
			for _, tr := range sorted {
				if (broker == "" || tr.Broker == broker) && tr.Match(ev) {
					want = append(want, tr)
				}
			}
			got := x.Match(ev)
			if broker != "" {
				got = x.MatchBroker(broker, ev)
			}
			if !slices.Equal(got, want) {
				t.Fatalf("event type %s region %v broker %q: index %v, scan %v", ev.Type(), ev.Extensions()["region"], broker, names(got), names(want))
			}
		}
	}
}

// TestIndexMatchAllocs bounds the cost of a match among many triggers:
// growing the result slice (4 allocations for 8 matches) and rendering the
// source URL for the one source filter evaluated are the only allocations,
// and an event no trigger wants costs none.
func TestIndexMatchAllocs(t *testing.T) {
	x := mustIndex(t, syntheticTriggers(t, 1000))
	ev := benchEvent()
	if got := len(x.Match(ev)); got != 8 {
		t.Fatalf("%d matches, want 8", got)
	}
	if n := testing.AllocsPerRun(100, func() { x.Match(ev) }); n > 5 && !raceEnabled {
		t.Errorf("Match allocates %v times, want at most 5", n)
	}
	miss := bare(withType("com.example.nothing"))
	if n := testing.AllocsPerRun(100, func() { x.Match(miss) }); n != 0 {
		t.Errorf("Match of an unmatched event allocates %v times, want 0", n)
	}
}

func mustIndex(tb testing.TB, trs []*Trigger) *Index {
	tb.Helper()
	x := NewIndex(trs)
	if x.Len() != len(trs) {
		tb.Fatalf("index holds %d of %d triggers", x.Len(), len(trs))
	}
	return x
}

// syntheticTriggers builds n triggers the way a large installation might
// look: most select one of n/10 event types exactly (some also by source
// prefix or a CESQL condition), a tenth use the legacy filter, and a fifth
// accept every type but filter on extensions and other attributes (and
// match none of the test events).
func syntheticTriggers(tb testing.TB, n int) []*Trigger {
	tb.Helper()
	sql, err := newCESQL("size > 1024")
	if err != nil {
		tb.Fatal(err)
	}
	types := max(n/10, 1)
	trs := make([]*Trigger, n)
	for i := range trs {
		typ := fmt.Sprintf("com.example.t%d", (i/10)%types)
		var f Filter
		switch i % 10 {
		case 0, 1, 2, 3, 4:
			f = newExact("type", typ)
		case 5:
			f = newAll([]Filter{newExact("type", typ), newPrefix("source", "/storage/")})
		case 6:
			f = newAll([]Filter{newExact("type", typ), sql})
		case 7:
			f = newAttributes(map[string]string{"type": typ, "region": ""})
		case 8:
			f = newAll([]Filter{newPrefix("region", "eu-"), newSuffix("subject", fmt.Sprintf(".%d", i))})
		default:
			f = newAny([]Filter{newExact("region", fmt.Sprintf("r%d", i)), notFilter{inner: newPrefix("id", "evt-")}})
		}
		trs[i] = &Trigger{Name: fmt.Sprintf("trigger-%06d", i), Broker: DefaultBroker, Filter: f,
			Subscriber: Destination{FunctionName: "fn"}, Delivery: DefaultPolicy()}
	}
	return trs
}

// benchEvent has the type of synthetic trigger 0's bucket.
func benchEvent() event.Event {
	return testEvent(withType("com.example.t0"))
}

func BenchmarkIndexMatch(b *testing.B) {
	ev := benchEvent()
	for _, n := range []int{10, 1_000, 10_000} {
		b.Run(fmt.Sprintf("triggers=%d", n), func(b *testing.B) {
			idx := mustIndex(b, syntheticTriggers(b, n)) // built outside the timed loop
			b.ReportAllocs()
			matched := 0
			for b.Loop() {
				matched += len(idx.Match(ev))
			}
			b.ReportMetric(float64(matched)/float64(b.N), "matches/op")
		})
	}
}

func BenchmarkNewIndex(b *testing.B) {
	for _, n := range []int{10, 1_000, 10_000} {
		b.Run(fmt.Sprintf("triggers=%d", n), func(b *testing.B) {
			trs := syntheticTriggers(b, n)
			b.ReportAllocs()
			for b.Loop() {
				NewIndex(trs)
			}
		})
	}
}

func BenchmarkParse(b *testing.B) {
	doc := []byte(manifest("on-upload", "filters:\n"+
		"  - exact: {type: com.example.upload}\n"+
		"  - prefix: {source: /storage/}\n"+
		"  - cesql: \"size > 1024\"\n"+fnSubscriber))
	objs, err := resourceDecode(doc)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Parse(objs[0]); err != nil {
			b.Fatal(err)
		}
	}
}

// TestIndexCESQLRendering: a CESQL equality on an extension files its
// trigger under the literal, but CESQL renders a URI extension its own way
// (fmt of the struct), not as lookup does (the URI); such events must still
// reach the trigger.
func TestIndexCESQLRendering(t *testing.T) {
	t.Parallel()
	u, err := url.Parse("https://example.com/x")
	if err != nil {
		t.Fatal(err)
	}
	ev := bare(withExt("when", u))
	cesqlText := fmt.Sprint(utils.GetAttribute(ev, "when"))
	if v, _ := lookup(ev, "when"); v == cesqlText {
		t.Fatalf("lookup and CESQL render the timestamp alike (%s); the test needs them to differ", v)
	}
	tr := parseNamed(t, "when", fmt.Sprintf(`filters: [{cesql: "when = '%s'"}]`, cesqlText))
	if !tr.Match(ev) {
		t.Fatalf("CESQL does not match its own rendering %q", cesqlText)
	}
	x := NewIndex([]*Trigger{tr, parseNamed(t, "other", "filters: [{exact: {type: nope}}]")})
	if got := names(x.Match(ev)); !slices.Equal(got, []string{"when"}) {
		t.Errorf("Match = %v, want [when]", got)
	}
	if got := buckets(x)["when="+cesqlText]; !slices.Equal(got, []string{"when"}) {
		t.Errorf("the trigger is not filed under its equality: %v", buckets(x))
	}
}
