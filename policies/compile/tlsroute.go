package compile

import (
	"fmt"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tlsinspectorv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/tls_inspector/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"github.com/rampart-mesh/rampart/policies/registry"
	"google.golang.org/protobuf/types/known/durationpb"
	networking "istio.io/api/networking/v1alpha3"
)

// TLSInspectorFilter is Envoy's listener filter that reads a ClientHello's SNI
// so filter chains can match on server_names.
const TLSInspectorFilter = "envoy.filters.listener.tls_inspector"

// TLSInspectTimeout bounds how long a sidecar waits for a ClientHello before
// it picks the chain without server_names (Envoy's listener_filters_timeout).
const TLSInspectTimeout = 5 * time.Second

// isTLS says whether a port carries TLS the mesh does not terminate: such
// ports are routed by the ClientHello's SNI (Istio: ports named https-*/tls-*
// and ServiceEntry ports with protocol HTTPS or TLS).
func isTLS(protocol string) bool { return protocol == "TLS" || protocol == "HTTPS" }

// tlsListener builds the one listener a TLS/HTTPS port number gets, shared by
// every such service the proxy sees (Istio's 0.0.0.0_PORT): a tls_inspector,
// then filter chains matched by server_names, each a tcp_proxy. Order is
// Istio's precedence: the tls routes of the VirtualServices bound to the
// services, in their order (the first route to claim a name wins), then a
// chain per service host whose VirtualService has no tls route applying here
// (server_names: the host, wildcard hosts as Envoy's "*.example.com"), then at
// most one chain without server_names for connections no name matches: the
// first applying tcp route (Istio applies tcp routes to TLS ports too).
func (b *outboundBuilder) tlsListener(port uint32, svcs []*registry.Service) *listenerv3.Listener {
	var chains []*listenerv3.FilterChain
	claimed := map[string]bool{}
	claim := func(names []string) []string {
		var out []string
		for _, n := range names {
			n = strings.ToLower(n)
			if !claimed[n] {
				claimed[n] = true
				out = append(out, n)
			}
		}
		return out
	}
	var fallback *listenerv3.FilterChain
	seen := map[*VirtualService]bool{}
	routed := map[*registry.Service]bool{}
	for _, s := range svcs {
		vs := b.virtualServiceFor(s)
		if vs == nil {
			continue
		}
		if seen[vs] {
			routed[s] = routed[s] || b.hasTLSRoute(vs, port)
			continue
		}
		seen[vs] = true
		for i, r := range vs.Spec.GetTls() {
			for _, m := range r.GetMatch() {
				if !b.tlsMatches(m, port) {
					continue
				}
				routed[s] = true
				names := claim(m.GetSniHosts())
				if len(names) == 0 {
					continue // every name already went to an earlier route
				}
				chains = append(chains, &listenerv3.FilterChain{
					Name:             fmt.Sprintf("%s.%s.tls.%d", vs.Object.Name, vs.Object.Namespace, i),
					FilterChainMatch: &listenerv3.FilterChainMatch{ServerNames: names},
					Filters:          []*listenerv3.Filter{b.tcpProxy(vs, r.GetRoute(), port)},
				})
			}
		}
		for i, r := range vs.Spec.GetTcp() {
			if fallback != nil || !b.l4Matches(r.GetMatch(), port) {
				continue
			}
			fallback = &listenerv3.FilterChain{
				Name:    fmt.Sprintf("%s.%s.tcp.%d", vs.Object.Name, vs.Object.Namespace, i),
				Filters: []*listenerv3.Filter{b.tcpProxy(vs, r.GetRoute(), port)},
			}
		}
	}
	for _, s := range svcs {
		if routed[s] {
			continue
		}
		names := claim([]string{s.Host})
		if len(names) == 0 {
			continue
		}
		cluster := ClusterName(port, "", s.Host)
		tp := &tcpproxyv3.TcpProxy{StatPrefix: cluster, ClusterSpecifier: &tcpproxyv3.TcpProxy_Cluster{Cluster: cluster}}
		chains = append(chains, &listenerv3.FilterChain{
			Name:             cluster,
			FilterChainMatch: &listenerv3.FilterChainMatch{ServerNames: names},
			Filters:          []*listenerv3.Filter{{Name: TCPProxyFilter, ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: typed(tp)}}},
		})
	}
	if fallback != nil {
		chains = append(chains, fallback)
	}
	return &listenerv3.Listener{
		Name:    fmt.Sprintf("0.0.0.0_%d", port),
		Address: socketAddress("0.0.0.0", port),
		ListenerFilters: []*listenerv3.ListenerFilter{{Name: TLSInspectorFilter,
			ConfigType: &listenerv3.ListenerFilter_TypedConfig{TypedConfig: typed(&tlsinspectorv3.TlsInspector{})}}},
		ListenerFiltersTimeout:           durationpb.New(TLSInspectTimeout),
		ContinueOnListenerFiltersTimeout: true,
		FilterChains:                     chains,
		TrafficDirection:                 corev3.TrafficDirection_OUTBOUND,
	}
}

// hasTLSRoute says whether any of a VirtualService's tls routes applies to
// this proxy on this port.
func (b *outboundBuilder) hasTLSRoute(vs *VirtualService, port uint32) bool {
	for _, r := range vs.Spec.GetTls() {
		for _, m := range r.GetMatch() {
			if b.tlsMatches(m, port) {
				return true
			}
		}
	}
	return false
}

// tlsMatches applies a tls match's proxy-side conditions at compile time:
// port, sourceLabels, sourceNamespace and gateways ("mesh" for sidecars).
func (b *outboundBuilder) tlsMatches(m *networking.TLSMatchAttributes, port uint32) bool {
	if m.GetPort() != 0 && m.GetPort() != port {
		return false
	}
	if !registry.Matches(m.GetSourceLabels(), b.wl.Labels) {
		return false
	}
	if m.GetSourceNamespace() != "" && m.GetSourceNamespace() != b.wl.Namespace {
		return false
	}
	return meshGateway(m.GetGateways())
}

// tcpProxy is the tcp_proxy filter for a route's destinations: one cluster,
// or weighted clusters when there are several (unset weights share evenly).
func (b *outboundBuilder) tcpProxy(vs *VirtualService, dests []*networking.RouteDestination, port uint32) *listenerv3.Filter {
	tp := &tcpproxyv3.TcpProxy{}
	if len(dests) == 1 {
		c := b.destCluster(vs, dests[0].GetDestination(), port)
		tp.StatPrefix, tp.ClusterSpecifier = c, &tcpproxyv3.TcpProxy_Cluster{Cluster: c}
	} else {
		total := int32(0)
		for _, d := range dests {
			total += d.GetWeight()
		}
		wc := &tcpproxyv3.TcpProxy_WeightedCluster{}
		for _, d := range dests {
			w := uint32(d.GetWeight())
			if total == 0 {
				w = 1
			}
			if w == 0 {
				continue
			}
			wc.Clusters = append(wc.Clusters, &tcpproxyv3.TcpProxy_WeightedCluster_ClusterWeight{Name: b.destCluster(vs, d.GetDestination(), port), Weight: w})
		}
		tp.StatPrefix, tp.ClusterSpecifier = vs.Object.Name+"."+vs.Object.Namespace, &tcpproxyv3.TcpProxy_WeightedClusters{WeightedClusters: wc}
	}
	return &listenerv3.Filter{Name: TCPProxyFilter, ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: typed(tp)}}
}
