// Command recorder is a test function: it appends one JSON line per received
// CloudEvent (id, type, source, extensions seen as ce- headers) to $OUT and
// answers 200. With $FAIL_FLAG set, it answers 500 while that file exists.
// With $DELAY set (a Go duration), it waits that long before answering.
// Events whose type ends in ".hold" first leave a marker file
// $MARKS/<id>.<pid> and then wait $HOLD, so a test can kill the process
// while it holds the request. Each record includes the recording pid.
package main

import (
	"encoding/json"
	"io"
	"log"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

func main() {
	out, err := os.OpenFile(os.Getenv("OUT"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		log.Fatal(err)
	}
	delay, _ := time.ParseDuration(os.Getenv("DELAY"))
	hold, _ := time.ParseDuration(os.Getenv("HOLD"))
	pid := strconv.Itoa(os.Getpid())
	var mu sync.Mutex
	http.HandleFunc("POST /", func(w http.ResponseWriter, r *http.Request) {
		if f := os.Getenv("FAIL_FLAG"); f != "" {
			if _, err := os.Stat(f); err == nil {
				http.Error(w, "failing on purpose", http.StatusInternalServerError)
				return
			}
		}
		if strings.HasSuffix(r.Header.Get("ce-type"), ".hold") {
			mark := filepath.Join(os.Getenv("MARKS"), r.Header.Get("ce-id")+"."+pid)
			if err := os.WriteFile(mark, nil, 0o644); err != nil {
				http.Error(w, err.Error(), http.StatusInternalServerError)
				return
			}
			time.Sleep(hold) // simulated long work: the test kills the process now
		}
		time.Sleep(delay) // simulated work, so deliveries are in flight when the test kills weft
		rec := map[string]string{}
		for k, v := range r.Header {
			if lk := strings.ToLower(k); strings.HasPrefix(lk, "ce-") {
				rec[strings.TrimPrefix(lk, "ce-")] = v[0]
			}
		}
		rec["pid"] = pid
		if strings.HasSuffix(r.Header.Get("ce-type"), ".call") {
			// Egress through HTTP_PROXY, as any worker would call a service.
			resp, err := http.Get(os.Getenv("CALL_URL"))
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadGateway)
				return
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			rec["called"] = string(body)
		}
		line, _ := json.Marshal(rec)
		mu.Lock()
		_, err := out.Write(append(line, '\n'))
		mu.Unlock()
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.WriteHeader(http.StatusOK)
	})
	log.Fatal(http.ListenAndServe("127.0.0.1:"+os.Getenv("PORT"), nil))
}
