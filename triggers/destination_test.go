package triggers

import "testing"

func TestDestinationTarget(t *testing.T) {
	t.Parallel()
	tests := []struct {
		subscriber string
		want       Destination
		target     string
	}{{
		subscriber: "{ref: {apiVersion: weft.dev/v1, kind: Function, name: thumbnailer}}",
		want:       Destination{FunctionName: "thumbnailer"},
		target:     "function:thumbnailer",
	}, {
		subscriber: "{ref: {apiVersion: serving.knative.dev/v1, kind: Service, name: thumbnailer, namespace: prod}}",
		want:       Destination{FunctionName: "thumbnailer"},
		target:     "function:thumbnailer",
	}, {
		subscriber: "{ref: {apiVersion: weft.dev/v1, kind: Function, name: fn}, uri: /hooks/upload}",
		want:       Destination{FunctionName: "fn", URI: "/hooks/upload"},
		target:     "function:fn/hooks/upload",
	}, {
		subscriber: "{ref: {apiVersion: weft.dev/v1, kind: Function, name: fn}, uri: hooks/upload}",
		want:       Destination{FunctionName: "fn", URI: "/hooks/upload"},
		target:     "function:fn/hooks/upload",
	}, {
		subscriber: `{ref: {apiVersion: weft.dev/v1, kind: Function, name: fn}, uri: "/a%20b?x=1&y=2"}`,
		want:       Destination{FunctionName: "fn", URI: "/a%20b?x=1&y=2"},
		target:     "function:fn/a%20b?x=1&y=2",
	}, {
		subscriber: `{uri: "http://payments/hook"}`,
		want:       Destination{URI: "http://payments/hook"},
		target:     "http://payments/hook",
	}, {
		subscriber: `{uri: "https://example.com:8443/in?k=v"}`,
		want:       Destination{URI: "https://example.com:8443/in?k=v"},
		target:     "https://example.com:8443/in?k=v",
	}}
	for _, tc := range tests {
		tr, err := parseYAML(t, manifest("t", "subscriber: "+tc.subscriber))
		if err != nil {
			t.Errorf("%s: %v", tc.subscriber, err)
			continue
		}
		if tr.Subscriber != tc.want {
			t.Errorf("%s: Subscriber = %+v, want %+v", tc.subscriber, tr.Subscriber, tc.want)
		}
		if got := tr.Subscriber.Target(); got != tc.target {
			t.Errorf("%s: Target() = %q, want %q", tc.subscriber, got, tc.target)
		}
	}
}

func TestDestinationRefused(t *testing.T) {
	t.Parallel()
	for _, s := range []string{
		"{ref: {apiVersion: weft.dev/v1, kind: Service, name: payments}}",
		"{ref: {apiVersion: serving.knative.dev/v1, kind: Function, name: fn}}",
		"{ref: {apiVersion: v1, kind: Service, name: svc}}",
		"{ref: {apiVersion: weft.dev/v1, kind: Function, name: Fn}}",
		"{ref: {apiVersion: weft.dev/v1, kind: Function, name: fn}, uri: \"https://x/y\"}",
		"{ref: {apiVersion: weft.dev/v1, kind: Function, name: fn}, uri: \"//host/y\"}",
		"{ref: {apiVersion: weft.dev/v1, kind: Function, name: fn}, uri: \"/y#frag\"}",
		"{ref: {apiVersion: weft.dev/v1, kind: Function}}",
		`{uri: "/relative"}`,
		`{uri: "payments"}`,
		`{uri: "http:///nohost"}`,
		`{uri: "mailto:a@b"}`,
		`{uri: "http://bad host/"}`,
		`{}`,
	} {
		if tr, err := parseYAML(t, manifest("t", "subscriber: "+s)); err == nil {
			t.Errorf("%s accepted as %v, want an error", s, tr.Subscriber)
		}
	}
}
