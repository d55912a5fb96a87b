package router

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"unsafe"
)

// The proxy hop parses HTTP/1.1 messages itself (RFC 9112) instead of with
// net/http's ReadRequest and ReadResponse, which build every field through
// textproto and allocate per line and per value: together they were a
// fifth of the router's CPU per call (issue 5, goal 6). A request is still
// handed to the handler as an *http.Request, built from one string of its
// head; an endpoint's answer head is not parsed into an http.Header at all
// on the proxy path, only checked and filtered (respHead).
//
// The rules are net/http's, stricter where RFC 9112 lets a recipient
// refuse what smuggling attacks rely on: a request with both
// Transfer-Encoding and Content-Length, Transfer-Encoding in HTTP/1.0,
// differing Content-Length values, and obs-fold (a field line continued on
// the next) are refused, not repaired.

// parseError is a message refused while reading its head; status is what
// the server answers for a request.
type parseError struct {
	status int
	msg    string
}

func (e *parseError) Error() string { return "router: " + e.msg }

func badMessage(format string, args ...any) error {
	return &parseError{status: http.StatusBadRequest, msg: fmt.Sprintf(format, args...)}
}

// errMalformedBody marks a body whose chunked framing is broken: the
// sender's fault (400 for a request, 502 for an answer), not the
// connection's.
var errMalformedBody = errors.New("router: malformed chunked body")

// maxTrailerBytes bounds the trailer section of a chunked body, which is
// read and dropped.
const maxTrailerBytes = 64 << 10

// headEnd returns the length of the head at the start of b, through the
// empty line that ends it, or 0 and the offset of the first line not yet
// complete, where the next scan may start.
func headEnd(b []byte, from int) (end, next int) {
	for {
		i := bytes.IndexByte(b[from:], '\n')
		if i < 0 {
			return 0, from
		}
		if i == 0 || i == 1 && b[from] == '\r' {
			return from + i + 1, 0
		}
		from += i + 1
	}
}

// readHead returns the next message head from br, the first line to the
// empty line included. When buffered is true the head is a slice of br's
// buffer, valid until br is read or discarded from; the caller discards it
// once parsed. A head longer than br's buffer is copied out. max bounds
// its length (431 for a request). An end of input before any byte is
// io.EOF, within the head io.ErrUnexpectedEOF.
func readHead(br *bufio.Reader, max int) (head []byte, buffered bool, err error) {
	if _, err := br.Peek(1); err != nil {
		return nil, false, err
	}
	from := 0
	for n := br.Buffered(); ; n = br.Buffered() {
		b, _ := br.Peek(n)
		end, next := headEnd(b, from)
		if end > 0 {
			if end > max {
				return nil, false, errHeadTooLarge
			}
			return b[:end], true, nil
		}
		from = next
		if n >= br.Size() || n > max {
			break
		}
		if _, err := br.Peek(n + 1); err != nil {
			return nil, false, unexpectedEOF(err)
		}
	}
	// Longer than the buffer (rare): copy it out line by line.
	var start int
	for {
		line, err := br.ReadSlice('\n')
		head = append(head, line...)
		if len(head) > max {
			return nil, false, errHeadTooLarge
		}
		switch {
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		case err != nil:
			return nil, false, unexpectedEOF(err)
		}
		if l := head[start:]; len(l) == 1 || len(l) == 2 && l[0] == '\r' {
			return head, false, nil
		}
		start = len(head)
	}
}

var errHeadTooLarge = &parseError{status: http.StatusRequestHeaderFieldsTooLarge, msg: "message head too large"}

func unexpectedEOF(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

// nextLine cuts the first line, ended by LF with an optional CR before it,
// off s, which holds a whole head.
func nextLine(s string) (line, rest string) {
	i := strings.IndexByte(s, '\n')
	if i < 0 {
		return s, ""
	}
	line, rest = s[:i], s[i+1:]
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	return line, rest
}

// parseVersion parses "HTTP/1.1" and the like as net/http's
// ParseHTTPVersion does, without allocating.
func parseVersion(v string) (major, minor int, ok bool) {
	switch v {
	case "HTTP/1.1":
		return 1, 1, true
	case "HTTP/1.0":
		return 1, 0, true
	}
	if len(v) != len("HTTP/X.Y") || v[:5] != "HTTP/" || v[6] != '.' || !isDigit(v[5]) || !isDigit(v[7]) {
		return 0, 0, false
	}
	return int(v[5] - '0'), int(v[7] - '0'), true
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

// isTokenByte reports whether c may appear in a token (RFC 9110 section
// 5.6.2): a field name or a method.
func isTokenByte(c byte) bool { return tokenTable[c] }

var tokenTable = func() (t [256]bool) {
	for c := '!'; c <= '~'; c++ {
		t[c] = !strings.ContainsRune("\"(),/:;<=>?@[\\]{}", c)
	}
	return t
}()

func validToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !isTokenByte(s[i]) {
			return false
		}
	}
	return true
}

// validValueByte reports whether c may appear in a field value: visible
// characters, SP, HTAB and obs-text, as net/textproto accepts.
func validValueByte(c byte) bool { return c == '\t' || c >= ' ' && c != 0x7f }

// trimOWS trims spaces and tabs from both ends.
func trimOWS(s string) string {
	for len(s) > 0 && (s[0] == ' ' || s[0] == '\t') {
		s = s[1:]
	}
	for len(s) > 0 && (s[len(s)-1] == ' ' || s[len(s)-1] == '\t') {
		s = s[:len(s)-1]
	}
	return s
}

// splitField parses one field line into its name and value (trimmed), as
// it came: a line that starts with whitespace (obs-fold, RFC 9112 section
// 5.2), a name that is not a token or a value with control characters is
// an error.
func splitField(line string) (name, value string, err error) {
	if line[0] == ' ' || line[0] == '\t' {
		return "", "", badMessage("obs-fold or whitespace before a field line: %.40q", line)
	}
	i := strings.IndexByte(line, ':')
	if i <= 0 || !validToken(line[:i]) {
		return "", "", badMessage("malformed field line %.40q", line)
	}
	value = trimOWS(line[i+1:])
	for j := 0; j < len(value); j++ {
		if !validValueByte(value[j]) {
			return "", "", badMessage("invalid byte in the value of %.40q", line[:i])
		}
	}
	return line[:i], value, nil
}

// canonicalKey returns name (a valid token) in net/http's canonical form,
// without allocating when it is canonical already or a common name.
func canonicalKey(name string) string {
	if len(name) > 64 {
		return http.CanonicalHeaderKey(name)
	}
	var buf [64]byte
	upper := true
	for i := 0; i < len(name); i++ {
		c := name[i]
		if upper && 'a' <= c && c <= 'z' {
			c -= 'a' - 'A'
		} else if !upper && 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		buf[i] = c
		upper = c == '-'
	}
	k := buf[:len(name)]
	if string(k) == name {
		return name
	}
	if s, ok := commonKeys[string(k)]; ok {
		return s
	}
	return string(k)
}

// commonKeys interns the canonical names clients send in lower case.
var commonKeys = func() map[string]string {
	m := map[string]string{}
	for _, k := range []string{"Accept", "Accept-Encoding", "Accept-Language", "Authorization", "Cache-Control",
		"Ce-Id", "Ce-Source", "Ce-Specversion", "Ce-Subject", "Ce-Time", "Ce-Type", "Connection", "Content-Encoding",
		"Content-Length", "Content-Type", "Cookie", "Date", "Expect", "Host", "Idempotency-Key", "If-Modified-Since",
		"If-None-Match", "Keep-Alive", "Origin", "Pragma", "Proxy-Authorization", "Proxy-Connection", "Range",
		"Referer", "Te", "Traceparent", "Tracestate", "Trailer", "Transfer-Encoding", "Upgrade", "User-Agent",
		"X-Forwarded-For", "X-Request-Id"} {
		m[k] = k
	}
	return m
}()

// hasToken reports whether the comma-separated lists in vs name token,
// case-insensitively (Connection: close, keep-alive).
func hasToken(vs []string, token string) bool {
	for _, v := range vs {
		for v != "" {
			var t string
			t, v, _ = strings.Cut(v, ",")
			if strings.EqualFold(trimOWS(t), token) {
				return true
			}
		}
	}
	return false
}

// validHostByte is what net/http's server accepts in a Host header
// (httpguts.ValidHostHeader): the bytes of any form RFC 3986 allows.
var validHostByte = func() (t [256]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c], t[c-'a'+'A'] = true, true
	}
	for _, c := range "!$%&'()*+,-.:;=[]_~" {
		t[c] = true
	}
	return t
}()

func validHost(h string) bool {
	for i := 0; i < len(h); i++ {
		if !validHostByte[h[i]] {
			return false
		}
	}
	return true
}

// contentLength checks a message's Content-Length values: several must be
// equal (RFC 9110 section 8.6), the value a decimal number.
func contentLength(vs []string) (int64, error) {
	for _, v := range vs[1:] {
		if v != vs[0] {
			return 0, badMessage("differing Content-Length values %q", vs)
		}
	}
	if vs[0] == "" {
		return 0, badMessage("empty Content-Length")
	}
	n, err := strconv.ParseUint(vs[0], 10, 63)
	if err != nil {
		return 0, badMessage("bad Content-Length %.40q", vs[0])
	}
	return int64(n), nil
}

// interned strings of the request line, to spare an allocation each.
var (
	commonMethods = map[string]string{"GET": "GET", "POST": "POST", "PUT": "PUT", "HEAD": "HEAD",
		"DELETE": "DELETE", "PATCH": "PATCH", "OPTIONS": "OPTIONS", "CONNECT": "CONNECT", "TRACE": "TRACE"}
	chunkedEncoding = []string{"chunked"} // Request.TransferEncoding of a chunked request; never modified
)

// parseRequest parses a request head s (from readHead) as net/http's
// server does, into a copy of base (which carries the context), and
// reports how its body is framed: length bytes (0: none), or chunked.
// Host is taken out of the header, as net/http's server does; a second
// Host, a missing one in HTTP/1.1 or an invalid one is an error.
func parseRequest(s string, base *http.Request) (req *http.Request, chunked bool, err error) {
	line, rest := nextLine(s)
	method, rest1, ok1 := strings.Cut(line, " ")
	target, proto, ok2 := strings.Cut(rest1, " ")
	if !ok1 || !ok2 {
		return nil, false, badMessage("malformed request line %.60q", line)
	}
	if !validToken(method) {
		return nil, false, badMessage("invalid method %.20q", method)
	}
	major, minor, ok := parseVersion(proto)
	if !ok {
		return nil, false, badMessage("malformed HTTP version %.20q", proto)
	}
	if major != 1 {
		return nil, false, &parseError{status: http.StatusHTTPVersionNotSupported, msg: "unsupported HTTP version " + proto}
	}
	if m, ok := commonMethods[method]; ok {
		method = m
	}
	// CONNECT names an authority, not a URL (RFC 9112 section 3.2.3).
	authority := method == http.MethodConnect && !strings.HasPrefix(target, "/")
	raw := target
	if authority {
		raw = "http://" + target
	}
	u, err := url.ParseRequestURI(raw)
	if err != nil {
		return nil, false, badMessage("request target: %v", err)
	}
	if authority {
		u.Scheme = ""
	}

	n := strings.Count(rest, "\n") // field lines, plus the empty one
	h := make(http.Header, n)
	strs := make([]string, n) // one backing array for single values, as textproto does
	for {
		line, rest = nextLine(rest)
		if line == "" {
			break
		}
		name, value, err := splitField(line)
		if err != nil {
			return nil, false, err
		}
		k := canonicalKey(name)
		if vv, ok := h[k]; ok {
			h[k] = append(vv, value)
			continue
		}
		vv := strs[:1:1]
		strs = strs[1:]
		vv[0] = value
		h[k] = vv
	}

	req = new(http.Request)
	*req = *base
	req.Method, req.URL, req.RequestURI, req.Header = method, u, target, h
	req.Proto, req.ProtoMajor, req.ProtoMinor = proto, major, minor
	switch proto {
	case "HTTP/1.1":
		req.Proto = "HTTP/1.1"
	case "HTTP/1.0":
		req.Proto = "HTTP/1.0"
	}

	hosts, haveHost := h["Host"]
	switch {
	case len(hosts) > 1:
		return nil, false, badMessage("too many Host headers")
	case !haveHost && minor >= 1 && method != http.MethodConnect:
		return nil, false, badMessage("missing required Host header")
	case haveHost && !validHost(hosts[0]):
		return nil, false, badMessage("malformed Host header %.40q", hosts[0])
	}
	delete(h, "Host")
	// RFC 9112 section 3.2.2: the host of an absolute-form target wins.
	req.Host = u.Host
	if req.Host == "" && haveHost {
		req.Host = hosts[0]
	}
	if p := h["Pragma"]; len(p) > 0 && p[0] == "no-cache" {
		if _, ok := h["Cache-Control"]; !ok {
			h["Cache-Control"] = []string{"no-cache"}
		}
	}
	conn := h["Connection"]
	req.Close = hasToken(conn, "close") || minor == 0 && !hasToken(conn, "keep-alive")

	te, haveTE := h["Transfer-Encoding"]
	cl, haveCL := h["Content-Length"]
	switch {
	case haveTE:
		// RFC 9112 section 6.1: in HTTP/1.0, or next to a Content-Length,
		// Transfer-Encoding means a framing the sender and the endpoint
		// may read differently (smuggling); refuse it.
		if minor == 0 {
			return nil, false, badMessage("Transfer-Encoding in an HTTP/1.0 request")
		}
		if haveCL {
			return nil, false, badMessage("both Transfer-Encoding and Content-Length")
		}
		if len(te) != 1 || !strings.EqualFold(te[0], "chunked") {
			return nil, false, &parseError{status: http.StatusNotImplemented, msg: fmt.Sprintf("unsupported transfer encoding %.40q", te)}
		}
		delete(h, "Transfer-Encoding")
		req.TransferEncoding, req.ContentLength = chunkedEncoding, -1
		return req, true, nil
	case haveCL:
		n, err := contentLength(cl)
		if err != nil {
			return nil, false, err
		}
		h["Content-Length"] = cl[:1:1]
		req.ContentLength = n
	}
	return req, false, nil
}

// bodyReader reads a message body from br: n bytes, or chunked, or (an
// answer only) up to the end of the connection. It is not safe for
// concurrent use; reqBody and upBody guard it.
type bodyReader struct {
	br      *bufio.Reader
	n       int64     // bytes left when framed by length; -1 until the end of the connection
	chunked io.Reader // httputil's chunked decoder, when chunked
	err     error     // sticky, io.EOF at the end
}

// initBody frames b: length bytes, or chunked.
func (b *bodyReader) init(br *bufio.Reader, length int64, chunked bool) {
	*b = bodyReader{br: br, n: length}
	if chunked {
		b.chunked = httputil.NewChunkedReader(br)
	}
}

func (b *bodyReader) Read(p []byte) (int, error) {
	if b.err != nil {
		return 0, b.err
	}
	var n int
	var err error
	switch {
	case b.chunked != nil:
		n, err = b.chunked.Read(p)
		switch {
		case err == io.EOF:
			if err = discardTrailer(b.br); err == nil {
				err = io.EOF
			}
		case err != nil && !ioFailure(err):
			err = fmt.Errorf("%w: %w", errMalformedBody, err)
		}
	case b.n < 0:
		n, err = b.br.Read(p)
	default:
		if b.n == 0 {
			b.err = io.EOF
			return 0, io.EOF
		}
		if int64(len(p)) > b.n {
			p = p[:b.n]
		}
		n, err = b.br.Read(p)
		b.n -= int64(n)
		switch {
		case b.n == 0:
			err = io.EOF // with the last bytes, so the connection is free at once
		case err == io.EOF:
			err = io.ErrUnexpectedEOF
		}
	}
	if err != nil {
		b.err = err
	}
	return n, err
}

// ioFailure reports whether err is the connection's, not the framing's.
func ioFailure(err error) bool {
	var ne net.Error
	return errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || errors.As(err, &ne)
}

// discardTrailer reads the trailer section after the last chunk (RFC 9112
// section 7.1.2) and drops it: the router forwards no trailers.
func discardTrailer(br *bufio.Reader) error {
	total := 0
	for {
		line, err := br.ReadSlice('\n')
		total += len(line)
		switch {
		case total > maxTrailerBytes || errors.Is(err, bufio.ErrBufferFull):
			return fmt.Errorf("%w: trailer too large", errMalformedBody)
		case err != nil:
			return unexpectedEOF(err)
		}
		if len(line) == 1 || len(line) == 2 && line[0] == '\r' {
			return nil
		}
		if _, _, err := splitField(strings.TrimRight(string(line), "\r\n")); err != nil {
			return fmt.Errorf("%w: trailer: %w", errMalformedBody, err)
		}
	}
}

// maxResponseHead bounds an answer's head, as http.Transport's default
// MaxResponseHeaderBytes does.
const maxResponseHead = 10 << 20

// maxKeptFields bounds the buffer of forwarded fields a connection keeps
// for its next answer.
const maxKeptFields = 64 << 10

// respHead is an endpoint's answer head as the proxy forwards it: checked
// and its framing read, the fields to forward kept as lines instead of
// parsed into an http.Header.
type respHead struct {
	status  int
	minor   int    // HTTP/1.minor
	fields  []byte // the lines to forward, "Name: value\r\n" each: all but framing and hop-by-hop fields
	length  int64  // the Content-Length to declare to the client, -1 for none
	body    int64  // body bytes to read: 0 for none, -1 up to the end of the connection or chunked
	chunked bool
	close   bool // the endpoint closes the connection after this answer
	hasDate bool
}

// parseResponseHead parses an answer head (from readHead) to a request
// with method into h, whose fields buffer it reuses. The rules are
// net/http's ReadResponse's, stricter where a proxy should be (RFC 9112
// sections 5.2 and 6): obs-fold, Transfer-Encoding in HTTP/1.0 or next to
// a Content-Length, and differing Content-Length values are errors.
// Fields named by Connection are dropped with the hop-by-hop ones (RFC
// 9110 section 7.6.1).
func parseResponseHead(head []byte, method string, h *respHead) error {
	// s aliases head (br's buffer); nothing derived from it outlives this
	// call: what is kept is copied into h.fields.
	s := unsafe.String(unsafe.SliceData(head), len(head))
	fields := h.fields[:0]
	if cap(fields) > maxKeptFields {
		fields = nil // an unusually large header is not kept for the connection's life
	}
	*h = respHead{fields: fields, length: -1}
	line, rest := nextLine(s)
	proto, status, ok := strings.Cut(line, " ")
	if !ok {
		return badMessage("malformed status line %.60q", line)
	}
	major, minor, ok := parseVersion(proto)
	if !ok || major != 1 {
		return badMessage("unsupported HTTP version %.20q", proto)
	}
	status = strings.TrimLeft(status, " ")
	code, _, _ := strings.Cut(status, " ")
	if len(code) != 3 || !isDigit(code[0]) || !isDigit(code[1]) || !isDigit(code[2]) {
		return badMessage("malformed status code %.20q", code)
	}
	h.status = int(code[0]-'0')*100 + int(code[1]-'0')*10 + int(code[2]-'0')
	h.minor = minor

	// First pass: check every line, read the framing and what Connection
	// names.
	var cl, te string
	var nCL, nTE int
	var named [8]string // Connection's tokens, usually none besides close or keep-alive
	tokens := named[:0]
	keepAlive := false
	for r := rest; ; {
		line, r = nextLine(r)
		if line == "" {
			break
		}
		name, value, err := splitField(line)
		if err != nil {
			return err
		}
		switch {
		case strings.EqualFold(name, "Content-Length"):
			if nCL > 0 && value != cl {
				return badMessage("differing Content-Length values %q and %q", cl, value)
			}
			cl = value
			nCL++
		case strings.EqualFold(name, "Transfer-Encoding"):
			te = value
			nTE++
		case strings.EqualFold(name, "Connection"):
			for v := value; v != ""; {
				var t string
				t, v, _ = strings.Cut(v, ",")
				switch t = trimOWS(t); {
				case strings.EqualFold(t, "close"):
					h.close = true
				case strings.EqualFold(t, "keep-alive"):
					keepAlive = true
				case t != "":
					tokens = append(tokens, t)
				}
			}
		case strings.EqualFold(name, "Date"):
			h.hasDate = true
		}
	}
	if minor == 0 && !keepAlive {
		h.close = true
	}

	bodyless := method == http.MethodHead || h.status/100 == 1 || h.status == http.StatusNoContent || h.status == http.StatusNotModified
	if nTE > 0 {
		switch {
		case minor == 0:
			return badMessage("Transfer-Encoding in an HTTP/1.0 answer")
		case nCL > 0:
			return badMessage("both Transfer-Encoding and Content-Length")
		case nTE > 1 || !strings.EqualFold(te, "chunked"):
			return badMessage("unsupported transfer encoding %.40q", te)
		}
		h.chunked = !bodyless
	}
	if nCL > 0 {
		if cl == "" {
			return badMessage("empty Content-Length")
		}
		n, err := strconv.ParseUint(cl, 10, 63)
		if err != nil {
			return badMessage("bad Content-Length %.40q", cl)
		}
		h.length = int64(n)
	}
	switch {
	case h.status/100 == 1 || h.status == http.StatusNoContent:
		h.length = -1 // RFC 9110 section 8.6: never sent with these
	case bodyless:
		// HEAD and 304: the length stands for the body not sent.
	case h.chunked:
		h.body = -1
	case nCL > 0:
		h.body = h.length
	default:
		h.body, h.close = -1, true // delimited by the end of the connection
	}

	// Second pass: keep the fields to forward.
	for r := rest; ; {
		line, r = nextLine(r)
		if line == "" {
			break
		}
		name, value, _ := splitField(line)
		if isHopField(name) || slices.ContainsFunc(tokens, func(t string) bool { return strings.EqualFold(t, name) }) {
			continue
		}
		h.fields = append(h.fields, name...)
		h.fields = append(h.fields, ": "...)
		h.fields = append(h.fields, value...)
		h.fields = append(h.fields, "\r\n"...)
	}
	return nil
}

// isHopField reports whether a field is not forwarded as it came: the
// hop-by-hop ones (hopHeaders) and the framing the server sets itself.
func isHopField(name string) bool {
	var k string
	switch len(name) {
	case 2:
		k = "Te"
	case 7:
		if strings.EqualFold(name, "Trailer") {
			return true
		}
		k = "Upgrade"
	case 10:
		if strings.EqualFold(name, "Connection") {
			return true
		}
		k = "Keep-Alive"
	case 14:
		k = "Content-Length"
	case 16:
		k = "Proxy-Connection"
	case 17:
		k = "Transfer-Encoding"
	case 18:
		k = "Proxy-Authenticate"
	case 19:
		k = "Proxy-Authorization"
	default:
		return false
	}
	return strings.EqualFold(name, k)
}
