package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"
)

// The HTTP ceiling of `weft bench ingest` is a bare Go server answering 202.
// It runs in two places: in the bench's own process, where one Go scheduler
// runs the client and the server and hands each request between them without
// the kernel, and in a process of its own, reached over loopback as a node
// is, where the two processes share the CPUs through the kernel's scheduler.
// The first is the higher ceiling; the second is the one a server can
// reach, and the like-for-like reference for a node.

// referenceHandler reads each body and answers 202.
func referenceHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.WriteHeader(http.StatusAccepted)
	})
}

// serveReference serves referenceHandler on ln until stop is called, which
// waits for it.
func serveReference(ln net.Listener) (stop func()) {
	srv := &http.Server{Handler: referenceHandler(), ReadHeaderTimeout: 10 * time.Second}
	var wg sync.WaitGroup
	wg.Go(func() { _ = srv.Serve(ln) }) // returns ErrServerClosed on Close
	return func() {
		_ = srv.Close()
		wg.Wait()
	}
}

// startReference starts the HTTP ceiling in this process on 127.0.0.1:0. It
// returns its base URL and a function that stops it and waits for it.
func startReference() (string, func(), error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, fmt.Errorf("reference server: %w", err)
	}
	return "http://" + ln.Addr().String(), serveReference(ln), nil
}

// newBenchHTTPReferenceCmd is the HTTP ceiling in a process of its own:
// `weft bench ingest` runs it as a child.
func newBenchHTTPReferenceCmd() *cobra.Command {
	var addr string
	cmd := &cobra.Command{
		Use:    "http-reference --listen HOST:PORT",
		Short:  "Serve the bare HTTP server answering 202 until SIGTERM (bench ingest's HTTP ceiling in a process of its own)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ln, err := net.Listen("tcp", addr)
			if err != nil {
				return withCode(exitUsage, fmt.Errorf("--listen %q: %w", addr, err))
			}
			ctx, cancel := signal.NotifyContext(cmd.Context(), syscall.SIGTERM, os.Interrupt)
			defer cancel()
			stop := serveReference(ln)
			<-ctx.Done()
			stop()
			return nil
		},
	}
	cmd.Flags().StringVar(&addr, "listen", "127.0.0.1:0", "address to serve on")
	return cmd
}

// referenceProcess is the HTTP ceiling running as a child.
type referenceProcess struct {
	url  string
	proc *benchProc
}

// startReferenceProcess runs `bin bench http-reference` and waits until it
// accepts connections.
func startReferenceProcess(ctx context.Context, bin string) (*referenceProcess, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	p, err := startProc("http-reference", bin, "bench", "http-reference", "--listen", addr)
	if err != nil {
		return nil, err
	}
	if err := p.waitUntil(ctx, 30*time.Second, "listening", func() bool { return tcpOpen(addr) }); err != nil {
		p.stop()
		return nil, fmt.Errorf("reference server in its own process: %w", err)
	}
	return &referenceProcess{url: "http://" + addr, proc: p}, nil
}

// cpu reads the child's CPU time.
func (r *referenceProcess) cpu(context.Context) (time.Duration, bool) {
	d, err := procCPU(r.proc.pid())
	return d, err == nil
}

func (r *referenceProcess) stop() { r.proc.stop() }
