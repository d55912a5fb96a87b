package router

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// respWriter is the http.ResponseWriter of one request.
type respWriter struct {
	c          *srvConn
	req        *http.Request
	header     http.Header
	status     int   // 0 until WriteHeader
	sent       bool  // the status line and header are written
	length     int64 // declared Content-Length, -1 when none
	chunked    bool
	bodyless   bool // HEAD, 1xx, 204, 304
	written    int64
	pending    []byte // body held back until it is known whether more comes
	closeAfter bool
	err        error // the first write error
	// raw is set by forward: the header is fields, lines as an endpoint
	// sent them, instead of header.
	raw     bool
	fields  []byte
	hasDate bool
}

// maxPending is how much of an answer without a Content-Length is held
// back so that its length can be declared if the handler ends there.
const maxPending = 4 << 10

func (w *respWriter) reset(c *srvConn, req *http.Request) {
	h, p, f := w.header, w.pending[:0], w.fields[:0]
	if cap(f) > maxKeptFields {
		f = nil // an unusually large header is not kept for the connection's life
	}
	clear(h)
	*w = respWriter{c: c, req: req, header: h, pending: p, fields: f, length: -1}
}

// forward starts the answer with an endpoint's status and header fields as
// they came (see respHead), instead of Header and WriteHeader; h is copied.
// The framing is chosen as for any answer, from h's Content-Length.
func (w *respWriter) forward(h *respHead) {
	if w.status != 0 || w.c.hijacked {
		return
	}
	w.raw, w.hasDate = true, h.hasDate
	w.fields = append(w.fields[:0], h.fields...)
	w.status = h.status
	w.bodyless = w.req.Method == http.MethodHead || h.status == http.StatusNoContent || h.status == http.StatusNotModified || h.status < 200
	w.length = h.length
}

// Header implements http.ResponseWriter.
func (w *respWriter) Header() http.Header { return w.header }

// WriteHeader implements http.ResponseWriter.
func (w *respWriter) WriteHeader(code int) {
	if w.status != 0 || w.c.hijacked {
		return
	}
	if code < 100 || code > 999 {
		panic(fmt.Sprintf("invalid WriteHeader code %v", code))
	}
	if code >= 100 && code <= 199 && code != http.StatusSwitchingProtocols {
		// Informational (103 Early Hints): sent at once, the final answer
		// follows.
		w.writeStatus(code)
		w.writeHeaderFields()
		_, _ = w.c.bw.WriteString("\r\n")
		if err := w.c.bw.Flush(); err != nil && w.err == nil {
			w.err = err
		}
		return
	}
	w.status = code
	w.bodyless = w.req.Method == http.MethodHead || code == http.StatusNoContent || code == http.StatusNotModified || code < 200
	if v := w.header["Content-Length"]; len(v) == 1 {
		if n, err := strconv.ParseInt(v[0], 10, 64); err == nil && n >= 0 {
			w.length = n
		} else {
			delete(w.header, "Content-Length")
		}
	} else if len(v) > 1 {
		delete(w.header, "Content-Length")
	}
}

// Write implements http.ResponseWriter.
func (w *respWriter) Write(p []byte) (int, error) {
	if w.c.hijacked {
		return 0, http.ErrHijacked
	}
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	if w.err != nil {
		return 0, w.err
	}
	if w.bodyless {
		if w.req.Method == http.MethodHead {
			return len(p), nil
		}
		return 0, http.ErrBodyNotAllowed
	}
	if !w.sent {
		if w.length < 0 && len(w.pending)+len(p) <= maxPending {
			w.pending = append(w.pending, p...)
			return len(p), nil
		}
		w.sendHeader(false)
	}
	return w.writeBody(p)
}

// Flush implements http.Flusher.
func (w *respWriter) Flush() {
	if w.c.hijacked {
		return
	}
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	if !w.sent {
		w.sendHeader(false)
	}
	if err := w.c.bw.Flush(); err != nil && w.err == nil {
		w.err = err
	}
}

// SetReadDeadline lets a handler bound the reading of its request's body
// (http.ResponseController); the deadline ends with the request.
func (w *respWriter) SetReadDeadline(t time.Time) error {
	if w.c.hijacked {
		return http.ErrHijacked
	}
	w.c.readDeadline = true
	return w.c.conn.SetReadDeadline(t)
}

// SetWriteDeadline lets a handler bound the writing of its answer
// (http.ResponseController); the deadline ends with the request.
func (w *respWriter) SetWriteDeadline(t time.Time) error {
	if w.c.hijacked {
		return http.ErrHijacked
	}
	w.c.writeDeadline = true
	return w.c.conn.SetWriteDeadline(t)
}

// Hijack implements http.Hijacker.
func (w *respWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c := w.c
	if c.hijacked {
		return nil, nil, http.ErrHijacked
	}
	if w.sent {
		if err := c.bw.Flush(); err != nil {
			return nil, nil, err
		}
	}
	c.hijacked = true
	return c.conn, bufio.NewReadWriter(c.br, c.bw), nil
}

// finish completes the answer once the handler returned.
func (w *respWriter) finish() {
	if w.c.hijacked {
		return
	}
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	switch {
	case !w.sent:
		w.sendHeader(true)
	case w.chunked:
		if w.err == nil {
			_, w.err = w.c.bw.WriteString("0\r\n\r\n")
		}
	}
	if w.length >= 0 && w.written < w.length && !w.bodyless {
		w.closeAfter = true // short answer: the client must see it end
	}
	if w.err != nil {
		w.closeAfter = true
	}
}

// sendHeader writes the status line and header, choosing the framing; done
// means the handler returned, so what is pending is the whole body.
func (w *respWriter) sendHeader(done bool) {
	w.sent = true
	h := w.header
	lengthField := false // Content-Length to write from w.length
	switch {
	case w.bodyless:
		// No body: whatever length the handler declared stands (a HEAD
		// answer tells the length of the GET one).
	case w.length >= 0:
	case done:
		// Written below as the raw branch writes it, not through h: a
		// []string per answer spared.
		w.length = int64(len(w.pending))
		lengthField = !w.raw
		delete(h, "Content-Length") // one set after WriteHeader
	case w.req.ProtoAtLeast(1, 1):
		w.chunked = true
		if !w.raw {
			delete(h, "Content-Length")
			h["Transfer-Encoding"] = []string{"chunked"}
		}
	default:
		w.closeAfter = true // HTTP/1.0: the body ends with the connection
	}
	if w.closeAfter || w.req.Close || !w.req.ProtoAtLeast(1, 1) || w.c.s.shutting.Load() {
		w.closeAfter = true
	}
	bw := w.c.bw
	if w.raw {
		w.writeStatus(w.status)
		_, _ = bw.Write(w.fields)
		if w.length >= 0 {
			_, _ = bw.WriteString("Content-Length: ")
			_, _ = bw.Write(strconv.AppendInt(bw.AvailableBuffer(), w.length, 10))
			_, _ = bw.WriteString("\r\n")
		}
		if w.chunked {
			_, _ = bw.WriteString("Transfer-Encoding: chunked\r\n")
		}
		if w.closeAfter {
			_, _ = bw.WriteString("Connection: close\r\n")
		}
		if !w.hasDate {
			_, _ = bw.WriteString(dateField())
		}
	} else {
		if !w.chunked {
			delete(h, "Transfer-Encoding")
		}
		if w.closeAfter {
			h["Connection"] = []string{"close"}
		} else {
			delete(h, "Connection")
		}
		w.writeStatus(w.status)
		w.writeHeaderFields()
		if lengthField {
			_, _ = bw.WriteString("Content-Length: ")
			_, _ = bw.Write(strconv.AppendInt(bw.AvailableBuffer(), w.length, 10))
			_, _ = bw.WriteString("\r\n")
		}
		if _, ok := h["Date"]; !ok {
			_, _ = bw.WriteString(dateField())
		}
	}
	if _, err := bw.WriteString("\r\n"); err != nil && w.err == nil {
		w.err = err
	}
	if len(w.pending) > 0 {
		p := w.pending
		w.pending = w.pending[:0]
		_, _ = w.writeBody(p)
	}
}

// dateField returns the Date header field line of this second, formatted
// once a second rather than once an answer.
func dateField() string {
	now := time.Now().Unix()
	if d := cachedDate.Load(); d != nil && d.sec == now {
		return d.line
	}
	d := &dateLine{sec: now, line: "Date: " + time.Unix(now, 0).UTC().Format(http.TimeFormat) + "\r\n"}
	cachedDate.Store(d)
	return d.line
}

type dateLine struct {
	sec  int64
	line string
}

var cachedDate atomic.Pointer[dateLine]

func (w *respWriter) writeStatus(code int) {
	bw := w.c.bw
	_, _ = bw.WriteString("HTTP/1.1 ")
	_, _ = bw.Write(strconv.AppendInt(bw.AvailableBuffer(), int64(code), 10))
	_ = bw.WriteByte(' ')
	text := http.StatusText(code)
	if text == "" {
		text = "status code " + strconv.Itoa(code)
	}
	_, _ = bw.WriteString(text)
	_, _ = bw.WriteString("\r\n")
}

// writeHeaderFields writes the header fields with a valid name.
func (w *respWriter) writeHeaderFields() {
	bw := w.c.bw
	for k, vs := range w.header {
		if !validFieldName(k) {
			continue
		}
		for _, v := range vs {
			writeField(bw, k, v)
		}
	}
}

// validFieldName reports whether k is a token (RFC 9110 section 5.1).
func validFieldName(k string) bool {
	if k == "" {
		return false
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte("\"(),/:;<=>?@[\\]{}", c) >= 0 {
			return false
		}
	}
	return true
}

// writeBody writes p as body bytes, as a chunk when chunked.
func (w *respWriter) writeBody(p []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	if len(p) == 0 {
		return 0, nil
	}
	bw := w.c.bw
	var over bool
	if w.length >= 0 && w.written+int64(len(p)) > w.length {
		p, over = p[:w.length-w.written], true
	}
	if w.chunked {
		_, _ = bw.Write(strconv.AppendInt(bw.AvailableBuffer(), int64(len(p)), 16))
		_, _ = bw.WriteString("\r\n")
	}
	n, err := bw.Write(p)
	if err == nil && w.chunked {
		_, err = bw.WriteString("\r\n")
	}
	w.written += int64(n)
	if err != nil {
		w.err = err
		return n, err
	}
	if over {
		return n, http.ErrContentLength
	}
	return n, nil
}
