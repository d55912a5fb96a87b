// Command recorder is a test function: it appends one JSON line per received
// CloudEvent (id, type, source, extensions seen as ce- headers) to $OUT and
// answers 200. Each record includes the recording pid and "attempt": how many
// times this process has received this ce-id, counting this request. Every
// value in a record is a string.
//
// Environment, all optional but OUT:
//
//   - $HITS: a file that gets one JSON line per request received, whatever
//     its outcome, written as the request arrives (before any hold, sleep,
//     hang or crash): {"time","id","type","attempt","pid","outcome"}, time
//     in RFC 3339 with nanoseconds, outcome as below.
//   - $HOLD_FLAG: while that file exists, each request waits (polling every
//     10 ms) before it is handled. The wait does not end when the client
//     gives up, as with a function that ignores its context.
//   - $FAIL_FLAG: while that file exists, it answers 500.
//   - $DELAY (a Go duration): it waits that long before recording.
//   - Events whose type ends in ".hold" first leave a marker file
//     $MARKS/<id>.<pid> and then wait $HOLD, so a test can kill the process
//     while it holds the request.
//   - Events whose type ends in ".call" make it GET $CALL_URL (through
//     HTTP_PROXY, as any worker calls a service) and record the answer.
//
// On SIGTERM it writes "recorder <pid>: SIGTERM" to stderr and exits 0, so
// a test can see a process's last line in `weft logs`.
//
// # Misbehaving on command
//
// One recorder can serve many fault cases: each event says how to misbehave,
// in the extension misbehave (header ce-misbehave) or, without it, in the
// part of its type after the last "." (test.faults.hang, test.x.status=422);
// a type whose last part is not a valid spec (test.load) behaves normally.
// A spec is a comma-separated list of directives:
//
//	fail=N        misbehave only on this process's attempts 1..N of the
//	              event; later attempts are handled normally (default:
//	              every attempt misbehaves)
//	status=CODE   answer CODE (300-599) with a short text body; nothing
//	              is recorded
//	retryafter=S  with status: send Retry-After: S (delay-seconds)
//	body=N        with status: the body is N bytes of "x"
//	sleep=D       wait D (a Go duration, no "." in the type form) first,
//	              whether or not the client is still there; alone, the
//	              event is then recorded and answered 200
//	hang          never answer: wait until the client gives up, record
//	              nothing
//	crash         exit the process at once (exit status 2, as an
//	              unrecovered panic) without answering. With $MARKS set
//	              an event crashes a process once: the first crash
//	              leaves $MARKS/<id>.crash, and while that marker exists
//	              the event is handled normally (the attempt count is per
//	              process, so fail=N alone cannot stop a crash loop)
//
// status, hang and crash exclude each other; fail needs one of them or
// sleep. Examples: "fail=2,status=503,retryafter=1", "status=422,body=5000",
// "hang", "crash", "fail=1,sleep=1s". An invalid extension is answered 400
// with the reason (the type form never is: it just does not apply).
//
// The outcome in $HITS is what the request gets, decided when it arrives:
// "ok" (handled normally), the directives that apply ("status=503,
// retryafter=1", "hang", "crash", "sleep=1s"), "fail-flag" ($FAIL_FLAG) or
// "invalid: <reason>".
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// spec is a parsed misbehave spec; the zero value misbehaves in no way.
type spec struct {
	fail       int // 0: every attempt
	status     int
	retryAfter string
	body       int // -1: the default text
	sleep      time.Duration
	hang       bool
	crash      bool
}

func parseSpec(s string) (spec, error) {
	sp := spec{body: -1}
	if s == "" {
		return sp, errors.New("empty spec")
	}
	for d := range strings.SplitSeq(s, ",") {
		key, val, hasVal := strings.Cut(strings.TrimSpace(d), "=")
		var err error
		switch {
		case key == "hang" && !hasVal:
			sp.hang = true
		case key == "crash" && !hasVal:
			sp.crash = true
		case key == "fail" && hasVal:
			sp.fail, err = strconv.Atoi(val)
			if err == nil && sp.fail < 1 {
				err = errors.New("must be at least 1")
			}
		case key == "status" && hasVal:
			sp.status, err = strconv.Atoi(val)
			if err == nil && (sp.status < 300 || sp.status > 599) {
				err = errors.New("must be 300-599")
			}
		case key == "retryafter" && hasVal:
			var n int
			n, err = strconv.Atoi(val)
			if err == nil && n < 0 {
				err = errors.New("must not be negative")
			}
			sp.retryAfter = val
		case key == "body" && hasVal:
			sp.body, err = strconv.Atoi(val)
			if err == nil && sp.body < 0 {
				err = errors.New("must not be negative")
			}
		case key == "sleep" && hasVal:
			sp.sleep, err = time.ParseDuration(val)
		default:
			return spec{}, fmt.Errorf("unknown directive %q", d)
		}
		if err != nil {
			return spec{}, fmt.Errorf("%s: %w", key, err)
		}
	}
	actions := 0
	for _, on := range []bool{sp.status != 0, sp.hang, sp.crash} {
		if on {
			actions++
		}
	}
	switch {
	case actions > 1:
		return spec{}, errors.New("status, hang and crash exclude each other")
	case sp.status == 0 && (sp.retryAfter != "" || sp.body >= 0):
		return spec{}, errors.New("retryafter and body need status")
	case actions == 0 && sp.sleep == 0:
		return spec{}, errors.New("nothing to do: want status, hang, crash or sleep")
	}
	return sp, nil
}

// String renders the directives that act on a request, as $HITS shows them.
func (sp spec) String() string {
	var parts []string
	if sp.sleep > 0 {
		parts = append(parts, "sleep="+sp.sleep.String())
	}
	switch {
	case sp.status != 0:
		parts = append(parts, "status="+strconv.Itoa(sp.status))
		if sp.retryAfter != "" {
			parts = append(parts, "retryafter="+sp.retryAfter)
		}
		if sp.body >= 0 {
			parts = append(parts, "body="+strconv.Itoa(sp.body))
		}
	case sp.hang:
		parts = append(parts, "hang")
	case sp.crash:
		parts = append(parts, "crash")
	}
	return strings.Join(parts, ",")
}

// misbehaviour returns the spec of r: the misbehave extension, else the
// type's last part when it parses. ok is false when r carries none.
func misbehaviour(r *http.Request) (sp spec, ok bool, err error) {
	if v := r.Header.Get("ce-misbehave"); v != "" {
		sp, err = parseSpec(v)
		return sp, true, err
	}
	typ := r.Header.Get("ce-type")
	if i := strings.LastIndexByte(typ, '.'); i >= 0 {
		if sp, err := parseSpec(typ[i+1:]); err == nil {
			return sp, true, nil
		}
	}
	return spec{}, false, nil
}

// lines appends JSON lines to a file; safe for concurrent use. A nil
// *lines discards them.
type lines struct {
	mu sync.Mutex
	f  *os.File
}

func openLines(path string) *lines {
	if path == "" {
		return nil
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		log.Fatal(err)
	}
	return &lines{f: f}
}

func (l *lines) write(rec map[string]string) error {
	if l == nil {
		return nil
	}
	line, _ := json.Marshal(rec)
	l.mu.Lock()
	defer l.mu.Unlock()
	// One write per line on an O_APPEND file: a line is never interleaved
	// with another process's, and it is in the file before a crash.
	_, err := l.f.Write(append(line, '\n'))
	return err
}

// waitWhileExists polls until the file at path is gone.
func waitWhileExists(path string) {
	for {
		if _, err := os.Stat(path); err != nil {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func main() {
	if os.Getenv("OUT") == "" {
		log.Fatal("recorder: $OUT is not set")
	}
	out, hits := openLines(os.Getenv("OUT")), openLines(os.Getenv("HITS"))
	delay, _ := time.ParseDuration(os.Getenv("DELAY"))
	hold, _ := time.ParseDuration(os.Getenv("HOLD"))
	pid := strconv.Itoa(os.Getpid())
	var mu sync.Mutex
	seen := map[string]int{} // ce-id → requests received by this process
	http.HandleFunc("POST /", func(w http.ResponseWriter, r *http.Request) {
		// Read the whole body first: only then does net/http watch the
		// connection and end r.Context() when the client gives up (hang).
		_, _ = io.Copy(io.Discard, r.Body)
		id, typ := r.Header.Get("ce-id"), r.Header.Get("ce-type")
		mu.Lock()
		seen[id]++
		attempt := seen[id]
		mu.Unlock()

		// Decide the outcome as the request arrives, and say so in $HITS.
		sp, misbehaves, specErr := misbehaviour(r)
		if misbehaves && sp.fail > 0 && attempt > sp.fail {
			misbehaves = false
		}
		if misbehaves && sp.crash && os.Getenv("MARKS") != "" {
			if _, err := os.Stat(filepath.Join(os.Getenv("MARKS"), id+".crash")); err == nil {
				misbehaves = false // this event crashed a process already
			}
		}
		failFlag := false
		if f := os.Getenv("FAIL_FLAG"); f != "" {
			_, err := os.Stat(f)
			failFlag = err == nil
		}
		outcome := "ok"
		switch {
		case specErr != nil:
			outcome = "invalid: " + specErr.Error()
		case misbehaves:
			outcome = sp.String()
		case failFlag:
			outcome = "fail-flag"
		}
		if err := hits.write(map[string]string{"time": time.Now().UTC().Format(time.RFC3339Nano),
			"id": id, "type": typ, "attempt": strconv.Itoa(attempt), "pid": pid, "outcome": outcome}); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		if f := os.Getenv("HOLD_FLAG"); f != "" {
			waitWhileExists(f)
		}

		switch {
		case specErr != nil:
			http.Error(w, "recorder: misbehave: "+specErr.Error(), http.StatusBadRequest)
			return
		case misbehaves:
			time.Sleep(sp.sleep) // deaf to the client, as a slow function is
			switch {
			case sp.hang:
				<-r.Context().Done()
				return
			case sp.crash:
				if m := os.Getenv("MARKS"); m != "" {
					_ = os.WriteFile(filepath.Join(m, id+".crash"), nil, 0o644)
				}
				os.Exit(2)
			case sp.status != 0:
				if sp.retryAfter != "" {
					w.Header().Set("Retry-After", sp.retryAfter)
				}
				body := fmt.Sprintf("recorder: status %d on attempt %d", sp.status, attempt)
				if sp.body >= 0 {
					body = strings.Repeat("x", sp.body)
				}
				w.Header().Set("Content-Type", "text/plain")
				w.WriteHeader(sp.status)
				_, _ = io.WriteString(w, body)
				return
			}
		case failFlag:
			http.Error(w, "failing on purpose", http.StatusInternalServerError)
			return
		}

		if strings.HasSuffix(typ, ".hold") {
			mark := filepath.Join(os.Getenv("MARKS"), id+"."+pid)
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
		rec["attempt"] = strconv.Itoa(attempt)
		if strings.HasSuffix(typ, ".call") {
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
		if err := out.write(rec); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.WriteHeader(http.StatusOK)
	})
	go func() {
		term := make(chan os.Signal, 1)
		signal.Notify(term, syscall.SIGTERM)
		<-term
		log.Printf("recorder %s: SIGTERM", pid)
		os.Exit(0)
	}()
	log.Fatal(http.ListenAndServe("127.0.0.1:"+os.Getenv("PORT"), nil))
}
