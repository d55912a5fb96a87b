package broker

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"mime"
	"net/url"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/cloudevents/sdk-go/v2/types"
)

// EventError reports why the ingress refused an event: which attribute broke
// which CloudEvents 1.0.2 rule, and where the event sat in a batch. The HTTP
// ingress answers it with 400 and the NATS ingress with code 400; its message
// is the "error" of the JSON reply.
type EventError struct {
	// Index is the position of the event in a batch, or -1 when the request
	// carried a single event or the batch as a whole is malformed.
	Index int
	// Attribute names the context attribute or extension at fault; it is
	// "data" or "data_base64" for the payload and empty when the envelope
	// itself (JSON syntax, batch shape) is wrong.
	Attribute string
	// Rule says what was expected, in words meant for the publisher.
	Rule string
}

// Error names the index (in a batch), the attribute and the rule, for example
// `event[2]: attribute "time": must be an RFC 3339 timestamp`.
func (e *EventError) Error() string {
	var b strings.Builder
	if e.Index >= 0 {
		fmt.Fprintf(&b, "event[%d]: ", e.Index)
	} else {
		b.WriteString("invalid event: ")
	}
	if e.Attribute != "" {
		fmt.Fprintf(&b, "attribute %q: ", e.Attribute)
	}
	b.WriteString(e.Rule)
	return b.String()
}

// Rules shared by the validator and the transport decoders, so that a rule
// reads the same whichever way the event arrived.
const (
	ruleRequired    = "is required and must be a non-empty string"
	ruleNonEmpty    = "must be a non-empty string when present"
	ruleName        = "name must consist only of lower-case letters a-z and digits 0-9"
	ruleURIRef      = "must be a URI-reference (RFC 3986 section 4.1)"
	ruleAbsURI      = "must be an absolute URI (RFC 3986 section 4.3: a scheme, no fragment)"
	ruleTime        = "must be an RFC 3339 timestamp"
	ruleMediaType   = "must be a media type (RFC 2046)"
	ruleUTF8        = "must be valid UTF-8"
	ruleInt32       = "integer must fit in 32 bits"
	ruleExtType     = "extension value must be a string, an integer or a boolean"
	ruleString      = "must be a JSON string"
	ruleBase64      = "must be a base64 string (RFC 4648)"
	ruleDataBoth    = "data and data_base64 are mutually exclusive"
	ruleSpecVersion = `must be "1.0"`
)

// Names the validator treats specially.
const (
	ceSpecVersion    = event.CloudEventsVersionV1
	attrSpecVersion  = "specversion"
	attrDataCT       = "datacontenttype"
	attrData         = "data"        // JSON format member, not an attribute
	attrDataBase64   = "data_base64" // JSON format member, not an attribute
	maxTimestampYear = 9999          // RFC 3339 has four-digit years
)

// requiredAttrs are checked in this order, so the first missing one is named.
var requiredAttrs = []string{attrSpecVersion, "id", "source", "type"}

// ValidateEvent checks ev against CloudEvents 1.0.2: everything sdk-go's
// ev.Validate does, plus the rules its setters and decoders let through
// (specversion other than 1.0, source that is not a URI-reference, dataschema
// with a fragment, extension names with upper case, control characters in
// strings, integers wider than 32 bits). It returns nil or an *EventError with
// Index -1. It only reads ev and is safe for concurrent use.
//
// Some rules can only be judged on the wire form (an empty "subject" that
// sdk-go drops, the JSON type of an extension, data next to data_base64); the
// ingress decoders check those before decoding and call ValidateEvent after.
func ValidateEvent(ev *event.Event) error {
	return validateEvent(ev, -1)
}

func validateEvent(ev *event.Event, index int) error {
	fail := func(attr, rule string) error { return &EventError{Index: index, Attribute: attr, Rule: rule} }
	if ev == nil || ev.Context == nil {
		return fail(attrSpecVersion, "is required: the event has no context")
	}
	ec, ok := ev.Context.(*event.EventContextV1)
	if !ok || ev.SpecVersion() != ceSpecVersion {
		return fail(attrSpecVersion, fmt.Sprintf("%s, got %q", ruleSpecVersion, ev.SpecVersion()))
	}
	if err := checkAttr(index, "id", ec.ID); err != nil {
		return err
	}
	if err := checkAttr(index, "source", ec.Source.String()); err != nil {
		return err
	}
	if err := checkAttr(index, "type", ec.Type); err != nil {
		return err
	}
	if ec.DataContentType != nil {
		if err := checkAttr(index, attrDataCT, *ec.DataContentType); err != nil {
			return err
		}
	}
	if ec.DataSchema != nil {
		if err := checkAttr(index, "dataschema", ec.DataSchema.String()); err != nil {
			return err
		}
	}
	if ec.Subject != nil {
		if err := checkAttr(index, "subject", *ec.Subject); err != nil {
			return err
		}
	}
	if ec.Time != nil && (ec.Time.Year() < 0 || ec.Time.Year() > maxTimestampYear) {
		return fail("time", ruleTime+": year out of range 0000-9999")
	}
	for _, name := range slices.Sorted(maps.Keys(ec.Extensions)) {
		if !validAttrName(name) {
			return fail(name, ruleName)
		}
		if _, core := contextAttrs[name]; core || name == attrData {
			return fail(name, "extension must not reuse the name of a context attribute")
		}
		if rule := checkExtensionValue(ec.Extensions[name]); rule != "" {
			return fail(name, rule)
		}
	}
	// Whatever sdk-go checks (whitespace-only id, setter errors recorded in
	// FieldErrors) and the rules above missed.
	if err := ev.Validate(); err != nil {
		if ve, ok := err.(event.ValidationError); ok && len(ve) > 0 {
			name := slices.Sorted(maps.Keys(ve))[0]
			return fail(name, ve[name].Error())
		}
		return fail("", err.Error())
	}
	return nil
}

// contextAttrs maps each CloudEvents 1.0 context attribute to the check of its
// string form. Extensions are checked by checkText only.
var contextAttrs = map[string]func(string) string{
	attrSpecVersion: func(s string) string {
		if s != ceSpecVersion {
			return fmt.Sprintf("%s, got %q", ruleSpecVersion, s)
		}
		return ""
	},
	"id":   requiredText,
	"type": requiredText,
	"source": func(s string) string {
		if s == "" {
			return ruleRequired
		}
		if !isURIReference(s) {
			return ruleURIRef
		}
		return ""
	},
	"subject": func(s string) string {
		if s == "" {
			return ruleNonEmpty
		}
		return checkText(s)
	},
	"time": func(s string) string {
		if _, err := types.ParseTime(s); err != nil {
			return ruleTime
		}
		return ""
	},
	"dataschema": func(s string) string {
		if s == "" {
			return ruleNonEmpty
		}
		if !isAbsoluteURI(s) {
			return ruleAbsURI
		}
		return ""
	},
	attrDataCT: func(s string) string {
		if commonMediaTypes[s] {
			return "" // most events name one of these: no parse
		}
		if strings.TrimSpace(s) == "" {
			return ruleNonEmpty
		}
		if _, _, err := mime.ParseMediaType(s); err != nil {
			return ruleMediaType
		}
		return checkText(s)
	},
}

// commonMediaTypes are datacontenttype values known to pass its check.
var commonMediaTypes = map[string]bool{
	event.ApplicationJSON: true, event.TextJSON: true, event.TextPlain: true,
	event.ApplicationXML: true, "application/octet-stream": true,
	event.ApplicationCloudEventsJSON: true, "application/json; charset=utf-8": true,
}

// checkAttr checks the string form of a context attribute or a string
// extension, as it arrived on the wire or after decoding.
func checkAttr(index int, name, value string) error {
	if !utf8.ValidString(value) {
		return &EventError{Index: index, Attribute: name, Rule: ruleUTF8}
	}
	check, ok := contextAttrs[name]
	if !ok {
		check = checkText
	}
	if rule := check(value); rule != "" {
		return &EventError{Index: index, Attribute: name, Rule: rule}
	}
	return nil
}

func requiredText(s string) string {
	if s == "" {
		return ruleRequired
	}
	return checkText(s)
}

// checkText enforces the CloudEvents String type: Unicode without the control
// characters U+0000-U+001F and U+007F-U+009F, without noncharacters and without
// surrogates (which valid UTF-8 cannot carry). It returns the broken rule or "".
func checkText(s string) string {
	if !utf8.ValidString(s) {
		return ruleUTF8
	}
	for i, r := range s {
		switch {
		case r < 0x20 || (r >= 0x7f && r <= 0x9f):
			return fmt.Sprintf("must not contain control characters (U+%04X at byte %d)", r, i)
		case (r >= 0xfdd0 && r <= 0xfdef) || r&0xfffe == 0xfffe:
			return fmt.Sprintf("must not contain Unicode noncharacters (U+%04X at byte %d)", r, i)
		}
	}
	return ""
}

// checkExtensionValue accepts the CloudEvents types sdk-go can hold. Go
// integers and integral floats must fit in 32 bits: sdk-go's types.Validate
// would otherwise truncate 1.5 to 1.
func checkExtensionValue(v any) string {
	switch v := v.(type) {
	case string:
		return checkText(v)
	case bool, int32, []byte, types.URI, types.URIRef, types.Timestamp:
		return ""
	case int, int8, int16, int64:
		if i := reflect.ValueOf(v).Int(); i < math.MinInt32 || i > math.MaxInt32 {
			return ruleInt32
		}
		return ""
	case uint, uint8, uint16, uint32, uint64:
		if reflect.ValueOf(v).Uint() > math.MaxInt32 {
			return ruleInt32
		}
		return ""
	case float32:
		return checkFloatInt(float64(v))
	case float64:
		return checkFloatInt(v)
	default:
		return ruleExtType
	}
}

func checkFloatInt(f float64) string {
	if f != math.Trunc(f) || math.IsInf(f, 0) || math.IsNaN(f) {
		return ruleExtType
	}
	if f < math.MinInt32 || f > math.MaxInt32 {
		return ruleInt32
	}
	return ""
}

// validAttrName reports whether name is a legal CloudEvents attribute name:
// one or more of a-z and 0-9. Length above 20 is allowed (1.0.2 only
// recommends 20). sdk-go also accepts A-Z and lower-cases them.
func validAttrName(name string) bool {
	if name == "" {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') {
			return false
		}
	}
	return true
}

// isURIReference reports whether s is an RFC 3986 URI-reference: only
// unreserved, reserved and percent-encoded characters, and parseable by
// net/url. sdk-go relies on url.Parse alone, which accepts spaces and
// non-ASCII text.
func isURIReference(s string) bool {
	if !uriReferenceChars(s) {
		return false
	}
	_, err := url.Parse(s)
	return err == nil
}

// uriReferenceChars reports whether s holds only the characters of an RFC
// 3986 URI-reference, each % starting an escape; url.Parse checks the rest.
func uriReferenceChars(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case strings.IndexByte("-._~:/?#[]@!$&'()*+,;=", c) >= 0:
		case c == '%':
			if i+2 >= len(s) || !isHex(s[i+1]) || !isHex(s[i+2]) {
				return false
			}
			i += 2
		default:
			return false
		}
	}
	return true
}

// isAbsoluteURI reports whether s is an RFC 3986 absolute-URI: a scheme and
// no fragment. sdk-go checks only for the scheme.
func isAbsoluteURI(s string) bool {
	if !isURIReference(s) || strings.Contains(s, "#") {
		return false
	}
	u, err := url.Parse(s)
	return err == nil && u.IsAbs()
}

func isHex(c byte) bool {
	return ('0' <= c && c <= '9') || ('a' <= c && c <= 'f') || ('A' <= c && c <= 'F')
}

// explainJSONEvent checks the wire form of one JSON-format event (CloudEvents
// JSON format 1.0.2) before sdk-go decodes it, for what its decoder loses or
// accepts: duplicate members, upper-case names (lower-cased silently), an
// empty subject or datacontenttype (dropped), an unparsable dataschema
// (dropped), data next to data_base64, extension values that are objects,
// arrays or non-integral numbers (1.5 becomes 1), and trailing bytes. A
// JSON null is an absent attribute.
//
// Most events are valid: decodeJSONEventFast decodes those in one cheap
// pass, and only what it leaves is walked here, which also words the error.
// It finds the first rule raw breaks, or returns nil.
func explainJSONEvent(raw []byte, index int) error {
	fail := func(attr, rule string) error { return &EventError{Index: index, Attribute: attr, Rule: rule} }
	malformed := func(err error) error {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return fail("", "malformed JSON: unexpected end of input")
		}
		return fail("", "malformed JSON: "+err.Error())
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	tok, err := dec.Token()
	if err != nil {
		return malformed(err)
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return fail("", fmt.Sprintf("event must be a JSON object, got %s", jsonKind(tok)))
	}
	present := make(map[string]bool) // name → value not null
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return malformed(err)
		}
		name, _ := tok.(string) // object keys are always strings
		if _, dup := present[name]; dup {
			return fail(name, "appears more than once")
		}
		if name == attrData {
			// Any JSON value: checked for syntax, not built.
			var data json.RawMessage
			if err := dec.Decode(&data); err != nil {
				return malformed(err)
			}
			present[name] = string(data) != "null"
			continue
		}
		var v any
		if err := dec.Decode(&v); err != nil {
			return malformed(err)
		}
		present[name] = v != nil
		if err := checkJSONMember(index, name, v); err != nil {
			return err
		}
	}
	if _, err := dec.Token(); err != nil { // the closing brace
		return malformed(err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return fail("", "malformed JSON: data after the event object")
	}
	for _, name := range requiredAttrs {
		if !present[name] {
			return fail(name, ruleRequired)
		}
	}
	if _, ok := present[attrData]; ok {
		if _, ok := present[attrDataBase64]; ok {
			return fail(attrDataBase64, ruleDataBoth)
		}
	}
	return nil
}

// checkJSONMember checks one member of a JSON-format event; v is as decoded
// with UseNumber.
func checkJSONMember(index int, name string, v any) error {
	fail := func(rule string) error { return &EventError{Index: index, Attribute: name, Rule: rule} }
	switch {
	case name == attrData:
		return nil // any JSON value; sdk-go checks it against datacontenttype
	case name == attrDataBase64:
		s, ok := v.(string)
		if !ok {
			return fail(ruleBase64)
		}
		if _, err := base64.StdEncoding.DecodeString(s); err != nil {
			return fail(ruleBase64)
		}
		return nil
	case !validAttrName(name):
		return fail(ruleName)
	case v == nil:
		return nil
	}
	if _, ok := contextAttrs[name]; ok {
		s, ok := v.(string)
		if !ok {
			return fail(ruleString)
		}
		return checkAttr(index, name, s)
	}
	switch v := v.(type) {
	case string:
		return checkAttr(index, name, v)
	case bool:
		return nil
	case json.Number:
		f, err := strconv.ParseFloat(string(v), 64)
		if err != nil {
			return fail(ruleInt32)
		}
		if rule := checkFloatInt(f); rule != "" {
			return fail(rule)
		}
		return nil
	default:
		return fail(ruleExtType)
	}
}

// jsonKind names the JSON type of a decoder token, for error messages.
func jsonKind(tok json.Token) string {
	switch t := tok.(type) {
	case json.Delim:
		if t == '[' {
			return "an array"
		}
		return "an object"
	case string:
		return "a string"
	case json.Number, float64:
		return "a number"
	case bool:
		return "a boolean"
	default:
		return "null"
	}
}
