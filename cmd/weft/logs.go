package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net/url"
	"time"

	"github.com/spf13/cobra"
)

func newLogsCmd(g *globals) *cobra.Command {
	var follow bool
	cmd := &cobra.Command{
		Use:   "logs FUNCTION [-f]",
		Short: "Show a function's stdout and stderr, tagged by instance",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			path := "/api/v1/functions/" + url.PathEscape(args[0]) + "/logs"
			if follow {
				path += "?follow=1"
			}
			resp, err := g.client().send(cmd.Context(), "GET", path, "", nil)
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			sc := bufio.NewScanner(resp.Body)
			sc.Buffer(make([]byte, 64<<10), 1<<20)
			for sc.Scan() {
				if g.output == "json" {
					fmt.Fprintln(g.stdout, sc.Text())
					continue
				}
				var l struct {
					Time     time.Time `json:"time"`
					Instance string    `json:"instance"`
					Stream   string    `json:"stream"`
					Line     string    `json:"text"`
				}
				if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
					continue
				}
				fmt.Fprintf(g.stdout, "%s %s %s| %s\n", l.Time.Local().Format("15:04:05.000"), l.Instance, l.Stream, l.Line)
			}
			if cmd.Context().Err() != nil {
				return nil
			}
			return sc.Err()
		},
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep streaming new lines")
	return cmd
}
