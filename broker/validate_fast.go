package broker

import (
	"bytes"
	"encoding/json"
	"slices"
	"unicode/utf8"

	jsoniter "github.com/json-iterator/go"
	"github.com/tidwall/gjson"
)

// fastJSON reads numbers as json.Number, as explainJSONEvent's decoder does.
var fastJSON = jsoniter.Config{UseNumber: true}.Froze()

// acceptJSONEvent reports whether raw is certainly a valid JSON-format
// event under explainJSONEvent's rules, in one pass that allocates little:
// validJSON checks the syntax (data included) without building anything,
// then jsoniter walks the members. It is conservative: whatever it is unsure
// of (objects or arrays as attribute values, strings that are not valid
// UTF-8, data next to data_base64) it leaves to explainJSONEvent by
// returning false. explainJSONEvent's decoder cost four times sdk-go's own
// parse of the event (a fifth of the NATS ingress's CPU).
func acceptJSONEvent(raw []byte) bool {
	if !validJSON(raw) {
		return false
	}
	iter := fastJSON.BorrowIterator(raw)
	defer fastJSON.ReturnIterator(iter)
	if iter.WhatIsNext() != jsoniter.ObjectValue {
		return false
	}
	var (
		namesBuf        [16]string
		names           = namesBuf[:0]
		present         = map[string]bool{}
		ok              = true
		hasData, hasB64 bool
	)
	iter.ReadObjectCB(func(it *jsoniter.Iterator, name string) bool {
		if !utf8.ValidString(name) || slices.Contains(names, name) {
			ok = false
			return false
		}
		names = append(names, name)
		if name == attrData {
			hasData = true
			it.Skip()
			return true
		}
		hasB64 = hasB64 || name == attrDataBase64
		var v any
		switch it.WhatIsNext() {
		case jsoniter.StringValue:
			s := it.ReadString()
			if !utf8.ValidString(s) {
				ok = false
				return false
			}
			v = s
		case jsoniter.NumberValue:
			v = it.ReadNumber()
		case jsoniter.BoolValue:
			v = it.ReadBool()
		case jsoniter.NilValue:
			it.ReadNil()
		default:
			ok = false
			return false
		}
		if checkJSONMember(-1, name, v) != nil {
			ok = false
			return false
		}
		if v != nil {
			present[name] = true
		}
		return true
	})
	if !ok || iter.Error != nil || (hasData && hasB64) {
		return false
	}
	for _, name := range requiredAttrs {
		if !present[name] {
			return false
		}
	}
	return true
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
