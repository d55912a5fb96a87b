package store_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/weft-dev/weft/internal/store"
	"github.com/weft-dev/weft/internal/store/storetest"
	"github.com/weft-dev/weft/internal/testutil"
)

// redisDatabases is how many databases the test servers have: each test of
// the suite gets one of its own, so that neither keys nor keyspace
// notifications cross between tests.
const redisDatabases = 64

// fastResync is the fallback watchers' resync interval in tests.
const fastResync = 300 * time.Millisecond

// redisOpener returns an open function for storetest.Run that gives each test
// a database of its own on the server at url (and the same database to every
// call of one test, as Run requires).
func redisOpener(url string, openFn func(url string, log *slog.Logger) (*store.Redis, error)) func(t *testing.T) store.Store {
	var (
		mu  sync.Mutex
		dbs = make(map[string]int)
	)
	return func(t *testing.T) store.Store {
		mu.Lock()
		db, ok := dbs[t.Name()]
		if !ok {
			db = len(dbs)
			dbs[t.Name()] = db
		}
		mu.Unlock()
		if db >= redisDatabases {
			t.Fatalf("more than %d tests: raise redisDatabases", redisDatabases)
		}
		log := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
		s, err := openFn(fmt.Sprintf("%s/%d", url, db), log)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
}

// TestRedis runs the conformance suite against a real redis-server, with
// keyspace notifications, as a node sees a self-hosted Redis.
func TestRedis(t *testing.T) {
	t.Parallel()
	srv := testutil.RunRedis(t, "--databases", fmt.Sprint(redisDatabases))
	storetest.Run(t, redisOpener(srv.URL(), func(url string, log *slog.Logger) (*store.Redis, error) {
		s, err := store.OpenRedis(url, log)
		if err == nil && !s.Keyspace() {
			t.Error("OpenRedis did not turn keyspace notifications on")
		}
		return s, err
	}), storetest.Options{SharedWatch: true})
}

// TestRedisWithoutKeyspaceEvents runs the suite against a server that
// refuses CONFIG, as managed Redis services often do: watchers then rely on
// the changes that writes publish, and on periodic resyncs for expiries.
func TestRedisWithoutKeyspaceEvents(t *testing.T) {
	t.Parallel()
	srv := testutil.RunRedis(t, "--databases", fmt.Sprint(redisDatabases), "--rename-command", "CONFIG", "")
	storetest.Run(t, redisOpener(srv.URL(), func(url string, log *slog.Logger) (*store.Redis, error) {
		s, err := store.OpenRedisResyncEvery(url, log, fastResync)
		if err == nil && s.Keyspace() {
			t.Error("keyspace notifications on although CONFIG is refused")
		}
		return s, err
	}), storetest.Options{SharedWatch: true, ExpiryByResync: true})
}

// TestOpenRedisKeepsNotifyFlags checks that OpenRedis adds the notification
// classes it needs to those the server already had, instead of replacing
// them (another user of the server may rely on them).
func TestOpenRedisKeepsNotifyFlags(t *testing.T) {
	t.Parallel()
	url := testutil.StartRedis(t)
	admin := adminClient(t, url)
	if err := admin.ConfigSet(t.Context(), "notify-keyspace-events", "El").Err(); err != nil {
		t.Fatal(err)
	}
	s, err := store.OpenRedis(url, nil)
	if err != nil {
		t.Fatal(err)
	}
	closeStore(t, s)
	got, err := admin.ConfigGet(t.Context(), "notify-keyspace-events").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range "ElKg$xe" {
		if !strings.ContainsRune(got["notify-keyspace-events"], c) {
			t.Errorf("notify-keyspace-events = %q, lacks %q", got["notify-keyspace-events"], c)
		}
	}
}

// TestOpenRedisErrors checks that a bad URL or an unreachable server is an
// error from OpenRedis, not a store that fails later.
func TestOpenRedisErrors(t *testing.T) {
	t.Parallel()
	for name, url := range map[string]string{
		"not a url":   "localhost:6379",
		"bad scheme":  "http://127.0.0.1:6379",
		"bad db":      "redis://127.0.0.1:6379/x",
		"unreachable": "redis://" + testutil.RefusingAddr(t),
	} {
		s, err := store.OpenRedis(url, nil)
		if err == nil {
			_ = s.Close()
			t.Errorf("OpenRedis(%s %q) succeeded", name, url)
		}
	}
}

// TestRedisKeysNamespaced checks that the store's keys live under "weft:"
// and that it ignores other keys of the database.
func TestRedisKeysNamespaced(t *testing.T) {
	t.Parallel()
	url := testutil.StartRedis(t)
	admin := adminClient(t, url)
	if err := admin.Set(t.Context(), "foreign", "x", 0).Err(); err != nil {
		t.Fatal(err)
	}
	s, err := store.OpenRedis(url, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { closeStore(t, s) })
	if err := s.Put(t.Context(), "resources/a", []byte("v")); err != nil {
		t.Fatal(err)
	}
	if v, err := admin.Get(t.Context(), "weft:resources/a").Result(); err != nil || v != "v" {
		t.Fatalf("weft:resources/a = %q, %v; want the value under the namespace", v, err)
	}
	kvs, err := s.List(t.Context(), "")
	if err != nil || len(kvs) != 1 || kvs[0].Key != "resources/a" {
		t.Fatalf("List = %v, %v; want only resources/a", kvs, err)
	}
}

// TestRedisWatchSurvivesRestart stops the server under a watcher and starts
// it again, empty and with keyspace notifications off (a restarted server
// forgets CONFIG SET): the watcher must report a Resync, then changes again.
func TestRedisWatchSurvivesRestart(t *testing.T) {
	t.Parallel()
	srv := testutil.RunRedis(t)
	s, err := store.OpenRedis(srv.URL(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { closeStore(t, s) })
	ch, err := s.Watch(t.Context(), "reg/")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Put(t.Context(), "reg/a", nil); err != nil {
		t.Fatal(err)
	}
	wantChange(t, ch, store.Change{Key: "reg/a"})

	srv.Stop()
	if err := s.Put(t.Context(), "reg/b", nil); err == nil {
		t.Fatal("Put succeeded with the server down")
	}
	srv.Start()
	wantChange(t, ch, store.Change{Resync: true})
	// Writes succeed again (go-redis reconnects) and the watcher hears of
	// them, so notifications were turned on again.
	if err := s.PutTTL(t.Context(), "reg/c", nil, 100*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	wantChange(t, ch, store.Change{Key: "reg/c"})
	wantChange(t, ch, store.Change{Key: "reg/c", Deleted: true})
}

func wantChange(t *testing.T, ch <-chan store.Change, want store.Change) {
	t.Helper()
	select {
	case got, ok := <-ch:
		if !ok || got != want {
			t.Fatalf("change = %+v (open %v), want %+v", got, ok, want)
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("no change within 15s, want %+v", want)
	}
}

func adminClient(t *testing.T, url string) *redis.Client {
	t.Helper()
	opts, err := redis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	c := redis.NewClient(opts)
	t.Cleanup(func() {
		if err := c.Close(); err != nil && !errors.Is(err, redis.ErrClosed) {
			t.Errorf("close admin client: %v", err)
		}
	})
	if err := c.Ping(context.WithoutCancel(t.Context())).Err(); err != nil {
		t.Fatal(err)
	}
	return c
}
