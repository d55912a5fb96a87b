package main

import (
	"bytes"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/weft-dev/weft/internal/resource"
)

type change struct {
	Kind   string `json:"kind"`
	Name   string `json:"name"`
	Action string `json:"action"`
}

func newApplyCmd(g *globals) *cobra.Command {
	var files []string
	cmd := &cobra.Command{
		Use:   "apply -f PATH...",
		Short: "Create or update Triggers and Functions on a running node",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return sendManifests(cmd, g, "/api/v1/apply", files)
		},
	}
	cmd.Flags().StringArrayVarP(&files, "file", "f", nil, "manifest file or folder (repeatable)")
	_ = cmd.MarkFlagRequired("file")
	return cmd
}

// sendManifests posts every manifest file to path, one request per file so
// that errors name the file. Files are checked locally first: a bad file
// stops everything before the node sees any (exit 3).
func sendManifests(cmd *cobra.Command, g *globals, path string, paths []string) error {
	list, err := resource.ExpandPaths(paths...)
	if err != nil {
		return withCode(exitInvalidFile, err)
	}
	bodies := make([][]byte, len(list))
	for i, f := range list {
		if bodies[i], err = os.ReadFile(f); err != nil {
			return withCode(exitInvalidFile, fmt.Errorf("read %s: %w", f, err))
		}
		if _, err := resource.Decode(f, bodies[i]); err != nil {
			return withCode(exitInvalidFile, err)
		}
	}
	var all []change
	c := g.client()
	for i, f := range list {
		var out struct {
			Changes []change `json:"changes"`
		}
		// The node resolves a Function's relative command from its file's
		// folder, so it needs the absolute path, not one relative to here.
		abs, err := filepath.Abs(f)
		if err != nil {
			return fmt.Errorf("resolve %s: %w", f, err)
		}
		if err := c.do(cmd.Context(), "POST", path+"?file="+url.QueryEscape(abs), "application/yaml", bytes.NewReader(bodies[i]), &out); err != nil {
			return err
		}
		all = append(all, out.Changes...)
	}
	if g.output != "table" {
		return printOut(g.stdout, g.output, all)
	}
	tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
	for _, ch := range all {
		fmt.Fprintf(tw, "%s/%s\t%s\n", ch.Kind, ch.Name, ch.Action)
	}
	return tw.Flush()
}

func newDeleteCmd(g *globals) *cobra.Command {
	var files []string
	cmd := &cobra.Command{
		Use:   "delete -f PATH... | delete KIND NAME",
		Short: "Delete Triggers and Functions from a running node",
		Args: func(cmd *cobra.Command, args []string) error {
			if len(files) == 0 && len(args) != 2 {
				return withCode(exitUsage, fmt.Errorf("give -f PATH or KIND NAME"))
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(files) > 0 {
				return sendManifests(cmd, g, "/api/v1/delete", files)
			}
			var out struct {
				Changes []change `json:"changes"`
			}
			if err := g.client().do(cmd.Context(), "DELETE", "/api/v1/resources/"+url.PathEscape(args[0])+"/"+url.PathEscape(args[1]), "", nil, &out); err != nil {
				return err
			}
			if g.output != "table" {
				return printOut(g.stdout, g.output, out.Changes)
			}
			for _, ch := range out.Changes {
				fmt.Fprintf(g.stdout, "%s/%s\t%s\n", ch.Kind, ch.Name, ch.Action)
			}
			return nil
		},
	}
	cmd.Flags().StringArrayVarP(&files, "file", "f", nil, "manifest file or folder (repeatable)")
	return cmd
}
