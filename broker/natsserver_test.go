package broker

import (
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// startTestServer runs an embedded nats-server with opts, without a
// listener, signal handlers or logs, and returns an in-process connection
// to it and a stop function; both stop when tb ends if not before.
func startTestServer(tb testing.TB, opts server.Options) (*nats.Conn, func()) {
	tb.Helper()
	opts.DontListen, opts.NoSigs, opts.NoLog = true, true, true
	ns, err := server.NewServer(&opts)
	if err != nil {
		tb.Fatal(err)
	}
	go ns.Start() // stopped by stop
	if !ns.ReadyForConnections(30 * time.Second) {
		ns.Shutdown()
		tb.Fatal("nats-server not ready")
	}
	nc, err := nats.Connect("", nats.InProcessServer(ns))
	if err != nil {
		ns.Shutdown()
		tb.Fatal(err)
	}
	var once sync.Once
	stop := func() {
		once.Do(func() {
			nc.Close()
			ns.Shutdown()
			ns.WaitForShutdown()
		})
	}
	tb.Cleanup(stop)
	return nc, stop
}
