package triggers

import (
	"testing"

	"github.com/cloudevents/sdk-go/v2/event"
)

// filterCase is one filter (the YAML under spec:) with events that must
// pass it and events that must not.
type filterCase struct {
	name    string
	spec    string
	match   map[string]event.Event
	noMatch map[string]event.Event
}

func runFilterCases(t *testing.T, cases []filterCase) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tr := mustParse(t, tc.spec)
			for name, ev := range tc.match {
				if !tr.Filter.Match(ev) {
					t.Errorf("%s: %s does not match, want match", name, describe(tr.Filter))
				}
			}
			for name, ev := range tc.noMatch {
				if tr.Filter.Match(ev) {
					t.Errorf("%s: %s matches, want no match", name, describe(tr.Filter))
				}
			}
		})
	}
}

func TestExactFilter(t *testing.T) {
	t.Parallel()
	runFilterCases(t, []filterCase{{
		name:    "type",
		spec:    "filters: [{exact: {type: com.example.upload}}]",
		match:   map[string]event.Event{"upload": testEvent()},
		noMatch: map[string]event.Event{"other type": bare(), "case differs": testEvent(withType("com.example.Upload")), "prefix only": testEvent(withType("com.example.upload.v2"))},
	}, {
		name:    "string extension",
		spec:    "filters: [{exact: {region: eu-west-1}}]",
		match:   map[string]event.Event{"set": testEvent()},
		noMatch: map[string]event.Event{"other value": testEvent(withExt("region", "us-east-1")), "missing": testEvent(withoutExt("region"))},
	}, {
		name: "integer extension in canonical form",
		spec: `filters: [{exact: {size: "2048"}}]`,
		match: map[string]event.Event{
			"typed int":                              testEvent(),
			"string as HTTP binary mode delivers it": testEvent(withExt("size", "2048")),
		},
		noMatch: map[string]event.Event{"other": testEvent(withExt("size", 2049)), "missing": bare()},
	}, {
		name:    "boolean extension",
		spec:    `filters: [{exact: {public: "true"}}]`,
		match:   map[string]event.Event{"true": testEvent()},
		noMatch: map[string]event.Event{"false": testEvent(withExt("public", false)), "missing": bare()},
	}, {
		name: "context attributes",
		spec: "filters:\n" +
			"  - exact: {id: evt-1}\n" +
			"  - exact: {source: /storage/bucket-1}\n" +
			"  - exact: {specversion: \"1.0\"}\n" +
			"  - exact: {subject: photos/cat.jpg}\n" +
			"  - exact: {dataschema: \"https://example.com/schemas/upload.json\"}\n" +
			"  - exact: {datacontenttype: \"application/json; charset=utf-8\"}\n" +
			"  - exact: {datamediatype: application/json}\n" +
			"  - exact: {time: \"2026-01-02T02:04:05.6Z\"}\n",
		match:   map[string]event.Event{"all set": testEvent()},
		noMatch: map[string]event.Event{"other subject": testEvent(withSubject("photos/dog.jpg")), "bare": bare()},
	}, {
		name:    "missing optional attribute",
		spec:    "filters: [{exact: {subject: photos/cat.jpg}}]",
		noMatch: map[string]event.Event{"no subject": bare(), "zero event": {}},
	}})
}

func TestPrefixFilter(t *testing.T) {
	t.Parallel()
	runFilterCases(t, []filterCase{{
		name:    "source",
		spec:    "filters: [{prefix: {source: /storage/}}]",
		match:   map[string]event.Event{"under storage": testEvent()},
		noMatch: map[string]event.Event{"elsewhere": bare(), "case differs": testEvent(func(ev *event.Event) { ev.SetSource("/Storage/x") })},
	}, {
		name:    "whole value is a prefix of itself",
		spec:    "filters: [{prefix: {type: com.example.upload}}]",
		match:   map[string]event.Event{"equal": testEvent(), "longer": testEvent(withType("com.example.upload.v2"))},
		noMatch: map[string]event.Event{"shorter": testEvent(withType("com.example"))},
	}, {
		name:    "extension",
		spec:    "filters: [{prefix: {region: eu-}}]",
		match:   map[string]event.Event{"eu": testEvent()},
		noMatch: map[string]event.Event{"us": testEvent(withExt("region", "us-east-1")), "missing": testEvent(withoutExt("region"))},
	}, {
		name:    "integer extension in canonical form",
		spec:    `filters: [{prefix: {size: "20"}}]`,
		match:   map[string]event.Event{"2048": testEvent()},
		noMatch: map[string]event.Event{"1024": testEvent(withExt("size", 1024))},
	}})
}

func TestSuffixFilter(t *testing.T) {
	t.Parallel()
	runFilterCases(t, []filterCase{{
		name:    "subject",
		spec:    "filters: [{suffix: {subject: .jpg}}]",
		match:   map[string]event.Event{"jpg": testEvent()},
		noMatch: map[string]event.Event{"png": testEvent(withSubject("photos/cat.png")), "JPG": testEvent(withSubject("photos/cat.JPG")), "no subject": bare()},
	}, {
		name:    "extension",
		spec:    "filters: [{suffix: {region: west-1}}]",
		match:   map[string]event.Event{"eu-west-1": testEvent()},
		noMatch: map[string]event.Event{"missing": bare(), "east": testEvent(withExt("region", "eu-east-1"))},
	}})
}

func TestAllFilter(t *testing.T) {
	t.Parallel()
	runFilterCases(t, []filterCase{{
		name: "every nested filter must pass",
		spec: "filters:\n" +
			"  - all:\n" +
			"      - exact: {type: com.example.upload}\n" +
			"      - prefix: {source: /storage/}\n" +
			"      - suffix: {subject: .jpg}\n",
		match:   map[string]event.Event{"upload": testEvent()},
		noMatch: map[string]event.Event{"png": testEvent(withSubject("a.png")), "other type": testEvent(withType("x")), "bare": bare()},
	}, {
		name: "filters entries are ANDed",
		spec: "filters:\n" +
			"  - exact: {type: com.example.upload}\n" +
			"  - exact: {region: eu-west-1}\n",
		match:   map[string]event.Event{"both": testEvent()},
		noMatch: map[string]event.Event{"region differs": testEvent(withExt("region", "us")), "type differs": testEvent(withType("x"))},
	}, {
		name: "nested all inside any inside all",
		spec: "filters:\n" +
			"  - all:\n" +
			"      - any:\n" +
			"          - all: [{exact: {region: eu-west-1}}, {exact: {public: \"true\"}}]\n" +
			"          - exact: {region: us-east-1}\n" +
			"      - not: {suffix: {subject: .png}}\n",
		match: map[string]event.Event{
			"eu and public":  testEvent(),
			"us not public":  testEvent(withExt("region", "us-east-1"), withExt("public", false)),
			"us, no subject": testEvent(withExt("region", "us-east-1"), withSubject("")),
		},
		noMatch: map[string]event.Event{
			"eu not public": testEvent(withExt("public", false)),
			"png":           testEvent(withSubject("x.png")),
			"bare":          bare(),
		},
	}})
}

func TestAnyFilter(t *testing.T) {
	t.Parallel()
	runFilterCases(t, []filterCase{{
		name: "one nested filter suffices",
		spec: "filters:\n" +
			"  - any:\n" +
			"      - exact: {type: com.example.upload}\n" +
			"      - exact: {type: com.example.delete}\n" +
			"      - exact: {missingext: x}\n",
		match:   map[string]event.Event{"upload": testEvent(), "delete": testEvent(withType("com.example.delete"))},
		noMatch: map[string]event.Event{"other": bare(), "missing attribute only": testEvent(withType("x"))},
	}, {
		name:    "any of one",
		spec:    "filters: [{any: [{prefix: {region: eu}}]}]",
		match:   map[string]event.Event{"eu": testEvent()},
		noMatch: map[string]event.Event{"bare": bare()},
	}})
}

func TestNotFilter(t *testing.T) {
	t.Parallel()
	runFilterCases(t, []filterCase{{
		name:    "negates",
		spec:    "filters: [{not: {exact: {type: com.example.upload}}}]",
		match:   map[string]event.Event{"other": bare()},
		noMatch: map[string]event.Event{"upload": testEvent()},
	}, {
		name: "a missing attribute fails the inner filter, so not passes",
		spec: "filters: [{not: {exact: {region: eu-west-1}}}]",
		match: map[string]event.Event{
			"missing": bare(),
			"other":   testEvent(withExt("region", "us")),
		},
		noMatch: map[string]event.Event{"eu": testEvent()},
	}, {
		name:    "double negation",
		spec:    "filters: [{not: {not: {prefix: {source: /storage/}}}}]",
		match:   map[string]event.Event{"storage": testEvent()},
		noMatch: map[string]event.Event{"other": bare()},
	}, {
		name:    "not of any",
		spec:    "filters: [{not: {any: [{exact: {type: a}}, {exact: {type: b}}]}}]",
		match:   map[string]event.Event{"c": bare(withType("c"))},
		noMatch: map[string]event.Event{"a": bare(withType("a")), "b": bare(withType("b"))},
	}})
}

func TestCESQLFilter(t *testing.T) {
	t.Parallel()
	runFilterCases(t, []filterCase{{
		name:  "integer extension",
		spec:  `filters: [{cesql: "size > 1024"}]`,
		match: map[string]event.Event{"typed 2048": testEvent(), "string 4096 as from HTTP": testEvent(withExt("size", "4096"))},
		noMatch: map[string]event.Event{
			"small":                    testEvent(withExt("size", 10)),
			"missing attribute":        bare(),
			"cast error is a no-match": testEvent(withExt("size", "big")),
		},
	}, {
		name: "context attributes and LIKE",
		spec: `filters: [{cesql: "type = 'com.example.upload' AND source LIKE '/storage/%' AND region IN ('eu-west-1', 'eu-central-1')"}]`,
		match: map[string]event.Event{
			"upload": testEvent(),
		},
		noMatch: map[string]event.Event{
			"other region": testEvent(withExt("region", "us-east-1")),
			"other type":   testEvent(withType("x")),
		},
	}, {
		name:    "EXISTS",
		spec:    `filters: [{cesql: "EXISTS region"}]`,
		match:   map[string]event.Event{"set": testEvent()},
		noMatch: map[string]event.Event{"missing": bare()},
	}, {
		name:    "NOT over a missing attribute is still an error, so no match",
		spec:    `filters: [{cesql: "NOT (region = 'x')"}]`,
		match:   map[string]event.Event{"set": testEvent()},
		noMatch: map[string]event.Event{"missing": bare()},
	}, {
		name: "type errors and math errors are no match",
		spec: `filters: [{any: [{cesql: "type + 1 = 2"}, {cesql: "1 / 0 = 1"}, {cesql: "nosuchfn(1) = 1"}]}]`,
		noMatch: map[string]event.Event{
			"upload": testEvent(),
			"bare":   bare(),
		},
	}, {
		name:    "a non-boolean result is no match",
		spec:    `filters: [{cesql: "size"}]`,
		noMatch: map[string]event.Event{"upload": testEvent()},
	}, {
		name:    "boolean extension",
		spec:    `filters: [{cesql: "public"}]`,
		match:   map[string]event.Event{"true": testEvent()},
		noMatch: map[string]event.Event{"false": testEvent(withExt("public", false))},
	}, {
		name:    "keywords are case-insensitive",
		spec:    `filters: [{cesql: "subject like '%.jpg' and not (size < 100)"}]`,
		match:   map[string]event.Event{"jpg": testEvent()},
		noMatch: map[string]event.Event{"tiny": testEvent(withExt("size", 1))},
	}})
}

func TestLegacyAttributesFilter(t *testing.T) {
	t.Parallel()
	runFilterCases(t, []filterCase{{
		name:    "exact values",
		spec:    "filter: {attributes: {type: com.example.upload, region: eu-west-1}}",
		match:   map[string]event.Event{"both": testEvent()},
		noMatch: map[string]event.Event{"region differs": testEvent(withExt("region", "x")), "type differs": testEvent(withType("x"))},
	}, {
		name: `"" accepts any value of a present attribute`,
		spec: `filter: {attributes: {type: "", region: ""}}`,
		match: map[string]event.Event{
			"upload":       testEvent(),
			"other values": testEvent(withType("x"), withExt("region", "y")),
		},
		noMatch: map[string]event.Event{"missing extension": bare()},
	}, {
		name:    `"" does not accept an unset optional attribute`,
		spec:    `filter: {attributes: {subject: ""}}`,
		match:   map[string]event.Event{"set": testEvent()},
		noMatch: map[string]event.Event{"unset": bare()},
	}, {
		name:    `"" does not accept an empty extension`,
		spec:    `filter: {attributes: {region: ""}}`,
		noMatch: map[string]event.Event{"empty": testEvent(withExt("region", ""))},
	}, {
		name:  "no attributes matches everything",
		spec:  "filter: {attributes: {}}",
		match: map[string]event.Event{"upload": testEvent(), "bare": bare()},
	}, {
		name:  "empty filter matches everything",
		spec:  "filter: {}",
		match: map[string]event.Event{"upload": testEvent(), "bare": bare()},
	}})
}

func TestFiltersOverrideFilter(t *testing.T) {
	t.Parallel()
	runFilterCases(t, []filterCase{{
		name: "filters wins and filter is ignored",
		spec: "filter: {attributes: {type: com.example.other}}\n" +
			"filters: [{exact: {type: com.example.upload}}]\n",
		match:   map[string]event.Event{"upload": testEvent()},
		noMatch: map[string]event.Event{"what filter wanted": bare()},
	}, {
		name: "an empty filters list leaves filter in force",
		spec: "filter: {attributes: {type: com.example.other}}\n" +
			"filters: []\n",
		match:   map[string]event.Event{"other": bare()},
		noMatch: map[string]event.Event{"upload": testEvent()},
	}, {
		name:  "no filter at all matches everything",
		spec:  "broker: default\n",
		match: map[string]event.Event{"upload": testEvent(), "bare": bare()},
	}})
}

func TestNoFilterIsMatchAll(t *testing.T) {
	t.Parallel()
	tr := mustParse(t, "broker: default\n")
	if _, ok := tr.Filter.(matchAll); !ok {
		t.Errorf("Filter = %s, want matchAll", describe(tr.Filter))
	}
}

func TestLookupCanonicalForms(t *testing.T) {
	t.Parallel()
	ev := testEvent(withExt("blob", []byte{1, 2, 3}))
	for name, want := range map[string]string{
		"time":        "2026-01-02T02:04:05.6Z",
		"size":        "2048",
		"public":      "true",
		"blob":        "AQID",
		"specversion": "1.0",
		"schemaurl":   "https://example.com/schemas/upload.json",
	} {
		got, ok := lookup(ev, name)
		if !ok || got != want {
			t.Errorf("lookup(%s) = %q, %v; want %q, true", name, got, ok, want)
		}
	}
	for _, name := range []string{"nosuch", "subject", "time", "dataschema", "datacontenttype"} {
		if got, ok := lookup(bare(), name); ok {
			t.Errorf("lookup(%s) on a bare event = %q, true; want missing", name, got)
		}
	}
}

// TestMatchAllocs keeps the hot path of the string dialects free of
// allocations. (source is left out: the SDK renders it from a URL on every
// read.)
func TestMatchAllocs(t *testing.T) {
	tr := mustParse(t, "filters:\n"+
		"  - exact: {type: com.example.upload}\n"+
		"  - prefix: {id: evt-}\n"+
		"  - suffix: {subject: .jpg}\n"+
		"  - any: [{exact: {region: us}}, {not: {exact: {region: us}}}]\n"+
		"filter: {attributes: {type: x}}\n")
	ev := testEvent()
	if !tr.Filter.Match(ev) {
		t.Fatal("no match")
	}
	if n := testing.AllocsPerRun(100, func() { tr.Filter.Match(ev) }); n != 0 {
		t.Errorf("Match allocates %v times, want 0", n)
	}
}
