package broker

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strings"
)

// ingressCase is one HTTP request to the ingress and the answer it must get.
// The tables below assume the default IngressConfig (MaxBodyBytes 256 KiB)
// and depend on no fake store, so the real-broker tests reuse them: the bad
// cases must store nothing, the good ones must store wantEvents events.
type ingressCase struct {
	name       string
	method     string // "" means POST
	path       string // "" means "/"
	headers    map[string]string
	body       string
	wantStatus int
	wantEvents int // events stored by a good case
}

// caseDel removes a header or JSON member in caseBinary and caseStructured.
const caseDel = "\x00delete"

// caseBinary returns valid binary-mode headers for id, changed by kv
// (name, value pairs; value caseDel removes the header).
func caseBinary(id string, kv ...string) map[string]string {
	h := map[string]string{
		"ce-specversion": "1.0",
		"ce-id":          id,
		"ce-source":      "/weft/ingress-cases",
		"ce-type":        "dev.weft.test",
		"Content-Type":   "application/json",
	}
	return caseApply(h, kv)
}

func caseApply(h map[string]string, kv []string) map[string]string {
	for i := 0; i+1 < len(kv); i += 2 {
		if kv[i+1] == caseDel {
			delete(h, kv[i])
		} else {
			h[kv[i]] = kv[i+1]
		}
	}
	return h
}

// caseStructured returns a valid JSON-format event for id, changed by kv
// (member, JSON value pairs; value caseDel removes the member).
func caseStructured(id string, kv ...string) string {
	m := map[string]string{
		"specversion": `"1.0"`,
		"id":          fmt.Sprintf("%q", id),
		"source":      `"/weft/ingress-cases"`,
		"type":        `"dev.weft.test"`,
		"data":        `{"n":1}`,
	}
	caseApply(m, kv)
	var b strings.Builder
	b.WriteByte('{')
	for i, k := range slices.Sorted(maps.Keys(m)) {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, "%q:%s", k, m[k])
	}
	b.WriteByte('}')
	return b.String()
}

func caseBatch(events ...string) string { return "[" + strings.Join(events, ",") + "]" }

var (
	caseStructuredCT = map[string]string{"Content-Type": "application/cloudevents+json"}
	caseBatchCT      = map[string]string{"Content-Type": "application/cloudevents-batch+json"}
)

// badIngressCases must each be refused with wantStatus and store nothing.
var badIngressCases = []ingressCase{
	// Required attributes.
	{name: "binary missing id", headers: caseBinary("b1", "ce-id", caseDel), body: `{}`, wantStatus: 400},
	{name: "binary missing source", headers: caseBinary("b2", "ce-source", caseDel), body: `{}`, wantStatus: 400},
	{name: "binary missing type", headers: caseBinary("b3", "ce-type", caseDel), body: `{}`, wantStatus: 400},
	{name: "binary missing specversion", headers: caseBinary("b4", "ce-specversion", caseDel), body: `{}`, wantStatus: 400},
	{name: "binary empty id", headers: caseBinary(""), body: `{}`, wantStatus: 400},
	{name: "structured missing id", headers: caseStructuredCT, body: caseStructured("x", "id", caseDel), wantStatus: 400},
	{name: "structured missing source", headers: caseStructuredCT, body: caseStructured("s2", "source", caseDel), wantStatus: 400},
	{name: "structured missing type", headers: caseStructuredCT, body: caseStructured("s3", "type", caseDel), wantStatus: 400},
	{name: "structured missing specversion", headers: caseStructuredCT, body: caseStructured("s4", "specversion", caseDel), wantStatus: 400},
	{name: "structured null id", headers: caseStructuredCT, body: caseStructured("s5", "id", "null"), wantStatus: 400},
	{name: "structured numeric id", headers: caseStructuredCT, body: caseStructured("s6", "id", "42"), wantStatus: 400},
	// specversion.
	{name: "binary specversion 0.3", headers: caseBinary("b5", "ce-specversion", "0.3"), body: `{}`, wantStatus: 400},
	{name: "binary specversion 2.0", headers: caseBinary("b6", "ce-specversion", "2.0"), body: `{}`, wantStatus: 400},
	{name: "structured specversion 0.3", headers: caseStructuredCT, body: caseStructured("s7", "specversion", `"0.3"`), wantStatus: 400},
	{name: "structured specversion 2.0", headers: caseStructuredCT, body: caseStructured("s8", "specversion", `"2.0"`), wantStatus: 400},
	// Attribute names.
	{name: "structured upper-case extension", headers: caseStructuredCT, body: caseStructured("s9", "myExt", `"x"`), wantStatus: 400},
	{name: "structured dash in extension", headers: caseStructuredCT, body: caseStructured("s10", "my-ext", `"x"`), wantStatus: 400},
	{name: "structured non-ASCII extension", headers: caseStructuredCT, body: caseStructured("s11", "ünï", `"x"`), wantStatus: 400},
	{name: "structured empty extension name", headers: caseStructuredCT, body: caseStructured("s12", "", `"x"`), wantStatus: 400},
	{name: "binary dash in extension", headers: caseBinary("b7", "ce-my-ext", "x"), body: `{}`, wantStatus: 400},
	{name: "binary underscore in extension", headers: caseBinary("b8", "ce-my_ext", "x"), body: `{}`, wantStatus: 400},
	// Attribute values.
	{name: "binary time not RFC 3339", headers: caseBinary("b9", "ce-time", "2024-01-02 03:04:05"), body: `{}`, wantStatus: 400},
	{name: "structured time not RFC 3339", headers: caseStructuredCT, body: caseStructured("s13", "time", `"yesterday"`), wantStatus: 400},
	{name: "structured relative dataschema", headers: caseStructuredCT, body: caseStructured("s14", "dataschema", `"/schemas/x.json"`), wantStatus: 400},
	{name: "binary relative dataschema", headers: caseBinary("b10", "ce-dataschema", "schemas/x.json"), body: `{}`, wantStatus: 400},
	{name: "structured control character in subject", headers: caseStructuredCT, body: caseStructured("s15", "subject", `"a\u0007b"`), wantStatus: 400},
	{name: "structured control character in extension", headers: caseStructuredCT, body: caseStructured("s16", "note", `"line\nbreak"`), wantStatus: 400},
	{name: "binary percent-encoded control character", headers: caseBinary("b11", "ce-subject", "a%07b"), body: `{}`, wantStatus: 400},
	{name: "binary invalid percent-encoding", headers: caseBinary("b12", "ce-subject", "100%"), body: `{}`, wantStatus: 400},
	{name: "binary percent-encoding of invalid UTF-8", headers: caseBinary("b13", "ce-subject", "caf%E9"), body: `{}`, wantStatus: 400},
	{name: "structured empty subject", headers: caseStructuredCT, body: caseStructured("s17", "subject", `""`), wantStatus: 400},
	{name: "structured source not a URI-reference", headers: caseStructuredCT, body: caseStructured("s18", "source", `"not a uri"`), wantStatus: 400},
	{name: "structured extension over 32 bits", headers: caseStructuredCT, body: caseStructured("s19", "big", `4294967296`), wantStatus: 400},
	{name: "structured fractional extension", headers: caseStructuredCT, body: caseStructured("s20", "ratio", `1.5`), wantStatus: 400},
	{name: "structured object extension", headers: caseStructuredCT, body: caseStructured("s21", "nested", `{"a":1}`), wantStatus: 400},
	{name: "binary ce-datacontenttype with Content-Type", headers: caseBinary("b14", "ce-datacontenttype", "application/json"), body: `{}`, wantStatus: 400},
	{name: "binary malformed Content-Type", headers: caseBinary("b15", "Content-Type", "not a media type"), body: `{}`, wantStatus: 400},
	// JSON format.
	{name: "structured malformed JSON", headers: caseStructuredCT, body: `{"specversion":"1.0","id":"s22",`, wantStatus: 400},
	{name: "structured empty body", headers: caseStructuredCT, body: ``, wantStatus: 400},
	{name: "structured array body", headers: caseStructuredCT, body: caseBatch(caseStructured("s23")), wantStatus: 400},
	{name: "structured trailing data", headers: caseStructuredCT, body: caseStructured("s24") + `{}`, wantStatus: 400},
	{name: "structured duplicate member", headers: caseStructuredCT, body: `{"specversion":"1.0","id":"s25","id":"s26","source":"/s","type":"t"}`, wantStatus: 400},
	{name: "structured bad base64", headers: caseStructuredCT, body: caseStructured("s27", "data", caseDel, "data_base64", `"not*base64"`), wantStatus: 400},
	{name: "structured data and data_base64", headers: caseStructuredCT, body: caseStructured("s28", "data_base64", `"AAEC"`), wantStatus: 400},
	{name: "structured object data for text type", headers: caseStructuredCT, body: caseStructured("s29", "datacontenttype", `"text/plain"`), wantStatus: 400},
	// Batch.
	{name: "batch nested array", headers: caseBatchCT, body: caseBatch(caseBatch(caseStructured("n1"))), wantStatus: 400},
	{name: "batch non-object element", headers: caseBatchCT, body: caseBatch(caseStructured("n2"), `42`), wantStatus: 400},
	{name: "batch one invalid event", headers: caseBatchCT, body: caseBatch(caseStructured("n3"), caseStructured("n4", "time", `"soon"`), caseStructured("n5")), wantStatus: 400},
	{name: "batch mixed specversions", headers: caseBatchCT, body: caseBatch(caseStructured("n6"), caseStructured("n7", "specversion", `"0.3"`)), wantStatus: 400},
	{name: "batch object body", headers: caseBatchCT, body: caseStructured("n8"), wantStatus: 400},
	{name: "batch malformed JSON", headers: caseBatchCT, body: `[` + caseStructured("n9"), wantStatus: 400},
	// Content types.
	{name: "unknown structured format", headers: map[string]string{"Content-Type": "application/cloudevents+xml"}, body: `<event/>`, wantStatus: 415},
	{name: "structured in UTF-16", headers: map[string]string{"Content-Type": "application/cloudevents+json; charset=utf-16"}, body: caseStructured("c1"), wantStatus: 415},
	{name: "plain JSON without ce headers", headers: map[string]string{"Content-Type": "application/json"}, body: `{"hello":"world"}`, wantStatus: 400},
	{name: "no content type, no ce headers", body: `hello`, wantStatus: 400},
	// Methods and paths.
	{name: "GET", method: http.MethodGet, wantStatus: 405},
	{name: "PUT", method: http.MethodPut, headers: caseBinary("m1"), body: `{}`, wantStatus: 405},
	{name: "DELETE broker", method: http.MethodDelete, path: "/brokers/default", wantStatus: 405},
	{name: "unknown broker", path: "/brokers/other", headers: caseBinary("p1"), body: `{}`, wantStatus: 404},
	{name: "unknown path", path: "/elsewhere", headers: caseBinary("p2"), body: `{}`, wantStatus: 404},
	// Size.
	{name: "body just over the limit", headers: caseBinary("z1", "Content-Type", "application/octet-stream"),
		body: strings.Repeat("x", defaultMaxBodyBytes+1), wantStatus: 413},
}

// goodIngressCases must each be answered 202 and store wantEvents events.
var goodIngressCases = []ingressCase{
	{name: "binary", headers: caseBinary("g1"), body: `{"n":1}`, wantStatus: 202, wantEvents: 1},
	{name: "binary to the default broker", path: "/brokers/default", headers: caseBinary("g2"), body: `{"n":1}`, wantStatus: 202, wantEvents: 1},
	{name: "binary with every attribute", headers: caseBinary("g3",
		"ce-subject", "caf%C3%A9 au lait", "ce-time", "2024-05-06T07:08:09.123456789+02:00",
		"ce-dataschema", "https://schemas.example.com/x.json", "ce-averylongextensionnamebeyondtwenty", "yes",
		"ce-MixedCase", "header names are case-insensitive"), body: `{"n":1}`, wantStatus: 202, wantEvents: 1},
	{name: "binary without data", headers: caseBinary("g4", "Content-Type", caseDel), wantStatus: 202, wantEvents: 1},
	{name: "binary non-JSON payload", headers: caseBinary("g5", "Content-Type", "application/octet-stream"),
		body: casePayload(), wantStatus: 202, wantEvents: 1},
	{name: "binary 64 KiB event", headers: caseBinary("g6", "Content-Type", "text/plain"),
		body: strings.Repeat("y", 64<<10), wantStatus: 202, wantEvents: 1},
	{name: "structured", headers: caseStructuredCT, body: caseStructured("g7"), wantStatus: 202, wantEvents: 1},
	{name: "structured with charset", headers: map[string]string{"Content-Type": "application/cloudevents+json; charset=UTF-8"},
		body: caseStructured("g8"), wantStatus: 202, wantEvents: 1},
	{name: "structured with extensions", headers: caseStructuredCT, body: caseStructured("g9",
		"subject", `"s"`, "time", `"2024-05-06T07:08:09Z"`, "dataschema", `"urn:example:schema"`,
		"count", `2147483647`, "flag", `true`, "absent", `null`, "averylongextensionnamebeyondtwenty", `"ok"`),
		wantStatus: 202, wantEvents: 1},
	{name: "structured data_base64", headers: caseStructuredCT, body: caseStructured("g10", "data", caseDel,
		"datacontenttype", `"application/octet-stream"`, "data_base64", fmt.Sprintf("%q", base64.StdEncoding.EncodeToString([]byte(casePayload())))),
		wantStatus: 202, wantEvents: 1},
	{name: "structured text data", headers: caseStructuredCT, body: caseStructured("g11", "datacontenttype", `"text/plain"`, "data", `"{\"not\":\"re-parsed\"}"`),
		wantStatus: 202, wantEvents: 1},
	{name: "structured 64 KiB event", headers: caseStructuredCT, body: caseStructured("g12", "data", caseJSONString(64<<10)),
		wantStatus: 202, wantEvents: 1},
	{name: "batch of 3", headers: caseBatchCT, body: caseBatch(caseStructured("g13"), caseStructured("g14"), caseStructured("g15")),
		wantStatus: 202, wantEvents: 3},
	{name: "empty batch", headers: caseBatchCT, body: `[]`, wantStatus: 202, wantEvents: 0},
	{name: "structured wins over ce headers", headers: caseApply(caseBinary("ignored", "ce-specversion", "2.0"), []string{"Content-Type", "application/cloudevents+json"}),
		body: caseStructured("g16"), wantStatus: 202, wantEvents: 1},
}

// casePayload is every byte value: not UTF-8, not JSON.
func casePayload() string {
	b := make([]byte, 256)
	for i := range b {
		b[i] = byte(i)
	}
	return string(b)
}

// caseJSONString is a JSON string literal of n bytes of text.
func caseJSONString(n int) string {
	s, _ := json.Marshal(strings.Repeat("z", n))
	return string(s)
}
