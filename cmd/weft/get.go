package main

import (
	"encoding/json"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/weft-dev/weft/router"
)

type resourceView struct {
	Kind     string          `json:"kind"`
	Name     string          `json:"name"`
	Source   string          `json:"source"`
	Manifest json.RawMessage `json:"manifest"`
}

func newGetCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:       "get triggers|functions|services|dlq [NAME]",
		Short:     "List resources, function pools or dead letters",
		Args:      cobra.RangeArgs(1, 2),
		ValidArgs: []string{"triggers", "functions", "services", "dlq"},
		RunE: func(cmd *cobra.Command, args []string) error {
			c := g.client()
			ctx := cmd.Context()
			switch strings.ToLower(args[0]) {
			case "dlq":
				q := url.Values{}
				if len(args) == 2 {
					q.Set("trigger", args[1])
				}
				return listDLQ(cmd, g, q)
			case "services", "service", "svc":
				var st []router.ServiceStatus
				if err := c.do(ctx, "GET", "/api/v1/services", "", nil, &st); err != nil {
					return err
				}
				if len(args) == 2 {
					st = slices.DeleteFunc(st, func(s router.ServiceStatus) bool { return s.Name != args[1] })
					if len(st) == 0 {
						return withCode(exitNotFound, fmt.Errorf("service %q not found", args[1]))
					}
				}
				if g.output != "table" {
					return printOut(g.stdout, g.output, st)
				}
				return serviceTable(g, st)
			case "functions", "function", "fn":
				var st []map[string]any
				if err := c.do(ctx, "GET", "/api/v1/functions", "", nil, &st); err != nil {
					return err
				}
				if len(args) == 2 {
					st = filterByName(st, args[1])
					if len(st) == 0 {
						return withCode(exitNotFound, fmt.Errorf("function %q not found", args[1]))
					}
				}
				if g.output != "table" {
					return printOut(g.stdout, g.output, st)
				}
				return functionTable(g, st)
			case "triggers", "trigger":
				path := "/api/v1/resources/triggers"
				var list []resourceView
				if len(args) == 2 {
					var one struct {
						Resource resourceView `json:"resource"`
					}
					if err := c.do(ctx, "GET", path+"/"+url.PathEscape(args[1]), "", nil, &one); err != nil {
						return err
					}
					list = []resourceView{one.Resource}
				} else if err := c.do(ctx, "GET", path, "", nil, &list); err != nil {
					return err
				}
				if g.output != "table" {
					return printOut(g.stdout, g.output, list)
				}
				return triggerTable(g, list)
			}
			return withCode(exitUsage, fmt.Errorf("unknown resource %q: want triggers, functions, services or dlq", args[0]))
		},
	}
}

func filterByName(st []map[string]any, name string) []map[string]any {
	var out []map[string]any
	for _, s := range st {
		if s["name"] == name {
			out = append(out, s)
		}
	}
	return out
}

func functionTable(g *globals, st []map[string]any) error {
	if len(st) == 0 {
		_, err := fmt.Fprintln(g.stdout, "No functions.")
		return err
	}
	tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tSTATE\tDESIRED\tREADY\tIN-FLIGHT\tWAITING\tRESTARTS\tLAST ERROR")
	for _, s := range st {
		state := val(s["state"])
		if s["panic"] == true {
			state += " (panic)"
		}
		fmt.Fprintf(tw, "%v\t%v\t%v\t%v\t%v\t%v\t%v\t%v\n", s["name"], state, val(s["desired"]), val(s["ready"]), val(s["inFlight"]), val(s["waiting"]), val(s["restarts"]), trunc(val(s["lastError"]), 60))
	}
	return tw.Flush()
}

func val(v any) string {
	if v == nil {
		return ""
	}
	if f, ok := v.(float64); ok {
		return fmt.Sprintf("%g", f)
	}
	return fmt.Sprint(v)
}

func trunc(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n-1] + "…"
}

func triggerTable(g *globals, list []resourceView) error {
	if len(list) == 0 {
		_, err := fmt.Fprintln(g.stdout, "No triggers.")
		return err
	}
	tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tBROKER\tSUBSCRIBER\tSOURCE")
	for _, r := range list {
		var m struct {
			Spec struct {
				Broker     string `json:"broker"`
				Subscriber struct {
					Ref *struct {
						Kind string `json:"kind"`
						Name string `json:"name"`
					} `json:"ref"`
					URI string `json:"uri"`
				} `json:"subscriber"`
			} `json:"spec"`
		}
		_ = json.Unmarshal(r.Manifest, &m)
		sub := m.Spec.Subscriber.URI
		if ref := m.Spec.Subscriber.Ref; ref != nil {
			sub = ref.Kind + "/" + ref.Name + sub
		}
		br := m.Spec.Broker
		if br == "" {
			br = "default"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", r.Name, br, sub, r.Source)
	}
	return tw.Flush()
}

func newDescribeCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "describe KIND NAME",
		Short: "Show one resource with its status",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			var out struct {
				Resource resourceView   `json:"resource"`
				Status   map[string]any `json:"status,omitempty"`
			}
			if err := g.client().do(cmd.Context(), "GET", "/api/v1/resources/"+url.PathEscape(args[0])+"/"+url.PathEscape(args[1]), "", nil, &out); err != nil {
				return err
			}
			view := map[string]any{"source": out.Resource.Source, "manifest": out.Resource.Manifest}
			if out.Status != nil {
				view["status"] = out.Status
			}
			format := g.output
			if format == "table" {
				format = "yaml"
			}
			return printOut(g.stdout, format, view)
		},
	}
}

func serviceTable(g *globals, st []router.ServiceStatus) error {
	if len(st) == 0 {
		_, err := fmt.Fprintln(g.stdout, "No services.")
		return err
	}
	tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SERVICE\tBALANCER\tTLS\tROUTES\tENDPOINT\tHEALTH\tIN-FLIGHT\tFAILURES\tEWMA")
	for _, s := range st {
		if len(s.Endpoints) == 0 {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t-\t\t\t\t\n", s.Name, s.LoadBalancer, s.TLS, s.Routes)
		}
		for i, ep := range s.Endpoints {
			name, lb, tls, routes := s.Name, s.LoadBalancer, s.TLS, fmt.Sprint(s.Routes)
			if i > 0 {
				name, lb, tls, routes = "", "", "", ""
			}
			health := "healthy"
			if !ep.Healthy {
				health = "ejected until " + ep.EjectedUntil.Local().Format("15:04:05")
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%d\t%.1fms\n", name, lb, tls, routes, ep.Address, health, ep.InFlight, ep.ConsecutiveFailures, ep.EWMAMillis)
		}
	}
	return tw.Flush()
}
