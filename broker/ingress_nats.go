package broker

import (
	"encoding/json"
	"net/http"
	"strconv"
	"strings"

	"github.com/cloudevents/sdk-go/v2/binding/format"
	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/nats-io/nats.go"
)

// decodeNATSMsg decodes a CloudEvent published to weft.in.> and validates it
// with ValidateEvent's rules; all or nothing, like the HTTP ingress.
//
// Content modes, as sdk-go's NATS bindings and the HTTP binding decide them:
//   - Content-Type is a CloudEvents format: structured
//     (application/cloudevents+json) or batch
//     (application/cloudevents-batch+json; the NATS binding defines no batch
//     mode, weft accepts the HTTP one). Another format is refused.
//   - else a ce-specversion header: binary mode. Each attribute is a ce-<name>
//     header and the payload is data; datacontenttype is the content-type
//     header, or ce-datacontenttype as sdk-go's NATS writer sends it (both
//     only if equal). Values are taken as they are: unlike HTTP, sdk-go's NATS
//     binding does not percent-encode them.
//   - else no Content-Type: structured JSON.
//   - else (a non-CloudEvents Content-Type without ce-specversion): refused.
//
// NATS header names are case-sensitive, but HTTP bridges and some clients
// canonicalise them, so ce-, content-type and attribute names are matched
// case-insensitively (Ce-Id is id); two spellings of one name are refused.
func decodeNATSMsg(msg *nats.Msg) ([]event.Event, error) {
	h, err := natsHeaders(msg.Header)
	if err != nil {
		return nil, err
	}
	ct := h.contentType
	var (
		mediaType string
		params    map[string]string
		perr      error
	)
	if ct != "" { // most publishers send none (structured mode): nothing to parse
		mediaType, params, perr = parseMediaType(ct)
		if perr != nil {
			mediaType, _, _ = strings.Cut(ct, ";")
			mediaType = strings.ToLower(strings.TrimSpace(mediaType))
		}
	}
	switch {
	case ct != "" && format.IsFormat(mediaType):
		if perr != nil {
			return nil, &EventError{Index: -1, Rule: "malformed content-type header: " + perr.Error()}
		}
		return decodeFormat(mediaType, params["charset"], msg.Data)
	case h.specVersion:
		dct := ct
		if h.ceDataContentType != "" {
			if ct != "" && ct != h.ceDataContentType {
				return nil, &EventError{Index: -1, Attribute: attrDataCT,
					Rule: "content-type and ce-datacontenttype headers disagree"}
			}
			dct = h.ceDataContentType
		}
		ev, err := decodeBinary(h.attrs, dct, msg.Data)
		if err != nil {
			return nil, err
		}
		return []event.Event{ev}, nil
	case ct == "":
		ev, err := decodeStructured(msg.Data, -1)
		if err != nil {
			return nil, err
		}
		return []event.Event{ev}, nil
	default:
		return nil, &EventError{Index: -1, Attribute: attrSpecVersion,
			Rule: "is required: binary mode needs a ce-specversion header, structured mode no content-type or application/cloudevents+json"}
	}
}

// natsHeaderSet is what decodeNATSMsg reads from a message's headers.
type natsHeaderSet struct {
	contentType       string
	ceDataContentType string
	specVersion       bool              // a ce-specversion header is present
	attrs             map[string]string // ce-* attributes but datacontenttype
}

func natsHeaders(hdr nats.Header) (natsHeaderSet, error) {
	if len(hdr) == 0 {
		return natsHeaderSet{}, nil // structured mode, as most publishers send it: nothing to allocate
	}
	s := natsHeaderSet{attrs: make(map[string]string)}
	seen := make(map[string]bool, len(hdr))
	for key, vals := range hdr {
		lower := strings.ToLower(key)
		isCE := strings.HasPrefix(lower, "ce-")
		if !isCE && lower != "content-type" {
			continue // Nats-Msg-Id and the like are not the event's
		}
		name := strings.TrimPrefix(lower, "ce-")
		if !isCE {
			name = attrDataCT
		}
		if seen[lower] {
			return s, &EventError{Index: -1, Attribute: name, Rule: "header appears more than once (names are case-insensitive)"}
		}
		seen[lower] = true
		if err := checkBinaryHeader(name, vals); err != nil {
			return s, err
		}
		switch {
		case !isCE:
			s.contentType = vals[0]
		case name == attrDataCT:
			s.ceDataContentType = vals[0]
		default:
			s.specVersion = s.specVersion || name == attrSpecVersion
			s.attrs[name] = vals[0]
		}
	}
	return s, nil
}

// storedOne is natsAck's answer to most messages; never modified.
var storedOne = []byte(`{"stored":1}`)

// natsAck is the reply payload of the NATS ingress, sent to a message's reply
// subject after storage (or refusal). It is one JSON object:
//
//	{"stored": 3}                                  all n events stored (duplicates count as stored)
//	{"error": "event[1]: attribute \"time\": …", "code": 400}   invalid; nothing stored, do not retry as is
//	{"error": "broker: overloaded", "code": 429}    retry after about a second
//	{"error": "broker: storage unavailable…", "code": 503}  retry after about a second; some events may be stored, dedup makes a retry safe
//
// code is the status the HTTP ingress would answer; statuses that only exist
// over HTTP (408, 413, 415) are reported as 400.
func natsAck(n int, err error) []byte {
	if err == nil {
		if n == 1 {
			return storedOne // Respond copies it
		}
		// Not json.Marshal: the common answer needs no reflection.
		b := append([]byte(`{"stored":`), strconv.Itoa(n)...)
		return append(b, '}')
	}
	code, _ := ingressStatus(err)
	if code != http.StatusTooManyRequests && code != http.StatusServiceUnavailable {
		code = http.StatusBadRequest
	}
	b, _ := json.Marshal(struct {
		Error string `json:"error"`
		Code  int    `json:"code"`
	}{err.Error(), code}) // Marshal of a string and an int cannot fail
	return b
}
