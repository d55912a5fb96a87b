package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// Exit codes, as DESIGN.md documents them.
const (
	exitOK          = 0
	exitError       = 1
	exitUsage       = 2
	exitInvalidFile = 3
	exitNotFound    = 4
	exitUnreachable = 6
)

// exitErr carries an exit code to run; every other error exits 1.
type exitErr struct {
	code int
	err  error
}

func (e *exitErr) Error() string { return e.err.Error() }
func (e *exitErr) Unwrap() error { return e.err }

func withCode(code int, err error) error {
	if err == nil {
		return nil
	}
	return &exitErr{code: code, err: err}
}

// globals are the flags every verb shares.
type globals struct {
	server   string
	token    string
	output   string
	logLevel string
	stdout   io.Writer
	stderr   io.Writer
}

func newRoot(g *globals) *cobra.Command {
	root := &cobra.Command{
		Use:           "weft",
		Short:         "Event-driven functions on one binary: CloudEvents broker, triggers, worker pools, router",
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			return applyEnv(cmd)
		},
	}
	root.SetOut(g.stdout)
	root.SetErr(g.stderr)
	pf := root.PersistentFlags()
	pf.StringVar(&g.server, "server", "http://127.0.0.1:8080", "URL of the node's HTTP API (client verbs)")
	pf.StringVar(&g.token, "api-token", "", "bearer token for /api/v1 (required when --http is not loopback)")
	pf.StringVarP(&g.output, "output", "o", "table", "output format: table, json or yaml")
	pf.StringVar(&g.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	root.AddCommand(
		newServeCmd(g), newPublishCmd(g), newApplyCmd(g), newDeleteCmd(g), newGetCmd(g),
		newDescribeCmd(g), newDLQCmd(g), newLogsCmd(g), newUsageCmd(g), newInvokeCmd(g), newVersionCmd(g), newBenchCmd(g),
	)
	return root
}

// applyEnv gives every flag its env twin WEFT_<FLAG> (dashes become
// underscores); a flag given on the command line wins.
func applyEnv(cmd *cobra.Command) error {
	var errs []error
	set := func(f *pflag.Flag) {
		if f.Changed {
			return
		}
		name := "WEFT_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		v, ok := os.LookupEnv(name)
		if !ok {
			return
		}
		if f.Value.Type() == "stringArray" || f.Value.Type() == "stringSlice" {
			for _, part := range strings.Split(v, ",") {
				if err := f.Value.Set(part); err != nil {
					errs = append(errs, fmt.Errorf("%s: %w", name, err))
				}
			}
			return
		}
		if err := f.Value.Set(v); err != nil {
			errs = append(errs, fmt.Errorf("%s=%q: %w", name, v, err))
		}
	}
	cmd.Flags().VisitAll(set)
	cmd.InheritedFlags().VisitAll(set)
	if len(errs) > 0 {
		return withCode(exitUsage, errors.Join(errs...))
	}
	return nil
}

func run(ctx context.Context, args []string) int {
	g := &globals{stdout: os.Stdout, stderr: os.Stderr}
	root := newRoot(g)
	root.SetArgs(args)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return withCode(exitUsage, err) })
	err := root.ExecuteContext(ctx)
	if err == nil {
		return exitOK
	}
	fmt.Fprintln(g.stderr, "weft:", err)
	var ee *exitErr
	if errors.As(err, &ee) {
		return ee.code
	}
	// cobra reports these usage errors as plain errors.
	if msg := err.Error(); strings.HasPrefix(msg, "unknown command") || strings.Contains(msg, "arg(s)") ||
		strings.HasPrefix(msg, "required flag") || strings.HasPrefix(msg, "invalid argument") {
		return exitUsage
	}
	return exitError
}

// newLogger builds the one handler weft uses: text on a terminal, JSON
// otherwise.
func newLogger(w io.Writer, level string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, withCode(exitUsage, fmt.Errorf("--log-level %q: want debug, info, warn or error", level))
	}
	opts := &slog.HandlerOptions{Level: lv}
	if f, ok := w.(*os.File); ok && isTerminal(f) {
		return slog.New(slog.NewTextHandler(w, opts)), nil
	}
	return slog.New(slog.NewJSONHandler(w, opts)), nil
}

func isTerminal(f *os.File) bool {
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
