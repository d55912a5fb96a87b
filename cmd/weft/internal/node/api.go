package node

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/pprof"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/weft-dev/weft/broker"
	"github.com/weft-dev/weft/internal/resource"
	"github.com/weft-dev/weft/router"
	"github.com/weft-dev/weft/workers"
)

// maxManifestBytes bounds an apply request's body.
const maxManifestBytes = 4 << 20

// API serves a node's HTTP surface: the ingress, health, metrics and /api/v1.
type API struct {
	CP       *ControlPlane
	Files    *Files
	Broker   *broker.Broker
	Pool     *workers.Pool
	Meter    *workers.Meter
	Router   *router.Router
	Gatherer prometheus.Gatherer
	// Token, when set, is required as "Authorization: Bearer <token>" on every
	// /api/v1 call.
	Token string
	// Ready reports whether every component is up.
	Ready func() error
	Log   *slog.Logger

	invokes inflight // invoke calls being answered; see WaitInvokes
}

// inflight counts calls in flight and lets a stop wait until none is.
type inflight struct {
	mu   sync.Mutex
	n    int
	none chan struct{} // closed when n drops to 0
}

func (f *inflight) add() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.n == 0 {
		f.none = make(chan struct{})
	}
	f.n++
}

func (f *inflight) done() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.n--
	if f.n == 0 {
		close(f.none)
	}
}

// WaitInvokes waits until no invoke call is being answered, or returns ctx's
// error when it ends first. A call on an instance may call other functions
// through the router, so at a stop the pool and the router stop only after
// this (a `weft logs -f` stream, which ends only when the pool stops, is not
// counted).
func (a *API) WaitInvokes(ctx context.Context) error {
	f := &a.invokes
	f.mu.Lock()
	if f.n == 0 {
		f.mu.Unlock()
		return nil
	}
	none := f.none
	f.mu.Unlock()
	select {
	case <-none:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// IngressRequest reports whether r posts CloudEvents to the ingress (POST /
// or /brokers/{name}): the requests `weft serve` answers on the router's
// HTTP/1.1 loop rather than through net/http (router.HTTPServer).
func IngressRequest(r *http.Request) bool {
	return r.Method == http.MethodPost && (r.URL.Path == "/" || strings.HasPrefix(r.URL.Path, "/brokers/"))
}

// Handler builds the node's router.
func (a *API) Handler() http.Handler {
	mux := http.NewServeMux()
	ingress := a.Broker.IngressHandler()
	mux.Handle("/", ingress)
	mux.Handle("/brokers/", ingress)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok\n") })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if err := a.Ready(); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		_, _ = io.WriteString(w, "ok\n")
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(a.Gatherer, promhttp.HandlerOpts{}))

	api := http.NewServeMux()
	api.HandleFunc("POST /api/v1/apply", a.apply)
	api.HandleFunc("POST /api/v1/delete", a.deleteManifests)
	api.HandleFunc("GET /api/v1/resources/{kind}", a.list)
	api.HandleFunc("GET /api/v1/resources/{kind}/{name}", a.get)
	api.HandleFunc("DELETE /api/v1/resources/{kind}/{name}", a.deleteOne)
	api.HandleFunc("GET /api/v1/functions", a.functions)
	api.HandleFunc("GET /api/v1/functions/{name}/logs", a.logs)
	api.HandleFunc("GET /api/v1/dlq", a.dlqList)
	api.HandleFunc("GET /api/v1/dlq/{id}", a.dlqShow)
	api.HandleFunc("POST /api/v1/dlq/replay", a.dlqReplay)
	api.HandleFunc("GET /api/v1/dlq/replays/{id}", a.dlqReplayStatus)
	api.HandleFunc("POST /api/v1/dlq/purge", a.dlqPurge)
	api.HandleFunc("GET /api/v1/status", a.status)
	api.HandleFunc("GET /api/v1/usage", a.usage)
	api.HandleFunc("GET /api/v1/services", a.services)
	api.HandleFunc("POST /api/v1/invoke/{name}", a.invoke)
	mux.Handle("/api/v1/", a.auth(api))
	// Go's profiler, behind the API's token: `go tool pprof
	// http://127.0.0.1:8080/debug/pprof/heap` (profiles can reveal data).
	prof := http.NewServeMux()
	prof.HandleFunc("/debug/pprof/", pprof.Index)
	prof.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	prof.HandleFunc("/debug/pprof/profile", pprof.Profile)
	prof.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	prof.HandleFunc("/debug/pprof/trace", pprof.Trace)
	mux.Handle("/debug/pprof/", a.auth(prof))
	return mux
}

func (a *API) auth(next http.Handler) http.Handler {
	if a.Token == "" {
		return next
	}
	want := []byte("Bearer " + a.Token)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), want) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="weft"`)
			writeError(w, http.StatusUnauthorized, errors.New("missing or wrong API token"))
			return
		}
		next.ServeHTTP(w, r)
	})
}

// apiError is the body of every API error. Problems lists each invalid field
// of a refused manifest.
type apiError struct {
	Error    string    `json:"error"`
	Problems []problem `json:"problems,omitempty"`
}

type problem struct {
	File    string `json:"file,omitempty"`
	Line    int    `json:"line,omitempty"`
	Column  int    `json:"column,omitempty"`
	Field   string `json:"field,omitempty"`
	Message string `json:"message"`
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, err error) {
	body := apiError{Error: err.Error()}
	for _, e := range flatten(err) {
		var fe *resource.FieldError
		if errors.As(e, &fe) {
			body.Problems = append(body.Problems, problem{File: fe.File, Line: fe.Line, Column: fe.Column, Field: fe.Field, Message: fe.Err.Error()})
		}
	}
	writeJSON(w, status, body)
}

func flatten(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var out []error
		for _, e := range j.Unwrap() {
			out = append(out, flatten(e)...)
		}
		return out
	}
	return []error{err}
}

func statusOf(err error) int {
	var fe *resource.FieldError
	switch {
	case errors.As(err, &fe), errors.Is(err, ErrInvalid):
		return http.StatusUnprocessableEntity
	case errors.Is(err, ErrNotFound), errors.Is(err, broker.ErrNotFound):
		return http.StatusNotFound
	case errors.Is(err, broker.ErrUnavailable):
		return http.StatusServiceUnavailable
	default:
		return http.StatusInternalServerError
	}
}

// readManifests decodes a YAML body; ?file= names it in errors.
func readManifests(r *http.Request) ([]resource.Object, error) {
	body, err := io.ReadAll(http.MaxBytesReader(nil, r.Body, maxManifestBytes))
	if err != nil {
		return nil, fmt.Errorf("read manifests: %w", err)
	}
	name := r.URL.Query().Get("file")
	return resource.Decode(name, body)
}

func (a *API) apply(w http.ResponseWriter, r *http.Request) {
	objs, err := readManifests(r)
	if err != nil {
		writeError(w, statusOf(err), err)
		return
	}
	changes, err := a.CP.Apply(r.Context(), objs, sourceAPI)
	if err != nil {
		writeError(w, statusOf(err), err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"changes": changes})
}

func (a *API) deleteManifests(w http.ResponseWriter, r *http.Request) {
	objs, err := readManifests(r)
	if err != nil {
		writeError(w, statusOf(err), err)
		return
	}
	keys := make([]resource.Key, 0, len(objs))
	for _, o := range objs {
		keys = append(keys, o.Key())
	}
	changes, err := a.CP.Delete(r.Context(), keys)
	if err != nil {
		writeError(w, statusOf(err), err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"changes": changes})
}

// kindOf maps the CLI's plural and singular names to a kind.
func kindOf(s string) (string, bool) {
	switch strings.ToLower(s) {
	case "trigger", "triggers":
		return "Trigger", true
	case "function", "functions", "fn":
		return "Function", true
	case "service", "services", "svc":
		return "Service", true
	case "all", "":
		return "", true
	}
	return "", false
}

func (a *API) list(w http.ResponseWriter, r *http.Request) {
	kind, ok := kindOf(r.PathValue("kind"))
	if !ok {
		writeError(w, http.StatusNotFound, fmt.Errorf("unknown kind %q", r.PathValue("kind")))
		return
	}
	out := a.CP.List(kind)
	if out == nil {
		out = []Resource{}
	}
	writeJSON(w, http.StatusOK, out)
}

func (a *API) get(w http.ResponseWriter, r *http.Request) {
	kind, ok := kindOf(r.PathValue("kind"))
	if !ok || kind == "" {
		writeError(w, http.StatusNotFound, fmt.Errorf("unknown kind %q", r.PathValue("kind")))
		return
	}
	res, ok := a.CP.Get(resource.Key{Kind: kind, Name: r.PathValue("name")})
	if !ok {
		writeError(w, http.StatusNotFound, fmt.Errorf("%s/%s: %w", kind, r.PathValue("name"), ErrNotFound))
		return
	}
	out := map[string]any{"resource": res}
	if kind == "Function" {
		for _, st := range a.Pool.Status() {
			if st.Name == res.Name {
				out["status"] = functionView{FunctionStatus: st, Instances: a.Pool.Instances(st.Name)}
			}
		}
	}
	writeJSON(w, http.StatusOK, out)
}

func (a *API) deleteOne(w http.ResponseWriter, r *http.Request) {
	kind, ok := kindOf(r.PathValue("kind"))
	if !ok || kind == "" {
		writeError(w, http.StatusNotFound, fmt.Errorf("unknown kind %q", r.PathValue("kind")))
		return
	}
	changes, err := a.CP.Delete(r.Context(), []resource.Key{{Kind: kind, Name: r.PathValue("name")}})
	if err != nil {
		writeError(w, statusOf(err), err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"changes": changes})
}

// functionView is a function's status with its live instances.
type functionView struct {
	workers.FunctionStatus
	Instances []workers.InstanceStatus `json:"instances"`
}

func (a *API) functions(w http.ResponseWriter, _ *http.Request) {
	out := []functionView{}
	for _, st := range a.Pool.Status() {
		out = append(out, functionView{FunctionStatus: st, Instances: a.Pool.Instances(st.Name)})
	}
	writeJSON(w, http.StatusOK, out)
}

// logs writes a function's captured lines as NDJSON; with ?follow=1 it keeps
// the response open and streams new lines until the client goes away.
func (a *API) logs(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if _, ok := a.CP.Get(resource.Key{Kind: "Function", Name: name}); !ok {
		writeError(w, http.StatusNotFound, fmt.Errorf("Function/%s: %w", name, ErrNotFound))
		return
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	enc := json.NewEncoder(w)
	follow := r.URL.Query().Get("follow") != ""
	var live <-chan workers.LogLine
	if follow {
		live = a.Pool.Follow(r.Context(), name) // subscribe first so no line falls between
	}
	for _, l := range a.Pool.Logs(name) {
		_ = enc.Encode(l)
	}
	if !follow {
		return
	}
	rc := http.NewResponseController(w)
	_ = rc.Flush()
	for l := range live {
		if err := enc.Encode(l); err != nil {
			return
		}
		_ = rc.Flush()
	}
}

func parseFilter(r *http.Request) (broker.DLQFilter, error) {
	q := r.URL.Query()
	return filterOf(q.Get("trigger"), q.Get("since"), q.Get("until"), q.Get("limit"))
}

// filterOf builds a DLQ filter from its text form, as the list query and the
// replay body carry it.
func filterOf(trigger, since, until, limit string) (broker.DLQFilter, error) {
	f := broker.DLQFilter{Trigger: trigger}
	var err error
	if f.Since, err = parseTime(since); err != nil {
		return f, fmt.Errorf("since: %w", err)
	}
	if f.Until, err = parseTime(until); err != nil {
		return f, fmt.Errorf("until: %w", err)
	}
	if limit != "" {
		if f.Limit, err = strconv.Atoi(limit); err != nil || f.Limit < 0 {
			return f, fmt.Errorf("limit %q is not a non-negative integer", limit)
		}
	}
	return f, nil
}

// parseTime accepts RFC 3339 or a Go duration meaning "that long ago".
func parseTime(s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if d, err := time.ParseDuration(s); err == nil {
		return time.Now().Add(-d), nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("%q is neither RFC 3339 nor a duration like 1h", s)
	}
	return t, nil
}

func (a *API) dlqList(w http.ResponseWriter, r *http.Request) {
	f, err := parseFilter(r)
	if err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	out, err := a.Broker.ListDLQ(r.Context(), f)
	if err != nil {
		writeError(w, statusOf(err), err)
		return
	}
	writeJSON(w, http.StatusOK, out)
}

func (a *API) dlqShow(w http.ResponseWriter, r *http.Request) {
	id, err := strconv.ParseUint(r.PathValue("id"), 10, 64)
	if err != nil {
		writeError(w, http.StatusBadRequest, fmt.Errorf("dead-letter id %q is not a number", r.PathValue("id")))
		return
	}
	e, err := a.Broker.GetDLQ(r.Context(), id)
	if err != nil {
		writeError(w, statusOf(err), err)
		return
	}
	writeJSON(w, http.StatusOK, e)
}

// replayBody selects what to replay: ids, or a filter (trigger, since,
// until), or all: true. An empty selection is refused so that a typo does
// not replay everything.
type replayBody struct {
	IDs     []uint64 `json:"ids"`
	Trigger string   `json:"trigger"`
	Since   string   `json:"since"`
	Until   string   `json:"until"`
	All     bool     `json:"all"`
}

func (a *API) dlqReplay(w http.ResponseWriter, r *http.Request) {
	var body replayBody
	if err := json.NewDecoder(http.MaxBytesReader(nil, r.Body, 1<<20)).Decode(&body); err != nil {
		writeError(w, http.StatusBadRequest, fmt.Errorf("replay request: %w", err))
		return
	}
	f, err := filterOf(body.Trigger, body.Since, body.Until, "")
	if err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	req := broker.ReplayRequest{IDs: body.IDs, Filter: f}
	if len(body.IDs) == 0 && body.Trigger == "" && body.Since == "" && body.Until == "" && !body.All {
		writeError(w, http.StatusBadRequest, errors.New("say what to replay: ids, a trigger, a time range, or all"))
		return
	}
	st, err := a.Broker.ReplayDLQ(r.Context(), req)
	if err != nil {
		writeError(w, statusOf(err), err)
		return
	}
	writeJSON(w, http.StatusAccepted, st)
}

func (a *API) dlqReplayStatus(w http.ResponseWriter, r *http.Request) {
	st := a.Broker.ReplayProgress(r.PathValue("id"))
	if st == nil {
		writeError(w, http.StatusNotFound, fmt.Errorf("replay %s: %w", r.PathValue("id"), ErrNotFound))
		return
	}
	writeJSON(w, http.StatusOK, st)
}

func (a *API) dlqPurge(w http.ResponseWriter, r *http.Request) {
	var body struct {
		Trigger string `json:"trigger"`
		All     bool   `json:"all"`
	}
	if err := json.NewDecoder(http.MaxBytesReader(nil, r.Body, 1<<20)).Decode(&body); err != nil {
		writeError(w, http.StatusBadRequest, fmt.Errorf("purge request: %w", err))
		return
	}
	if body.Trigger == "" && !body.All {
		writeError(w, http.StatusBadRequest, errors.New("say what to purge: a trigger, or all"))
		return
	}
	n, err := a.Broker.PurgeDLQ(r.Context(), body.Trigger)
	if err != nil {
		writeError(w, statusOf(err), err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]uint64{"purged": n})
}

func (a *API) status(w http.ResponseWriter, _ *http.Request) {
	loads, lastErr := a.Files.Status()
	st := map[string]any{"fileLoads": loads, "nats": a.Broker.NATSURL()}
	if lastErr != nil {
		st["fileError"] = lastErr.Error()
	}
	if err := a.Ready(); err != nil {
		st["ready"] = false
		st["notReady"] = err.Error()
	} else {
		st["ready"] = true
	}
	writeJSON(w, http.StatusOK, st)
}
