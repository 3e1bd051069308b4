package main

import (
	"encoding/json"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/rampart-mesh/rampart/policies/xds"
	"github.com/spf13/cobra"
)

func newProxyStatusCmd() *cobra.Command {
	var stateDir, output string
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
			data, err := adminGet(cmd.Context(), stateDir, "/proxies")
			if err != nil {
				return err
			}
			var st []xds.ProxyStatus
			if err := json.Unmarshal(data, &st); err != nil {
				return err
			}
			switch output {
			case "json":
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(st)
			case "text":
			default:
				return fmt.Errorf("--output %q: want text or json", output)
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
	c.Flags().StringVar(&stateDir, "state-dir", ".rampart", "rampartd's state directory")
	c.Flags().StringVarP(&output, "output", "o", "text", "text or json")
	return c
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
