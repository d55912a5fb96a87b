package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/weft-dev/weft/broker"
)

// replayStatus adds the CLI's view to the node's answer.
type replayStatus struct{ broker.ReplayStatus }

func (s replayStatus) done() bool { return s.Done() }

func newDLQCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "dlq",
		Short: "Inspect, replay and purge the node's dead-letter queue",
	}
	var trigger, since, until string
	ls := &cobra.Command{
		Use:   "ls",
		Short: "List dead letters, oldest first",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			q := url.Values{}
			setIf(q, "trigger", trigger)
			setIf(q, "since", since)
			setIf(q, "until", until)
			return listDLQ(cmd, g, q)
		},
	}
	ls.Flags().StringVar(&trigger, "trigger", "", "only this trigger's dead letters")
	ls.Flags().StringVar(&since, "since", "", "failed at or after: RFC 3339 or a duration ago (1h)")
	ls.Flags().StringVar(&until, "until", "", "failed before: RFC 3339 or a duration ago")

	show := &cobra.Command{
		Use:   "show ID",
		Short: "Show one dead letter: the event, why it failed, and every attempt",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if _, err := strconv.ParseUint(args[0], 10, 64); err != nil {
				return withCode(exitUsage, fmt.Errorf("ID %q is not a number", args[0]))
			}
			var e broker.DLQEntry
			if err := g.client().do(cmd.Context(), "GET", "/api/v1/dlq/"+args[0], "", nil, &e); err != nil {
				return err
			}
			if g.output != "table" {
				return printOut(g.stdout, g.output, e)
			}
			return showEntry(g, e)
		},
	}

	var rTrigger, rSince, rUntil string
	var rAll bool
	var wait time.Duration
	replay := &cobra.Command{
		Use:   "replay [--trigger T] [--since D] [--all] [ID...]",
		Short: "Send dead letters again to their trigger; an entry leaves the DLQ once delivered",
		RunE: func(cmd *cobra.Command, args []string) error {
			body := map[string]any{"trigger": rTrigger, "since": rSince, "until": rUntil, "all": rAll}
			var ids []uint64
			for _, a := range args {
				id, err := strconv.ParseUint(a, 10, 64)
				if err != nil {
					return withCode(exitUsage, fmt.Errorf("ID %q is not a number", a))
				}
				ids = append(ids, id)
			}
			body["ids"] = ids
			if len(ids) == 0 && rTrigger == "" && rSince == "" && rUntil == "" && !rAll {
				return withCode(exitUsage, fmt.Errorf("say what to replay: IDs, --trigger, --since/--until, or --all"))
			}
			var st replayStatus
			if err := g.client().do(cmd.Context(), "POST", "/api/v1/dlq/replay", "application/json", jsonBody(body), &st); err != nil {
				return err
			}
			return followReplay(cmd.Context(), g, st, wait)
		},
	}
	replay.Flags().StringVar(&rTrigger, "trigger", "", "replay this trigger's dead letters")
	replay.Flags().StringVar(&rSince, "since", "", "replay those that failed at or after: RFC 3339 or a duration ago")
	replay.Flags().StringVar(&rUntil, "until", "", "replay those that failed before")
	replay.Flags().BoolVar(&rAll, "all", false, "replay every dead letter")
	replay.Flags().DurationVar(&wait, "wait", 5*time.Minute, "how long to follow progress (0 = do not wait)")

	var pTrigger string
	var pAll bool
	purge := &cobra.Command{
		Use:   "purge --trigger T | --all",
		Short: "Delete dead letters for good",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if pTrigger == "" && !pAll {
				return withCode(exitUsage, fmt.Errorf("say what to purge: --trigger T or --all"))
			}
			var out struct {
				Purged uint64 `json:"purged"`
			}
			if err := g.client().do(cmd.Context(), "POST", "/api/v1/dlq/purge", "application/json", jsonBody(map[string]any{"trigger": pTrigger, "all": pAll}), &out); err != nil {
				return err
			}
			if g.output != "table" {
				return printOut(g.stdout, g.output, out)
			}
			_, err := fmt.Fprintf(g.stdout, "purged %d dead letters\n", out.Purged)
			return err
		},
	}
	purge.Flags().StringVar(&pTrigger, "trigger", "", "purge this trigger's dead letters")
	purge.Flags().BoolVar(&pAll, "all", false, "purge every dead letter")
	cmd.AddCommand(ls, show, replay, purge)
	return cmd
}

func setIf(q url.Values, k, v string) {
	if v != "" {
		q.Set(k, v)
	}
}

func listDLQ(cmd *cobra.Command, g *globals, q url.Values) error {
	var list []broker.DLQEntry
	path := "/api/v1/dlq"
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	if err := g.client().do(cmd.Context(), "GET", path, "", nil, &list); err != nil {
		return err
	}
	if g.output != "table" {
		return printOut(g.stdout, g.output, list)
	}
	if len(list) == 0 {
		_, err := fmt.Fprintln(g.stdout, "The DLQ is empty.")
		return err
	}
	tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tTRIGGER\tFAILED\tREASON\tATTEMPTS\tLAST STATUS\tEVENT")
	for _, e := range list {
		ev := e.Event
		last := ""
		if n := len(e.Attempts); n > 0 {
			last = strconv.Itoa(e.Attempts[n-1].Status)
			if e.Attempts[n-1].Status == 0 {
				last = trunc(e.Attempts[n-1].Error, 30)
			}
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%d\t%s\t%s %s\n", e.ID, e.Trigger, e.FailedAt.Local().Format(time.DateTime), e.Reason, len(e.Attempts), last, ev.Type(), ev.ID())
	}
	return tw.Flush()
}

func showEntry(g *globals, e broker.DLQEntry) error {
	w := g.stdout
	fmt.Fprintf(w, "ID:       %d\nTrigger:  %s\nTarget:   %s\nReason:   %s\nFailed:   %s\nReplays:  %d\n", e.ID, e.Trigger, e.Target, e.Reason, e.FailedAt.Local().Format(time.RFC3339), e.Replays)
	if e.Error != "" {
		fmt.Fprintf(w, "Error:    %s\n", e.Error)
	}
	fmt.Fprintf(w, "Attempts: %d\n", len(e.Attempts))
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  #\tTIME\tSTATUS\tLATENCY\tERROR")
	for i, a := range e.Attempts {
		fmt.Fprintf(tw, "  %d\t%s\t%d\t%.1fms\t%s\n", i+1, a.Time.Local().Format("15:04:05.000"), a.Status, a.LatencyMS, a.Error)
	}
	_ = tw.Flush()
	fmt.Fprintln(w, "Event:")
	pretty, err := json.MarshalIndent(&e.Event, "  ", "  ")
	if err != nil {
		return fmt.Errorf("render event: %w", err)
	}
	_, err = fmt.Fprintf(w, "  %s\n", pretty)
	return err
}

// followReplay polls a replay until every entry settled or wait passed,
// drawing a progress line on a terminal.
func followReplay(ctx context.Context, g *globals, st replayStatus, wait time.Duration) error {
	tty := false
	if f, ok := g.stdout.(*os.File); ok {
		tty = isTerminal(f)
	}
	deadline := time.Now().Add(wait)
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for wait > 0 && !st.done() && time.Now().Before(deadline) {
		if tty {
			fmt.Fprintf(g.stdout, "\rreplaying: %d/%d delivered, %d failed", st.Delivered, st.Total, st.Failed)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
		if err := g.client().do(ctx, "GET", "/api/v1/dlq/replays/"+st.ID, "", nil, &st); err != nil {
			return err
		}
	}
	if tty {
		fmt.Fprint(g.stdout, "\r")
	}
	if g.output != "table" {
		return printOut(g.stdout, g.output, st)
	}
	fmt.Fprintf(g.stdout, "replay %s: %d selected, %d delivered, %d failed again", st.ID, st.Total, st.Delivered, st.Failed)
	if len(st.Skipped) > 0 {
		fmt.Fprintf(g.stdout, ", %d skipped (trigger gone): %v", len(st.Skipped), st.Skipped)
	}
	if !st.done() {
		fmt.Fprint(g.stdout, " (still running)")
	}
	fmt.Fprintln(g.stdout)
	if st.Failed > 0 {
		return fmt.Errorf("%d dead letters failed again and stay in the DLQ", st.Failed)
	}
	return nil
}
