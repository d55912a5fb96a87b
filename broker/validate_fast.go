package broker

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/cloudevents/sdk-go/v2/types"
	jsoniter "github.com/json-iterator/go"
	"github.com/tidwall/gjson"
)

// decodeJSONEventFast decodes a JSON-format event as decodeStructured's
// thorough path does (explainJSONEvent's rules, then sdk-go's
// Event.UnmarshalJSON), in one pass over raw, which must be JSON (validJSON
// checks the syntax, data included, without building anything): gjson walks
// the members once, each checked and set on the event. It is conservative:
// whatever it is unsure of (null, objects or arrays as attribute values,
// escapes in names, strings that are not valid UTF-8, escapes in data_base64,
// data next to data_base64, an attribute sdk-go would not parse) it leaves to
// the thorough path by returning false. The thorough path costs three passes
// over the event (a seventh of the NATS ingress's CPU);
// FuzzDecodeJSONEventFast holds the two to the same result. An event it
// returns also passes validateEvent, which need not run again.
func decodeJSONEventFast(raw []byte) (event.Event, bool) {
	doc := gjson.Parse(string(raw)) // the event's strings share this copy
	if !doc.IsObject() {
		return event.Event{}, false
	}
	var (
		namesBuf [16]string
		names    = namesBuf[:0]
		ec       = &event.EventContextV1{}
		data     string // the raw JSON value of data or data_base64
		isBase64 bool
		required int // bit i: requiredAttrs[i] seen
		source   string
		schema   string
		ok       = true
	)
	doc.ForEach(func(key, value gjson.Result) bool {
		name := key.Str
		if len(names) == maxFastMembers || strings.IndexByte(key.Raw, '\\') >= 0 || !utf8.ValidString(name) || slices.Contains(names, name) {
			ok = false
			return false
		}
		names = append(names, name)
		if name == attrData || name == attrDataBase64 {
			if data != "" {
				ok = false // both: explainJSONEvent names the rule
				return false
			}
			isBase64 = name == attrDataBase64
			data = value.Raw
			return true
		}
		var member bool // checked and set on ec
		switch value.Type {
		case gjson.String:
			s, sok := jsonString(value.Raw)
			member = sok && utf8.ValidString(s) && checkFastString(name, s) && setJSONString(ec, name, s)
			switch name {
			case "source":
				source = s
			case "dataschema":
				schema = s
			}
		case gjson.Number:
			v := json.Number(value.Raw)
			member = checkJSONMember(-1, name, v) == nil && setJSONExtension(ec, name, v)
		case gjson.True, gjson.False:
			v := value.Type == gjson.True
			member = checkJSONMember(-1, name, v) == nil && setJSONExtension(ec, name, v)
		}
		if !member {
			ok = false
			return false
		}
		if i := slices.Index(requiredAttrs, name); i >= 0 {
			required |= 1 << i
		}
		return true
	})
	if !ok || required != 1<<len(requiredAttrs)-1 || !passesEventRules(ec, source, schema) {
		return event.Event{}, false
	}
	ev := event.Event{Context: ec}
	if data != "" && !setJSONData(&ev, data, isBase64) {
		return event.Event{}, false
	}
	return ev, true
}

// checkFastString is checkJSONMember(-1, name, s) == nil for a string s
// and a name other than data and data_base64 (checkAttr's rules), leaving out the parses setJSONString repeats: source's URI and time's
// timestamp. Where those fail, setJSONString does too, and the thorough path
// names the rule. (A string, not any: boxing each member was an allocation.)
func checkFastString(name, s string) bool {
	switch name {
	case "source":
		return s != "" && uriReferenceChars(s)
	case "time":
		return true
	}
	return validAttrName(name) && checkAttr(-1, name, s) == nil
}

// passesEventRules is what validateEvent checks of a decoded event beyond
// each member's own rules: sdk-go's Validate trims id, type and subject
// before requiring them, and source and dataschema (given as source and
// schema) are checked again as they re-encode, which takes them here only
// when they re-encode unchanged.
func passesEventRules(ec *event.EventContextV1, source, schema string) bool {
	blank := func(s string) bool { return strings.TrimSpace(s) == "" }
	switch {
	case blank(ec.ID), blank(ec.Type), ec.Subject != nil && blank(*ec.Subject):
		return false
	case ec.Source.String() != source:
		return false
	case ec.DataSchema != nil && ec.DataSchema.String() != schema:
		return false
	}
	return true
}

// maxFastMembers bounds the members decodeJSONEventFast takes, whose check
// for duplicates is quadratic; an event with more takes the thorough path.
const maxFastMembers = 64

// jsonString is the text of a JSON string (raw, quotes included) as sdk-go's
// decoder reads it; jsoniter only where there are escapes to undo, since
// decoders differ on a lone surrogate.
func jsonString(raw string) (string, bool) {
	if strings.IndexByte(raw, '\\') < 0 {
		return raw[1 : len(raw)-1], true
	}
	iter := jsoniter.ParseString(jsoniter.ConfigFastest, raw)
	s := iter.ReadString()
	return s, iter.Error == nil
}

// setJSONString sets a checked string member other than data on ec as
// sdk-go's decoder would, or reports false where that decoder would fail or
// differ by the member's position.
func setJSONString(ec *event.EventContextV1, name, s string) bool {
	switch name {
	case attrSpecVersion:
		return s == ceSpecVersion
	case "id":
		ec.ID = s
	case "type":
		ec.Type = s
	case "source":
		ref := types.ParseURIRef(s)
		if ref == nil {
			return false
		}
		ec.Source = *ref
	case "subject":
		if s != "" { // sdk-go drops an empty subject
			subject := s // only this copy escapes, not s on every call
			ec.Subject = &subject
		}
	case "time":
		t, err := types.ParseTimestamp(s)
		if err != nil || t == nil {
			return false
		}
		ec.Time = t
	case attrDataCT:
		if s == "" { // sdk-go keeps or drops it depending on its position
			return false
		}
		dct := s
		ec.DataContentType = &dct
	case "dataschema":
		ec.DataSchema = types.ParseURI(s)
	default:
		return ec.SetExtension(name, s) == nil
	}
	return true
}

// setJSONExtension sets a checked extension whose value is a number or a
// boolean on ec as sdk-go's decoder would.
func setJSONExtension(ec *event.EventContextV1, name string, v any) bool {
	if _, ok := contextAttrs[name]; ok {
		return false // checkJSONMember requires a string
	}
	if n, isNum := v.(json.Number); isNum {
		// sdk-go reads an extension's number as a float64; checkJSONMember
		// made sure it is an integer within 32 bits, which both read exactly.
		f, err := strconv.ParseFloat(string(n), 64)
		if err != nil {
			return false
		}
		v = f
	}
	return ec.SetExtension(name, v) == nil
}

// setJSONData sets data or data_base64 (raw, its JSON value) on ev as sdk-go's
// decoder would: base64 decoded, JSON kept as it is, other media types as the
// string's text.
func setJSONData(ev *event.Event, raw string, isBase64 bool) bool {
	if raw[0] != '"' && (isBase64 || !sdkIsJSON(ev.Context)) {
		return false // not a string where one is required: sdk-go fails
	}
	switch {
	case isBase64:
		enc := raw[1 : len(raw)-1]
		if strings.IndexByte(enc, '\\') >= 0 {
			return false // sdk-go decodes the escaped or the plain form by position
		}
		dec, err := base64.StdEncoding.DecodeString(enc)
		if err != nil {
			return false
		}
		ev.DataEncoded, ev.DataBase64 = dec, true
	case sdkIsJSON(ev.Context):
		ev.DataEncoded = []byte(raw)
	default:
		s, ok := jsonString(raw)
		if !ok {
			return false
		}
		ev.DataEncoded = []byte(s)
	}
	return true
}

// sdkIsJSON reports whether sdk-go's decoder keeps an event's data as JSON:
// no media type, one it cannot parse, or one of its JSON media types.
func sdkIsJSON(ec event.EventContext) bool {
	mt, _ := ec.GetDataMediaType()
	switch mt {
	case "", event.ApplicationJSON, event.TextJSON, event.ApplicationCloudEventsJSON, event.ApplicationCloudEventsBatchJSON:
		return true
	}
	return false
}

// maxFastBrackets bounds the brackets of a document validJSON gives to
// gjson's validator, which recurses once per level of nesting.
const maxFastBrackets = 64

// validJSON reports whether raw is JSON (RFC 8259), as json.Valid does.
// gjson's validator scans a string in a tight loop where encoding/json's
// steps a state machine through a function call per byte: a third of the
// structured-mode decoding was json.Valid on 1 KiB of data. A document with
// more than maxFastBrackets brackets (in strings too) goes to json.Valid,
// whose nesting costs no stack.
func validJSON(raw []byte) bool {
	if bytes.Count(raw, []byte("{"))+bytes.Count(raw, []byte("[")) <= maxFastBrackets {
		return gjson.ValidBytes(raw)
	}
	return json.Valid(raw)
}
