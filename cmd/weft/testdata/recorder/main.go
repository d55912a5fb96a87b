// Command recorder is a test function: it appends one JSON line per received
// CloudEvent (id, type, source, extensions seen as ce- headers) to $OUT and
// answers 200. With $FAIL_FLAG set, it answers 500 while that file exists.
// With $DELAY set (a Go duration), it waits that long before answering.
package main

import (
	"encoding/json"
	"log"
	"net/http"
	"os"
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
	var mu sync.Mutex
	http.HandleFunc("POST /", func(w http.ResponseWriter, r *http.Request) {
		if f := os.Getenv("FAIL_FLAG"); f != "" {
			if _, err := os.Stat(f); err == nil {
				http.Error(w, "failing on purpose", http.StatusInternalServerError)
				return
			}
		}
		time.Sleep(delay) // simulated work, so deliveries are in flight when the test kills weft
		rec := map[string]string{}
		for k, v := range r.Header {
			if lk := strings.ToLower(k); strings.HasPrefix(lk, "ce-") {
				rec[strings.TrimPrefix(lk, "ce-")] = v[0]
			}
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
