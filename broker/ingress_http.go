package broker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"mime"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/cloudevents/sdk-go/v2/binding/format"
	"github.com/cloudevents/sdk-go/v2/binding/spec"
	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/tidwall/gjson"
)

// eventStore stores validated events durably; Broker implements it. Store
// returns only after JetStream acknowledged every event (duplicates count as
// stored), or an error wrapping ErrOverloaded / ErrUnavailable / a context
// error. An empty slice is a no-op.
type eventStore interface {
	Store(ctx context.Context, evs []event.Event) error
}

// Limits of the HTTP ingress.
const (
	defaultMaxBodyBytes = 256 << 10
	// minMaxBodyBytes: CloudEvents 1.0.2 says consumers must accept events of
	// at least 64 KB.
	minMaxBodyBytes = 64 << 10
	// natsMaxPayload is nats-server's max_payload, which bounds a stored event.
	natsMaxPayload = 1 << 20
	// ingressMaxHeaderBytes is the http.Server.MaxHeaderBytes the node should
	// set (larger headers get 431 from net/http, before this handler runs):
	// binary mode carries attributes in headers, and 64 KiB of them plus a
	// body of at most maxMaxBodyBytes still fit in one NATS message.
	ingressMaxHeaderBytes = 64 << 10
	maxMaxBodyBytes       = natsMaxPayload - ingressMaxHeaderBytes
	defaultReadTimeout    = 10 * time.Second
	// retryAfter is the Retry-After of 429 and 503 answers, in seconds.
	retryAfter = "1"
)

// IngressConfig configures the HTTP ingress. The zero value means every
// default.
type IngressConfig struct {
	// MaxBodyBytes caps a request body, in bytes; a longer body is answered
	// 413 without being read further. Zero means 256 KiB. It must be at least
	// 64 KiB (the size CloudEvents consumers must accept) and at most 960 KiB,
	// so that an event plus its headers fits NATS's 1 MiB max_payload.
	MaxBodyBytes int64
	// ReadTimeout bounds reading one request body, from the moment the
	// handler starts reading; a body still incomplete then is answered 408, so
	// a slow client cannot hold a handler. Zero means 10s; negative is invalid.
	ReadTimeout time.Duration
}

func (c IngressConfig) withDefaults() IngressConfig {
	if c.MaxBodyBytes == 0 {
		c.MaxBodyBytes = defaultMaxBodyBytes
	}
	if c.ReadTimeout == 0 {
		c.ReadTimeout = defaultReadTimeout
	}
	return c
}

// Validate reports a configuration the ingress cannot honour. Call it after
// the defaults are applied (zero fields are refused here).
func (c IngressConfig) Validate() error {
	if c.MaxBodyBytes < minMaxBodyBytes || c.MaxBodyBytes > maxMaxBodyBytes {
		return fmt.Errorf("ingress: max body bytes %d outside [%d, %d]: CloudEvents needs 64 KiB, NATS allows 1 MiB with headers",
			c.MaxBodyBytes, minMaxBodyBytes, maxMaxBodyBytes)
	}
	if c.ReadTimeout <= 0 {
		return fmt.Errorf("ingress: read timeout %v must be positive", c.ReadTimeout)
	}
	return nil
}

// Errors of the HTTP edge, mapped to statuses by ingressStatus.
var (
	errBodyTooLarge = errors.New("request body too large")
	errBodyTimeout  = errors.New("request body not received within the read timeout")
	errBodyRead     = errors.New("reading request body")
)

// mediaTypeError is a Content-Type in the application/cloudevents family that
// weft does not speak (415).
type mediaTypeError struct{ mediaType string }

func (e *mediaTypeError) Error() string {
	return fmt.Sprintf("unsupported media type %q: send application/cloudevents+json, application/cloudevents-batch+json, or binary mode (ce-* headers)", e.mediaType)
}

// ingressStatus translates an ingress error into an HTTP status and the
// reason label of weft_events_rejected_total. Store errors other than the
// documented ones are answered 503, so that a publisher retries.
func ingressStatus(err error) (status int, reason string) {
	var ee *EventError
	var mt *mediaTypeError
	switch {
	case errors.As(err, &ee), errors.Is(err, errBodyRead):
		return http.StatusBadRequest, "invalid"
	case errors.As(err, &mt):
		return http.StatusUnsupportedMediaType, "unsupported_media_type"
	case errors.Is(err, errBodyTooLarge), errors.Is(err, ErrBatchTooLarge):
		return http.StatusRequestEntityTooLarge, "too_large"
	case errors.Is(err, errBodyTimeout):
		return http.StatusRequestTimeout, "timeout"
	case errors.Is(err, ErrOverloaded):
		return http.StatusTooManyRequests, "overloaded"
	case errors.Is(err, ErrStorageFull):
		return http.StatusServiceUnavailable, "storage_full"
	case errors.Is(err, ErrUnavailable):
		return http.StatusServiceUnavailable, "unavailable"
	case errors.Is(err, context.DeadlineExceeded):
		return http.StatusServiceUnavailable, "timeout"
	default:
		return http.StatusServiceUnavailable, "unavailable"
	}
}

// rejectReason is the weft_events_rejected_total label for err.
func rejectReason(err error) string {
	_, reason := ingressStatus(err)
	return reason
}

type ingressHandler struct {
	store    eventStore
	cfg      IngressConfig
	m        *Metrics
	received prometheus.Counter // m.Received{http}, looked up once
	log      *slog.Logger
}

// newIngressHandler serves the CloudEvents HTTP binding 1.0.2 on POST / and
// POST /brokers/{name}; only the broker DefaultBroker exists. cfg must have
// passed Validate after withDefaults (zero fields get defaults here); an
// invalid cfg is a programmer error and panics. m must not be nil.
//
// Answers: 202 (empty body) once every event of the request is stored; 400
// for an invalid event or a request that is not a CloudEvent; 404 for another
// broker name or path; 405 (with Allow) for methods other than POST and
// OPTIONS; 408 for a body slower than ReadTimeout; 413 for a body over
// MaxBodyBytes; 415 for an application/cloudevents+* format other than JSON;
// 429 (ErrOverloaded) and 503 (ErrUnavailable, deadline) with Retry-After: 1.
// 431 comes from http.Server.MaxHeaderBytes (ingressMaxHeaderBytes). Errors
// are JSON {"error": "..."}. A request with any invalid event stores nothing.
//
// Metrics: Received{http} counts requests routed here except OPTIONS, and
// each refused one adds one Rejected{reason}, so received minus rejected is
// the number of 202s; a batch counts once.
func newIngressHandler(store eventStore, cfg IngressConfig, m *Metrics, log *slog.Logger) http.Handler {
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		panic("broker: newIngressHandler: " + err.Error())
	}
	h := &ingressHandler{store: store, cfg: cfg, m: m, received: m.Received.WithLabelValues("http"), log: log}
	mux := http.NewServeMux()
	// No method in the patterns: ServeMux's own 405 is plain text and
	// uncounted, and OPTIONS needs its own answer.
	mux.HandleFunc("/{$}", h.serveBroker)
	mux.HandleFunc("/brokers/{name}", h.serveBroker)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		h.received.Inc()
		h.refuse(w, http.StatusNotFound, "not_found", fmt.Sprintf("no ingress at %s: use / or /brokers/%s", r.URL.Path, DefaultBroker))
	})
	return mux
}

func (h *ingressHandler) serveBroker(w http.ResponseWriter, r *http.Request) {
	if name := r.PathValue("name"); name != "" && name != DefaultBroker {
		h.received.Inc()
		h.refuse(w, http.StatusNotFound, "not_found", fmt.Sprintf("broker %q not found: only %q exists", name, DefaultBroker))
		return
	}
	if r.Method == http.MethodOptions {
		serveWebhookOptions(w, r)
		return
	}
	h.received.Inc()
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", "OPTIONS, POST")
		h.refuse(w, http.StatusMethodNotAllowed, "method", fmt.Sprintf("method %s not allowed: POST CloudEvents here", r.Method))
		return
	}
	body, err := h.readBody(w, r)
	if err != nil {
		h.fail(w, err)
		return
	}
	evs, err := decodeHTTP(r.Header, body)
	if err != nil {
		h.fail(w, err)
		return
	}
	if err := h.store.Store(r.Context(), evs); err != nil {
		h.fail(w, err)
		return
	}
	w.WriteHeader(http.StatusAccepted)
}

// serveWebhookOptions answers the abuse-protection handshake of the
// CloudEvents HTTP 1.1 Web Hooks spec, section 4. weft accepts any origin
// (who may publish is decided elsewhere) and names no rate: overload is
// answered 429 per request. A WebHook-Request-Callback is never called: the
// synchronous answer is always allowed, and calling out would let anyone make
// the node fetch arbitrary URLs. An OPTIONS without WebHook-Request-Origin is
// a plain capability query (RFC 9110 section 9.3.7).
func serveWebhookOptions(w http.ResponseWriter, r *http.Request) {
	origin := r.Header.Get("WebHook-Request-Origin")
	if origin == "" {
		w.Header().Set("Allow", "OPTIONS, POST")
		w.WriteHeader(http.StatusNoContent)
		return
	}
	w.Header().Set("Allow", http.MethodPost)
	w.Header().Set("WebHook-Allowed-Origin", origin)
	w.Header().Set("WebHook-Allowed-Rate", "*")
	w.WriteHeader(http.StatusOK)
}

// readBody reads the whole body under MaxBodyBytes and ReadTimeout. The read
// deadline is per request (http.ResponseController), so a slow body costs at
// most ReadTimeout whatever the server's own timeouts are. It bounds the body
// only: once the body hits EOF, net/http clears the deadline when it starts
// its background read, so a Store slower than ReadTimeout is not cut short.
func (h *ingressHandler) readBody(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	limit := h.cfg.MaxBodyBytes
	if r.ContentLength > limit {
		return nil, fmt.Errorf("%w: %d bytes declared, limit %d", errBodyTooLarge, r.ContentLength, limit)
	}
	rc := http.NewResponseController(w)
	// Not every ResponseWriter supports deadlines (httptest.ResponseRecorder
	// does not); then the server's ReadTimeout is the only bound.
	_ = rc.SetReadDeadline(time.Now().Add(h.cfg.ReadTimeout))
	var buf bytes.Buffer
	body := r.Body
	if r.ContentLength > 0 {
		// ReadFrom wants MinRead bytes free before each read, the one that
		// finds EOF included: without them a body of exactly ContentLength
		// bytes is copied once more into a buffer twice its size.
		buf.Grow(int(r.ContentLength) + bytes.MinRead)
	} else {
		// Only a body of unknown length (chunked) can outgrow the limit: the
		// servers end a declared one at its Content-Length, checked above.
		body = http.MaxBytesReader(w, body, limit)
	}
	if _, err := buf.ReadFrom(body); err != nil {
		return nil, h.bodyError(w, err, limit)
	}
	return buf.Bytes(), nil
}

// bodyError words an error reading a body under limit.
func (h *ingressHandler) bodyError(w http.ResponseWriter, err error, limit int64) error {
	var tooLarge *http.MaxBytesError
	var netErr net.Error
	switch {
	case errors.As(err, &tooLarge):
		return fmt.Errorf("%w: limit %d bytes", errBodyTooLarge, limit)
	case errors.Is(err, os.ErrDeadlineExceeded), errors.As(err, &netErr) && netErr.Timeout():
		w.Header().Set("Connection", "close")
		return fmt.Errorf("%w (%v)", errBodyTimeout, h.cfg.ReadTimeout)
	default:
		return fmt.Errorf("%w: %v", errBodyRead, err)
	}
}

// fail answers err with the status ingressStatus gives it.
func (h *ingressHandler) fail(w http.ResponseWriter, err error) {
	status, reason := ingressStatus(err)
	if status == http.StatusTooManyRequests || status == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", retryAfter)
	}
	if status == http.StatusServiceUnavailable && !errors.Is(err, ErrUnavailable) && !errors.Is(err, ErrStorageFull) &&
		!errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) {
		h.log.Warn("ingress store failed", "err", err) // not an error eventStore documents
	}
	h.refuse(w, status, reason, err.Error())
}

// refuse counts the rejection and writes the JSON error body.
func (h *ingressHandler) refuse(w http.ResponseWriter, status int, reason, msg string) {
	h.m.Rejected.WithLabelValues(reason).Inc()
	h.log.Debug("ingress refused", "status", status, "reason", reason, "err", msg)
	hdr := w.Header()
	hdr.Set("Content-Type", "application/json")
	hdr.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(struct {
		Error string `json:"error"`
	}{msg}) // error ignored: the client may be gone, and the status is sent
}

// decodeHTTP decodes a request by its content mode (HTTP binding 3.1-3.3):
// a CloudEvents format in Content-Type selects structured or batch mode,
// whatever ce-* headers say; otherwise it is binary mode, and ce-specversion
// is required.
//
// A POST with neither is answered 400, not 415: its media type (say
// application/json) is one binary mode accepts as datacontenttype; what makes
// it no CloudEvent is the missing specversion attribute, which is an invalid
// event. Knative's broker ingress answers such requests 400 as well. 415 is
// kept for application/cloudevents+<format> with an unknown format.
func decodeHTTP(h http.Header, body []byte) ([]event.Event, error) {
	ct := h.Get("Content-Type")
	mediaType, params, perr := parseMediaType(ct)
	if perr != nil {
		mediaType, _, _ = strings.Cut(ct, ";")
		mediaType = strings.ToLower(strings.TrimSpace(mediaType))
	}
	if format.IsFormat(mediaType) {
		if perr != nil {
			return nil, &EventError{Index: -1, Rule: fmt.Sprintf("malformed Content-Type %q: %v", ct, perr)}
		}
		return decodeFormat(mediaType, params["charset"], body)
	}
	if len(h.Values("Ce-Specversion")) == 0 {
		return nil, &EventError{Index: -1, Attribute: attrSpecVersion,
			Rule: "is required: binary mode needs a ce-specversion header, structured mode Content-Type application/cloudevents+json"}
	}
	attrs, err := binaryAttrsFromHTTP(h)
	if err != nil {
		return nil, err
	}
	if len(h.Values("Content-Type")) > 1 {
		return nil, &EventError{Index: -1, Attribute: attrDataCT, Rule: "Content-Type must appear once"}
	}
	ev, err := decodeBinary(attrs, ct, body)
	if err != nil {
		return nil, err
	}
	return []event.Event{ev}, nil
}

// binaryAttrsFromHTTP collects the ce-* headers of a binary-mode request as
// attribute name → value. HTTP header names are case-insensitive, so Ce-MyExt
// is the extension myext. Values are percent-decoded (HTTP binding 3.1.3.2),
// which sdk-go does not do; a bad escape or invalid UTF-8 is refused. A
// ce-datacontenttype header is refused: in binary mode Content-Type is
// datacontenttype (3.1.1).
func binaryAttrsFromHTTP(h http.Header) (map[string]string, error) {
	attrs := make(map[string]string)
	for key, vals := range h {
		if len(key) < 3 || !strings.EqualFold(key[:3], "ce-") {
			continue
		}
		name := binaryAttrName(key[3:])
		if err := checkBinaryHeader(name, vals); err != nil {
			return nil, err
		}
		if name == attrDataCT {
			return nil, &EventError{Index: -1, Attribute: attrDataCT,
				Rule: "must not be sent as a ce-datacontenttype header in binary mode: Content-Type carries it"}
		}
		v, ok := percentDecode(vals[0])
		if !ok {
			return nil, &EventError{Index: -1, Attribute: name, Rule: "header value has invalid percent-encoding"}
		}
		attrs[name] = v
	}
	return attrs, nil
}

// parseMediaType is mime.ParseMediaType, without allocating for a bare
// lower-case type/subtype (application/json, application/cloudevents+json):
// that is returned as it is, with no parameters (a nil map).
func parseMediaType(v string) (mediaType string, params map[string]string, err error) {
	slash := strings.IndexByte(v, '/')
	simple := slash > 0 && slash < len(v)-1
	for i := 0; simple && i < len(v); i++ {
		c := v[i]
		simple = 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '+' || c == '-' || c == '.' || c == '/' && i == slash
	}
	if simple {
		return v, nil, nil
	}
	return mime.ParseMediaType(v)
}

// binaryAttrName is the attribute a ce-* header names (its name without
// the prefix, lower-cased), without allocating for the context attributes
// in the canonical form net/http gives header names.
func binaryAttrName(s string) string {
	switch s {
	case "Id":
		return "id"
	case "Source":
		return "source"
	case "Type":
		return "type"
	case "Specversion":
		return attrSpecVersion
	case "Subject":
		return "subject"
	case "Time":
		return "time"
	case "Dataschema":
		return "dataschema"
	}
	return strings.ToLower(s)
}

// checkBinaryHeader checks the name of a ce-* header and that it came once.
func checkBinaryHeader(name string, vals []string) error {
	if !validAttrName(name) {
		return &EventError{Index: -1, Attribute: name, Rule: ruleName}
	}
	if len(vals) != 1 {
		return &EventError{Index: -1, Attribute: name, Rule: fmt.Sprintf("header must appear once, got %d", len(vals))}
	}
	return nil
}

// percentDecode undoes the percent-encoding of binary-mode header values. Unlike
// url.QueryUnescape it leaves '+' alone. ok is false for a '%' not followed by
// two hex digits; the caller checks the result is UTF-8.
func percentDecode(s string) (string, bool) {
	if !strings.Contains(s, "%") {
		return s, true
	}
	var b strings.Builder
	b.Grow(len(s))
	for i := 0; i < len(s); i++ {
		if s[i] != '%' {
			b.WriteByte(s[i])
			continue
		}
		if i+2 >= len(s) || !isHex(s[i+1]) || !isHex(s[i+2]) {
			return "", false
		}
		b.WriteByte(unhex(s[i+1])<<4 | unhex(s[i+2]))
		i += 2
	}
	return b.String(), true
}

func unhex(c byte) byte {
	switch {
	case c >= 'a':
		return c - 'a' + 10
	case c >= 'A':
		return c - 'A' + 10
	default:
		return c - '0'
	}
}

// decodeFormat decodes a structured or batch body. Only the JSON format is
// spoken; JSON is UTF-8 (RFC 8259), so another charset is unsupported too.
func decodeFormat(mediaType, charset string, body []byte) ([]event.Event, error) {
	if charset != "" && !strings.EqualFold(charset, "utf-8") {
		return nil, &mediaTypeError{mediaType: mediaType + "; charset=" + charset}
	}
	switch mediaType {
	case event.ApplicationCloudEventsJSON:
		ev, err := decodeStructured(body, -1)
		if err != nil {
			return nil, err
		}
		return []event.Event{ev}, nil
	case event.ApplicationCloudEventsBatchJSON:
		return decodeBatch(body)
	default:
		return nil, &mediaTypeError{mediaType: mediaType}
	}
}

// decodeStructured decodes one JSON-format event: the wire-form rules first
// (explainJSONEvent), then sdk-go's decoder, then ValidateEvent's rules; a
// valid event in one pass (decodeJSONEventFast). index is the position in a
// batch or -1.
func decodeStructured(raw []byte, index int) (event.Event, error) {
	if !utf8.Valid(raw) {
		return event.Event{}, &EventError{Index: index, Rule: "body must be UTF-8 JSON (RFC 8259)"}
	}
	return decodeUTF8Structured(raw, index, validJSON(raw))
}

// decodeUTF8Structured is decodeStructured for raw known to be UTF-8, and
// known to be JSON when valid is true (an element of a valid batch).
func decodeUTF8Structured(raw []byte, index int, valid bool) (event.Event, error) {
	if valid {
		if ev, ok := decodeJSONEventFast(raw); ok {
			return ev, nil // it applies validateEvent's rules
		}
	}
	if err := explainJSONEvent(raw, index); err != nil {
		return event.Event{}, err
	}
	ev := event.New()
	// Not format.JSON.Unmarshal: it goes through json.Unmarshal, whose
	// validity pass repeats what explainJSONEvent just did.
	if err := ev.UnmarshalJSON(raw); err != nil {
		return event.Event{}, &EventError{Index: index, Rule: "cannot decode event: " + err.Error()}
	}
	if err := validateEvent(&ev, index); err != nil {
		return event.Event{}, err
	}
	return ev, nil
}

// decodeBatch decodes a JSON batch: an array of JSON-format events, all or
// nothing. [] is valid and yields no events. Every event must have
// specversion "1.0", so the batch rule "one specversion for all" holds by
// construction; a 0.3 event among 1.0 ones is refused at its index.
func decodeBatch(body []byte) ([]event.Event, error) {
	if !utf8.Valid(body) {
		return nil, &EventError{Index: -1, Rule: "body must be UTF-8 JSON (RFC 8259)"}
	}
	if trimmed := bytes.TrimLeft(body, " \t\r\n"); len(trimmed) == 0 || trimmed[0] != '[' {
		return nil, &EventError{Index: -1, Rule: "batch must be a JSON array of event objects"}
	}
	valid := validJSON(body)
	var elems []json.RawMessage
	if valid {
		// gjson splits a valid array without a second pass over it
		// (encoding/json's was half of a batch's decoding).
		gjson.Parse(string(body)).ForEach(func(_, elem gjson.Result) bool {
			elems = append(elems, json.RawMessage(elem.Raw))
			return true
		})
	} else if err := json.Unmarshal(body, &elems); err != nil {
		return nil, &EventError{Index: -1, Rule: "malformed JSON: " + err.Error()}
	}
	evs := make([]event.Event, 0, len(elems))
	for i, raw := range elems {
		ev, err := decodeUTF8Structured(raw, i, valid)
		if err != nil {
			return nil, err
		}
		evs = append(evs, ev)
	}
	return evs, nil
}

// decodeBinary builds one binary-mode event from attributes (names without
// the ce- prefix, values transport-decoded, datacontenttype not among them),
// the datacontenttype ("" when absent) and the data. The raw values are
// checked before sdk-go's setters trim them or drop empty ones. The event is
// built as sdk-go's binary-mode reader builds it (spec.V1's setters, then
// SetExtension), without first putting the attributes back into headers for
// it: that round trip was half of the decoding's time.
func decodeBinary(attrs map[string]string, contentType string, data []byte) (event.Event, error) {
	for _, name := range requiredAttrs {
		if _, ok := attrs[name]; !ok {
			return event.Event{}, &EventError{Index: -1, Attribute: name, Rule: ruleRequired}
		}
	}
	for name, v := range attrs {
		if !checkFastString(name, v) {
			return event.Event{}, firstBadAttr(attrs)
		}
	}
	ev := event.New() // specversion 1.0, which checkAttr required
	if contentType != "" {
		if err := checkAttr(-1, attrDataCT, contentType); err != nil {
			return event.Event{}, err
		}
		ev.SetDataContentType(contentType)
	}
	for name, v := range attrs {
		if name == attrSpecVersion {
			continue
		}
		if err := setBinaryAttr(ev.Context, name, v); err != nil {
			if bad := firstBadAttr(attrs); bad != nil {
				return event.Event{}, bad // a parse checkFastString left to the setter
			}
			return event.Event{}, &EventError{Index: -1, Rule: "cannot decode event: " + err.Error()}
		}
	}
	if len(data) > 0 {
		ev.DataEncoded = data
	}
	// validateEvent words what is wrong; an event that passes the rules the
	// checks above left out cannot be.
	if _, dataExt := attrs[attrData]; dataExt || ev.FieldErrors != nil ||
		!passesEventRules(ev.Context.(*event.EventContextV1), attrs["source"], attrs["dataschema"]) {
		if err := validateEvent(&ev, -1); err != nil {
			return event.Event{}, err
		}
	}
	return ev, nil
}

// setBinaryAttr sets attribute name (not specversion) to v as spec.V1's
// setter, or SetExtension for an extension, would; calling the context's own
// setters spares boxing v, an allocation per attribute.
func setBinaryAttr(ec event.EventContext, name, v string) error {
	switch name {
	case "id":
		return ec.SetID(v)
	case "source":
		return ec.SetSource(v)
	case "type":
		return ec.SetType(v)
	case "subject":
		return ec.SetSubject(v)
	case "dataschema":
		return ec.SetDataSchema(v)
	case attrDataCT:
		return ec.SetDataContentType(v)
	case "time":
		t, err := time.Parse(time.RFC3339Nano, v) // types.ToTime's parse of a string
		if err != nil {
			return fmt.Errorf("invalid value for time: %#v", v) // spec.V1's wording
		}
		return ec.SetTime(t)
	}
	if attr := spec.V1.Attribute(name); attr != nil {
		return attr.Set(ec, v) // none is left; one sdk-go may add
	}
	return ec.SetExtension(name, v)
}

// firstBadAttr returns the error of the first attribute, by name, that
// checkAttr refuses, so that the answer does not depend on a map's order.
func firstBadAttr(attrs map[string]string) error {
	for _, name := range slices.Sorted(maps.Keys(attrs)) {
		if err := checkAttr(-1, name, attrs[name]); err != nil {
			return err
		}
	}
	return nil
}
