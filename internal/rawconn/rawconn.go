// Package rawconn reads and writes TCP connections with raw system calls.
//
// Go's net package makes each read and write a blocking system call as far as
// the scheduler knows: before it, the runtime wakes its monitor thread
// (sysmon) if it sleeps, so that the processor can be handed to another thread
// should the call block; a write longer than 20 µs has its processor taken
// away and must get one back. Socket descriptors are non-blocking, so their
// calls never block, and on loopback a write costs 10–20 µs (the receiver's
// side runs in it). At one connection, with the process idle between
// requests, waking sysmon alone was 5.5 % of the router's CPU. A raw system
// call skips that bookkeeping; a call that would block (EAGAIN) waits in the
// network poller as net's own do, deadlines included.
package rawconn

import (
	"io"
	"net"
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Conn is a *net.TCPConn whose Read and Write are raw system calls. Every
// other method is the TCPConn's.
type Conn struct {
	*net.TCPConn
	rc syscall.RawConn
}

// Wrap returns c as a *Conn when it is a *net.TCPConn, else c itself.
func Wrap(c net.Conn) net.Conn {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return c
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return c
	}
	return &Conn{TCPConn: tc, rc: rc}
}

// Read reads as net.Conn's Read does: io.EOF at the end of the stream, a
// *net.OpError otherwise (timeouts and net.ErrClosed among them).
func (c *Conn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	var n int
	var errno syscall.Errno
	err := c.rc.Read(func(fd uintptr) bool {
		for {
			r, _, e := unix.RawSyscall(unix.SYS_READ, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
			switch e {
			case 0:
				n = int(r)
				return true
			case unix.EINTR:
				continue
			case unix.EAGAIN:
				return false // wait until readable
			default:
				errno = e
				return true
			}
		}
	})
	switch {
	case err != nil:
		return 0, c.opError("read", err)
	case errno != 0:
		return 0, c.opError("read", os.NewSyscallError("read", errno))
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// Write writes all of p, waiting in the poller while the socket's buffer is
// full, as net.Conn's Write does.
func (c *Conn) Write(p []byte) (int, error) {
	var n int
	var errno syscall.Errno
	err := c.rc.Write(func(fd uintptr) bool {
		for n < len(p) {
			r, _, e := unix.RawSyscall(unix.SYS_WRITE, fd, uintptr(unsafe.Pointer(&p[n])), uintptr(len(p)-n))
			switch e {
			case 0:
				n += int(r)
			case unix.EINTR:
			case unix.EAGAIN:
				return false // wait until writable
			default:
				errno = e
				return true
			}
		}
		return true
	})
	switch {
	case err != nil:
		return n, c.opError("write", err)
	case errno != 0:
		return n, c.opError("write", os.NewSyscallError("write", errno))
	}
	return n, nil
}

// opError gives err the shape net's own errors have; RawConn's are
// *net.OpError already, named "raw-read" or "raw-write".
func (c *Conn) opError(op string, err error) error {
	if oe, ok := err.(*net.OpError); ok {
		oe.Op = op
		return oe
	}
	return &net.OpError{Op: op, Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
}
