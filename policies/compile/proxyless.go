package compile

import (
	"fmt"
	"sort"
	"strings"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	faultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// Proxyless gRPC clients (grpc-go's xds resolver) read a different shape of
// the same configuration. Their names and their certificate provider instance
// follow Istio's proxyless support, so a gRPC bootstrap written for Istio
// works unchanged.
const (
	// GeneratorGRPC is the node metadata GENERATOR value of a proxyless gRPC client.
	GeneratorGRPC = "grpc"
	// CertProviderInstance is the bootstrap's certificate_providers key holding
	// the workload's certificate, key and roots (grpc-go's file_watcher).
	CertProviderInstance = "default"
)

// CompileProxyless builds what a proxyless gRPC client in workload wl
// consumes. It compiles the same outbound configuration a sidecar gets
// (CompileOutbound) and reshapes it:
//
//   - a Listener per HTTP service port named HOST:PORT (and the short forms
//     the workload's namespace may use, "name:PORT", "name.ns:PORT", ...),
//     each an api_listener whose HttpConnectionManager takes, over ADS, the
//     RouteConfiguration named after the full HOST:PORT, with the fault
//     filter and the router last;
//   - that RouteConfiguration: the service's virtual host as sidecars get it,
//     with VirtualService timeouts as max_stream_duration (what gRPC
//     enforces) and the CORS filter configuration (no gRPC meaning) left out;
//   - EDS and LOGICAL_DNS clusters (load balancing mapped to what grpc-go
//     implements) whose mTLS is an UpstreamTlsContext naming the bootstrap's
//     certificate provider instance and matching the destination's SPIFFE
//     IDs. gRPC cannot choose TLS per endpoint, so a cluster with any mesh
//     endpoint is mTLS to all of them (fail closed). Clusters gRPC cannot
//     dial safely (STATIC and STRICT_DNS ones, TLS with files) are left
//     out, so requests to them fail rather than go out in plaintext;
//   - ClusterLoadAssignments grouped by the endpoints' localities, each
//     locality weighted by its endpoints.
func CompileProxyless(n *Networking, mesh Mesh, wl Workload) (*Outbound, error) {
	side, err := CompileOutbound(n, mesh, wl)
	if err != nil {
		return nil, err
	}
	out := &Outbound{}
	routes := map[string]*routev3.RouteConfiguration{}
	for _, rc := range side.Routes {
		routes[rc.GetName()] = rc
	}
	ports := make([]string, 0, len(routes))
	for name := range routes {
		if !strings.HasPrefix(name, GatewayRoutePrefix) {
			ports = append(ports, name)
		}
	}
	sort.Strings(ports)
	seenListener := map[string]bool{}
	for _, port := range ports {
		for _, vh := range routes[port].GetVirtualHosts() {
			name := vh.GetName() // HOST:PORT
			rc := &routev3.RouteConfiguration{Name: name, VirtualHosts: []*routev3.VirtualHost{proxylessVirtualHost(vh)}, ValidateClusters: wrapperspb.Bool(false)}
			out.Routes = append(out.Routes, rc)
			names := []string{name}
			for _, d := range vh.GetDomains() {
				if strings.HasSuffix(d, ":"+port) && d != name {
					names = append(names, d)
				}
			}
			for _, ln := range names {
				if seenListener[ln] {
					continue // a short form two services share: the first (oldest host order) keeps it
				}
				seenListener[ln] = true
				out.Listeners = append(out.Listeners, apiListener(ln, name))
			}
		}
	}
	cla := map[string]*endpointv3.ClusterLoadAssignment{}
	for _, e := range side.Endpoints {
		cla[e.GetClusterName()] = e
	}
	locality := localities(n)
	for _, c := range side.Clusters {
		pc, ok := proxylessCluster(c, cla[c.GetName()], mesh)
		if !ok {
			continue
		}
		out.Clusters = append(out.Clusters, pc)
		if pc.GetType() == clusterv3.Cluster_EDS {
			out.Endpoints = append(out.Endpoints, byLocality(pc.GetName(), cla[c.GetName()], locality))
		}
	}
	return out, nil
}

func apiListener(name, route string) *listenerv3.Listener {
	hcm := &hcmv3.HttpConnectionManager{
		StatPrefix: name,
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{
			RouteConfigName: route,
			ConfigSource:    &corev3.ConfigSource{ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}, ResourceApiVersion: corev3.ApiVersion_V3},
		}},
		HttpFilters: []*hcmv3.HttpFilter{
			{Name: FaultFilter, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: typed(&faultv3.HTTPFault{})}},
			{Name: RouterFilter, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: typed(&routerv3.Router{})}},
		},
	}
	return &listenerv3.Listener{Name: name, ApiListener: &listenerv3.ApiListener{ApiListener: typed(hcm)}}
}

// proxylessVirtualHost copies a sidecar's virtual host for gRPC: a route
// timeout becomes max_stream_duration (gRPC ignores route timeouts), and the
// per-route CORS configuration is dropped (grpc-go refuses filter
// configurations it has no filter for; CORS means nothing to gRPC).
func proxylessVirtualHost(vh *routev3.VirtualHost) *routev3.VirtualHost {
	out := proto.Clone(vh).(*routev3.VirtualHost)
	delete(out.TypedPerFilterConfig, CorsFilter)
	for _, r := range out.GetRoutes() {
		delete(r.TypedPerFilterConfig, CorsFilter)
		if len(r.TypedPerFilterConfig) == 0 {
			r.TypedPerFilterConfig = nil
		}
		ra := r.GetRoute()
		if ra == nil {
			continue
		}
		if t := ra.GetTimeout(); t != nil && t.AsDuration() > 0 {
			ra.MaxStreamDuration = &routev3.RouteAction_MaxStreamDuration{MaxStreamDuration: t}
		}
		for _, c := range ra.GetWeightedClusters().GetClusters() {
			delete(c.TypedPerFilterConfig, CorsFilter)
		}
	}
	return out
}

// proxylessCluster reshapes a sidecar cluster for grpc-go; false means gRPC
// cannot use it safely and it is left out.
func proxylessCluster(c *clusterv3.Cluster, cla *endpointv3.ClusterLoadAssignment, mesh Mesh) (*clusterv3.Cluster, bool) {
	if c.GetName() == BlackHole {
		// gRPC has no STATIC clusters: an EDS cluster with no endpoints fails
		// requests the same way (UNAVAILABLE).
		return &clusterv3.Cluster{Name: BlackHole, ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
			EdsClusterConfig: &clusterv3.Cluster_EdsClusterConfig{EdsConfig: adsSource()}, LbPolicy: clusterv3.Cluster_ROUND_ROBIN}, true
	}
	switch c.GetType() {
	case clusterv3.Cluster_EDS:
	case clusterv3.Cluster_LOGICAL_DNS:
		if len(c.GetLoadAssignment().GetEndpoints()) != 1 || len(c.GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()) != 1 {
			return nil, false
		}
	default:
		return nil, false
	}
	out := proto.Clone(c).(*clusterv3.Cluster)
	out.TransportSocketMatches, out.TransportSocket = nil, nil
	switch out.GetLbPolicy() {
	case clusterv3.Cluster_ROUND_ROBIN, clusterv3.Cluster_RING_HASH, clusterv3.Cluster_LEAST_REQUEST:
	case clusterv3.Cluster_MAGLEV:
		out.LbPolicy = clusterv3.Cluster_RING_HASH // consistent hashing either way
	default:
		out.LbPolicy = clusterv3.Cluster_ROUND_ROBIN // RANDOM: grpc-go has no random picker
	}
	if out.LbPolicy == clusterv3.Cluster_LEAST_REQUEST {
		// grpc-go wants an explicit choice count.
		out.LbConfig = &clusterv3.Cluster_LeastRequestLbConfig_{LeastRequestLbConfig: &clusterv3.Cluster_LeastRequestLbConfig{ChoiceCount: wrapperspb.UInt32(2)}}
	}
	switch {
	case len(c.GetTransportSocketMatches()) > 0: // auto mTLS: by the endpoints' tlsMode
		var ts *corev3.TransportSocket
		for _, m := range c.GetTransportSocketMatches() {
			if m.GetMatch().GetFields()["tlsMode"].GetStringValue() == "istio" {
				ts = m.GetTransportSocket()
			}
		}
		if ts != nil && anyMeshEndpoint(cla) {
			sans, ok := meshSANs(ts)
			if !ok {
				return nil, false
			}
			out.TransportSocket = proxylessTLS(sans, mesh)
		}
	case c.GetTransportSocket() != nil:
		sans, ok := meshSANs(c.GetTransportSocket())
		if !ok {
			return nil, false // SIMPLE/MUTUAL TLS from files: gRPC takes certificates only from providers
		}
		out.TransportSocket = proxylessTLS(sans, mesh)
	}
	return out, true
}

func adsSource() *corev3.ConfigSource {
	return &corev3.ConfigSource{ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}, ResourceApiVersion: corev3.ApiVersion_V3}
}

func anyMeshEndpoint(cla *endpointv3.ClusterLoadAssignment) bool {
	for _, l := range cla.GetEndpoints() {
		for _, e := range l.GetLbEndpoints() {
			if e.GetMetadata().GetFilterMetadata()[SocketMatchKey].GetFields()["tlsMode"].GetStringValue() == "istio" {
				return true
			}
		}
	}
	return false
}

// meshSANs reads the peer SPIFFE IDs out of a sidecar's mesh mTLS transport
// socket; false if the socket is not mesh mTLS (its certificates come from
// SDS by Rampart's names).
func meshSANs(ts *corev3.TransportSocket) ([]string, bool) {
	ctx := &tlsv3.UpstreamTlsContext{}
	if ts.GetTypedConfig() == nil || ts.GetTypedConfig().UnmarshalTo(ctx) != nil {
		return nil, false
	}
	common := ctx.GetCommonTlsContext()
	sds := common.GetTlsCertificateSdsSecretConfigs()
	if len(sds) != 1 || sds[0].GetName() != SDSDefault || common.GetCombinedValidationContext().GetValidationContextSdsSecretConfig().GetName() != SDSRootCA {
		return nil, false
	}
	var sans []string
	for _, m := range common.GetCombinedValidationContext().GetDefaultValidationContext().GetMatchTypedSubjectAltNames() {
		if e := m.GetMatcher().GetExact(); e != "" {
			sans = append(sans, e)
		}
	}
	return sans, true
}

// proxylessTLS is mesh mTLS as grpc-go's xDS credentials read it: identity
// and roots from the bootstrap's certificate provider instance, and the
// server's SPIFFE ID matched against sans (grpc-go reads
// match_subject_alt_names). With no SANs the server must at least be in the
// mesh's trust domain: grpc-go would otherwise accept any certificate that
// chains to the roots.
func proxylessTLS(sans []string, mesh Mesh) *corev3.TransportSocket {
	var matchers []*matcherv3.StringMatcher
	for _, s := range sans {
		matchers = append(matchers, &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: s}})
	}
	if len(matchers) == 0 {
		matchers = append(matchers, &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: "spiffe://" + mesh.trustDomain() + "/"}})
	}
	vc := &tlsv3.CertificateValidationContext{
		CaCertificateProviderInstance: &tlsv3.CertificateProviderPluginInstance{InstanceName: CertProviderInstance, CertificateName: SDSRootCA},
	}
	//lint:ignore SA1019 grpc-go reads only match_subject_alt_names, not match_typed_subject_alt_names
	vc.MatchSubjectAltNames = matchers
	ctx := &tlsv3.UpstreamTlsContext{CommonTlsContext: &tlsv3.CommonTlsContext{
		TlsCertificateProviderInstance: &tlsv3.CertificateProviderPluginInstance{InstanceName: CertProviderInstance, CertificateName: SDSDefault},
		ValidationContextType:          &tlsv3.CommonTlsContext_ValidationContext{ValidationContext: vc},
	}}
	return &corev3.TransportSocket{Name: TLSSocket, ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: typed(ctx)}}
}

// localities maps endpoint addresses to their WorkloadEntry locality
// ("region/zone/subzone").
func localities(n *Networking) map[string]string {
	out := map[string]string{}
	eps := n.Registry.Workloads
	for _, s := range n.Registry.Services {
		eps = append(eps[:len(eps):len(eps)], s.Endpoints...)
	}
	for _, e := range eps {
		if e.Locality != "" {
			out[e.Address] = e.Locality
		}
	}
	return out
}

// byLocality regroups a cluster's endpoints by locality: grpc-go needs every
// locality named and weighted (it skips a locality of weight 0). A locality's
// weight is the sum of its endpoints' weights.
func byLocality(name string, cla *endpointv3.ClusterLoadAssignment, locality map[string]string) *endpointv3.ClusterLoadAssignment {
	out := &endpointv3.ClusterLoadAssignment{ClusterName: name}
	groups := map[string]*endpointv3.LocalityLbEndpoints{}
	var keys []string
	for _, l := range cla.GetEndpoints() {
		for _, e := range l.GetLbEndpoints() {
			key := locality[e.GetEndpoint().GetAddress().GetSocketAddress().GetAddress()]
			g, ok := groups[key]
			if !ok {
				region, rest, _ := strings.Cut(key, "/")
				zone, sub, _ := strings.Cut(rest, "/")
				g = &endpointv3.LocalityLbEndpoints{Locality: &corev3.Locality{Region: region, Zone: zone, SubZone: sub}, LoadBalancingWeight: wrapperspb.UInt32(0)}
				groups[key] = g
				keys = append(keys, key)
			}
			w := uint32(1)
			if e.GetLoadBalancingWeight().GetValue() > 0 {
				w = e.GetLoadBalancingWeight().GetValue()
			}
			g.LoadBalancingWeight = wrapperspb.UInt32(g.GetLoadBalancingWeight().GetValue() + w)
			g.LbEndpoints = append(g.LbEndpoints, proto.Clone(e).(*endpointv3.LbEndpoint))
		}
	}
	sort.Strings(keys)
	for _, k := range keys {
		out.Endpoints = append(out.Endpoints, groups[k])
	}
	return out
}

// CheckProxyless is the consistency check of a proxyless client's resources
// (go-control-plane's Snapshot.Consistent does not follow api_listeners):
// every listener's route configuration and every EDS cluster's endpoints are
// there. (Routes may name clusters left out on purpose: requests to them fail.)
func CheckProxyless(out *Outbound) error {
	routes := map[string]bool{}
	for _, r := range out.Routes {
		routes[r.GetName()] = true
	}
	eds := map[string]bool{}
	for _, e := range out.Endpoints {
		eds[e.GetClusterName()] = true
	}
	for _, l := range out.Listeners {
		hcm := &hcmv3.HttpConnectionManager{}
		if err := l.GetApiListener().GetApiListener().UnmarshalTo(hcm); err != nil {
			return fmt.Errorf("listener %s: api_listener: %w", l.GetName(), err)
		}
		if rn := hcm.GetRds().GetRouteConfigName(); !routes[rn] {
			return fmt.Errorf("listener %s: route configuration %q is missing", l.GetName(), rn)
		}
	}
	for _, c := range out.Clusters {
		if c.GetType() == clusterv3.Cluster_EDS && !eds[c.GetName()] {
			return fmt.Errorf("cluster %s: endpoints are missing", c.GetName())
		}
		if len(c.GetTransportSocketMatches()) > 0 {
			return fmt.Errorf("cluster %s: transport_socket_matches (gRPC has none)", c.GetName())
		}
	}
	return nil
}
