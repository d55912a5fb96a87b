package router

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/weft-dev/weft/internal/rawconn"
)

// h1Transport is the router's client to endpoints: HTTP/1.1 over keep-alive
// connections kept per address, with the request written and the answer
// read on the caller's goroutine. http.Transport runs a reader and a writer
// goroutine per connection and hands every request and answer between them
// and the caller over channels; on a proxy hop that costs more CPU and
// latency than the I/O itself (issue 5, goal 6). Requests are written as
// Request.Write does (writeRequest); answers are read by net/http's
// ReadResponse, or for the proxy, which forwards the header as it came,
// by parseResponseHead (h1parse.go), with the same framing rules (HEAD,
// 1xx, 204, 304, chunked) and stricter on conflicting ones.
//
// What it does not do, unlike http.Transport: HTTP/2 (TLS offers only
// http/1.1 in ALPN), proxies, transparent gzip, MaxConnsPerHost, and
// noticing an idle connection closed by the server before it is used again
// (a request that finds one is sent again on a new connection when that is
// safe, as http.Transport does, see roundTrip). A request's context bounds
// the whole exchange, answer body included: when it ends, the connection's
// deadline is moved to the past so blocked I/O returns at once.
//
// An h1Transport is safe for concurrent use. The zero value is not usable;
// use newH1Transport.
type h1Transport struct {
	tls         *tls.Config // for https endpoints; nil means the system roots
	dialer      net.Dialer
	handshake   time.Duration // bound on a TLS handshake
	maxIdle     int           // idle connections kept per address
	idleTimeout time.Duration // an idle connection older than this is closed, not reused
	// checkAfter is how long a connection may sit idle before it is checked
	// with alive when taken: endpoints close idle connections after
	// seconds, and the check costs a system call.
	checkAfter time.Duration

	mu   sync.Mutex
	idle map[string][]*upConn // by scheme://host:port, most recently used last
	gen  uint64               // bumped by CloseIdleConnections
}

// NewTransport returns the router's HTTP/1.1 transport (see h1Transport)
// for use outside the router: weft's worker pool delivers events to its
// instances through it. tc configures TLS for https endpoints (nil: verify
// with the system roots).
func NewTransport(tc *tls.Config) http.RoundTripper { return newH1Transport(tc) }

// newH1Transport returns the router's transport; tc configures TLS for
// https endpoints (nil: verify with the system roots).
func newH1Transport(tc *tls.Config) *h1Transport {
	return &h1Transport{
		tls:         tc,
		dialer:      net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second},
		handshake:   5 * time.Second,
		maxIdle:     64,
		idleTimeout: 90 * time.Second,
		checkAfter:  time.Second,
		idle:        map[string][]*upConn{},
	}
}

// upConn is one connection to an endpoint.
type upConn struct {
	t      *h1Transport
	key    string
	gen    uint64
	conn   net.Conn
	tls    *tls.ConnectionState // nil for plain HTTP
	cr     countingReader
	br     *bufio.Reader
	bw     *bufio.Writer
	idleAt time.Time
	head   respHead // the last answer's head when read raw; valid until the connection is put back
	// interrupt moves the deadline to the past, so that blocked I/O returns;
	// made once per connection rather than per exchange.
	interrupt func()
}

// countingReader counts the bytes read from a connection, so that a failure
// can tell whether any of the answer had arrived.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// aLongTimeAgo is a deadline in the past: I/O blocked on the connection
// returns at once.
var aLongTimeAgo = time.Unix(1, 0)

// errClosedBeforeAnswer is an endpoint closing the connection before any
// byte of an answer; it wraps io.EOF.
var errClosedBeforeAnswer = fmt.Errorf("router: endpoint closed the connection before answering: %w", io.EOF)

// target is where an exchange goes.
type target struct {
	tls  bool   // https
	addr string // host:port to dial
	key  string // the pool's key: addr, prefixed for TLS
	host string // the Host header
}

// targetOf returns the target of u (http or https), whose Host header is
// u.Host unless host is set.
func targetOf(u *url.URL, host string) (target, error) {
	if u == nil || u.Host == "" {
		return target{}, errors.New("router: request has no host")
	}
	t := target{addr: u.Host, host: u.Host}
	port := u.Port()
	switch u.Scheme {
	case "http":
		if port == "" {
			t.addr = net.JoinHostPort(u.Hostname(), "80")
		}
		t.key = t.addr
	case "https":
		if port == "" {
			t.addr = net.JoinHostPort(u.Hostname(), "443")
		}
		t.tls, t.key = true, "https://"+t.addr
	default:
		return target{}, fmt.Errorf("router: unsupported scheme %q", u.Scheme)
	}
	if host != "" {
		t.host = host
	}
	return t, nil
}

// RoundTrip implements http.RoundTripper: req goes to its URL's host, with
// req.Host (or the URL's host) as its Host header. The response body must
// be read to its end or closed; reading it to the end puts the connection
// back for reuse, closing it early closes the connection.
func (t *h1Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	tgt, err := targetOf(req.URL, req.Host)
	if err != nil {
		closeReqBody(req.Body)
		return nil, err
	}
	return t.exchange(req.Context(), req, req.Body, tgt, time.Time{}, false)
}

// exchange sends req's method, path, query, header and body (body, not
// req.Body: a retry passes a fresh copy) to tgt and reads the answer. req
// is only read, so a proxy can send the request it received as it is.
//
// deadline, when not zero, bounds the exchange, the answer's body included,
// as a timeout context would, for less: it becomes the connection's
// deadline, and an error it causes wraps context.DeadlineExceeded. ctx
// still cancels the exchange.
//
// raw is for the proxy, which forwards the answer's header as it came: the
// answer's head is not parsed into resp.Header (it stays nil) but kept as
// a respHead, which resp.Body's rawHead method returns; the body is then
// never http.NoBody. An error reading body wraps errRequestBody.
func (t *h1Transport) exchange(ctx context.Context, req *http.Request, body io.ReadCloser, tgt target, deadline time.Time, raw bool) (*http.Response, error) {
	for retried := false; ; retried = true {
		if err := ctx.Err(); err != nil {
			closeReqBody(body)
			return nil, err
		}
		pc, reused, err := t.get(ctx, tgt, deadline)
		if err != nil {
			closeReqBody(body)
			return nil, deadlineErr(deadline, err)
		}
		resp, err := pc.roundTrip(ctx, req, body, tgt.host, deadline, raw)
		if err == nil || errors.Is(err, errRequestBody) {
			return resp, err
		}
		// A connection the endpoint closed while it sat idle fails with an
		// EOF or a reset before any answer byte: the request never reached
		// the application. Send it again on a new connection once, if its
		// body can be sent again (net/http's rule, Request.isReplayable).
		stale := reused && !retried && pc.cr.n == 0 && ctx.Err() == nil &&
			(errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE))
		if !stale || !replayable(req, body) {
			return nil, err
		}
		if hasBody(body) {
			if body, err = req.GetBody(); err != nil {
				return nil, err
			}
		}
	}
}

func hasBody(body io.ReadCloser) bool { return body != nil && body != http.NoBody }

// replayable reports whether a request that may have been sent can be sent
// again, as http.Transport decides: its body can be made again and its
// method is safe, or it carries an idempotency key.
func replayable(req *http.Request, body io.ReadCloser) bool {
	if hasBody(body) && req.GetBody == nil {
		return false
	}
	switch req.Method {
	case "", http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
		return true
	}
	_, k1 := req.Header["Idempotency-Key"]
	_, k2 := req.Header["X-Idempotency-Key"]
	return k1 || k2
}

func closeReqBody(body io.ReadCloser) {
	if body != nil {
		body.Close()
	}
}

// get returns an idle connection to key, or dials one.
func (t *h1Transport) get(ctx context.Context, tgt target, deadline time.Time) (pc *upConn, reused bool, err error) {
	key := tgt.key
	now := time.Now()
	t.mu.Lock()
	if stack := t.idle[key]; len(stack) > 0 {
		pc = stack[len(stack)-1]
		stack[len(stack)-1] = nil
		t.idle[key] = stack[:len(stack)-1]
		if idle := now.Sub(pc.idleAt); idle <= t.idleTimeout {
			t.mu.Unlock()
			// A connection idle for a while may have been closed by the
			// endpoint, some of which first send a 408 that would be read
			// as the answer to the next request: look before using it.
			if idle < t.checkAfter || alive(pc.conn) {
				return pc, true, nil
			}
			pc.conn.Close()
			return t.get(ctx, tgt, deadline)
		}
		// The most recently used is too old, so are the others.
		old := t.idle[key]
		delete(t.idle, key)
		t.mu.Unlock()
		pc.conn.Close()
		for _, o := range old {
			o.conn.Close()
		}
		t.mu.Lock()
	}
	gen := t.gen
	t.mu.Unlock()
	pc, err = t.dial(ctx, tgt, deadline)
	if err != nil {
		return nil, false, err
	}
	pc.gen = gen
	return pc, false, nil
}

func (t *h1Transport) dial(ctx context.Context, tgt target, deadline time.Time) (*upConn, error) {
	d := t.dialer
	d.Deadline = deadline
	conn, err := d.DialContext(ctx, "tcp", tgt.addr)
	if err != nil {
		return nil, err
	}
	conn = rawconn.Wrap(conn)
	pc := &upConn{t: t, key: tgt.key, conn: conn}
	if tgt.tls {
		cfg := &tls.Config{}
		if t.tls != nil {
			cfg = t.tls.Clone()
		}
		if cfg.ServerName == "" {
			host, _, _ := net.SplitHostPort(tgt.addr)
			cfg.ServerName = host
		}
		cfg.NextProtos = []string{"http/1.1"}
		tc := tls.Client(conn, cfg)
		hctx, cancel := context.WithTimeout(ctx, t.handshake)
		err := tc.HandshakeContext(hctx)
		cancel()
		if err != nil {
			conn.Close()
			return nil, err
		}
		cs := tc.ConnectionState()
		pc.conn, pc.tls = tc, &cs
	}
	pc.cr.r = pc.conn
	pc.interrupt = func() { _ = pc.conn.SetDeadline(aLongTimeAgo) }
	pc.br = bufio.NewReaderSize(&pc.cr, 4<<10)
	pc.bw = bufio.NewWriterSize(pc.conn, 4<<10)
	return pc, nil
}

// alive reports whether nothing, not even an end, has arrived on an idle
// connection: a non-blocking peek, one system call, no data consumed.
func alive(c net.Conn) bool {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	sc, ok := c.(syscall.Conn)
	if !ok {
		return true
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	ok = false
	var b [1]byte
	err = rc.Read(func(fd uintptr) bool {
		_, _, rerr := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		ok = errors.Is(rerr, syscall.EAGAIN) // data or an end would not block
		return true                          // never wait
	})
	return err == nil && ok
}

// put keeps pc for reuse, or closes it.
func (t *h1Transport) put(pc *upConn) {
	pc.idleAt = time.Now()
	t.mu.Lock()
	if pc.gen != t.gen || len(t.idle[pc.key]) >= t.maxIdle {
		t.mu.Unlock()
		pc.conn.Close()
		return
	}
	t.idle[pc.key] = append(t.idle[pc.key], pc)
	t.mu.Unlock()
}

// CloseIdleConnections closes the idle connections; those in use are closed
// when their exchange ends instead of being kept.
func (t *h1Transport) CloseIdleConnections() {
	t.mu.Lock()
	idle := t.idle
	t.idle = map[string][]*upConn{}
	t.gen++
	t.mu.Unlock()
	for _, stack := range idle {
		for _, pc := range stack {
			pc.conn.Close()
		}
	}
}

// roundTrip writes req with body and reads its answer on pc. On error pc
// is closed.
func (pc *upConn) roundTrip(ctx context.Context, req *http.Request, body io.ReadCloser, host string, deadline time.Time, raw bool) (*http.Response, error) {
	stop := func() bool { return true }
	if ctx.Done() != nil {
		stop = context.AfterFunc(ctx, pc.interrupt)
	}
	if !deadline.IsZero() {
		_ = pc.conn.SetDeadline(deadline)
	}
	pc.cr.n = 0
	werr := writeRequest(pc.bw, req, body, host)
	if werr == nil {
		werr = pc.bw.Flush()
	}
	if errors.Is(werr, errRequestBody) {
		// The caller's body failed: the endpoint has part of a request and
		// would wait for the rest, so there is no answer to wait for.
		stop()
		pc.conn.Close()
		return nil, werr
	}
	// Read the answer even when writing failed: an endpoint may answer
	// early (413, 401) and close without reading the whole body.
	var resp *http.Response
	var rerr error
	if raw {
		resp, rerr = pc.readRawResponse(req)
	} else {
		resp, rerr = pc.readResponse(req)
	}
	if rerr != nil {
		stop()
		pc.conn.Close()
		switch {
		case werr != nil && pc.cr.n == 0:
			rerr = werr
		case errors.Is(rerr, io.ErrUnexpectedEOF) && pc.cr.n == 0:
			// ReadResponse reports a connection closed before the first
			// byte as unexpected; for the retry rules it is an EOF with
			// no answer (connectionFailure).
			rerr = errClosedBeforeAnswer
		}
		return nil, deadlineErr(deadline, ctxErr(ctx, rerr))
	}
	reuse := werr == nil && !resp.Close && !req.Close && resp.StatusCode != http.StatusSwitchingProtocols
	if pc.tls != nil {
		resp.TLS = pc.tls
	}
	b := &upBody{pc: pc, ctx: ctx, stop: stop, body: resp.Body, reuse: reuse, deadline: deadline}
	if raw {
		// The body is read from the connection directly. The head stays
		// valid until the body ends: only then is the connection put back.
		b.rd.init(pc.br, pc.head.body, pc.head.chunked)
		b.body, b.head = &b.rd, &pc.head
		resp.Body = b
		return resp, nil
	}
	if resp.Body == http.NoBody || resp.Body == nil {
		b.finish(true)
		resp.Body = http.NoBody
		return resp, nil
	}
	resp.Body = b
	return resp, nil
}

// readResponse reads the final answer, skipping informational ones.
func (pc *upConn) readResponse(req *http.Request) (*http.Response, error) {
	for range 5 {
		resp, err := http.ReadResponse(pc.br, req)
		if err != nil {
			return nil, err
		}
		if resp.StatusCode < 100 || resp.StatusCode > 199 || resp.StatusCode == http.StatusSwitchingProtocols {
			return resp, nil
		}
	}
	return nil, errors.New("router: too many 1xx answers")
}

// readRawResponse reads the final answer's head into pc.head, skipping
// informational ones, and returns it as a response without a Header.
func (pc *upConn) readRawResponse(req *http.Request) (*http.Response, error) {
	h := &pc.head
	for range 5 {
		head, buffered, err := readHead(pc.br, maxResponseHead)
		if err != nil {
			// As ReadResponse: an end before the status line is unexpected.
			return nil, unexpectedEOF(err)
		}
		err = parseResponseHead(head, req.Method, h)
		if buffered {
			_, _ = pc.br.Discard(len(head))
		}
		if err != nil {
			return nil, err
		}
		if h.status/100 == 1 && h.status != http.StatusSwitchingProtocols {
			continue
		}
		resp := &http.Response{Status: statusLine(h.status), StatusCode: h.status, Proto: "HTTP/1.1", ProtoMajor: 1,
			ProtoMinor: h.minor, ContentLength: h.body, Close: h.close, Request: req}
		if h.minor == 0 {
			resp.Proto = "HTTP/1.0"
		}
		if h.chunked {
			resp.TransferEncoding = chunkedEncoding
		}
		if req.Method == http.MethodHead {
			resp.ContentLength = h.length
		}
		return resp, nil
	}
	return nil, errors.New("router: too many 1xx answers")
}

// statusLine returns Response.Status for code ("200 OK") without building
// it per answer.
func statusLine(code int) string {
	if code >= 0 && code < len(statusLines) && statusLines[code] != "" {
		return statusLines[code]
	}
	return strconv.Itoa(code) + " " + http.StatusText(code)
}

var statusLines = func() (t [600]string) {
	for c := range t {
		if text := http.StatusText(c); text != "" {
			t[c] = strconv.Itoa(c) + " " + text
		}
	}
	return t
}()

// ctxErr returns ctx's error, wrapping the I/O error it caused, once ctx
// ended: the caller tells a timeout (context.DeadlineExceeded) from a
// connection failure as it would with http.Transport.
func ctxErr(ctx context.Context, err error) error {
	if cerr := ctx.Err(); cerr != nil {
		return fmt.Errorf("%w (%w)", cerr, err)
	}
	return err
}

// deadlineErr wraps context.DeadlineExceeded around an error that the
// passing of deadline caused.
func deadlineErr(deadline time.Time, err error) error {
	if deadline.IsZero() || errors.Is(err, context.DeadlineExceeded) || time.Now().Before(deadline) {
		return err
	}
	var ne net.Error
	if errors.Is(err, os.ErrDeadlineExceeded) || errors.As(err, &ne) && ne.Timeout() {
		return fmt.Errorf("%w (%w)", context.DeadlineExceeded, err)
	}
	return err
}

// upBody is an answer's body: read to its end, it gives the connection back
// to the pool; closed before, it closes the connection.
type upBody struct {
	pc       *upConn
	ctx      context.Context
	stop     func() bool
	body     io.Reader // net/http's body, or rd
	rd       bodyReader
	head     *respHead // the answer's head when read raw
	reuse    bool
	deadline time.Time // the exchange's, cleared from the connection before reuse

	mu   sync.Mutex
	done bool
}

func (b *upBody) Read(p []byte) (int, error) {
	b.mu.Lock()
	done := b.done
	b.mu.Unlock()
	if done {
		return 0, http.ErrBodyReadAfterClose
	}
	n, err := b.body.Read(p)
	switch {
	case err == io.EOF:
		b.finish(true)
	case err != nil:
		b.finish(false)
		err = deadlineErr(b.deadline, ctxErr(b.ctx, err))
	}
	return n, err
}

// rawHead returns the answer's head when it was read raw, else nil. It is
// valid until the body is read to its end or closed.
func (b *upBody) rawHead() *respHead { return b.head }

// Close implements io.Closer. It does not drain what is left (a slow or
// endless body would block): the connection is closed instead.
func (b *upBody) Close() error {
	b.finish(false)
	return nil
}

// finish ends the exchange once: the connection goes back to the pool when
// the body was read to its end and the exchange allows it.
func (b *upBody) finish(eof bool) {
	b.mu.Lock()
	if b.done {
		b.mu.Unlock()
		return
	}
	b.done = true
	b.mu.Unlock()
	// stop reports false once the context's hook ran or is running: the
	// connection's deadline is then in the past.
	if b.stop() && eof && b.reuse && (b.deadline.IsZero() || b.pc.conn.SetDeadline(time.Time{}) == nil) {
		b.pc.t.put(b.pc)
		return
	}
	b.pc.conn.Close()
}

// writeRequest writes req's request line and header for host, then body,
// framed by req.ContentLength: a length when it is positive, chunked when
// there is a body of unknown length. It follows Request.Write (which it
// replaces to spare a copy of the request per attempt): the same default
// User-Agent, "Content-Length: 0" for an empty POST, PUT or PATCH, and no
// Host, Content-Length, Transfer-Encoding or Trailer field taken from the
// header. body is closed. An error reading body wraps errRequestBody.
func writeRequest(bw *bufio.Writer, req *http.Request, body io.ReadCloser, host string) (err error) {
	defer closeReqBody(body)
	method := req.Method
	if method == "" {
		method = http.MethodGet
	}
	if !validFieldName(method) {
		return fmt.Errorf("router: invalid method %q", method)
	}
	if host == "" || strings.ContainsAny(host, " \t\r\n") {
		return fmt.Errorf("router: invalid host %q", host)
	}
	uri := req.URL.RequestURI()
	if strings.ContainsAny(uri, " \r\n") {
		return fmt.Errorf("router: invalid request target %q", uri)
	}
	_, _ = bw.WriteString(method)
	_ = bw.WriteByte(' ')
	_, _ = bw.WriteString(uri)
	_, _ = bw.WriteString(" HTTP/1.1\r\nHost: ")
	_, _ = bw.WriteString(host)
	_, _ = bw.WriteString("\r\n")
	if _, ok := req.Header["User-Agent"]; !ok {
		_, _ = bw.WriteString("User-Agent: Go-http-client/1.1\r\n")
	}
	for k, vs := range req.Header {
		switch k {
		case "Host", "Content-Length", "Transfer-Encoding", "Trailer":
			continue
		}
		if !validFieldName(k) {
			return fmt.Errorf("router: invalid header field name %q", k)
		}
		for _, v := range vs {
			if k == "User-Agent" && v == "" {
				continue // an empty User-Agent means none
			}
			writeField(bw, k, v)
		}
	}
	chunked := false
	switch {
	case !hasBody(body):
		switch method {
		case http.MethodPost, http.MethodPut, http.MethodPatch:
			_, _ = bw.WriteString("Content-Length: 0\r\n")
		}
	case req.ContentLength > 0:
		_, _ = bw.WriteString("Content-Length: ")
		_, _ = bw.Write(strconv.AppendInt(bw.AvailableBuffer(), req.ContentLength, 10))
		_, _ = bw.WriteString("\r\n")
	default:
		chunked = true
		_, _ = bw.WriteString("Transfer-Encoding: chunked\r\n")
	}
	if req.Close {
		_, _ = bw.WriteString("Connection: close\r\n")
	}
	if _, err := bw.WriteString("\r\n"); err != nil {
		return err
	}
	if !hasBody(body) {
		return nil
	}
	src := &srcReader{r: body}
	defer func() {
		if src.err != nil {
			err = fmt.Errorf("%w: %w", errRequestBody, src.err)
		}
	}()
	if chunked {
		cw := httputil.NewChunkedWriter(bw)
		b := copyBufs.Get().(*[]byte)
		_, err = io.CopyBuffer(cw, src, *b)
		copyBufs.Put(b)
		if err != nil {
			return err
		}
		if err := cw.Close(); err != nil {
			return err
		}
		_, err = bw.WriteString("\r\n") // no trailer
		return err
	}
	n, err := bw.ReadFrom(io.LimitReader(src, req.ContentLength))
	if err == nil && n < req.ContentLength {
		src.err = fmt.Errorf("%d bytes, %d declared", n, req.ContentLength)
	}
	return err
}

// errRequestBody is a request body that could not be read: the caller's
// fault (400), never a reason to try another endpoint.
var errRequestBody = errors.New("router: reading the request body")

// srcReader keeps the error of the reader it wraps, so that a failure of
// the body can be told from a failure of the connection it is sent on.
type srcReader struct {
	r   io.Reader
	err error
}

func (s *srcReader) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	if err != nil && err != io.EOF {
		s.err = err
	}
	return n, err
}

// writeField writes one header field, with CR and LF in the value turned
// into spaces as net/http does, so that no value can add a field.
func writeField(bw *bufio.Writer, k, v string) {
	_, _ = bw.WriteString(k)
	_, _ = bw.WriteString(": ")
	if strings.ContainsAny(v, "\r\n") {
		v = strings.NewReplacer("\r", " ", "\n", " ").Replace(v)
	}
	_, _ = bw.WriteString(strings.TrimSpace(v))
	_, _ = bw.WriteString("\r\n")
}
