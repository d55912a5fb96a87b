package broker

import (
	"encoding/base64"
	"slices"
	"strconv"
	"strings"

	"github.com/cloudevents/sdk-go/v2/event"
)

// encodeEvent encodes ev as sdk-go's Event.MarshalJSON does, byte for byte
// (TestEncodeEventMatchesSDK and the decoders' fuzz tests hold it to that),
// by appending to one buffer: no stream borrowed, no copy out of it, no
// reflection for extension values. source is ev.Source(), which the caller
// has formatted already. MarshalJSON was a twentieth of the NATS
// ingress's CPU. What it does not write (a context other than 1.0, extension
// values other than strings, int32 and booleans) it leaves to MarshalJSON.
func encodeEvent(ev *event.Event, source string) ([]byte, error) {
	ec, ok := ev.Context.(*event.EventContextV1)
	if !ok {
		return ev.MarshalJSON()
	}
	var namesBuf [8]string
	names := namesBuf[:0]
	for name, v := range ec.Extensions {
		switch v.(type) {
		case string, int32, bool:
		default:
			return ev.MarshalJSON()
		}
		names = append(names, name)
	}
	slices.Sort(names) // sdk-go's order
	size := 256 + len(ev.DataEncoded)
	if ev.DataBase64 {
		size += len(ev.DataEncoded)/3 + 4
	}
	dst := make([]byte, 0, size)
	dst = append(dst, `{"specversion":"1.0","id":`...)
	dst = appendJSONString(dst, ec.ID)
	dst = append(dst, `,"source":`...)
	dst = appendJSONString(dst, source)
	dst = append(dst, `,"type":`...)
	dst = appendJSONString(dst, ec.Type)
	if ec.Subject != nil {
		dst = append(dst, `,"subject":`...)
		dst = appendJSONString(dst, *ec.Subject)
	}
	if ec.DataContentType != nil {
		dst = append(dst, `,"datacontenttype":`...)
		dst = appendJSONString(dst, *ec.DataContentType)
	}
	if ec.DataSchema != nil {
		dst = append(dst, `,"dataschema":`...)
		dst = appendJSONString(dst, ec.DataSchema.String())
	}
	if ec.Time != nil {
		dst = append(dst, `,"time":`...)
		dst = appendJSONString(dst, ec.Time.String())
	}
	if ev.DataEncoded != nil {
		switch {
		case ev.DataBase64:
			dst = append(dst, `,"data_base64":"`...)
			dst = base64.StdEncoding.AppendEncode(dst, ev.DataEncoded)
			dst = append(dst, '"')
		case sdkWritesJSON(ec.DataContentType):
			dst = append(dst, `,"data":`...)
			dst = append(dst, ev.DataEncoded...)
		default:
			dst = append(dst, `,"data":`...)
			dst = appendJSONString(dst, string(ev.DataEncoded))
		}
	}
	for _, name := range names {
		dst = append(dst, ',')
		dst = appendJSONString(dst, name)
		dst = append(dst, ':')
		switch v := ec.Extensions[name].(type) {
		case string:
			dst = appendJSONString(dst, v)
		case int32:
			dst = strconv.AppendInt(dst, int64(v), 10)
		case bool:
			dst = strconv.AppendBool(dst, v)
		}
	}
	return append(dst, '}'), nil
}

// sdkWritesJSON reports whether sdk-go's encoder writes data as JSON as it
// is, by the media type of datacontenttype (none counts as JSON).
func sdkWritesJSON(dct *string) bool {
	if dct == nil {
		return true
	}
	mediaType, _, _ := strings.Cut(*dct, ";")
	switch strings.TrimSpace(strings.ToLower(mediaType)) {
	case "", event.ApplicationJSON, event.TextJSON, event.ApplicationCloudEventsJSON, event.ApplicationCloudEventsBatchJSON:
		return true
	}
	return false
}

// appendJSONString appends s as a JSON string as sdk-go's encoder
// (jsoniter's Stream.WriteString) writes it: \", \\, \n, \r and \t escaped,
// other control characters as \u00XX, everything else as it is.
func appendJSONString(dst []byte, s string) []byte {
	const hex = "0123456789abcdef"
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' {
			continue
		}
		dst = append(dst, s[start:i]...)
		switch c {
		case '"', '\\':
			dst = append(dst, '\\', c)
		case '\n':
			dst = append(dst, '\\', 'n')
		case '\r':
			dst = append(dst, '\\', 'r')
		case '\t':
			dst = append(dst, '\\', 't')
		default:
			dst = append(dst, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
		}
		start = i + 1
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}
