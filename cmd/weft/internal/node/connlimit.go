package node

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// refusedBody and refusedResponse answer a connection beyond the limit: a
// status a client understands and retries, rather than a reset or a hang in
// the accept queue.
const refusedBody = `{"error":"too many connections: retry in a second"}` + "\n"

var refusedResponse = "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Type: application/json\r\n" +
	"Connection: close\r\nContent-Length: " + strconv.Itoa(len(refusedBody)) + "\r\n\r\n" + refusedBody

// maxRefusing bounds the goroutines answering refused connections at once;
// beyond it a refused connection is closed without an answer.
const maxRefusing = 1024

// LimitConnections returns a listener that keeps at most max connections
// open: each one holds buffers and a goroutine in net/http, so the limit is
// what bounds the node's memory under a flood of clients. A connection
// beyond it is answered 503 with Retry-After and closed; refused is called
// for each (it must be cheap and safe for concurrent use).
func LimitConnections(ln net.Listener, max int, refused func()) net.Listener {
	return &connLimiter{Listener: ln, slots: make(chan struct{}, max), refusing: make(chan struct{}, maxRefusing), refused: refused}
}

type connLimiter struct {
	net.Listener
	slots    chan struct{}
	refusing chan struct{}
	refused  func()
}

func (l *connLimiter) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		select {
		case l.slots <- struct{}{}:
			return &limitedConn{Conn: c, release: sync.OnceFunc(func() { <-l.slots })}, nil
		default:
			l.refused()
			l.refuse(c)
		}
	}
}

// refuse reads the request's headers, answers 503 and closes c, draining
// what the client still sends so that the close does not turn into a reset
// that destroys the answer.
func (l *connLimiter) refuse(c net.Conn) {
	select {
	case l.refusing <- struct{}{}:
	default:
		c.Close()
		return
	}
	go func() { // owned by the deadline: it ends within a second
		defer func() { <-l.refusing }()
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(time.Second))
		// Answer after the request's headers: an answer that comes before the
		// request is not one to an HTTP client.
		req, err := http.ReadRequest(bufio.NewReaderSize(c, 4<<10))
		if err != nil {
			return
		}
		_ = req.Body.Close()
		if _, err := io.WriteString(c, refusedResponse); err != nil {
			return
		}
		if cw, ok := c.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		}
		_, _ = io.Copy(io.Discard, io.LimitReader(c, 64<<10))
	}()
}

type limitedConn struct {
	net.Conn
	release func()
}

func (c *limitedConn) Close() error {
	c.release()
	return c.Conn.Close()
}
