package triggers

import (
	"errors"
	"fmt"
	"math"
	"time"
)

// ParseDuration parses an ISO-8601 duration as Knative's delivery fields
// spell them: PT0.2S, PT10S, PT1M, PT1H30M, P1D, P1DT2H, P2W. It accepts the
// designators W (7 days), D (24 hours), H, M and S in that order, T before
// the time part, and a decimal fraction ('.' or ',') on the last number only,
// to nanosecond precision. It refuses negative durations, years and months
// (they have no fixed length; P1M is a month, PT1M a minute), lower-case
// designators, empty parts ("P", "PT") and values beyond time.Duration's
// range. It is safe for concurrent use.
func ParseDuration(s string) (time.Duration, error) {
	d, err := parseISO(s)
	if err != nil {
		return 0, fmt.Errorf("invalid ISO-8601 duration %q: %w", s, err)
	}
	return d, nil
}

// unit is one designator of a duration, in the order they must appear.
type unit struct {
	letter byte
	time   bool // after T
	length time.Duration
}

var units = []unit{
	{'W', false, 7 * 24 * time.Hour},
	{'D', false, 24 * time.Hour},
	{'H', true, time.Hour},
	{'M', true, time.Minute},
	{'S', true, time.Second},
}

func parseISO(s string) (time.Duration, error) {
	switch {
	case s == "":
		return 0, errors.New("empty")
	case s[0] == '-':
		return 0, errors.New("must not be negative")
	case s[0] != 'P':
		return 0, errors.New("must start with P, as in PT10S")
	}
	var (
		total    time.Duration
		inTime   bool
		next     int  // index into units of the next allowed designator
		parts    int  // numbers read so far
		timePart int  // numbers read after T
		fracSeen bool // a fraction ends the duration
	)
	i := 1
	for i < len(s) {
		if s[i] == 'T' {
			if inTime {
				return 0, errors.New("T appears twice")
			}
			inTime = true
			i++
			continue
		}
		if fracSeen {
			return 0, errors.New("only the last number may have a fraction")
		}
		whole, frac, fracScale, n, err := readNumber(s[i:])
		if err != nil {
			return 0, err
		}
		i += n
		if i >= len(s) {
			return 0, fmt.Errorf("number %s lacks a designator (W, D, H, M or S)", s[i-n:])
		}
		letter := s[i]
		i++
		u, idx, err := findUnit(letter, inTime, next)
		if err != nil {
			return 0, err
		}
		next = idx + 1
		parts++
		if inTime {
			timePart++
		}
		v, err := scale(whole, frac, fracScale, u.length)
		if err != nil {
			return 0, err
		}
		if total > math.MaxInt64-v {
			return 0, errors.New("too large")
		}
		total += v
		fracSeen = fracScale > 1
	}
	if inTime && timePart == 0 {
		return 0, errors.New("T must be followed by hours, minutes or seconds, as in PT10S")
	}
	if parts == 0 {
		return 0, errors.New("has no number, as in PT10S")
	}
	return total, nil
}

// readNumber reads digits with an optional fraction. It returns the whole
// part, the fraction's digits as an integer with fracScale = 10^(digits
// kept) (1 without a fraction), and how many bytes it consumed.
func readNumber(s string) (whole, frac, fracScale int64, n int, err error) {
	fracScale = 1
	for n < len(s) && isDigit(s[n]) {
		if whole > (math.MaxInt64-9)/10 {
			return 0, 0, 0, 0, errors.New("too large")
		}
		whole = whole*10 + int64(s[n]-'0')
		n++
	}
	if n == 0 {
		return 0, 0, 0, 0, fmt.Errorf("expected a number at %q", s)
	}
	if n < len(s) && (s[n] == '.' || s[n] == ',') {
		n++
		start := n
		for n < len(s) && isDigit(s[n]) {
			if fracScale < 1e9 { // nanoseconds of a second; finer digits cannot count
				frac = frac*10 + int64(s[n]-'0')
				fracScale *= 10
			}
			n++
		}
		if n == start {
			return 0, 0, 0, 0, errors.New("a decimal sign must be followed by digits")
		}
	}
	return whole, frac, fracScale, n, nil
}

func isDigit(b byte) bool { return b >= '0' && b <= '9' }

func findUnit(letter byte, inTime bool, next int) (unit, int, error) {
	switch letter {
	case 'Y':
		return unit{}, 0, errors.New("years have no fixed length; use days (D) or weeks (W)")
	case 'M':
		if !inTime {
			return unit{}, 0, errors.New("months have no fixed length; for minutes write T before M, as in PT1M")
		}
	}
	for idx, u := range units {
		if u.letter != letter || u.time != inTime {
			continue
		}
		if idx < next {
			return unit{}, 0, fmt.Errorf("%c is out of order or repeated (order: W, D, T, H, M, S)", letter)
		}
		return u, idx, nil
	}
	for _, u := range units {
		if u.letter == letter {
			if u.time {
				return unit{}, 0, fmt.Errorf("%c belongs after T, as in PT1%c", letter, letter)
			}
			return unit{}, 0, fmt.Errorf("%c belongs before T, as in P1%c", letter, letter)
		}
	}
	return unit{}, 0, fmt.Errorf("unknown designator %q (use W, D, H, M or S)", letter)
}

// scale returns (whole + frac/fracScale) × length without floating point.
func scale(whole, frac, fracScale int64, length time.Duration) (time.Duration, error) {
	if whole > math.MaxInt64/int64(length) {
		return 0, errors.New("too large")
	}
	v := time.Duration(whole) * length
	if fracScale > 1 {
		// length is a whole number of seconds, and frac < fracScale ≤ 1e9, so
		// frac × (length/fracScale) stays exact for seconds and finer units
		// and within range for the others.
		f := time.Duration(frac) * (length / time.Duration(fracScale))
		f += time.Duration(frac) * (length % time.Duration(fracScale)) / time.Duration(fracScale)
		if v > math.MaxInt64-f {
			return 0, errors.New("too large")
		}
		v += f
	}
	return v, nil
}
