package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/spf13/cobra"
)

func newMTLSCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "mtls", Short: "mTLS migration tools"}
	var urls []string
	readiness := &cobra.Command{
		Use:   "readiness --metrics URL...",
		Short: "Report which clients still reach a workload in plaintext",
		Long: `Read the sidecars' metrics and report, per workload, how many requests came
over mTLS and how many in plaintext, and which client IPs sent plaintext. A
workload whose sidecar has seen no plaintext request is ready for a STRICT
PeerAuthentication; one that has must wait until those clients join the mesh.

The counters cover the sidecar's lifetime: watch them over a representative
period before switching.`,
		Example: `  rampartctl mtls readiness --metrics http://127.0.0.1:15090/metrics`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if len(urls) == 0 {
				return fmt.Errorf("give each sidecar's metrics endpoint with --metrics URL")
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "WORKLOAD\tMTLS\tPLAINTEXT\tPLAINTEXT CLIENTS\tSTRICT")
			notReady := 0
			for _, u := range urls {
				r, err := readiness(cmd.Context(), u)
				if err != nil {
					return err
				}
				verdict := "ready"
				if r.plain > 0 {
					verdict = "not yet"
					notReady++
				}
				clients := strings.Join(r.clients, ",")
				if clients == "" {
					clients = "-"
				}
				fmt.Fprintf(tw, "%s\t%.0f\t%.0f\t%s\t%s\n", r.workload, r.mtls, r.plain, clients, verdict)
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			if notReady > 0 {
				return fmt.Errorf("%d workload(s) still receive plaintext", notReady)
			}
			return nil
		},
	}
	readiness.Flags().StringArrayVar(&urls, "metrics", nil, "a sidecar's /metrics URL (repeatable)")
	cmd.AddCommand(readiness)
	return cmd
}

type readinessReport struct {
	workload    string
	mtls, plain float64
	clients     []string
}

func readiness(ctx context.Context, url string) (readinessReport, error) {
	var r readinessReport
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return r, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return r, fmt.Errorf("metrics %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return r, fmt.Errorf("metrics %s: HTTP %d", url, resp.StatusCode)
	}
	families, err := parseMetrics(resp.Body)
	if err != nil {
		return r, fmt.Errorf("metrics %s: %w", url, err)
	}
	r.workload = url
	for _, m := range families["istio_requests_total"].GetMetric() {
		l := labels(m)
		if l["reporter"] != "destination" {
			continue
		}
		r.workload = l["destination_workload_namespace"] + "/" + l["destination_workload"]
		if l["connection_security_policy"] == "mutual_tls" {
			r.mtls += m.GetCounter().GetValue()
		} else {
			r.plain += m.GetCounter().GetValue()
		}
	}
	for _, m := range families["rampart_inbound_plaintext_requests_total"].GetMetric() {
		if m.GetCounter().GetValue() > 0 {
			r.clients = append(r.clients, labels(m)["source_ip"])
		}
	}
	sort.Strings(r.clients)
	return r, nil
}

func parseMetrics(rd io.Reader) (map[string]*dto.MetricFamily, error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	return p.TextToMetricFamilies(rd)
}

func labels(m *dto.Metric) map[string]string {
	out := map[string]string{}
	for _, l := range m.GetLabel() {
		out[l.GetName()] = l.GetValue()
	}
	return out
}
