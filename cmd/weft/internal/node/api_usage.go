package node

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/weft-dev/weft/internal/resource"
	"github.com/weft-dev/weft/workers"
)

// usage answers GET /api/v1/usage?function=&since=&until= with the JSON
// list of workers.Usage: what each function (or only ?function=) used in the
// buckets overlapping [since, until). since and until are RFC 3339 or a
// duration ago (1h), as for the DLQ; an empty since means everything the
// meter keeps, an empty until means now. A named function that used nothing
// gets one row of zeros, also when it no longer exists, since its usage
// outlives it.
func (a *API) usage(w http.ResponseWriter, r *http.Request) {
	if a.Meter == nil {
		writeError(w, http.StatusServiceUnavailable, errors.New("metering is off on this node"))
		return
	}
	q := r.URL.Query()
	function := q.Get("function")
	if function != "" {
		if err := resource.ValidateName(function); err != nil {
			writeError(w, http.StatusBadRequest, fmt.Errorf("function: %w", err))
			return
		}
	}
	since, err := parseTime(q.Get("since"))
	if err != nil {
		writeError(w, http.StatusBadRequest, fmt.Errorf("since: %w", err))
		return
	}
	until, err := parseTime(q.Get("until"))
	if err != nil {
		writeError(w, http.StatusBadRequest, fmt.Errorf("until: %w", err))
		return
	}
	if !since.IsZero() && !until.IsZero() && !until.After(since) {
		writeError(w, http.StatusBadRequest, fmt.Errorf("until %s is not after since %s", q.Get("until"), q.Get("since")))
		return
	}
	out := a.Meter.Usage(function, since, until)
	if out == nil {
		out = []workers.Usage{}
	}
	writeJSON(w, http.StatusOK, out)
}
