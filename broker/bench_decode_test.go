package broker

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/binding"
	"github.com/cloudevents/sdk-go/v2/event"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	"github.com/nats-io/nats.go"
)

// BenchmarkIngressDecode measures the ingress's decoding and validation of
// one request (decodeHTTP, decodeNATSMsg) for each content mode, 1 KiB of
// data per event, against sdk-go decoding the same request on its own
// (binding.ToEvent, or ToEvents for a batch, then Event.Validate), measured
// in the same run:
//
//	go test -run '^$' -bench BenchmarkIngressDecode -benchmem ./broker
//
// The two decode in turn, request by request; x-sdk-go is weft's time over
// sdk-go's.
// weft checks more than sdk-go (the CloudEvents String type, extension
// names, duplicate members, percent-encoding), so a ratio above 1 is the
// price of those checks.
func BenchmarkIngressDecode(b *testing.B) {
	data := `"` + strings.Repeat("x", 1024) + `"`
	structured := `{"specversion":"1.0","id":"bench-1","source":"/bench","type":"dev.weft.bench","time":"2026-12-06T10:00:00Z","datacontenttype":"application/json","myext":"v","data":` + data + `}`
	var batch strings.Builder
	batch.WriteString("[")
	for i := range 10 {
		if i > 0 {
			batch.WriteString(",")
		}
		batch.WriteString(strings.Replace(structured, "bench-1", fmt.Sprintf("bench-%d", i), 1))
	}
	batch.WriteString("]")
	binaryHeader := http.Header{
		"Ce-Specversion": {"1.0"}, "Ce-Id": {"bench-1"}, "Ce-Source": {"/bench"}, "Ce-Type": {"dev.weft.bench"},
		"Ce-Time": {"2026-12-06T10:00:00Z"}, "Ce-Myext": {"v"}, "Content-Type": {"application/json"},
	}
	cases := []struct {
		name   string
		header http.Header
		body   string
		events int
	}{
		{"binary", binaryHeader, data, 1},
		{"structured", http.Header{"Content-Type": {"application/cloudevents+json"}}, structured, 1},
		{"batch10", http.Header{"Content-Type": {"application/cloudevents-batch+json"}}, batch.String(), 10},
	}
	for _, c := range cases {
		b.Run("http/"+c.name, func(b *testing.B) {
			body := []byte(c.body)
			var d decodeTimes
			for b.Loop() {
				d.weft(func() error {
					evs, err := decodeHTTP(c.header, body)
					if err == nil && len(evs) != c.events {
						err = fmt.Errorf("%d events", len(evs))
					}
					return err
				})
				d.sdk(func() error {
					n, err := sdkDecodeHTTP(c.header, body)
					if err == nil && n != c.events {
						err = fmt.Errorf("%d events", n)
					}
					return err
				})
			}
			d.report(b, c.events)
		})
	}
	b.Run("nats/structured", func(b *testing.B) {
		msg := &nats.Msg{Subject: "weft.in.bench", Data: []byte(structured)}
		var d decodeTimes
		for b.Loop() {
			d.weft(func() error {
				_, err := decodeNATSMsg(msg)
				return err
			})
			d.sdk(func() error {
				ev := event.New()
				if err := ev.UnmarshalJSON(msg.Data); err != nil {
					return err
				}
				return ev.Validate()
			})
		}
		d.report(b, 1)
	})
}

// decodeTimes adds up the time of weft's and sdk-go's decoding, one request
// each in turn, so that both meet the same machine.
type decodeTimes struct {
	weftSide, sdkSide decodeSide
}

// decodeSide is one decoder's total time and first error.
type decodeSide struct {
	ns  int64
	err error
}

func (s *decodeSide) time(f func() error) {
	start := time.Now()
	err := f()
	s.ns += time.Since(start).Nanoseconds()
	if s.err == nil {
		s.err = err
	}
}

func (d *decodeTimes) weft(f func() error) { d.weftSide.time(f) }
func (d *decodeTimes) sdk(f func() error)  { d.sdkSide.time(f) }

func (d *decodeTimes) report(b *testing.B, events int) {
	if d.weftSide.err != nil || d.sdkSide.err != nil {
		b.Fatalf("weft: %v; sdk-go: %v", d.weftSide.err, d.sdkSide.err)
	}
	b.ReportMetric(float64(d.weftSide.ns)/float64(b.N*events), "weft-ns/event")
	b.ReportMetric(float64(d.sdkSide.ns)/float64(b.N*events), "sdk-ns/event")
	b.ReportMetric(float64(d.weftSide.ns)/float64(d.sdkSide.ns), "x-sdk-go")
}

// sdkDecodeHTTP is what an sdk-go HTTP receiver does with a request.
func sdkDecodeHTTP(h http.Header, body []byte) (int, error) {
	msg := cehttp.NewMessage(h, io.NopCloser(bytes.NewReader(body)))
	if msg.ReadEncoding() == binding.EncodingBatch {
		evs, err := binding.ToEvents(context.Background(), msg, msg.BodyReader)
		if err != nil {
			return 0, err
		}
		for i := range evs {
			if err := evs[i].Validate(); err != nil {
				return 0, err
			}
		}
		return len(evs), nil
	}
	ev, err := binding.ToEvent(context.Background(), msg)
	if err != nil {
		return 0, err
	}
	return 1, ev.Validate()
}
