package rawconn

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"testing"
	"time"
)

// pair returns a wrapped client connection and the server's end, over
// loopback TCP.
func pair(t *testing.T) (*Conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() { // owned: ends with Accept, which the deferred Close bounds
		c, _ := ln.Accept()
		accepted <- c
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	srv := <-accepted
	if srv == nil {
		t.Fatal("accept failed")
	}
	rc, ok := Wrap(c).(*Conn)
	if !ok {
		t.Fatalf("Wrap(%T) is not a *Conn", c)
	}
	t.Cleanup(func() { rc.Close(); srv.Close() })
	return rc, srv
}

func TestWrapLeavesOtherConnsAlone(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if got := Wrap(a); got != a {
		t.Fatalf("Wrap(net.Pipe) = %T, want the pipe itself", got)
	}
}

// A write larger than the socket buffers waits for the reader (EAGAIN, then
// the poller) and arrives whole, in both directions at once.
func TestLargeWritesBothWays(t *testing.T) {
	c, srv := pair(t)
	out := bytes.Repeat([]byte("0123456789abcdef"), 1<<18) // 4 MiB
	in := bytes.Repeat([]byte("fedcba9876543210"), 1<<18)
	var wg sync.WaitGroup
	var gotByServer, gotByClient []byte
	var errs [4]error
	wg.Go(func() { _, errs[0] = c.Write(out) })
	wg.Go(func() { gotByServer, errs[1] = io.ReadAll(io.LimitReader(srv, int64(len(out)))) })
	wg.Go(func() { _, errs[2] = srv.Write(in) })
	wg.Go(func() { gotByClient, errs[3] = io.ReadAll(io.LimitReader(c, int64(len(in)))) })
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
	}
	if !bytes.Equal(gotByServer, out) || !bytes.Equal(gotByClient, in) {
		t.Fatalf("bytes differ: server got %d of %d, client %d of %d", len(gotByServer), len(out), len(gotByClient), len(in))
	}
}

func TestReadEOFAfterPeerCloses(t *testing.T) {
	c, srv := pair(t)
	if _, err := srv.Write([]byte("bye")); err != nil {
		t.Fatal(err)
	}
	srv.Close()
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "bye" {
		t.Fatalf("ReadAll = %q, %v; want \"bye\", nil (EOF)", got, err)
	}
	if n, err := c.Read(make([]byte, 8)); n != 0 || err != io.EOF {
		t.Fatalf("Read after EOF = %d, %v; want 0, io.EOF", n, err)
	}
}

func TestReadDeadline(t *testing.T) {
	c, _ := pair(t)
	if err := c.SetReadDeadline(time.Now().Add(20 * time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	_, err := c.Read(make([]byte, 8))
	var ne net.Error
	if !errors.Is(err, os.ErrDeadlineExceeded) || !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("Read past its deadline: %v; want a timeout", err)
	}
	var oe *net.OpError
	if !errors.As(err, &oe) || oe.Op != "read" {
		t.Fatalf("error %v: want a *net.OpError of op read", err)
	}
}

func TestReadAfterCloseAndWriteToResetPeer(t *testing.T) {
	c, srv := pair(t)
	// The peer closes with unread data: its kernel resets the connection,
	// and writes fail instead of raising SIGPIPE.
	if _, err := c.Write([]byte("unread")); err != nil {
		t.Fatal(err)
	}
	if tc, ok := srv.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	srv.Close()
	var err error
	deadline := time.Now().Add(10 * time.Second)
	for err == nil && time.Now().Before(deadline) {
		_, err = c.Write(make([]byte, 64<<10))
	}
	var oe *net.OpError
	if err == nil || !errors.As(err, &oe) || oe.Op != "write" {
		t.Fatalf("write to a reset peer: %v; want a *net.OpError of op write", err)
	}
	c.Close()
	if _, err := c.Read(make([]byte, 8)); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Read after Close: %v; want net.ErrClosed", err)
	}
}

func TestEmptyReadAndWrite(t *testing.T) {
	c, _ := pair(t)
	if n, err := c.Read(nil); n != 0 || err != nil {
		t.Fatalf("Read(nil) = %d, %v", n, err)
	}
	if n, err := c.Write(nil); n != 0 || err != nil {
		t.Fatalf("Write(nil) = %d, %v", n, err)
	}
}
