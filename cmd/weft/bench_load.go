package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/google/uuid"
	"github.com/spf13/cobra"
)

// loadConfig is one `weft bench load` run: an open-loop generator for fault
// tests (issue 6). Requests leave on a fixed schedule whatever the answers,
// as real publishers do, so an overloaded node sees the load it would see,
// not a load that politely slows down with it.
type loadConfig struct {
	Server      string
	Rate        int           // events per second offered
	Duration    time.Duration // how long to offer them
	Connections int           // requests in flight at most: the generator's own limit
	Size        int           // bytes of event data
	Source      string        // ce-source of every event
	Record      string        // file that gets one JSON line per acknowledged event
}

func (c loadConfig) validate() error {
	switch {
	case c.Rate < 1:
		return fmt.Errorf("--rate %d: want at least 1 event per second", c.Rate)
	case c.Duration <= 0:
		return fmt.Errorf("--duration %s: want more than 0", c.Duration)
	case c.Connections < 1:
		return fmt.Errorf("--connections %d: want at least 1", c.Connections)
	case c.Size < 0:
		return fmt.Errorf("--size %d: want 0 or more", c.Size)
	case c.Source == "":
		return errors.New("--source: want a URI-reference")
	}
	return nil
}

// loadReport is what `weft bench load` prints.
type loadReport struct {
	Offered int `json:"offered"` // requests the schedule called for
	Sent    int `json:"sent"`
	// NotSent found every connection busy when due: the generator's limit,
	// not the node's answer.
	NotSent         int            `json:"notSent"`
	Statuses        map[string]int `json:"statuses"`        // by HTTP status
	NoRetryAfter    int            `json:"noRetryAfter"`    // 429 and 503 answers without Retry-After
	TransportErrors int            `json:"transportErrors"` // no answer at all
	FirstError      string         `json:"firstError,omitempty"`
	AcceptedPerSec  float64        `json:"acceptedPerSec"`
	OfferedPerSec   float64        `json:"offeredPerSec"`
	SentPerSec      float64        `json:"sentPerSec"`
	LatencyMS       loadLatency    `json:"latencyMs"` // of every answer
	Seconds         float64        `json:"seconds"`
}

type loadLatency struct {
	P50 float64 `json:"p50"`
	P99 float64 `json:"p99"`
	Max float64 `json:"max"`
}

// ackRecord is one line of --record: an event the node acknowledged.
type ackRecord struct {
	Source string `json:"source"`
	ID     string `json:"id"`
}

func newBenchLoadCmd(g *globals) *cobra.Command {
	c := loadConfig{Rate: 1000, Duration: 10 * time.Second, Connections: 1024, Size: 256}
	cmd := &cobra.Command{
		Use:   "load --rate N [--duration 10s] [--connections 1024] [--record FILE]",
		Short: "Open-loop load: offer --rate events/s whatever the answers, count every status, record what was acknowledged",
		Long: `Open loop: every 1/--rate seconds a binary-mode CloudEvent (unique id) is POSTed to
the node's ingress, whatever happened to the earlier ones, on at most
--connections connections at once; a request due while all are busy is counted
as not sent (the generator's limit, reported apart). Every answer is counted by
status, 429 and 503 answers without Retry-After are counted, and with --record
every acknowledged (source, id) is appended to FILE as a JSON line, for a
checker to compare with what was delivered.

Exit 1 when the node answered nothing with 202, 6 when it cannot be reached.`,
		Example: `  weft bench load --rate 20000 --duration 60s --record acked.jsonl -o json`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c.Server = g.server
			if c.Source == "" {
				c.Source = "/weft/bench/load/" + uuid.NewString()
			}
			if err := c.validate(); err != nil {
				return withCode(exitUsage, err)
			}
			if err := checkBenchOutput(g); err != nil {
				return err
			}
			if err := requireNode(cmd.Context(), g); err != nil {
				return err
			}
			var record io.Writer
			if c.Record != "" {
				f, err := os.OpenFile(c.Record, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
				if err != nil {
					return withCode(exitUsage, fmt.Errorf("--record: %w", err))
				}
				defer f.Close()
				bw := bufio.NewWriter(f)
				defer bw.Flush()
				record = bw
			}
			rep, err := benchLoad(cmd.Context(), c, record)
			if err != nil {
				return err
			}
			if err := printReport(g, rep); err != nil {
				return err
			}
			if rep.Statuses["202"] == 0 {
				return withCode(exitError, fmt.Errorf("no event acknowledged (%d transport errors: %s)", rep.TransportErrors, rep.FirstError))
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.IntVar(&c.Rate, "rate", c.Rate, "events per second to offer")
	f.DurationVar(&c.Duration, "duration", c.Duration, "how long to offer them")
	f.IntVar(&c.Connections, "connections", c.Connections, "requests in flight at most (the generator's own limit)")
	f.IntVar(&c.Size, "size", c.Size, "bytes of event data")
	f.StringVar(&c.Source, "source", "", "ce-source of the events (default /weft/bench/load/<uuid>)")
	f.StringVar(&c.Record, "record", "", "append every acknowledged (source, id) to this file as a JSON line")
	return cmd
}

// benchLoad offers the load and gathers the answers. record, if not nil,
// gets the acknowledged events; it is written by one goroutine.
func benchLoad(ctx context.Context, c loadConfig, record io.Writer) (*loadReport, error) {
	tr := &http.Transport{
		MaxIdleConns: c.Connections, MaxIdleConnsPerHost: c.Connections, MaxConnsPerHost: c.Connections,
		DialContext: (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	data := `{"pad":"` + strings.Repeat("x", max(c.Size-10, 0)) + `"}`

	type answer struct {
		id         string
		status     int
		retryAfter bool
		latency    time.Duration
		err        error
	}
	answers := make(chan answer, c.Connections)
	slots := make(chan struct{}, c.Connections)
	rep := &loadReport{Statuses: map[string]int{}}
	var latencies []time.Duration
	collected := make(chan struct{})
	var recErr error
	go func() { // owned: ends when answers is closed below
		defer close(collected)
		enc := json.NewEncoder(io.Discard)
		if record != nil {
			enc = json.NewEncoder(record)
		}
		for a := range answers {
			if a.err != nil {
				rep.TransportErrors++
				if rep.FirstError == "" {
					rep.FirstError = a.err.Error()
				}
				continue
			}
			rep.Statuses[strconv.Itoa(a.status)]++
			latencies = append(latencies, a.latency)
			if (a.status == http.StatusTooManyRequests || a.status == http.StatusServiceUnavailable) && !a.retryAfter {
				rep.NoRetryAfter++
			}
			if a.status == http.StatusAccepted && recErr == nil {
				recErr = enc.Encode(ackRecord{Source: c.Source, ID: a.id})
			}
		}
	}()

	var wg sync.WaitGroup
	start := time.Now()
	interval := time.Second / time.Duration(c.Rate)
	ctx, cancel := context.WithTimeout(ctx, c.Duration)
	defer cancel()
	timer := time.NewTimer(0)
	defer timer.Stop()
	runID := uuid.NewString()[:8]
schedule:
	for seq := 0; ; seq++ {
		due := start.Add(time.Duration(seq) * interval)
		if d := time.Until(due); d > 0 {
			timer.Reset(d)
			select {
			case <-timer.C:
			case <-ctx.Done():
				break schedule
			}
		} else if ctx.Err() != nil {
			break
		}
		rep.Offered++
		select {
		case slots <- struct{}{}:
		default:
			rep.NotSent++
			continue
		}
		rep.Sent++
		id := fmt.Sprintf("%s-%d", runID, seq)
		wg.Go(func() {
			defer func() { <-slots }()
			req, err := http.NewRequestWithContext(context.WithoutCancel(ctx), http.MethodPost, c.Server+"/", strings.NewReader(data))
			if err != nil {
				answers <- answer{id: id, err: err}
				return
			}
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("ce-specversion", "1.0")
			req.Header.Set("ce-id", id)
			req.Header.Set("ce-source", c.Source)
			req.Header.Set("ce-type", "dev.weft.bench.load")
			t0 := time.Now()
			resp, err := client.Do(req)
			if err != nil {
				answers <- answer{id: id, err: err}
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			answers <- answer{id: id, status: resp.StatusCode, retryAfter: resp.Header.Get("Retry-After") != "", latency: time.Since(t0)}
		})
	}
	wg.Wait()
	close(answers)
	<-collected
	if recErr != nil {
		return nil, fmt.Errorf("--record: %w", recErr)
	}
	secs := time.Since(start).Seconds()
	rep.Seconds = secs
	rep.OfferedPerSec = float64(rep.Offered) / c.Duration.Seconds()
	rep.SentPerSec = float64(rep.Sent) / c.Duration.Seconds()
	rep.AcceptedPerSec = float64(rep.Statuses["202"]) / c.Duration.Seconds()
	slices.Sort(latencies)
	if len(latencies) > 0 {
		rep.LatencyMS = loadLatency{P50: ms(percentile(latencies, 0.50)), P99: ms(percentile(latencies, 0.99)), Max: ms(latencies[len(latencies)-1])}
	}
	return rep, nil
}

func (r *loadReport) writeTable(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "offered\t%d (%.0f/s)\n", r.Offered, r.OfferedPerSec)
	fmt.Fprintf(tw, "sent\t%d (%.0f/s); not sent, every connection busy: %d\n", r.Sent, r.SentPerSec, r.NotSent)
	codes := make([]string, 0, len(r.Statuses))
	for code := range r.Statuses {
		codes = append(codes, code)
	}
	slices.Sort(codes)
	for _, code := range codes {
		fmt.Fprintf(tw, "status %s\t%d\n", code, r.Statuses[code])
	}
	fmt.Fprintf(tw, "accepted\t%.0f events/s\n", r.AcceptedPerSec)
	fmt.Fprintf(tw, "429/503 without Retry-After\t%d\n", r.NoRetryAfter)
	fmt.Fprintf(tw, "transport errors\t%d\n", r.TransportErrors)
	fmt.Fprintf(tw, "latency p50 / p99 / max\t%.2f / %.2f / %.2f ms\n", r.LatencyMS.P50, r.LatencyMS.P99, r.LatencyMS.Max)
	return tw.Flush()
}
