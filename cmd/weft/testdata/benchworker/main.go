// Command benchworker is the smallest worker `weft bench e2e` and `weft bench
// scale` can run as a Function (--worker): an HTTP server on 127.0.0.1:$PORT
// that answers every request 200 with no body (no reply event). With
// $BENCH_REPORT_ADDR it sends one UDP datagram per request to that address,
// "<ce-id> <unix ns of arrival>", before answering, as `weft bench worker`
// does; with $BENCH_HOLD (a duration) it holds each request that long and
// replies with an event whose source is /bench/worker/<pid>, as it does too. It has no dependency beyond the standard library, so it starts as
// fast as a Go program can.
package main

import (
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

func main() {
	port := os.Getenv("PORT")
	if port == "" {
		log.Fatal("benchworker: $PORT is not set")
	}
	var report net.Conn
	if addr := os.Getenv("BENCH_REPORT_ADDR"); addr != "" {
		c, err := net.Dial("udp", addr)
		if err != nil {
			log.Fatal(err)
		}
		report = c
	}
	var hold time.Duration
	if v := os.Getenv("BENCH_HOLD"); v != "" {
		var err error
		if hold, err = time.ParseDuration(v); err != nil {
			log.Fatalf("benchworker: $BENCH_HOLD: %v", err)
		}
	}
	source := "/bench/worker/" + strconv.Itoa(os.Getpid())
	var replies atomic.Int64
	var mu sync.Mutex // one datagram at a time on the shared socket
	srv := &http.Server{Addr: net.JoinHostPort("127.0.0.1", port), ReadHeaderTimeout: 10 * time.Second,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if report != nil {
				b := make([]byte, 0, 96)
				b = append(b, r.Header.Get("Ce-Id")...)
				b = append(b, ' ')
				b = strconv.AppendInt(b, time.Now().UnixNano(), 10)
				mu.Lock()
				_, _ = report.Write(b)
				mu.Unlock()
			}
			_, _ = io.Copy(io.Discard, r.Body)
			if hold > 0 {
				select {
				case <-time.After(hold):
				case <-r.Context().Done():
					return
				}
				h := w.Header()
				h.Set("Ce-Specversion", "1.0")
				h.Set("Ce-Id", strconv.FormatInt(replies.Add(1), 10))
				h.Set("Ce-Source", source)
				h.Set("Ce-Type", "dev.weft.bench.reply")
			}
			w.WriteHeader(http.StatusOK)
		})}
	log.Fatal(srv.ListenAndServe())
}
