package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/google/uuid"

	"github.com/weft-dev/weft/internal/ceclient"
	"github.com/weft-dev/weft/router"
)

func (a *API) services(w http.ResponseWriter, _ *http.Request) {
	if a.Router == nil {
		writeJSON(w, http.StatusOK, []router.ServiceStatus{})
		return
	}
	writeJSON(w, http.StatusOK, a.Router.Status())
}

// invokeTimeout bounds a synchronous call when the client sets none.
const invokeTimeout = 60 * time.Second

// invoke sends a CloudEvent (type dev.weft.invoke unless ?type= says
// otherwise) with the request's body as data to a Function or Service
// through the router and answers with the reply event, structured, or 204
// when the callee accepted it without one.
func (a *API) invoke(w http.ResponseWriter, r *http.Request) {
	a.invokes.add()
	defer a.invokes.done()
	name := r.PathValue("name")
	if a.Router == nil || !a.Router.Resolves(name) {
		writeError(w, http.StatusNotFound, fmt.Errorf("no function or service %q: %w", name, ErrNotFound))
		return
	}
	data, err := io.ReadAll(http.MaxBytesReader(nil, r.Body, 1<<20))
	if err != nil {
		writeError(w, http.StatusBadRequest, fmt.Errorf("read body: %w", err))
		return
	}
	ev := event.New()
	ev.SetID(uuid.NewString())
	ev.SetSource("/weft/invoke")
	ev.SetType("dev.weft.invoke")
	if t := r.URL.Query().Get("type"); t != "" {
		ev.SetType(t)
	}
	if len(data) > 0 {
		ct := r.Header.Get("Content-Type")
		if ct == "" {
			ct = "application/json"
		}
		if err := ev.SetData(ct, data); err != nil {
			writeError(w, http.StatusBadRequest, fmt.Errorf("data: %w", err))
			return
		}
	}
	ctx, cancel := context.WithTimeout(r.Context(), invokeTimeout)
	defer cancel()
	reply, err := ceclient.Send(ctx, &http.Client{Transport: a.Router}, "http://"+name+"/", ev)
	if err != nil {
		if se, ok := ceclient.IsStatus(err); ok {
			writeJSON(w, http.StatusBadGateway, map[string]any{"error": err.Error(), "status": se.Code, "body": string(se.Body)})
			return
		}
		status := http.StatusBadGateway
		switch {
		case errors.Is(err, router.ErrUnknownHost):
			status = http.StatusNotFound
		case router.IsUnavailable(err):
			status = http.StatusServiceUnavailable
			w.Header().Set("Retry-After", router.RetryAfterUnavailable)
		}
		writeError(w, status, err)
		return
	}
	if reply == nil {
		w.WriteHeader(http.StatusNoContent)
		return
	}
	body, err := json.Marshal(reply)
	if err != nil {
		writeError(w, http.StatusInternalServerError, err)
		return
	}
	w.Header().Set("Content-Type", "application/cloudevents+json")
	_, _ = w.Write(body)
}
