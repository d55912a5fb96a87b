package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/google/uuid"
	"github.com/spf13/cobra"
)

type publishOptions struct {
	typ, source, id, subject, data, contentType string
	exts                                        []string
	broker                                      string
}

func newPublishCmd(g *globals) *cobra.Command {
	var o publishOptions
	cmd := &cobra.Command{
		Use:   "publish --type T --source S [--data JSON|@file]",
		Short: "Publish one CloudEvent to a node's ingress",
		Args:  cobra.NoArgs,
		Example: `  weft publish --type com.example.order.created --source /shop --data '{"id":1}'
  weft publish --type com.example.upload --source /storage --data @event.json --ext tenant=acme`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ev, err := o.event()
			if err != nil {
				return withCode(exitUsage, err)
			}
			body, err := json.Marshal(ev)
			if err != nil {
				return fmt.Errorf("encode event: %w", err)
			}
			path := "/"
			if o.broker != "" {
				path = "/brokers/" + o.broker
			}
			c := g.client()
			resp, err := c.send(cmd.Context(), "POST", path, "application/cloudevents+json", bytes.NewReader(body))
			if err != nil {
				return err
			}
			resp.Body.Close()
			if g.output == "json" {
				return printOut(g.stdout, "json", map[string]string{"id": ev.ID(), "source": ev.Source(), "status": "accepted"})
			}
			_, err = fmt.Fprintf(g.stdout, "accepted %s (source %s, type %s)\n", ev.ID(), ev.Source(), ev.Type())
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.typ, "type", "", "event type (required)")
	f.StringVar(&o.source, "source", "", "event source, a URI-reference (required)")
	f.StringVar(&o.id, "id", "", "event id (default: a new UUIDv7)")
	f.StringVar(&o.subject, "subject", "", "event subject")
	f.StringVar(&o.data, "data", "", "event data: JSON text, or @file to read it from a file")
	f.StringVar(&o.contentType, "content-type", "", "datacontenttype (default application/json when data is JSON, else text/plain)")
	f.StringArrayVar(&o.exts, "ext", nil, "extension attribute name=value (repeatable)")
	f.StringVar(&o.broker, "broker", "", "broker name (default: the node's default broker)")
	_ = cmd.MarkFlagRequired("type")
	_ = cmd.MarkFlagRequired("source")
	return cmd
}

func (o publishOptions) event() (event.Event, error) {
	ev := event.New()
	id := o.id
	if id == "" {
		u, err := uuid.NewV7()
		if err != nil {
			return ev, fmt.Errorf("generate id: %w", err)
		}
		id = u.String()
	}
	ev.SetID(id)
	ev.SetType(o.typ)
	ev.SetSource(o.source)
	ev.SetTime(time.Now().UTC())
	if o.subject != "" {
		ev.SetSubject(o.subject)
	}
	for _, kv := range o.exts {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return ev, fmt.Errorf("--ext %q: want name=value", kv)
		}
		ev.SetExtension(k, v)
	}
	if o.data != "" {
		raw := []byte(o.data)
		if strings.HasPrefix(o.data, "@") {
			b, err := os.ReadFile(o.data[1:])
			if err != nil {
				return ev, fmt.Errorf("--data: %w", err)
			}
			raw = b
		}
		ct := o.contentType
		if ct == "" {
			ct = "text/plain"
			if json.Valid(raw) {
				ct = "application/json"
			}
		}
		if ct == "application/json" {
			if !json.Valid(raw) {
				return ev, fmt.Errorf("--data is not valid JSON")
			}
			if err := ev.SetData(ct, json.RawMessage(raw)); err != nil {
				return ev, fmt.Errorf("--data: %w", err)
			}
		} else if err := ev.SetData(ct, raw); err != nil {
			return ev, fmt.Errorf("--data: %w", err)
		}
	}
	if err := ev.Validate(); err != nil {
		return ev, fmt.Errorf("invalid event: %w", err)
	}
	return ev, nil
}
