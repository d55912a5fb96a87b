package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"os"
	"strings"

	"github.com/spf13/cobra"
)

func newInvokeCmd(g *globals) *cobra.Command {
	var data, typ string
	cmd := &cobra.Command{
		Use:   "invoke FUNCTION|SERVICE [--data JSON|@file]",
		Short: "Call a function (or service) synchronously through the router and print its reply",
		Args:  cobra.ExactArgs(1),
		Example: `  weft invoke order-validator --data '{"id":7,"amount":12}'
  weft invoke order-validator --type com.example.order.created --data @order.json`,
		RunE: func(cmd *cobra.Command, args []string) error {
			body := []byte(data)
			if rest, ok := strings.CutPrefix(data, "@"); ok {
				b, err := os.ReadFile(rest)
				if err != nil {
					return withCode(exitUsage, fmt.Errorf("--data: %w", err))
				}
				body = b
			}
			ct := "text/plain"
			if json.Valid(body) {
				ct = "application/json"
			}
			path := "/api/v1/invoke/" + url.PathEscape(args[0])
			if typ != "" {
				path += "?type=" + url.QueryEscape(typ)
			}
			resp, err := g.client().send(cmd.Context(), "POST", path, ct, bytes.NewReader(body))
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			reply, err := io.ReadAll(resp.Body)
			if err != nil {
				return fmt.Errorf("read reply: %w", err)
			}
			if len(reply) == 0 {
				_, err = fmt.Fprintln(g.stdout, "accepted (no reply event)")
				return err
			}
			var v any
			if err := json.Unmarshal(reply, &v); err != nil {
				_, err = g.stdout.Write(reply)
				return err
			}
			format := g.output
			if format == "table" {
				format = "json"
			}
			return printOut(g.stdout, format, v)
		},
	}
	cmd.Flags().StringVar(&data, "data", "", "the event's data: JSON text, or @file")
	cmd.Flags().StringVar(&typ, "type", "", "the event's type (default dev.weft.invoke)")
	return cmd
}
