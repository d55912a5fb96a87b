package broker

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	wtest "github.com/weft-dev/weft/internal/testutil"
)

// streamMsgCount is how many messages stream holds.
func streamMsgCount(t *testing.T, js jetstream.JetStream, stream string) uint64 {
	t.Helper()
	return streamState(t, js, stream).Msgs
}

// streamState is stream's state now.
func streamState(t *testing.T, js jetstream.JetStream, stream string) jetstream.StreamState {
	t.Helper()
	s, err := js.Stream(context.Background(), stream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return info.State
}

// TestAcknowledgedPurged: acks remove nothing by themselves (the streams
// keep their messages); the compactor purges what every consumer has
// acknowledged, so after delivery both work streams are empty, and every
// event was delivered once.
func TestAcknowledgedPurged(t *testing.T) {
	rec := newRecorder()
	b, srv := startBroker(t, rec)
	setTriggers(t, b, triggerYAML("all", "", "{uri: http://all.invalid/}", ""))
	const n = 50
	for i := range n {
		if got := post(t, srv, ingressCase{headers: caseBinary(fmt.Sprintf("p-%d", i)), body: `{}`}); got != http.StatusAccepted {
			t.Fatalf("status %d", got)
		}
	}
	js := b.conn.Load().js
	wtest.WaitFor(t, 15*time.Second, func() bool {
		return rec.count("http://all.invalid/") >= n && streamMsgCount(t, js, eventsStream) == 0 && streamMsgCount(t, js, deliveriesStream) == 0
	}, "acknowledged messages were not purged")
	if ids := rec.ids("http://all.invalid/"); len(ids) != n || len(slices.Compact(slices.Sorted(slices.Values(ids)))) != n {
		t.Fatalf("%d deliveries of %d distinct events, want %d once each", len(ids), len(slices.Compact(slices.Sorted(slices.Values(ids)))), n)
	}
}

// TestSleepingTriggerNotRedelivered: an idle trigger's consumer is deleted
// after its acknowledged deliveries are purged, so the consumer made when
// the next event wakes it starts after them.
func TestSleepingTriggerNotRedelivered(t *testing.T) {
	rec := newRecorder()
	b, srv := startBroker(t, rec)
	setTriggers(t, b, triggerYAML("nap", "", "{uri: http://nap.invalid/}", ""))
	shortenIdle(t, b, 200*time.Millisecond, 1)
	postN := func(from, to int) {
		for i := from; i < to; i++ {
			if got := post(t, srv, ingressCase{headers: caseBinary(fmt.Sprintf("nap-%d", i)), body: `{}`}); got != http.StatusAccepted {
				t.Fatalf("status %d", got)
			}
		}
	}
	postN(0, 5)
	wtest.WaitFor(t, 10*time.Second, func() bool { return rec.count("http://nap.invalid/") == 5 }, "not delivered")
	wtest.WaitFor(t, 10*time.Second, func() bool { return !triggerConsumers(t, b)["nap"] }, "the idle trigger kept its consumer")
	postN(5, 6)
	js := b.conn.Load().js
	wtest.WaitFor(t, 10*time.Second, func() bool {
		return rec.count("http://nap.invalid/") >= 6 && streamMsgCount(t, js, deliveriesStream) == 0
	}, "the woken trigger did not settle")
	want := []string{"nap-0", "nap-1", "nap-2", "nap-3", "nap-4", "nap-5"}
	if got := slices.Sorted(slices.Values(rec.ids("http://nap.invalid/"))); !slices.Equal(got, want) {
		t.Fatalf("delivered %v, want %v once each", got, want)
	}
}

// TestRestartRedeliversOnlyUnacknowledged: after a restart, a delivery a
// previous run had handed out and never settled (as after kill -9) is
// delivered at once, not when its AckWait (an hour here) runs out; those
// acknowledged before the stop but not yet purged (here: dispatching, and so
// the compactor, never started) are purged when the start resets the
// consumers, and not delivered again.
func TestRestartRedeliversOnlyUnacknowledged(t *testing.T) {
	dir := t.TempDir()
	cfg := Config{DataDir: dir, NATSAddr: "127.0.0.1:0", DrainTimeout: time.Second, AckWait: time.Hour}
	rec := newRecorder()

	b1, err := New(cfg, rec, nil, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ctx1, stop1 := context.WithCancel(context.Background())
	done1 := make(chan error, 1)
	go func() { done1 <- b1.Run(ctx1) }()
	<-b1.Ready()
	c := b1.conn.Load()
	ctx := context.Background()
	for _, id := range []string{"acked-1", "acked-2", "open"} {
		ev := event.New()
		ev.SetID(id)
		ev.SetSource("/restart")
		ev.SetType("dev.weft.test")
		data, _ := json.Marshal(ev)
		msg := nats.NewMsg(deliverPrefix + "t")
		msg.Data = data
		msg.Header.Set(hdrTrigger, "t")
		if _, err := c.js.PublishMsg(ctx, msg); err != nil {
			t.Fatal(err)
		}
	}
	cons, err := c.js.CreateOrUpdateConsumer(ctx, deliveriesStream, jetstream.ConsumerConfig{
		Durable: consumerName("t"), FilterSubject: deliverPrefix + "t", AckPolicy: jetstream.AckExplicitPolicy, AckWait: time.Hour,
	})
	if err != nil {
		t.Fatal(err)
	}
	batch, err := cons.Fetch(3, jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for m := range batch.Messages() {
		if n++; n <= 2 {
			if err := m.DoubleAck(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	if n != 3 {
		t.Fatalf("fetched %d deliveries, want 3", n)
	}
	if got := streamMsgCount(t, c.js, deliveriesStream); got != 3 {
		t.Fatalf("WEFT_DELIVERIES holds %d messages before the restart, want 3 (acks remove nothing)", got)
	}
	stop1()
	if err := <-done1; err != nil {
		t.Fatal(err)
	}

	b2, err := New(cfg, rec, nil, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ctx2, stop2 := context.WithCancel(context.Background())
	done2 := make(chan error, 1)
	go func() { done2 <- b2.Run(ctx2) }()
	t.Cleanup(func() { stop2(); <-done2 })
	<-b2.Ready()
	setTriggers(t, b2, triggerYAML("t", "", "{uri: http://restart.invalid/}", ""))
	b2.StartDispatching()
	js := b2.conn.Load().js
	wtest.WaitFor(t, 15*time.Second, func() bool {
		return rec.count("http://restart.invalid/") >= 1 && streamMsgCount(t, js, deliveriesStream) == 0
	}, "the open delivery was not settled")
	if got := rec.ids("http://restart.invalid/"); !slices.Equal(got, []string{"open"}) {
		t.Fatalf("delivered %v after the restart, want only the unacknowledged one", got)
	}
}

// TestWorkQueueStreamsMigrate: streams an older weft made as work queues
// are made anew with limits retention when a start finds them empty, and
// keep working as work queues while they hold messages.
func TestWorkQueueStreamsMigrate(t *testing.T) {
	dir := t.TempDir()
	nc, stopServer := startTestServer(t, server.Options{ServerName: "weft", JetStream: true, StoreDir: filepath.Join(dir, "jetstream")})
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, sc := range []jetstream.StreamConfig{
		{Name: eventsStream, Subjects: []string{eventsSubject}, Retention: jetstream.WorkQueuePolicy, Storage: jetstream.FileStorage},
		{Name: deliveriesStream, Subjects: []string{deliverPrefix + ">"}, Retention: jetstream.WorkQueuePolicy, Storage: jetstream.FileStorage},
	} {
		if _, err := js.CreateStream(ctx, sc); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := js.Publish(ctx, eventsSubject, []byte(`{"specversion":"1.0","id":"old","source":"/old","type":"dev.weft.test"}`)); err != nil {
		t.Fatal(err)
	}
	stopServer()

	retention := func(b *Broker, stream string) jetstream.RetentionPolicy {
		s, err := b.conn.Load().js.Stream(ctx, stream)
		if err != nil {
			t.Fatal(err)
		}
		return s.CachedInfo().Config.Retention
	}
	rec := newRecorder()
	cfg := Config{DataDir: dir, DrainTimeout: time.Second}
	run := func() (*Broker, func()) {
		b, err := New(cfg, rec, nil, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		rctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- b.Run(rctx) }()
		select {
		case <-b.Ready():
		case err := <-done:
			t.Fatalf("broker exited before ready: %v", err)
		}
		return b, func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("broker.Run: %v", err)
			}
		}
	}

	b1, stop1 := run()
	if got := retention(b1, deliveriesStream); got != jetstream.LimitsPolicy {
		t.Errorf("empty WEFT_DELIVERIES kept %s retention", got)
	}
	if got := retention(b1, eventsStream); got != jetstream.WorkQueuePolicy {
		t.Errorf("WEFT_EVENTS holding an event changed to %s retention", got)
	}
	setTriggers(t, b1, triggerYAML("t", "", "{uri: http://old.invalid/}", ""))
	b1.StartDispatching()
	wtest.WaitFor(t, 15*time.Second, func() bool {
		return rec.count("http://old.invalid/") == 1 && streamMsgCount(t, b1.conn.Load().js, eventsStream) == 0
	}, "the event stored by the older weft was not delivered")
	stop1()

	b2, stop2 := run()
	defer stop2()
	if got := retention(b2, eventsStream); got != jetstream.LimitsPolicy {
		t.Errorf("WEFT_EVENTS, empty at this start, kept %s retention", got)
	}
}
