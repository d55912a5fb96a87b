package router

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/weft-dev/weft/internal/rawconn"
)

// h1Server serves an http.Handler over HTTP/1.1 with one goroutine per
// connection and none per request. net/http's Server starts a goroutine per
// request to watch the connection while the handler runs, and a keep-alive
// exchange through it costs about twice the CPU of this loop on a proxy hop
// (issue 5, goal 6). Requests are parsed by parseRequest (h1parse.go):
// net/http's rules, stricter on framing. Answers are framed here: the
// handler's Content-Length when it sets one, else the length of a small
// answer that ended before 4 KiB, else chunked (HTTP/1.1) or
// close-delimited (HTTP/1.0).
//
// Differences from net/http's Server, on purpose: a request's context is
// not cancelled when the client goes away mid-request (no reader watches
// the connection while the handler runs; the router's own timeouts bound a
// call); no HTTP/2, no trailers, no Content-Type sniffing; HTTP/1.0
// connections close after one answer. Hijack is supported (websocket
// upgrades through the pass-through proxy).
type h1Server struct {
	handler           http.Handler
	readHeaderTimeout time.Duration // from the first byte of a request to the end of its header
	log               *slog.Logger
	// maxHeader bounds a request's header; beyond it the answer is 431.
	maxHeader int
	// idleTimeout, when set, closes a keep-alive connection that waited
	// that long for its next request (idleSweep).
	idleTimeout time.Duration
	// elsewhere, when set, picks the requests served by another server:
	// handOff gives that server the connection, the request's head
	// included, for the rest of its life.
	elsewhere func(*http.Request) bool
	handOff   func(net.Conn) bool

	ln       net.Listener
	ctx      context.Context // parent of every request's context
	cancel   context.CancelFunc
	shutting atomic.Bool
	wg       sync.WaitGroup // connection goroutines
	stop     chan struct{}  // closed by Shutdown
	stopOnce sync.Once
	sweeper  sync.WaitGroup // idleSweep
	mu       sync.Mutex
	conns    map[*srvConn]struct{}
}

// Connection states, for Shutdown: an idle connection waits for a request
// and may be closed; an active one finishes its request first.
const (
	connActive int32 = iota
	connIdle
	connClosed
)

// maxHeaderBytes bounds a request's header by default, as net/http's default
// MaxHeaderBytes does.
const maxHeaderBytes = 1 << 20

// noLimit lifts the header bound while a body is read.
const noLimit = 1 << 62

// maxDrain is how much of a request body the handler left unread is read
// and thrown away to keep the connection; beyond it the connection closes.
const maxDrain = 256 << 10

// errServerClosed is Serve's error after Shutdown, as net/http's.
var errServerClosed = http.ErrServerClosed

func newH1Server(h http.Handler, readHeaderTimeout time.Duration, log *slog.Logger) *h1Server {
	ctx, cancel := context.WithCancel(context.Background())
	return &h1Server{handler: h, readHeaderTimeout: readHeaderTimeout, maxHeader: maxHeaderBytes, log: log, ctx: ctx, cancel: cancel, stop: make(chan struct{}), conns: map[*srvConn]struct{}{}}
}

// Serve accepts connections on ln until Shutdown, then returns
// http.ErrServerClosed.
func (s *h1Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	s.ln = ln
	if s.shutting.Load() {
		s.mu.Unlock()
		ln.Close()
		return errServerClosed
	}
	if s.idleTimeout > 0 {
		// Under s.mu: a Shutdown that began after the check above waits
		// for it.
		s.sweeper.Go(s.idleSweep) // owned: s.sweeper; Shutdown closes s.stop and waits
	}
	s.mu.Unlock()
	var backoff time.Duration
	for {
		conn, err := ln.Accept()
		if err != nil {
			if s.shutting.Load() {
				return errServerClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
				// Out of descriptors or a transient failure: wait, as
				// net/http does, instead of spinning.
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.log.Debug("accept failed; retrying", "err", err, "in", backoff)
				time.Sleep(backoff)
				continue
			}
			return err
		}
		backoff = 0
		c := &srvConn{s: s, conn: rawconn.Wrap(conn), remote: conn.RemoteAddr().String()}
		c.state.Store(connActive)
		s.mu.Lock()
		if s.shutting.Load() {
			s.mu.Unlock()
			conn.Close()
			continue
		}
		s.conns[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go c.serve() // owned: s.wg, waited for by Shutdown
	}
}

// idleSweep closes connections that waited longer than idleTimeout for a
// request, checking a quarter of idleTimeout apart. A sweep instead of a
// read deadline per request: that would cost two timer updates per request.
func (s *h1Server) idleSweep() {
	t := time.NewTicker(s.idleTimeout / 4)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case now := <-t.C:
			limit := now.Add(-s.idleTimeout).UnixNano()
			s.mu.Lock()
			for c := range s.conns {
				if c.idleSince.Load() < limit {
					c.closeIfIdle()
				}
			}
			s.mu.Unlock()
		}
	}
}

// Shutdown stops accepting, closes idle connections and waits for active
// ones to finish their request. When ctx ends first, it cancels the
// requests' contexts, closes every connection and waits for their
// goroutines.
func (s *h1Server) Shutdown(ctx context.Context) error {
	s.shutting.Store(true)
	s.stopOnce.Do(func() { close(s.stop) })
	defer s.sweeper.Wait()
	s.mu.Lock()
	if s.ln != nil {
		s.ln.Close()
	}
	for c := range s.conns {
		c.closeIfIdle()
	}
	s.mu.Unlock()
	done := make(chan struct{})
	var waiter sync.WaitGroup
	waiter.Go(func() { s.wg.Wait(); close(done) })
	defer waiter.Wait()
	select {
	case <-done:
		s.cancel()
		return nil
	case <-ctx.Done():
	}
	s.cancel()
	s.mu.Lock()
	for c := range s.conns {
		c.conn.Close()
	}
	s.mu.Unlock()
	<-done
	return ctx.Err()
}

// srvConn is one client connection.
type srvConn struct {
	s      *h1Server
	ctx    context.Context // the requests' context: ends with the connection or a forced shutdown
	cancel context.CancelFunc
	conn   net.Conn
	remote string
	state  atomic.Int32
	// idleSince is when the connection began to wait for a request (Unix
	// nanoseconds); read by idleSweep, which acts only on idle ones.
	idleSince atomic.Int64
	// deadlines: the handler set a read or write deadline
	// (http.ResponseController), cleared once its request is done.
	readDeadline, writeDeadline bool
	lr                          io.LimitedReader // bounds a request's header to s.maxHeader
	base                        *http.Request    // every request starts as a copy: the context and remote address
	br                          *bufio.Reader
	bw                          *bufio.Writer
	w                           respWriter // reused for every request of the connection
	hijacked                    bool
}

// closeIfIdle closes the connection if it waits for a request.
func (c *srvConn) closeIfIdle() {
	if c.state.CompareAndSwap(connIdle, connClosed) {
		_ = c.conn.SetReadDeadline(aLongTimeAgo) // wakes the read; serve closes
	}
}

func (c *srvConn) serve() {
	defer func() {
		s := c.s
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		if !c.hijacked {
			c.conn.Close()
		}
		s.wg.Done()
	}()
	c.ctx, c.cancel = context.WithCancel(c.s.ctx)
	defer c.cancel()
	c.lr = io.LimitedReader{R: c.conn, N: noLimit}
	c.br = bufio.NewReaderSize(&c.lr, 4<<10)
	c.bw = bufio.NewWriterSize(c.conn, 4<<10)
	c.w.header = http.Header{}
	c.base = (&http.Request{RemoteAddr: c.remote}).WithContext(c.ctx)
	for {
		c.lr.N = int64(c.s.maxHeader) + 4<<10 // what bufio may read ahead
		if c.br.Buffered() == 0 {
			// Wait for the next request with no deadline: a keep-alive
			// connection may idle as long as its client likes, or until
			// idleSweep closes it.
			if c.s.idleTimeout > 0 {
				c.idleSince.Store(time.Now().UnixNano())
			}
			c.state.Store(connIdle)
			if c.s.shutting.Load() {
				return
			}
			if _, err := c.br.Peek(1); err != nil {
				return
			}
			if !c.state.CompareAndSwap(connIdle, connActive) {
				return // Shutdown closed it
			}
		}
		// A header that arrived whole (the usual case) needs no deadline;
		// setting and clearing one costs two timer updates per request.
		timed := c.s.readHeaderTimeout > 0 && !headerBuffered(c.br)
		if timed {
			_ = c.conn.SetReadDeadline(time.Now().Add(c.s.readHeaderTimeout))
		}
		req, head, err := c.readRequest()
		if err != nil {
			c.badRequest(err)
			return
		}
		c.lr.N = noLimit
		if timed {
			_ = c.conn.SetReadDeadline(time.Time{})
		}
		if c.s.elsewhere != nil && c.s.elsewhere(req) {
			c.giveAway(head)
			return
		}
		if !c.handle(req) || c.s.shutting.Load() {
			return
		}
	}
}

// headerBuffered reports whether br holds a whole request head.
func headerBuffered(br *bufio.Reader) bool {
	b, _ := br.Peek(br.Buffered())
	end, _ := headEnd(b, 0)
	return end > 0
}

// readRequest reads the next request and returns it with its head. The
// head is one string that the request line and every value are cut from;
// the body, if any, is read from c.br through a reqBody.
func (c *srvConn) readRequest() (*http.Request, string, error) {
	head, buffered, err := readHead(c.br, c.s.maxHeader)
	if err != nil {
		return nil, "", err
	}
	s := string(head)
	if buffered {
		_, _ = c.br.Discard(len(head))
	}
	req, chunked, err := parseRequest(s, c.base)
	if err != nil {
		return nil, "", err
	}
	req.Body = http.NoBody
	if chunked || req.ContentLength > 0 {
		b := &reqBody{}
		b.r.init(c.br, req.ContentLength, chunked)
		req.Body = b
	}
	return req, s, nil
}

// giveAway hands the connection to the server of requests picked by
// elsewhere: it reads head, then what c.br holds, then the connection.
func (c *srvConn) giveAway(head string) {
	c.hijacked = true // serve's return leaves the connection open
	hc := &handedConn{Conn: c.conn, r: io.MultiReader(strings.NewReader(head), c.br)}
	if !c.s.handOff(hc) {
		c.conn.Close()
	}
}

// handedConn is a connection given away with bytes already read from it.
type handedConn struct {
	net.Conn
	r io.Reader
}

func (c *handedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// badRequest answers a request that could not be parsed, when the client
// sent something: 400, or the status the parser chose (431, 501, 505).
func (c *srvConn) badRequest(err error) {
	status := http.StatusBadRequest
	var pe *parseError
	var ne net.Error
	switch {
	case c.lr.N == 0:
		status = http.StatusRequestHeaderFieldsTooLarge
	case errors.As(err, &pe):
		status = pe.status
	case errors.Is(err, io.EOF), errors.Is(err, net.ErrClosed), errors.As(err, &ne) && ne.Timeout():
		return
	}
	c.s.log.Debug("bad request", "remote", c.remote, "err", err)
	text := strconv.Itoa(status) + " " + http.StatusText(status)
	_ = c.conn.SetWriteDeadline(time.Now().Add(time.Second))
	_, _ = io.WriteString(c.conn, "HTTP/1.1 "+text+"\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n"+text)
}

// handle serves one request and reports whether the connection can carry
// another.
func (c *srvConn) handle(req *http.Request) (keep bool) {
	body, _ := req.Body.(*reqBody) // the handler may replace req.Body
	c.w.reset(c, req)
	if ex, ok := req.Header["Expect"]; ok {
		delete(req.Header, "Expect")
		if len(ex) != 1 || !strings.EqualFold(ex[0], "100-continue") {
			c.w.closeAfter = true
			http.Error(&c.w, "unsupported Expect header", http.StatusExpectationFailed)
			c.w.finish()
			_ = c.bw.Flush()
			return false
		}
		if body != nil && req.ProtoAtLeast(1, 1) {
			// Continue at once, as a proxy that reads the body before it
			// picks an endpoint: the endpoint never sees the Expect.
			_, _ = c.bw.WriteString("HTTP/1.1 100 Continue\r\n\r\n")
			if err := c.bw.Flush(); err != nil {
				return false
			}
		}
	}
	if !c.serveHandler(req) {
		return false // the handler panicked or hijacked the connection
	}
	w := &c.w
	if body != nil && !body.finish() {
		w.closeAfter = true // the rest of the body would have to be read first
	}
	w.finish()
	if err := c.bw.Flush(); err != nil {
		return false
	}
	if c.readDeadline {
		c.readDeadline = false
		_ = c.conn.SetReadDeadline(time.Time{})
	}
	if c.writeDeadline {
		c.writeDeadline = false
		_ = c.conn.SetWriteDeadline(time.Time{})
	}
	return !w.closeAfter && !req.Close && req.ProtoAtLeast(1, 1)
}

// serveHandler runs the handler; false when it panicked (the connection is
// dropped, as net/http does) or hijacked the connection.
func (c *srvConn) serveHandler(req *http.Request) (ok bool) {
	defer func() {
		if v := recover(); v != nil {
			ok = false
			if v != http.ErrAbortHandler {
				buf := make([]byte, 16<<10)
				buf = buf[:runtime.Stack(buf, false)]
				c.s.log.Error("panic serving a request", "remote", c.remote, "panic", fmt.Sprint(v), "stack", string(buf))
			}
		}
	}()
	c.s.handler.ServeHTTP(&c.w, req)
	return !c.hijacked
}

// reqBody is a request's body. The handler cannot read it once it
// returned (a goroutine it started may still hold it), Close does not drain
// it (finish does, within maxDrain), and it is safe for concurrent use, as
// net/http's is: http.Transport may still read it on its own goroutine
// while the handler returns.
type reqBody struct {
	mu   sync.Mutex
	r    bodyReader
	done bool
}

func (b *reqBody) Read(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.done {
		return 0, http.ErrBodyReadAfterClose
	}
	return b.r.Read(p)
}

// Close implements io.Closer; what is left is drained (or not) by finish.
func (b *reqBody) Close() error { return nil }

// finish ends the body once the handler returned and reports whether the
// connection can carry another request: the body was read to its end, or
// what was left was short enough to read now.
func (b *reqBody) finish() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.done = true
	switch b.r.err {
	case io.EOF:
		return true
	case nil:
		n, err := io.CopyN(io.Discard, &b.r, maxDrain+1)
		return err == io.EOF && n <= maxDrain
	}
	return false
}
