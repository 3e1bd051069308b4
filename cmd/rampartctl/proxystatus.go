package main

import (
	"encoding/json"
	"fmt"
	"net/url"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/rampart-mesh/rampart/authz"
	"github.com/rampart-mesh/rampart/policies/xds"
	"github.com/spf13/cobra"
)

func newProxyStatusCmd() *cobra.Command {
	var stateDir, server string
	var output outputFormat
	c := &cobra.Command{
		Use:   "proxy-status",
		Short: "Show whether every proxy has applied the latest configuration",
		Long: `Ask the running rampartd (found through --state-dir) for each proxy it serves:

  SYNCED        the proxy ACKed the latest configuration
  STALE         the latest configuration was sent and not yet ACKed
  NACKED        the proxy refused it (the reason is shown); it keeps its last good one
  DISCONNECTED  no open xDS stream`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			data, err := proxyGet(cmd.Context(), stateDir, server, "/proxies")
			if err != nil {
				return err
			}
			var st []xds.ProxyStatus
			if err := json.Unmarshal(data, &st); err != nil {
				return err
			}
			if output == outputJSON {
				return writeJSON(cmd.OutOrStdout(), st)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "PROXY\tWORKLOAD\tSTATUS\tSENT\tACKED\tCONNECTED\tNACK")
			for _, p := range st {
				since := "-"
				if !p.Connected.IsZero() {
					since = time.Since(p.Connected).Round(time.Second).String()
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", p.Proxy, p.Workload, p.Status, p.Sent, orDash(p.Acked), since, p.NACK)
			}
			return tw.Flush()
		},
	}
	c.Flags().StringVar(&stateDir, "state-dir", ".rampart", "rampartd's state directory (a local mesh's rampartd is found through it)")
	c.Flags().StringVar(&server, "server", "", "another rampartd's monitoring address (host:15014); it serves this under /debug/")
	addOutputFlag(c, &output)
	return c
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func newProxyConfigCmd() *cobra.Command {
	var stateDir, server string
	var output outputFormat
	c := &cobra.Command{
		Use:   "proxy-config PROXY policy|authn|peer|listeners|routes|clusters|endpoints",
		Short: "Show the configuration rampartd sent to one proxy",
		Long: `Show what rampartd last sent to a proxy (give its workload as namespace/name,
its SPIFFE ID, or namespace/service-account; the first proxy found):

  policy   the compiled Rego it evaluates (package rampart.policy)
  authn    its RequestAuthentication rules
  peer     its PeerAuthentication mTLS modes
  listeners, routes, clusters, endpoints
           its Envoy resources (LDS, RDS, CDS, EDS) as a table; -o json prints
           them as Envoy's JSON

Whether the proxy ACKed it is printed first.`,
		Example: `  rampartctl proxy-config default/backend policy
  rampartctl proxy-config default/productpage-v1 routes
  rampartctl proxy-config default/productpage-v1 clusters -o json`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			proxy := args[0]
			if !strings.HasPrefix(proxy, "spiffe://") && !strings.Contains(proxy, "/") {
				return fmt.Errorf("proxy %q: give a workload (namespace/name), a SPIFFE ID or namespace/service-account", proxy)
			}
			switch args[1] {
			case "listeners", "routes", "clusters", "endpoints":
				return printResources(cmd, stateDir, server, proxy, args[1], output)
			}
			data, err := proxyGet(cmd.Context(), stateDir, server, "/proxies/config?proxy="+url.QueryEscape(proxy))
			if err != nil {
				return err
			}
			var resp struct {
				Acked  bool             `json:"acked"`
				Bundle authz.WireBundle `json:"bundle"`
			}
			if err := json.Unmarshal(data, &resp); err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "# proxy %s, revision %s, acked %t\n", proxy, resp.Bundle.Revision, resp.Acked)
			switch args[1] {
			case "policy":
				_, err = fmt.Fprint(out, resp.Bundle.Modules["rampart/policy.rego"])
			case "authn":
				_, err = fmt.Fprintln(out, string(resp.Bundle.JWTRules))
			case "peer":
				_, err = fmt.Fprintln(out, string(resp.Bundle.Peer))
			default:
				return fmt.Errorf("unknown section %q: want policy, authn, peer, listeners, routes, clusters or endpoints", args[1])
			}
			return err
		},
	}
	c.Flags().StringVar(&stateDir, "state-dir", ".rampart", "rampartd's state directory (a local mesh's rampartd is found through it)")
	c.Flags().StringVar(&server, "server", "", "another rampartd's monitoring address (host:15014); it serves this under /debug/")
	addOutputFlag(c, &output)
	return c
}
