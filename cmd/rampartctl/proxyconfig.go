package main

import (
	"encoding/json"
	"fmt"
	"net/url"
	"sort"
	"strings"
	"text/tabwriter"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"github.com/rampart-mesh/rampart/policies/compile"
	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"
)

// printResources shows one proxy's Envoy resources of a type, as istioctl's
// proxy-config does: a table, or Envoy's JSON with -o json.
func printResources(cmd *cobra.Command, stateDir, server, proxy, typ string, output outputFormat) error {
	data, err := proxyGet(cmd.Context(), stateDir, server, "/proxies/xds?proxy="+url.QueryEscape(proxy)+"&type="+typ)
	if err != nil {
		return err
	}
	var resp struct {
		Acked     bool              `json:"acked"`
		Resources []json.RawMessage `json:"resources"`
	}
	if err := json.Unmarshal(data, &resp); err != nil {
		return err
	}
	out := cmd.OutOrStdout()
	if output == outputJSON {
		return writeJSON(out, resp.Resources)
	}
	fmt.Fprintf(out, "# proxy %s, acked %t\n", proxy, resp.Acked)
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	defer tw.Flush()
	switch typ {
	case "listeners":
		fmt.Fprintln(tw, "NAME\tADDRESS\tPORT\tDESTINATION")
		for _, raw := range resp.Resources {
			l := &listenerv3.Listener{}
			if err := protojson.Unmarshal(raw, l); err != nil {
				return err
			}
			sa := l.GetAddress().GetSocketAddress()
			fmt.Fprintf(tw, "%s\t%s\t%d\t%s\n", l.GetName(), sa.GetAddress(), sa.GetPortValue(), listenerDestination(l))
		}
	case "routes":
		fmt.Fprintln(tw, "ROUTE CONFIG\tVIRTUAL HOST\tMATCH\tDESTINATION")
		for _, raw := range resp.Resources {
			rc := &routev3.RouteConfiguration{}
			if err := protojson.Unmarshal(raw, rc); err != nil {
				return err
			}
			for _, vh := range rc.GetVirtualHosts() {
				for _, r := range vh.GetRoutes() {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", rc.GetName(), vh.GetName(), routeMatch(r.GetMatch()), routeDestination(r))
				}
			}
		}
	case "clusters":
		fmt.Fprintln(tw, "NAME\tTYPE\tLB\tTLS")
		for _, raw := range resp.Resources {
			c := &clusterv3.Cluster{}
			if err := protojson.Unmarshal(raw, c); err != nil {
				return err
			}
			tls := "plaintext"
			switch {
			case len(c.GetTransportSocketMatches()) > 0:
				tls = "auto mTLS"
			case c.GetTransportSocket().GetName() == compile.TLSSocket:
				tls = "TLS"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", c.GetName(), c.GetType(), c.GetLbPolicy(), tls)
		}
	case "endpoints":
		fmt.Fprintln(tw, "ENDPOINT\tCLUSTER\tTLS MODE")
		var rows []string
		for _, raw := range resp.Resources {
			cla := &endpointv3.ClusterLoadAssignment{}
			if err := protojson.Unmarshal(raw, cla); err != nil {
				return err
			}
			for _, lle := range cla.GetEndpoints() {
				for _, e := range lle.GetLbEndpoints() {
					sa := e.GetEndpoint().GetAddress().GetSocketAddress()
					mode := e.GetMetadata().GetFilterMetadata()[compile.SocketMatchKey].GetFields()["tlsMode"].GetStringValue()
					if mode == "" {
						mode = "-"
					}
					rows = append(rows, fmt.Sprintf("%s:%d\t%s\t%s", sa.GetAddress(), sa.GetPortValue(), cla.GetClusterName(), mode))
				}
			}
		}
		sort.Strings(rows)
		for _, r := range rows {
			fmt.Fprintln(tw, r)
		}
	}
	return nil
}

func listenerDestination(l *listenerv3.Listener) string {
	if fcs := l.GetFilterChains(); len(fcs) > 1 || (len(fcs) == 1 && fcs[0].GetFilterChainMatch() != nil) {
		return fmt.Sprintf("SNI: %d filter chains", len(fcs))
	}
	for _, fc := range l.GetFilterChains() {
		for _, f := range fc.GetFilters() {
			switch f.GetName() {
			case compile.HCMFilter:
				h := &hcmv3.HttpConnectionManager{}
				if f.GetTypedConfig().UnmarshalTo(h) == nil {
					return "Route: " + h.GetRds().GetRouteConfigName()
				}
			case compile.TCPProxyFilter:
				t := &tcpproxyv3.TcpProxy{}
				if f.GetTypedConfig().UnmarshalTo(t) == nil {
					if c := t.GetCluster(); c != "" {
						return "Cluster: " + c
					}
					return "Weighted clusters"
				}
			}
		}
	}
	return "-"
}

func routeMatch(m *routev3.RouteMatch) string {
	var parts []string
	switch {
	case m.GetPath() != "":
		parts = append(parts, m.GetPath())
	case m.GetSafeRegex() != nil:
		parts = append(parts, "regex "+m.GetSafeRegex().GetRegex())
	default:
		parts = append(parts, m.GetPrefix()+"*")
	}
	for _, h := range m.GetHeaders() {
		parts = append(parts, "header "+h.GetName())
	}
	for _, q := range m.GetQueryParameters() {
		parts = append(parts, "query "+q.GetName())
	}
	return strings.Join(parts, " ")
}

func routeDestination(r *routev3.Route) string {
	switch {
	case r.GetRedirect() != nil:
		return "redirect"
	case r.GetDirectResponse() != nil:
		return fmt.Sprintf("direct %d", r.GetDirectResponse().GetStatus())
	}
	ra := r.GetRoute()
	if c := ra.GetCluster(); c != "" {
		return c
	}
	var parts []string
	for _, w := range ra.GetWeightedClusters().GetClusters() {
		parts = append(parts, fmt.Sprintf("%s %d%%", w.GetName(), w.GetWeight().GetValue()))
	}
	return strings.Join(parts, ", ")
}
