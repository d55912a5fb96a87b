package triggers

import (
	"math"
	"testing"
	"time"
)

func TestParseDuration(t *testing.T) {
	t.Parallel()
	valid := map[string]time.Duration{
		"PT0.2S":              200 * time.Millisecond,
		"PT10S":               10 * time.Second,
		"PT1M":                time.Minute,
		"PT1H":                time.Hour,
		"PT1H30M":             90 * time.Minute,
		"PT1H2M3S":            time.Hour + 2*time.Minute + 3*time.Second,
		"P1D":                 24 * time.Hour,
		"P1DT2H":              26 * time.Hour,
		"P2W":                 14 * 24 * time.Hour,
		"P1W1D":               8 * 24 * time.Hour,
		"PT0S":                0,
		"P0D":                 0,
		"PT1.5M":              90 * time.Second,
		"PT1,5S":              1500 * time.Millisecond,
		"PT0.000000001S":      time.Nanosecond,
		"PT0.0000000019S":     time.Nanosecond, // finer than a nanosecond is cut
		"PT1.0S":              time.Second,
		"PT0.5H":              30 * time.Minute,
		"P0.5D":               12 * time.Hour,
		"PT100S":              100 * time.Second,
		"PT2562047H":          2562047 * time.Hour,
		"PT9223372036.854S":   9223372036854 * time.Millisecond,
		"PT0000000000000001S": time.Second,
	}
	for in, want := range valid {
		got, err := ParseDuration(in)
		if err != nil || got != want {
			t.Errorf("ParseDuration(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	invalid := []string{
		"", "P", "PT", "P1DT", "-PT1S", "+PT1S", "T1S", "1S", "10s", "pt1s", "PT1s",
		"P1Y", "P1M", "P1Y2M", "PT1D", "P1H", "P1S", "PT1M1H", "PT1S1S", "P1D1W",
		"PT1.5M30S", "PT.5S", "PT1.S", "PT1", "PTS", "PT1X", "PT1ST", "P1DTT1H",
		"PT 1S", "PT1S ", "PT-1S", "PT9223372037S", "PT99999999999999999999S",
		"P106752D", "PT2562048H", "PT1e3S", "P1WT", "PT1_000S",
	}
	for _, in := range invalid {
		if got, err := ParseDuration(in); err == nil {
			t.Errorf("ParseDuration(%q) = %v, nil; want an error", in, got)
		}
	}
}

func TestParseDurationMaxValue(t *testing.T) {
	t.Parallel()
	got, err := ParseDuration("PT9223372036.854775807S")
	if err != nil || got != math.MaxInt64 {
		t.Errorf("got %v, %v; want %v", got, err, time.Duration(math.MaxInt64))
	}
}

func FuzzParseDuration(f *testing.F) {
	for _, s := range []string{"PT0.2S", "P1DT2H", "P2W", "PT1.5M", "-PT1S", "P1M"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d, err := ParseDuration(s)
		if err == nil && d < 0 {
			t.Errorf("ParseDuration(%q) = %v: negative", s, d)
		}
	})
}
