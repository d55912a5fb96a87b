package main

import (
	"fmt"
	"net/url"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/weft-dev/weft/workers"
)

func newUsageCmd(g *globals) *cobra.Command {
	var since, until string
	cmd := &cobra.Command{
		Use:   "usage [FUNCTION]",
		Short: "Show what functions used: invocations, duration, CPU-seconds, memory",
		Long: `Show what each function used in a time window, the way serverless platforms
bill: invocations and failures, total and mean duration, the CPU-seconds of
its processes, their peak resident memory (all instances together) and
memory over time in GB-seconds (GB = 2^30 bytes).

The node keeps usage in 1-minute buckets for 24 hours; the window is widened
to whole buckets. --since and --until take RFC 3339 or a duration ago (1h).`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			q := url.Values{}
			for flag, v := range map[string]string{"since": since, "until": until} {
				if err := checkTimeFlag(v); err != nil {
					return withCode(exitUsage, fmt.Errorf("--%s: %w", flag, err))
				}
			}
			setIf(q, "since", since)
			setIf(q, "until", until)
			if len(args) == 1 {
				q.Set("function", args[0])
			}
			var list []workers.Usage
			if err := g.client().do(cmd.Context(), "GET", "/api/v1/usage?"+q.Encode(), "", nil, &list); err != nil {
				return err
			}
			if g.output != "table" {
				return printOut(g.stdout, g.output, list)
			}
			return usageTable(g, list, since)
		},
	}
	cmd.Flags().StringVar(&since, "since", "1h", "from: RFC 3339 or a duration ago; empty for everything kept")
	cmd.Flags().StringVar(&until, "until", "", "to: RFC 3339 or a duration ago (default now)")
	return cmd
}

// checkTimeFlag refuses what the node's parser would refuse, so that a typo
// exits 2 before any request.
func checkTimeFlag(s string) error {
	if s == "" {
		return nil
	}
	if _, err := time.ParseDuration(s); err == nil {
		return nil
	}
	if _, err := time.Parse(time.RFC3339, s); err != nil {
		return fmt.Errorf("%q is neither RFC 3339 nor a duration like 1h", s)
	}
	return nil
}

func usageTable(g *globals, list []workers.Usage, since string) error {
	if len(list) == 0 {
		msg := "No function was used"
		if since != "" {
			msg += " since " + since
			if _, err := time.ParseDuration(since); err == nil {
				msg += " ago"
			}
		}
		_, err := fmt.Fprintln(g.stdout, msg+".")
		return err
	}
	tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "FUNCTION\tINVOCATIONS\tFAILURES\tMEAN DURATION\tTOTAL DURATION\tCPU-SECONDS\tPEAK RSS\tGB-SECONDS")
	for _, u := range list {
		mean := "-"
		if u.Invocations > 0 {
			mean = humanSeconds(u.MeanDurationMS / 1000)
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%s\t%s\t%s\t%s\n", u.Function, u.Invocations, u.Failures, mean,
			humanSeconds(u.DurationSeconds), strconv.FormatFloat(u.CPUSeconds, 'f', 2, 64),
			humanBytes(u.PeakRSSBytes), strconv.FormatFloat(u.MemoryGBSeconds, 'f', 3, 64))
	}
	return tw.Flush()
}

// humanSeconds renders seconds with about three significant figures below a
// minute (850µs, 12.3ms, 4.56s) and as hours, minutes and seconds above.
func humanSeconds(s float64) string {
	d := time.Duration(s * float64(time.Second))
	switch {
	case d == 0:
		return "0s"
	case d < time.Millisecond:
		return d.Round(time.Microsecond).String()
	case d < time.Second:
		return sig3(s*1000) + "ms"
	case d < time.Minute:
		return sig3(s) + "s"
	}
	return d.Round(time.Second).String()
}

// sig3 formats x (at least 1) with about three significant figures.
func sig3(x float64) string {
	switch {
	case x >= 100:
		return strconv.FormatFloat(x, 'f', 0, 64)
	case x >= 10:
		return strconv.FormatFloat(x, 'f', 1, 64)
	}
	return strconv.FormatFloat(x, 'f', 2, 64)
}

// humanBytes renders a size in binary units (KiB, MiB, ...) with one
// decimal.
func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return strconv.FormatInt(n, 10) + " B"
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 5; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
