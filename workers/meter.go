package workers

import (
	"context"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// MeterConfig configures a Meter. The zero value is usable: every zero or
// negative duration takes the default its comment names.
type MeterConfig struct {
	// Bucket is the width of one accounting window. Usage is kept, expired
	// and summed in whole buckets, aligned to the Unix epoch. Default 1m.
	Bucket time.Duration
	// Retention is how long buckets are kept: a bucket is dropped once it
	// ended more than Retention ago. Default 24h.
	Retention time.Duration
	// SampleEvery is how often Run reads /proc. Default 5s.
	SampleEvery time.Duration
}

func (c MeterConfig) withDefaults() MeterConfig {
	if c.Bucket <= 0 {
		c.Bucket = time.Minute
	}
	if c.Retention <= 0 {
		c.Retention = 24 * time.Hour
	}
	if c.SampleEvery <= 0 {
		c.SampleEvery = 5 * time.Second
	}
	return c
}

// MeterOption sets optional infrastructure of a Meter.
type MeterOption func(*Meter)

// WithMeterClock makes the Meter read the time from now instead of
// time.Now: for Invocation's retention check, Track, Untrack, Usage's "now"
// and Run's samples. Tests use it to move through buckets without waiting.
func WithMeterClock(now func() time.Time) MeterOption {
	return func(m *Meter) { m.now = now }
}

// gibibyte is the "GB" of GB-seconds, as serverless platforms bill memory
// (AWS Lambda: 1 GB-second = 1024 MB for one second).
const gibibyte = 1 << 30

// Meter accounts what functions use, the way serverless platforms bill:
// invocations, failures and their duration (reported by the Pool through
// Invocation), and the CPU-seconds and memory of their processes (sampled
// from /proc for every process group registered with Track). It keeps the
// figures in buckets of MeterConfig.Bucket for MeterConfig.Retention, and
// also lifetime totals per function for the Prometheus Collector.
//
// How it measures:
//   - An invocation counts in the bucket of its start, with its whole
//     duration (time spent waiting for a free instance is not included;
//     the Pool measures only the request to the instance).
//   - CPU: at each sample, the sum over every process whose pgrp is the
//     instance's process group of utime+stime+cutime+cstime; the growth since
//     the previous sample is CPU-seconds (at clockTicks() per second). Reaped
//     children count through their parent's cutime/cstime, so a `go run`
//     compile or a finished helper is not lost. The CPU a process used after
//     the last sample is lost if it is reaped by no process of its group;
//     Untrack therefore samples the group once more, which catches the
//     leader when it is called before the leader is reaped.
//   - Memory: RSS summed over the group's processes at each sample;
//     RSS × time since the group's previous sample (or since Track) gives
//     byte-seconds, reported as GB-seconds (GB = 2^30 bytes). Peak RSS is
//     the largest sum over a function's instances seen at a sample.
//   - A sample's CPU and byte-seconds are spread over the buckets the
//     elapsed interval covers, in proportion to time.
//
// A nil *Meter is valid and records nothing, so metering can be left off.
// All methods are safe for concurrent use.
//
// Lock order: sampleMu, then mu. Reading /proc happens under sampleMu only,
// so Invocation and Usage never wait for it.
type Meter struct {
	cfg      MeterConfig
	log      *slog.Logger
	now      func() time.Time
	procRoot string  // "/proc"; tests point it at a fixture tree
	tick     float64 // seconds per clock tick

	sampleMu sync.Mutex // serialises samples so that each group's baseline moves forward in order

	mu      sync.Mutex
	fns     map[string]*fnUsage
	groups  map[string]*procGroup // by instance
	low     int64                 // the oldest bucket kept; older ones are dropped
	procErr bool                  // a failure to read /proc was logged
}

// fnUsage is one function's figures; guarded by Meter.mu.
type fnUsage struct {
	buckets map[int64]*meterBucket // by bucket index
	total   meterBucket            // since the Meter was created, for the Collector
}

// meterBucket holds one function's usage in one bucket.
type meterBucket struct {
	invocations, failures int64
	duration              float64 // seconds
	cpu                   float64 // seconds
	byteSeconds           float64
	peakRSS               int64 // bytes
}

// procGroup is one tracked instance's process group; guarded by Meter.mu.
type procGroup struct {
	function string
	pgid     int
	ticks    uint64    // the group's CPU at the last sample
	rss      int64     // the group's RSS at the last sample, bytes
	at       time.Time // of the last sample, or of Track
}

// NewMeter returns a Meter that samples nothing until Run or Sample is
// called. A nil log discards.
func NewMeter(cfg MeterConfig, log *slog.Logger, opts ...MeterOption) *Meter {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m := &Meter{
		cfg:      cfg.withDefaults(),
		log:      log,
		now:      time.Now,
		procRoot: "/proc",
		tick:     1 / float64(clockTicks()),
		fns:      map[string]*fnUsage{},
		groups:   map[string]*procGroup{},
	}
	for _, o := range opts {
		o(m)
	}
	m.low = m.index(m.now().Add(-m.cfg.Retention))
	return m
}

// index returns the number of the bucket holding t.
func (m *Meter) index(t time.Time) int64 {
	n, w := t.UnixNano(), int64(m.cfg.Bucket)
	k := n / w
	if n%w < 0 {
		k--
	}
	return k
}

// start returns the start of bucket k.
func (m *Meter) start(k int64) time.Time { return time.Unix(0, k*int64(m.cfg.Bucket)).UTC() }

// Invocation records one request to an instance of function that started
// at start, took d and failed (a transport error, a timeout or a non-2xx
// answer) or not. It counts in the bucket holding start; a start older
// than the retention is counted only in the lifetime totals.
func (m *Meter) Invocation(function string, start time.Time, d time.Duration, failed bool) {
	if m == nil {
		return
	}
	sec := max(d, 0).Seconds()
	now := m.now()
	m.mu.Lock()
	defer m.mu.Unlock()
	m.expireLocked(now)
	fu := m.fnLocked(function)
	add := func(b *meterBucket) {
		b.invocations++
		if failed {
			b.failures++
		}
		b.duration += sec
	}
	add(&fu.total)
	if b := m.bucketLocked(fu, m.index(start)); b != nil {
		add(b)
	}
}

// Track starts metering the process group of one instance of function: pid
// is the group's leader, started with Setpgid so that its pgid is pid, and
// every process of the group counts. Tracking an instance again replaces
// its previous group (call Untrack first to keep that one's last slice).
func (m *Meter) Track(function, instance string, pid int) {
	if m == nil || pid <= 0 {
		return
	}
	now := m.now()
	m.mu.Lock()
	defer m.mu.Unlock()
	m.fnLocked(function)
	m.groups[instance] = &procGroup{function: function, pgid: pid, at: now}
}

// Untrack stops metering the instance's process group, after sampling it a
// last time. Call it when the leader has exited but before it is reaped
// (after waitid with WNOWAIT): the zombie still holds its CPU counters and
// the group id. Called later, the last slice since the previous sample is
// lost. What was recorded stays. It reads /proc and so takes a few
// milliseconds; unknown instances are ignored.
func (m *Meter) Untrack(instance string) {
	if m == nil {
		return
	}
	m.sampleMu.Lock()
	defer m.sampleMu.Unlock()
	m.mu.Lock()
	g := m.groups[instance]
	m.mu.Unlock()
	if g == nil {
		return
	}
	now := m.now()
	stats, err := scanGroups(m.procRoot, map[int]bool{g.pgid: true})
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.groups[instance] != g {
		return // tracked anew meanwhile
	}
	delete(m.groups, instance)
	if err != nil {
		m.procFailedLocked(err)
		return
	}
	if st := stats[g.pgid]; st.procs > 0 {
		m.sampleGroupLocked(g, st, now)
		m.peakLocked(g.function, now, st.rssBytes)
	}
}

// Sample reads /proc once and accounts, for every tracked process group,
// the CPU it used since the previous sample and its RSS × the time since
// then, and updates peak RSS, all in the buckets of the interval ending at
// now. A group with no process left is forgotten (its leader was reaped
// without Untrack). Sample also drops buckets past the retention. Run calls
// it every MeterConfig.SampleEvery; tests call it with chosen times.
func (m *Meter) Sample(now time.Time) {
	if m == nil {
		return
	}
	m.sampleMu.Lock()
	defer m.sampleMu.Unlock()
	m.mu.Lock()
	snap := make(map[string]*procGroup, len(m.groups))
	pgids := make(map[int]bool, len(m.groups))
	for inst, g := range m.groups {
		snap[inst] = g
		pgids[g.pgid] = true
	}
	m.mu.Unlock()

	var stats map[int]groupStat
	var err error
	if len(pgids) > 0 { // nothing to read when nothing runs
		stats, err = scanGroups(m.procRoot, pgids)
	}

	m.mu.Lock()
	defer m.mu.Unlock()
	m.expireLocked(now)
	if err != nil {
		m.procFailedLocked(err)
		return
	}
	touched := map[string]bool{}
	for inst, g := range snap {
		if m.groups[inst] != g {
			continue // untracked or replaced during the scan
		}
		st := stats[g.pgid]
		if st.procs == 0 {
			delete(m.groups, inst)
			m.log.Debug("metered process group gone without Untrack", "function", g.function, "instance", inst, "pgid", g.pgid)
			continue
		}
		m.sampleGroupLocked(g, st, now)
		touched[g.function] = true
	}
	for fn := range touched {
		m.peakLocked(fn, now, 0)
	}
}

// sampleGroupLocked accounts one reading of g taken at now.
func (m *Meter) sampleGroupLocked(g *procGroup, st groupStat, now time.Time) {
	var dt uint64
	if st.ticks > g.ticks {
		dt = st.ticks - g.ticks
	}
	// A smaller total means a member left (reaped from outside the group):
	// it becomes the new baseline, and what that member used since the last
	// sample is lost.
	g.ticks = st.ticks
	from := g.at
	if now.Before(from) {
		from = now
	}
	g.rss = st.rssBytes
	g.at = now
	m.spreadLocked(g.function, from, now, float64(dt)*m.tick, float64(st.rssBytes)*now.Sub(from).Seconds())
}

// peakLocked raises the peak RSS of function's bucket at now to the sum of
// its tracked groups' last RSS, plus extra bytes of a group just untracked.
func (m *Meter) peakLocked(function string, now time.Time, extra int64) {
	sum := extra
	for _, g := range m.groups {
		if g.function == function {
			sum += g.rss
		}
	}
	if b := m.bucketLocked(m.fnLocked(function), m.index(now)); b != nil {
		b.peakRSS = max(b.peakRSS, sum)
	}
}

// spreadLocked adds cpu seconds and byteSec byte-seconds used during
// [from, to] to the lifetime totals, and to the buckets that interval
// covers in proportion to the time in each, skipping expired ones.
func (m *Meter) spreadLocked(function string, from, to time.Time, cpu, byteSec float64) {
	fu := m.fnLocked(function)
	fu.total.cpu += cpu
	fu.total.byteSeconds += byteSec
	span := to.Sub(from)
	if span <= 0 {
		if b := m.bucketLocked(fu, m.index(to)); b != nil {
			b.cpu += cpu
			b.byteSeconds += byteSec
		}
		return
	}
	t := from
	if horizon := m.start(m.low); t.Before(horizon) {
		t = horizon // at most Retention/Bucket+1 buckets to visit
	}
	for t.Before(to) {
		k := m.index(t)
		end := m.start(k + 1)
		if end.After(to) {
			end = to
		}
		frac := float64(end.Sub(t)) / float64(span)
		if b := m.bucketLocked(fu, k); b != nil {
			b.cpu += cpu * frac
			b.byteSeconds += byteSec * frac
		}
		t = end
	}
}

func (m *Meter) fnLocked(function string) *fnUsage {
	fu := m.fns[function]
	if fu == nil {
		fu = &fnUsage{buckets: map[int64]*meterBucket{}}
		m.fns[function] = fu
	}
	return fu
}

// bucketLocked returns bucket k of fu, creating it; nil when k is expired.
func (m *Meter) bucketLocked(fu *fnUsage, k int64) *meterBucket {
	if k < m.low {
		return nil
	}
	b := fu.buckets[k]
	if b == nil {
		b = &meterBucket{}
		fu.buckets[k] = b
	}
	return b
}

// expireLocked drops the buckets that ended more than Retention before now.
// It does work only when now reached a new bucket.
func (m *Meter) expireLocked(now time.Time) {
	low := m.index(now.Add(-m.cfg.Retention))
	if low <= m.low {
		return
	}
	m.low = low
	for _, fu := range m.fns {
		for k := range fu.buckets {
			if k < low {
				delete(fu.buckets, k)
			}
		}
	}
}

func (m *Meter) procFailedLocked(err error) {
	if !m.procErr {
		m.procErr = true
		m.log.Warn("cannot read /proc: CPU and memory of functions are not metered", "err", err)
	}
}

// Run samples every MeterConfig.SampleEvery until ctx ends, then returns
// nil. The first sample is taken one interval after the start.
func (m *Meter) Run(ctx context.Context) error {
	t := time.NewTicker(m.cfg.SampleEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			m.Sample(m.now())
		}
	}
}

// Usage is what one function used in a time window, the answer of
// `weft usage` and GET /api/v1/usage.
type Usage struct {
	Function string `json:"function"`
	// Since and Until bound the buckets summed: the window asked for,
	// widened to whole buckets, starting no earlier than the retention
	// allows and ending no later than now.
	Since time.Time `json:"since"`
	Until time.Time `json:"until"`
	// Invocations counts requests that started in the window; Failures
	// those of them that failed.
	Invocations int64 `json:"invocations"`
	Failures    int64 `json:"failures"`
	// DurationSeconds sums their durations; MeanDurationMS is the mean per
	// invocation in milliseconds, 0 without invocations.
	DurationSeconds float64 `json:"durationSeconds"`
	MeanDurationMS  float64 `json:"meanDurationMs"`
	// CPUSeconds is the CPU (user and system) the function's processes used.
	CPUSeconds float64 `json:"cpuSeconds"`
	// PeakRSSBytes is the largest resident memory of all the function's
	// instances together at one sample.
	PeakRSSBytes int64 `json:"peakRssBytes"`
	// MemoryGBSeconds is RSS integrated over time, in GB-seconds with
	// GB = 2^30 bytes.
	MemoryGBSeconds float64 `json:"memoryGbSeconds"`
}

// Usage sums the buckets that overlap [since, until) for function, or for
// every function with usage in that window when function is "" (sorted by
// name). A zero since means since the oldest bucket kept; a zero until
// means now. A named function always gets one entry, zero when it used
// nothing. Nil when until is not after since.
func (m *Meter) Usage(function string, since, until time.Time) []Usage {
	if m == nil {
		return nil
	}
	now := m.now()
	m.mu.Lock()
	defer m.mu.Unlock()
	m.expireLocked(now)
	if until.IsZero() || until.After(now) {
		until = now
	}
	if !since.IsZero() && !until.After(since) {
		return nil
	}
	lo := m.low
	if !since.IsZero() {
		lo = max(lo, m.index(since))
	}
	hi := m.index(until.Add(-1)) // the last bucket that starts before until
	from, end := m.start(lo), m.start(hi+1)
	if end.After(now) {
		end = now
	}
	if end.Before(from) { // the window ended before the retention horizon
		end = from
	}
	var names []string
	if function != "" {
		names = []string{function}
	} else {
		for name := range m.fns {
			names = append(names, name)
		}
		slices.Sort(names)
	}
	out := make([]Usage, 0, len(names))
	for _, name := range names {
		u := Usage{Function: name, Since: from, Until: end.UTC()}
		var byteSec float64
		found := false
		if fu := m.fns[name]; fu != nil {
			for k, b := range fu.buckets {
				if k < lo || k > hi {
					continue
				}
				found = true
				u.Invocations += b.invocations
				u.Failures += b.failures
				u.DurationSeconds += b.duration
				u.CPUSeconds += b.cpu
				byteSec += b.byteSeconds
				u.PeakRSSBytes = max(u.PeakRSSBytes, b.peakRSS)
			}
		}
		if !found && function == "" {
			continue
		}
		if u.Invocations > 0 {
			u.MeanDurationMS = u.DurationSeconds / float64(u.Invocations) * 1000
		}
		u.MemoryGBSeconds = byteSec / gibibyte
		out = append(out, u)
	}
	return out
}

// Collector returns a Prometheus collector of the Meter's lifetime totals
// per function (label "function"): counters weft_function_invocations_total,
// weft_function_failures_total, weft_function_duration_seconds_total,
// weft_function_cpu_seconds_total and weft_function_memory_byte_seconds_total,
// and the gauge weft_function_rss_bytes, the RSS of the function's
// instances at their last sample. Functions stay once seen, so the series
// are those of every function metered since start. Register it once.
func (m *Meter) Collector() prometheus.Collector { return meterCollector{m} }

var (
	descInvocations = prometheus.NewDesc("weft_function_invocations_total",
		"Requests delivered to the function's instances.", []string{"function"}, nil)
	descFailures = prometheus.NewDesc("weft_function_failures_total",
		"Requests to the function's instances that failed: transport error, timeout or non-2xx.", []string{"function"}, nil)
	descDuration = prometheus.NewDesc("weft_function_duration_seconds_total",
		"Time the function's instances spent on requests, summed over requests.", []string{"function"}, nil)
	descCPU = prometheus.NewDesc("weft_function_cpu_seconds_total",
		"CPU time (user and system) of the function's processes, sampled from /proc.", []string{"function"}, nil)
	descMemory = prometheus.NewDesc("weft_function_memory_byte_seconds_total",
		"Resident memory of the function's processes integrated over time.", []string{"function"}, nil)
	descRSS = prometheus.NewDesc("weft_function_rss_bytes",
		"Resident memory of the function's processes at the last sample, summed over instances.", []string{"function"}, nil)
)

type meterCollector struct{ m *Meter }

func (c meterCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descInvocations, descFailures, descDuration, descCPU, descMemory, descRSS} {
		ch <- d
	}
}

func (c meterCollector) Collect(ch chan<- prometheus.Metric) {
	if c.m == nil {
		return
	}
	type row struct {
		name  string
		total meterBucket
		rss   int64
	}
	c.m.mu.Lock()
	rows := make([]row, 0, len(c.m.fns))
	rss := map[string]int64{}
	for _, g := range c.m.groups {
		rss[g.function] += g.rss
	}
	for name, fu := range c.m.fns {
		rows = append(rows, row{name, fu.total, rss[name]})
	}
	c.m.mu.Unlock()
	for _, r := range rows {
		ch <- prometheus.MustNewConstMetric(descInvocations, prometheus.CounterValue, float64(r.total.invocations), r.name)
		ch <- prometheus.MustNewConstMetric(descFailures, prometheus.CounterValue, float64(r.total.failures), r.name)
		ch <- prometheus.MustNewConstMetric(descDuration, prometheus.CounterValue, r.total.duration, r.name)
		ch <- prometheus.MustNewConstMetric(descCPU, prometheus.CounterValue, r.total.cpu, r.name)
		ch <- prometheus.MustNewConstMetric(descMemory, prometheus.CounterValue, r.total.byteSeconds, r.name)
		ch <- prometheus.MustNewConstMetric(descRSS, prometheus.GaugeValue, float64(r.rss), r.name)
	}
}
