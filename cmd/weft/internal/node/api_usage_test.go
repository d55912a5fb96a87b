package node

import (
	"encoding/json"
	"math"
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"
	"time"

	"github.com/weft-dev/weft/workers"
)

func TestAPIUsage(t *testing.T) {
	t.Parallel()
	m := workers.NewMeter(workers.MeterConfig{}, discard())
	now := time.Now()
	m.Invocation("beta", now.Add(-10*time.Minute), 200*time.Millisecond, false)
	m.Invocation("beta", now.Add(-10*time.Minute), 400*time.Millisecond, true)
	m.Invocation("alpha", now.Add(-3*time.Hour), time.Second, false)
	h := http.HandlerFunc((&API{Meter: m}).usage)

	get := func(t *testing.T, query url.Values, status int) []workers.Usage {
		t.Helper()
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", "/api/v1/usage?"+query.Encode(), nil))
		if rec.Code != status {
			t.Fatalf("GET ?%s = %d %s, want %d", query.Encode(), rec.Code, rec.Body, status)
		}
		if status != http.StatusOK {
			var e apiError
			if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil || e.Error == "" {
				t.Fatalf("error body %q: %v", rec.Body, err)
			}
			return nil
		}
		var out []workers.Usage
		if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil {
			t.Fatalf("body %q: %v", rec.Body, err)
		}
		return out
	}

	t.Run("all", func(t *testing.T) {
		got := get(t, url.Values{}, http.StatusOK)
		if len(got) != 2 || got[0].Function != "alpha" || got[1].Function != "beta" {
			t.Fatalf("usage = %+v, want alpha and beta", got)
		}
	})
	t.Run("since a duration ago", func(t *testing.T) {
		got := get(t, url.Values{"since": {"1h"}}, http.StatusOK)
		if len(got) != 1 || got[0].Function != "beta" || got[0].Invocations != 2 || got[0].Failures != 1 || math.Abs(got[0].MeanDurationMS-300) > 1e-6 {
			t.Fatalf("usage = %+v, want beta: 2 invocations, 1 failure, mean 300ms", got)
		}
	})
	t.Run("one function, RFC 3339", func(t *testing.T) {
		q := url.Values{"function": {"alpha"}, "since": {now.Add(-4 * time.Hour).Format(time.RFC3339)}, "until": {"2h"}}
		got := get(t, q, http.StatusOK)
		if len(got) != 1 || got[0].Invocations != 1 {
			t.Fatalf("usage = %+v, want alpha's invocation", got)
		}
	})
	t.Run("nothing in the window", func(t *testing.T) {
		if got := get(t, url.Values{"since": {"1m"}}, http.StatusOK); got == nil || len(got) != 0 {
			t.Fatalf("usage = %#v, want []", got)
		}
	})
	for name, q := range map[string]url.Values{
		"bad since":        {"since": {"yesterday"}},
		"bad until":        {"until": {"soon"}},
		"until before":     {"since": {"1h"}, "until": {"2h"}},
		"invalid function": {"function": {"Not_A_Name"}},
	} {
		t.Run(name, func(t *testing.T) { get(t, q, http.StatusBadRequest) })
	}
	t.Run("metering off", func(t *testing.T) {
		rec := httptest.NewRecorder()
		(&API{}).usage(rec, httptest.NewRequest("GET", "/api/v1/usage", nil))
		if rec.Code != http.StatusServiceUnavailable {
			t.Fatalf("status = %d, want 503", rec.Code)
		}
	})
}
