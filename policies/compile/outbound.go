package compile

import (
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	faultcommon "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/common/fault/v3"
	corsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/cors/v3"
	faultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/rampart-mesh/rampart/policies/registry"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	networking "istio.io/api/networking/v1alpha3"
)

// Names Envoy and Istio use, kept so a real Envoy or istioctl reads our config.
const (
	FaultFilter     = "envoy.filters.http.fault"
	CorsFilter      = "envoy.filters.http.cors"
	RouterFilter    = "envoy.filters.http.router"
	HCMFilter       = "envoy.filters.network.http_connection_manager"
	TCPProxyFilter  = "envoy.filters.network.tcp_proxy"
	TLSSocket       = "envoy.transport_sockets.tls"
	SocketMatchKey  = "envoy.transport_socket_match"
	ProtocolOptions = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
	// SDS names of the proxy's own certificate and its trust bundle (Istio's).
	SDSDefault = "default"
	SDSRootCA  = "ROOTCA"
)

// Outbound is what one proxy needs to send traffic into the mesh.
type Outbound struct {
	Listeners []*listenerv3.Listener
	Routes    []*routev3.RouteConfiguration
	Clusters  []*clusterv3.Cluster
	Endpoints []*endpointv3.ClusterLoadAssignment
}

// ClusterName is Istio's outbound cluster name.
func ClusterName(port uint32, subset, host string) string {
	return fmt.Sprintf("outbound|%d|%s|%s", port, subset, host)
}

// BlackHole is the cluster a route points at when its destination is unknown;
// it has no endpoints, so requests get 503 with flag UH.
const BlackHole = "BlackHoleCluster"

// CompileOutbound builds a workload's outbound listeners, routes, clusters and
// endpoints from the decoded networking configuration.
func CompileOutbound(n *Networking, mesh Mesh, wl Workload) (*Outbound, error) {
	b := &outboundBuilder{n: n, mesh: mesh, wl: wl, clusters: map[string]*clusterv3.Cluster{}}
	return b.build()
}

type outboundBuilder struct {
	n        *Networking
	mesh     Mesh
	wl       Workload
	out      Outbound
	clusters map[string]*clusterv3.Cluster
	hashes   map[string]*routev3.RouteAction_HashPolicy // by cluster
}

func (b *outboundBuilder) build() (*Outbound, error) {
	b.hashes = map[string]*routev3.RouteAction_HashPolicy{}
	// The services this proxy may reach: visible by exportTo, and admitted by
	// the Sidecar resource that scopes it, if any.
	scope := b.n.sidecarFor(b.wl, b.mesh.root())
	var svcs []*registry.Service
	for _, s := range b.n.Registry.VisibleTo(b.wl.Namespace) {
		if egressAllows(scope, s, b.wl.Namespace) {
			svcs = append(svcs, s)
		}
	}
	// Clusters for every visible service port and every subset of its DestinationRule.
	for _, s := range svcs {
		for _, p := range s.Ports {
			b.addCluster(s, p, "", nil)
			if dr := b.dr(s); dr != nil {
				for _, ss := range dr.Spec.GetSubsets() {
					b.addCluster(s, p, ss.GetName(), ss)
				}
			}
		}
	}
	// Routes: one route configuration per HTTP port number, as Istio names them.
	byPort := map[uint32][]*registry.Service{}
	tlsByPort := map[uint32][]*registry.Service{}
	var tcp []struct {
		s *registry.Service
		p registry.Port
	}
	for _, s := range svcs {
		for _, p := range s.Ports {
			if registry.IsHTTP(p.Protocol) {
				byPort[p.Number] = append(byPort[p.Number], s)
			} else if isTLS(p.Protocol) {
				tlsByPort[p.Number] = append(tlsByPort[p.Number], s)
			} else {
				tcp = append(tcp, struct {
					s *registry.Service
					p registry.Port
				}{s, p})
			}
		}
	}
	ports := make([]uint32, 0, len(byPort))
	for p := range byPort {
		ports = append(ports, p)
	}
	sort.Slice(ports, func(i, j int) bool { return ports[i] < ports[j] })
	for _, port := range ports {
		rc := &routev3.RouteConfiguration{Name: strconv.Itoa(int(port)), ValidateClusters: wrapperspb.Bool(false)}
		for _, s := range byPort[port] {
			vh, err := b.virtualHost(s, port)
			if err != nil {
				return nil, err
			}
			rc.VirtualHosts = append(rc.VirtualHosts, vh)
		}
		b.out.Routes = append(b.out.Routes, rc)
		l, err := httpListener(port)
		if err != nil {
			return nil, err
		}
		b.out.Listeners = append(b.out.Listeners, l)
	}
	tlsPorts := make([]uint32, 0, len(tlsByPort))
	for p := range tlsByPort {
		tlsPorts = append(tlsPorts, p)
	}
	sort.Slice(tlsPorts, func(i, j int) bool { return tlsPorts[i] < tlsPorts[j] })
	for _, port := range tlsPorts {
		l := b.tlsListener(port, tlsByPort[port])
		if _, clash := byPort[port]; clash {
			// The HTTP listener has this port's name; explicit capture serves
			// HTTP on 15001 and TLS on the port itself, so both can exist.
			l.Name += "_tls"
		}
		b.out.Listeners = append(b.out.Listeners, l)
	}
	for _, t := range tcp {
		l, err := b.tcpListener(t.s, t.p)
		if err != nil {
			return nil, err
		}
		b.out.Listeners = append(b.out.Listeners, l)
	}
	if err := b.gateways(); err != nil {
		return nil, err
	}
	names := make([]string, 0, len(b.clusters))
	for n := range b.clusters {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		b.out.Clusters = append(b.out.Clusters, b.clusters[n])
	}
	b.out.Clusters = append(b.out.Clusters, &clusterv3.Cluster{
		Name: BlackHole, ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
		LoadAssignment: &endpointv3.ClusterLoadAssignment{ClusterName: BlackHole},
	})
	return &b.out, nil
}

func (b *outboundBuilder) dr(s *registry.Service) *DestinationRule {
	return b.n.destinationRule(s.Host, b.wl.Namespace, s.Namespace, b.mesh.root(), b.wl.Labels)
}

func (m Mesh) root() string {
	if m.RootNamespace == "" {
		return "rampart-system"
	}
	return m.RootNamespace
}

func (m Mesh) trustDomain() string {
	if m.TrustDomain == "" {
		return "cluster.local"
	}
	return m.TrustDomain
}

// policyFor merges a DestinationRule's traffic policy for one port and subset:
// the subset's policy overrides the top level; port-level settings override
// the policy they sit in (Istio's precedence).
func policyFor(dr *DestinationRule, subset *networking.Subset, port uint32) *networking.TrafficPolicy {
	merged := &networking.TrafficPolicy{}
	apply := func(tp *networking.TrafficPolicy) {
		if tp == nil {
			return
		}
		if tp.GetLoadBalancer() != nil {
			merged.LoadBalancer = tp.GetLoadBalancer()
		}
		if tp.GetConnectionPool() != nil {
			merged.ConnectionPool = tp.GetConnectionPool()
		}
		if tp.GetOutlierDetection() != nil {
			merged.OutlierDetection = tp.GetOutlierDetection()
		}
		if tp.GetTls() != nil {
			merged.Tls = tp.GetTls()
		}
		for _, pl := range tp.GetPortLevelSettings() {
			if pl.GetPort().GetNumber() != port {
				continue
			}
			if pl.GetLoadBalancer() != nil {
				merged.LoadBalancer = pl.GetLoadBalancer()
			}
			if pl.GetConnectionPool() != nil {
				merged.ConnectionPool = pl.GetConnectionPool()
			}
			if pl.GetOutlierDetection() != nil {
				merged.OutlierDetection = pl.GetOutlierDetection()
			}
			if pl.GetTls() != nil {
				merged.Tls = pl.GetTls()
			}
		}
	}
	if dr != nil {
		apply(dr.Spec.GetTrafficPolicy())
	}
	if subset != nil {
		apply(subset.GetTrafficPolicy())
	}
	return merged
}

func (b *outboundBuilder) addCluster(s *registry.Service, p registry.Port, subset string, ss *networking.Subset) {
	name := ClusterName(p.Number, subset, s.Host)
	dr := b.dr(s)
	tp := policyFor(dr, ss, p.Number)
	c := &clusterv3.Cluster{
		Name:           name,
		ConnectTimeout: durationpb.New(10 * time.Second),
		CircuitBreakers: &clusterv3.CircuitBreakers{Thresholds: []*clusterv3.CircuitBreakers_Thresholds{{
			MaxConnections: wrapperspb.UInt32(math.MaxUint32), MaxPendingRequests: wrapperspb.UInt32(math.MaxUint32),
			MaxRequests: wrapperspb.UInt32(math.MaxUint32), MaxRetries: wrapperspb.UInt32(math.MaxUint32),
		}}},
	}
	// Endpoints.
	eps := b.n.Registry.EndpointsOf(s)
	var labels map[string]string
	if ss != nil {
		labels = ss.GetLabels()
	}
	cla := &endpointv3.ClusterLoadAssignment{ClusterName: name}
	lle := &endpointv3.LocalityLbEndpoints{}
	var sans []string
	seenSA := map[string]bool{}
	for _, ep := range eps {
		if !registry.Matches(labels, ep.Labels) {
			continue
		}
		port := p.Number
		if tp := p.TargetPort; tp != 0 {
			port = tp
		}
		if wp, ok := ep.Ports[p.Name]; ok && wp != 0 {
			port = wp
		}
		lb := &endpointv3.LbEndpoint{
			HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: socketAddress(ep.Address, port)}},
		}
		if ep.Weight > 0 {
			lb.LoadBalancingWeight = wrapperspb.UInt32(ep.Weight)
		}
		md := map[string]any{}
		// Auto mTLS follows the server's PeerAuthentication: DISABLE gets plaintext.
		if ep.Mesh && !b.peerDisabled(ep, port) {
			md["tlsMode"] = "istio"
			sa := fmt.Sprintf("spiffe://%s/ns/%s/sa/%s", b.mesh.trustDomain(), ep.Object.Namespace, ep.ServiceAccount)
			if !seenSA[sa] {
				seenSA[sa] = true
				sans = append(sans, sa)
			}
		}
		if len(md) > 0 {
			st, _ := structpb.NewStruct(md)
			lb.Metadata = &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{SocketMatchKey: st}}
		}
		lle.LbEndpoints = append(lle.LbEndpoints, lb)
	}
	cla.Endpoints = []*endpointv3.LocalityLbEndpoints{lle}
	sans = append(sans, s.SubjectAltNames...)
	sort.Strings(sans)
	switch {
	case s.Resolution == "DNS" || s.Resolution == "DNS_ROUND_ROBIN":
		t := clusterv3.Cluster_STRICT_DNS
		if s.Resolution == "DNS_ROUND_ROBIN" {
			t = clusterv3.Cluster_LOGICAL_DNS
		}
		c.ClusterDiscoveryType = &clusterv3.Cluster_Type{Type: t}
		if len(eps) == 0 && ss == nil { // DNS with no endpoints resolves the host itself
			lle.LbEndpoints = append(lle.LbEndpoints, &endpointv3.LbEndpoint{
				HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: socketAddress(s.Host, p.Number)}}})
		}
		c.LoadAssignment = cla
	default:
		c.ClusterDiscoveryType = &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS}
		c.EdsClusterConfig = &clusterv3.Cluster_EdsClusterConfig{EdsConfig: &corev3.ConfigSource{
			ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}, ResourceApiVersion: corev3.ApiVersion_V3}}
		b.out.Endpoints = append(b.out.Endpoints, cla)
	}
	applyTrafficPolicy(c, tp, p, b.mesh.H2UpgradePolicy == "UPGRADE" && s.Internal)
	// Transport: the DestinationRule's tls, else auto-mTLS by endpoint metadata.
	switch tls := tp.GetTls(); {
	case tls == nil && s.Internal:
		c.TransportSocketMatches = []*clusterv3.Cluster_TransportSocketMatch{
			{Name: "tlsMode-istio", Match: mustStruct(map[string]any{"tlsMode": "istio"}), TransportSocket: meshTLS(sans, alpnFor(p))},
			{Name: "tlsMode-disabled", Match: &structpb.Struct{}, TransportSocket: rawBuffer()},
		}
	case tls == nil:
	case tls.GetMode() == networking.ClientTLSSettings_ISTIO_MUTUAL:
		c.TransportSocket = meshTLS(sans, alpnFor(p))
	case tls.GetMode() == networking.ClientTLSSettings_SIMPLE || tls.GetMode() == networking.ClientTLSSettings_MUTUAL:
		c.TransportSocket = externalTLS(tls, s.Host)
	}
	if h := tp.GetLoadBalancer().GetConsistentHash(); h != nil {
		b.hashes[name] = hashPolicy(h)
	}
	b.clusters[name] = c
}

func alpnFor(p registry.Port) []string {
	if p.Protocol == "HTTP2" || p.Protocol == "GRPC" {
		return []string{"h2"}
	}
	if registry.IsHTTP(p.Protocol) {
		return []string{"http/1.1"}
	}
	return nil
}

func mustStruct(m map[string]any) *structpb.Struct {
	s, err := structpb.NewStruct(m)
	if err != nil {
		panic(err) // only literal maps of strings reach here
	}
	return s
}

func socketAddress(addr string, port uint32) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address: addr, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port}}}}
}

func typed(m proto.Message) *anypb.Any {
	a, err := anypb.New(m)
	if err != nil {
		panic(err) // marshalling a well-formed message in memory does not fail
	}
	return a
}

func rawBuffer() *corev3.TransportSocket {
	return &corev3.TransportSocket{Name: "envoy.transport_sockets.raw_buffer"}
}

// meshTLS is the mTLS transport socket between sidecars: the proxy's SVID and
// trust bundle by their SDS names, and the peer's SPIFFE IDs to accept.
func meshTLS(sans []string, alpn []string) *corev3.TransportSocket {
	var matchers []*tlsv3.SubjectAltNameMatcher
	for _, s := range sans {
		matchers = append(matchers, &tlsv3.SubjectAltNameMatcher{SanType: tlsv3.SubjectAltNameMatcher_URI,
			Matcher: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: s}}})
	}
	ctx := &tlsv3.UpstreamTlsContext{CommonTlsContext: &tlsv3.CommonTlsContext{
		AlpnProtocols:                  append([]string{"istio-peer-exchange", "istio"}, alpn...),
		TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{{Name: SDSDefault}},
		ValidationContextType: &tlsv3.CommonTlsContext_CombinedValidationContext{CombinedValidationContext: &tlsv3.CommonTlsContext_CombinedCertificateValidationContext{
			DefaultValidationContext:         &tlsv3.CertificateValidationContext{MatchTypedSubjectAltNames: matchers},
			ValidationContextSdsSecretConfig: &tlsv3.SdsSecretConfig{Name: SDSRootCA},
		}},
	}}
	return &corev3.TransportSocket{Name: TLSSocket, ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: typed(ctx)}}
}

// externalTLS is TLS origination (DestinationRule tls SIMPLE or MUTUAL) to a
// server outside the mesh. With no sni the host is the SNI, but a wildcard
// host names no server: the SNI then comes from each request's Host
// (autoSNI), and a TCP connection has none, so the sidecar refuses it rather
// than accept any certificate a trusted CA signed.
func externalTLS(t *networking.ClientTLSSettings, host string) *corev3.TransportSocket {
	vc := &tlsv3.CertificateValidationContext{}
	if t.GetInsecureSkipVerify().GetValue() {
		// Istio: skip verifying the CA signature and the SAN; the CA and
		// the names to match are then unused.
		vc.TrustChainVerification = tlsv3.CertificateValidationContext_ACCEPT_UNTRUSTED
	} else {
		if t.GetCaCertificates() != "" {
			vc.TrustedCa = &corev3.DataSource{Specifier: &corev3.DataSource_Filename{Filename: t.GetCaCertificates()}}
		}
		for _, s := range t.GetSubjectAltNames() {
			vc.MatchTypedSubjectAltNames = append(vc.MatchTypedSubjectAltNames, &tlsv3.SubjectAltNameMatcher{SanType: tlsv3.SubjectAltNameMatcher_DNS,
				Matcher: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: s}}})
		}
	}
	common := &tlsv3.CommonTlsContext{ValidationContextType: &tlsv3.CommonTlsContext_ValidationContext{ValidationContext: vc}}
	if t.GetMode() == networking.ClientTLSSettings_MUTUAL {
		common.TlsCertificates = []*tlsv3.TlsCertificate{{
			CertificateChain: &corev3.DataSource{Specifier: &corev3.DataSource_Filename{Filename: t.GetClientCertificate()}},
			PrivateKey:       &corev3.DataSource{Specifier: &corev3.DataSource_Filename{Filename: t.GetPrivateKey()}},
		}}
	}
	sni := t.GetSni()
	if sni == "" && !strings.HasPrefix(host, "*") {
		sni = host
	}
	ctx := &tlsv3.UpstreamTlsContext{CommonTlsContext: common, Sni: sni}
	return &corev3.TransportSocket{Name: TLSSocket, ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: typed(ctx)}}
}

// autoSNI is Istio's setAutoSniAndAutoSanValidation for TLS origination: with
// no sni in the DestinationRule, the SNI is each request's Host, and with no
// subjectAltNames either, the certificate is verified against that Host.
func autoSNI(t *networking.ClientTLSSettings) *corev3.UpstreamHttpProtocolOptions {
	switch t.GetMode() {
	case networking.ClientTLSSettings_SIMPLE, networking.ClientTLSSettings_MUTUAL:
	default:
		return nil
	}
	if t.GetSni() != "" {
		return nil
	}
	return &corev3.UpstreamHttpProtocolOptions{AutoSni: true,
		AutoSanValidation: len(t.GetSubjectAltNames()) == 0 && !t.GetInsecureSkipVerify().GetValue()}
}

func applyTrafficPolicy(c *clusterv3.Cluster, tp *networking.TrafficPolicy, p registry.Port, meshUpgrade bool) {
	lb := tp.GetLoadBalancer()
	switch {
	case lb.GetConsistentHash() != nil:
		c.LbPolicy = clusterv3.Cluster_RING_HASH
		if lb.GetConsistentHash().GetMaglev() != nil {
			c.LbPolicy = clusterv3.Cluster_MAGLEV
		}
	//lint:ignore SA1019 users' YAML still sets the deprecated field; Istio honours it
	case lb.GetSimple() == networking.LoadBalancerSettings_LEAST_REQUEST || lb.GetSimple() == networking.LoadBalancerSettings_LEAST_CONN:
		c.LbPolicy = clusterv3.Cluster_LEAST_REQUEST
	case lb.GetSimple() == networking.LoadBalancerSettings_RANDOM:
		c.LbPolicy = clusterv3.Cluster_RANDOM
	default:
		c.LbPolicy = clusterv3.Cluster_ROUND_ROBIN
	}
	th := c.CircuitBreakers.Thresholds[0]
	cp := tp.GetConnectionPool()
	httpOpts := &corev3.HttpProtocolOptions{}
	if t := cp.GetTcp(); t != nil {
		if t.GetMaxConnections() > 0 {
			th.MaxConnections = wrapperspb.UInt32(uint32(t.GetMaxConnections()))
		}
		if t.GetConnectTimeout() != nil {
			c.ConnectTimeout = t.GetConnectTimeout()
		}
		if t.GetIdleTimeout() != nil {
			httpOpts.IdleTimeout = t.GetIdleTimeout()
		}
	}
	h2 := p.Protocol == "HTTP2" || p.Protocol == "GRPC" || (meshUpgrade && p.Protocol == "HTTP")
	if h := cp.GetHttp(); h != nil {
		if h.GetHttp1MaxPendingRequests() > 0 {
			th.MaxPendingRequests = wrapperspb.UInt32(uint32(h.GetHttp1MaxPendingRequests()))
		}
		if h.GetHttp2MaxRequests() > 0 {
			th.MaxRequests = wrapperspb.UInt32(uint32(h.GetHttp2MaxRequests()))
		}
		if h.GetMaxRetries() > 0 {
			th.MaxRetries = wrapperspb.UInt32(uint32(h.GetMaxRetries()))
		}
		if h.GetMaxRequestsPerConnection() > 0 {
			httpOpts.MaxRequestsPerConnection = wrapperspb.UInt32(uint32(h.GetMaxRequestsPerConnection()))
		}
		if h.GetIdleTimeout() != nil {
			httpOpts.IdleTimeout = h.GetIdleTimeout()
		}
		switch h.GetH2UpgradePolicy() {
		case networking.ConnectionPoolSettings_HTTPSettings_UPGRADE:
			h2 = h2 || registry.IsHTTP(p.Protocol)
		case networking.ConnectionPoolSettings_HTTPSettings_DO_NOT_UPGRADE:
			h2 = p.Protocol == "HTTP2" || p.Protocol == "GRPC"
		}
	}
	if registry.IsHTTP(p.Protocol) {
		po := &httpv3.HttpProtocolOptions{CommonHttpProtocolOptions: httpOpts, UpstreamHttpProtocolOptions: autoSNI(tp.GetTls())}
		if h2 {
			po.UpstreamProtocolOptions = &httpv3.HttpProtocolOptions_ExplicitHttpConfig_{ExplicitHttpConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig{
				ProtocolConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{Http2ProtocolOptions: &corev3.Http2ProtocolOptions{}}}}
		} else {
			po.UpstreamProtocolOptions = &httpv3.HttpProtocolOptions_ExplicitHttpConfig_{ExplicitHttpConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig{
				ProtocolConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_HttpProtocolOptions{HttpProtocolOptions: &corev3.Http1ProtocolOptions{}}}}
		}
		c.TypedExtensionProtocolOptions = map[string]*anypb.Any{ProtocolOptions: typed(po)}
	}
	if od := tp.GetOutlierDetection(); od != nil {
		o := &clusterv3.OutlierDetection{
			Interval: od.GetInterval(), BaseEjectionTime: od.GetBaseEjectionTime(),
			// Istio turns off what the DestinationRule does not ask for.
			EnforcingConsecutive_5Xx:               wrapperspb.UInt32(0),
			EnforcingConsecutiveGatewayFailure:     wrapperspb.UInt32(0),
			EnforcingSuccessRate:                   wrapperspb.UInt32(0),
			EnforcingConsecutiveLocalOriginFailure: wrapperspb.UInt32(0),
		}
		//lint:ignore SA1019 users' YAML still sets the deprecated field; Istio honours it
		legacy := uint32(od.GetConsecutiveErrors()) // deprecated: gateway errors
		// consecutive5xxErrors defaults to 5; only an explicit 0 turns it
		// off. The deprecated consecutiveErrors, when set alone, asks for
		// gateway errors instead, as Istio translates it.
		switch v := od.GetConsecutive_5XxErrors(); {
		case v != nil && v.GetValue() > 0:
			o.Consecutive_5Xx, o.EnforcingConsecutive_5Xx = wrapperspb.UInt32(v.GetValue()), wrapperspb.UInt32(100)
		case v != nil:
		case legacy > 0:
			o.ConsecutiveGatewayFailure, o.EnforcingConsecutiveGatewayFailure = wrapperspb.UInt32(legacy), wrapperspb.UInt32(100)
		default:
			o.Consecutive_5Xx, o.EnforcingConsecutive_5Xx = wrapperspb.UInt32(5), wrapperspb.UInt32(100)
		}
		if v := od.GetConsecutiveGatewayErrors(); v != nil && v.GetValue() > 0 {
			o.ConsecutiveGatewayFailure, o.EnforcingConsecutiveGatewayFailure = wrapperspb.UInt32(v.GetValue()), wrapperspb.UInt32(100)
		}
		if od.GetMaxEjectionPercent() > 0 {
			o.MaxEjectionPercent = wrapperspb.UInt32(uint32(od.GetMaxEjectionPercent()))
		}
		c.OutlierDetection = o
		// Istio's minHealthPercent defaults to 0 (panic mode off), not Envoy's 50%.
		c.CommonLbConfig = &clusterv3.Cluster_CommonLbConfig{HealthyPanicThreshold: &typev3.Percent{Value: float64(max(od.GetMinHealthPercent(), 0))}}
	}
}

func hashPolicy(h *networking.LoadBalancerSettings_ConsistentHashLB) *routev3.RouteAction_HashPolicy {
	switch {
	case h.GetHttpHeaderName() != "":
		return &routev3.RouteAction_HashPolicy{PolicySpecifier: &routev3.RouteAction_HashPolicy_Header_{Header: &routev3.RouteAction_HashPolicy_Header{HeaderName: h.GetHttpHeaderName()}}}
	case h.GetHttpCookie() != nil:
		return &routev3.RouteAction_HashPolicy{PolicySpecifier: &routev3.RouteAction_HashPolicy_Cookie_{Cookie: &routev3.RouteAction_HashPolicy_Cookie{
			Name: h.GetHttpCookie().GetName(), Path: h.GetHttpCookie().GetPath(), Ttl: h.GetHttpCookie().GetTtl()}}}
	case h.GetUseSourceIp():
		return &routev3.RouteAction_HashPolicy{PolicySpecifier: &routev3.RouteAction_HashPolicy_ConnectionProperties_{ConnectionProperties: &routev3.RouteAction_HashPolicy_ConnectionProperties{SourceIp: true}}}
	case h.GetHttpQueryParameterName() != "":
		return &routev3.RouteAction_HashPolicy{PolicySpecifier: &routev3.RouteAction_HashPolicy_QueryParameter_{QueryParameter: &routev3.RouteAction_HashPolicy_QueryParameter{Name: h.GetHttpQueryParameterName()}}}
	}
	return nil
}

func httpListener(port uint32) (*listenerv3.Listener, error) {
	hcm := &hcmv3.HttpConnectionManager{
		StatPrefix: fmt.Sprintf("outbound_0.0.0.0_%d", port),
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{
			RouteConfigName: strconv.Itoa(int(port)),
			ConfigSource:    &corev3.ConfigSource{ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}, ResourceApiVersion: corev3.ApiVersion_V3},
		}},
		HttpFilters: []*hcmv3.HttpFilter{
			{Name: FaultFilter, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: typed(&faultv3.HTTPFault{})}},
			{Name: CorsFilter, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: typed(&corsv3.Cors{})}},
			{Name: RouterFilter, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: typed(&routerv3.Router{})}},
		},
	}
	return &listenerv3.Listener{
		Name:    fmt.Sprintf("0.0.0.0_%d", port),
		Address: socketAddress("0.0.0.0", port),
		FilterChains: []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{{
			Name: HCMFilter, ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: typed(hcm)}}}}},
		TrafficDirection: corev3.TrafficDirection_OUTBOUND,
	}, nil
}

// tcpListener routes a TCP service port to its cluster (or by the VirtualService's tcp routes).
func (b *outboundBuilder) tcpListener(s *registry.Service, p registry.Port) (*listenerv3.Listener, error) {
	cluster := ClusterName(p.Number, "", s.Host)
	tp := &tcpproxyv3.TcpProxy{StatPrefix: cluster, ClusterSpecifier: &tcpproxyv3.TcpProxy_Cluster{Cluster: cluster}}
	if vs := b.virtualServiceFor(s); vs != nil {
		for _, r := range vs.Spec.GetTcp() {
			if !b.l4Matches(r.GetMatch(), p.Number) {
				continue
			}
			if len(r.GetRoute()) == 1 {
				tp.ClusterSpecifier = &tcpproxyv3.TcpProxy_Cluster{Cluster: b.destCluster(vs, r.GetRoute()[0].GetDestination(), p.Number)}
			} else {
				wc := &tcpproxyv3.TcpProxy_WeightedCluster{}
				for _, d := range r.GetRoute() {
					// Istio drops a zero-weight destination (Envoy's tcp_proxy
					// refuses a cluster weight below 1).
					if d.GetWeight() == 0 {
						continue
					}
					wc.Clusters = append(wc.Clusters, &tcpproxyv3.TcpProxy_WeightedCluster_ClusterWeight{Name: b.destCluster(vs, d.GetDestination(), p.Number), Weight: uint32(d.GetWeight())})
				}
				tp.ClusterSpecifier = &tcpproxyv3.TcpProxy_WeightedClusters{WeightedClusters: wc}
			}
			break
		}
	}
	return &listenerv3.Listener{
		Name:    fmt.Sprintf("%s_%d", s.Host, p.Number),
		Address: socketAddress(s.Host, p.Number),
		FilterChains: []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{{
			Name: TCPProxyFilter, ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: typed(tp)}}}}},
		TrafficDirection: corev3.TrafficDirection_OUTBOUND,
	}, nil
}

func (b *outboundBuilder) l4Matches(ms []*networking.L4MatchAttributes, port uint32) bool {
	if len(ms) == 0 {
		return true
	}
	for _, m := range ms {
		if m.GetPort() != 0 && m.GetPort() != port {
			continue
		}
		// The listener does not match on the destination address, so a
		// match limited to destinationSubnets never applies rather than
		// taking every connection (validateVirtualService warns).
		if len(m.GetDestinationSubnets()) > 0 {
			continue
		}
		if !registry.Matches(m.GetSourceLabels(), b.wl.Labels) {
			continue
		}
		if m.GetSourceNamespace() != "" && m.GetSourceNamespace() != b.wl.Namespace {
			continue
		}
		if !meshGateway(m.GetGateways()) {
			continue
		}
		return true
	}
	return false
}

// meshGateway reports whether a gateways list includes sidecars: empty, or "mesh".
func meshGateway(gws []string) bool {
	if len(gws) == 0 {
		return true
	}
	for _, g := range gws {
		if g == "mesh" {
			return true
		}
	}
	return false
}

// virtualServiceFor finds the VirtualService for a service host that applies
// to sidecars: one in the proxy's namespace first, else the oldest visible one.
func (b *outboundBuilder) virtualServiceFor(s *registry.Service) *VirtualService {
	var found *VirtualService
	for i := range b.n.VirtualServices {
		vs := &b.n.VirtualServices[i]
		if !meshGateway(vs.Spec.GetGateways()) || !visible(vs.Spec.GetExportTo(), vs.Object.Namespace, b.wl.Namespace) {
			continue
		}
		for _, h := range vs.Spec.GetHosts() {
			if hostMatches(b.n.Registry.Resolve(h, vs.Object.Namespace), s.Host) {
				if vs.Object.Namespace == b.wl.Namespace {
					return vs
				}
				if found == nil {
					found = vs
				}
			}
		}
	}
	return found
}

// hostMatches reports whether a VirtualService host (maybe "*.example.com")
// covers a service host.
func hostMatches(pattern, host string) bool {
	if pattern == host || pattern == "*" {
		return true
	}
	if strings.HasPrefix(pattern, "*.") {
		return strings.HasSuffix(host, pattern[1:])
	}
	return false
}

// destCluster names the cluster of a destination, given the port the request came in on.
func (b *outboundBuilder) destCluster(vs *VirtualService, d *networking.Destination, port uint32) string {
	host := b.n.Registry.Resolve(d.GetHost(), vs.Object.Namespace)
	svc := b.n.Registry.Service(host)
	if svc == nil {
		return BlackHole
	}
	p := d.GetPort().GetNumber()
	if p == 0 {
		if len(svc.Ports) == 1 {
			p = svc.Ports[0].Number
		} else {
			p = port
		}
	}
	name := ClusterName(p, d.GetSubset(), host)
	if _, ok := b.clusters[name]; !ok {
		return BlackHole
	}
	return name
}

func (b *outboundBuilder) virtualHost(s *registry.Service, port uint32) (*routev3.VirtualHost, error) {
	vh := &routev3.VirtualHost{Name: fmt.Sprintf("%s:%d", s.Host, port)}
	for _, a := range b.n.Registry.Aliases(s.Host, b.wl.Namespace) {
		vh.Domains = append(vh.Domains, a, fmt.Sprintf("%s:%d", a, port))
	}
	def := ClusterName(port, "", s.Host)
	vs := b.virtualServiceFor(s)
	if vs == nil {
		vh.Routes = []*routev3.Route{b.defaultRoute(def)}
		return vh, nil
	}
	for i, h := range vs.Spec.GetHttp() {
		rs, err := b.httpRoute(vs, i, h, port, "")
		if err != nil {
			return nil, err
		}
		vh.Routes = append(vh.Routes, rs...)
	}
	return vh, nil
}

// defaultRoute sends everything to the service's cluster with Istio's default
// retry policy and no timeout.
func (b *outboundBuilder) defaultRoute(cluster string) *routev3.Route {
	ra := &routev3.RouteAction{
		ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: cluster},
		Timeout:          durationpb.New(0),
		RetryPolicy:      defaultRetry(),
	}
	if hp := b.hashes[cluster]; hp != nil {
		ra.HashPolicy = []*routev3.RouteAction_HashPolicy{hp}
	}
	return &routev3.Route{Name: "default", Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
		Action: &routev3.Route_Route{Route: ra}}
}

func defaultRetry() *routev3.RetryPolicy {
	return &routev3.RetryPolicy{
		RetryOn: "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes", NumRetries: wrapperspb.UInt32(2),
		RetriableStatusCodes:          []uint32{503},
		RetryHostPredicate:            []*routev3.RetryPolicy_RetryHostPredicate{{Name: "envoy.retry_host_predicates.previous_hosts"}},
		HostSelectionRetryMaxAttempts: 5,
	}
}

func stringMatcher(m *networking.StringMatch, ignoreCase bool) *matcherv3.StringMatcher {
	// The oneof that is set decides, not whether its value is empty:
	// `exact: ""` matches an empty value, not any value.
	switch mt := m.GetMatchType().(type) {
	case *networking.StringMatch_Exact:
		return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: mt.Exact}, IgnoreCase: ignoreCase}
	case *networking.StringMatch_Prefix:
		if mt.Prefix == "" { // every value: presence
			return nil
		}
		return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: mt.Prefix}, IgnoreCase: ignoreCase}
	case *networking.StringMatch_Regex:
		return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: mt.Regex}}}
	}
	return nil
}

func headerMatcher(name string, m *networking.StringMatch, invert bool) *routev3.HeaderMatcher {
	hm := &routev3.HeaderMatcher{Name: name, InvertMatch: invert}
	if sm := stringMatcher(m, false); sm != nil {
		hm.HeaderMatchSpecifier = &routev3.HeaderMatcher_StringMatch{StringMatch: sm}
	} else {
		hm.HeaderMatchSpecifier = &routev3.HeaderMatcher_PresentMatch{PresentMatch: true}
	}
	return hm
}

// routeMatches translates a rule's matches into Envoy route matches; those that
// cannot apply to this proxy or port (sourceLabels, sourceNamespace, port,
// gateways) are dropped, and a rule left with none does not apply.
func (b *outboundBuilder) routeMatches(ms []*networking.HTTPMatchRequest, port uint32, gw, vsNS string) ([]*routev3.RouteMatch, bool) {
	if len(ms) == 0 {
		return []*routev3.RouteMatch{{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}}}, true
	}
	var out []*routev3.RouteMatch
	for _, m := range ms {
		if m.GetPort() != 0 && m.GetPort() != port {
			continue
		}
		if !registry.Matches(m.GetSourceLabels(), b.wl.Labels) || (m.GetSourceNamespace() != "" && m.GetSourceNamespace() != b.wl.Namespace) {
			continue
		}
		if !matchesGateway(m.GetGateways(), vsNS, gw) {
			continue
		}
		rm := &routev3.RouteMatch{}
		if m.GetIgnoreUriCase() {
			rm.CaseSensitive = wrapperspb.Bool(false)
		}
		switch u := m.GetUri(); {
		case u.GetExact() != "":
			rm.PathSpecifier = &routev3.RouteMatch_Path{Path: u.GetExact()}
		case u.GetPrefix() != "":
			rm.PathSpecifier = &routev3.RouteMatch_Prefix{Prefix: u.GetPrefix()}
		case u.GetRegex() != "":
			// ignoreUriCase applies to exact and prefix matches only (Istio).
			rm.PathSpecifier = &routev3.RouteMatch_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: u.GetRegex()}}
		default:
			rm.PathSpecifier = &routev3.RouteMatch_Prefix{Prefix: "/"}
		}
		if m.GetMethod() != nil {
			rm.Headers = append(rm.Headers, headerMatcher(":method", m.GetMethod(), false))
		}
		if m.GetAuthority() != nil {
			rm.Headers = append(rm.Headers, headerMatcher(":authority", m.GetAuthority(), false))
		}
		if m.GetScheme() != nil {
			rm.Headers = append(rm.Headers, headerMatcher(":scheme", m.GetScheme(), false))
		}
		for _, k := range sortedKeys(m.GetHeaders()) {
			rm.Headers = append(rm.Headers, headerMatcher(strings.ToLower(k), m.GetHeaders()[k], false))
		}
		for _, k := range sortedKeys(m.GetWithoutHeaders()) {
			rm.Headers = append(rm.Headers, headerMatcher(strings.ToLower(k), m.GetWithoutHeaders()[k], true))
		}
		for _, k := range sortedKeys(m.GetQueryParams()) {
			qm := &routev3.QueryParameterMatcher{Name: k}
			if sm := stringMatcher(m.GetQueryParams()[k], false); sm != nil {
				qm.QueryParameterMatchSpecifier = &routev3.QueryParameterMatcher_StringMatch{StringMatch: sm}
			} else {
				qm.QueryParameterMatchSpecifier = &routev3.QueryParameterMatcher_PresentMatch{PresentMatch: true}
			}
			rm.QueryParameters = append(rm.QueryParameters, qm)
		}
		out = append(out, rm)
	}
	return out, len(out) > 0
}

func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// percent is p's value, else legacy's when set, else unset: Istio's
// percentages default to 100 for mirrors and to 0 for faults.
func percent(p *networking.Percent, legacy *float64, unset float64) float64 {
	switch {
	case p != nil:
		return p.GetValue()
	case legacy != nil:
		return *legacy
	}
	return unset
}

// legacyPercent is a deprecated integer percentage: nil when unset.
func legacyPercent[T int32 | uint32](v T, set bool) *float64 {
	if !set {
		return nil
	}
	f := float64(v)
	return &f
}

func fraction(v float64) *corev3.RuntimeFractionalPercent {
	v = min(max(v, 0), 100)
	// Millionths keep Istio's fractional percentages exact enough.
	return &corev3.RuntimeFractionalPercent{DefaultValue: &typev3.FractionalPercent{
		Numerator: uint32(math.Round(v * 10000)), Denominator: typev3.FractionalPercent_MILLION}}
}

func headerOps(ops *networking.Headers_HeaderOperations) ([]*corev3.HeaderValueOption, []string) {
	var add []*corev3.HeaderValueOption
	for _, k := range sortedKeys(ops.GetSet()) {
		add = append(add, &corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: k, Value: ops.GetSet()[k]},
			AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD})
	}
	for _, k := range sortedKeys(ops.GetAdd()) {
		add = append(add, &corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: k, Value: ops.GetAdd()[k]},
			AppendAction: corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD})
	}
	return add, ops.GetRemove()
}

func (b *outboundBuilder) httpRoute(vs *VirtualService, idx int, h *networking.HTTPRoute, port uint32, gw string) ([]*routev3.Route, error) {
	matches, ok := b.routeMatches(h.GetMatch(), port, gw, vs.Object.Namespace)
	if !ok {
		return nil, nil
	}
	name := h.GetName()
	if name == "" {
		name = fmt.Sprintf("%s.%s.%d", vs.Object.Name, vs.Object.Namespace, idx)
	}
	tmpl := &routev3.Route{Name: name, TypedPerFilterConfig: map[string]*anypb.Any{}}
	switch {
	case h.GetRedirect() != nil:
		rd := h.GetRedirect()
		ra := &routev3.RedirectAction{}
		if rd.GetUri() != "" {
			ra.PathRewriteSpecifier = &routev3.RedirectAction_PathRedirect{PathRedirect: rd.GetUri()}
		}
		if rd.GetPrefixRewrite() != "" {
			ra.PathRewriteSpecifier = &routev3.RedirectAction_PrefixRewrite{PrefixRewrite: rd.GetPrefixRewrite()}
		}
		ra.HostRedirect = rd.GetAuthority()
		if rd.GetPort() != 0 {
			ra.PortRedirect = rd.GetPort()
		}
		if rd.GetScheme() != "" {
			ra.SchemeRewriteSpecifier = &routev3.RedirectAction_SchemeRedirect{SchemeRedirect: rd.GetScheme()}
		}
		switch rd.GetRedirectCode() {
		case 0, 301:
			ra.ResponseCode = routev3.RedirectAction_MOVED_PERMANENTLY
		case 302:
			ra.ResponseCode = routev3.RedirectAction_FOUND
		case 303:
			ra.ResponseCode = routev3.RedirectAction_SEE_OTHER
		case 307:
			ra.ResponseCode = routev3.RedirectAction_TEMPORARY_REDIRECT
		case 308:
			ra.ResponseCode = routev3.RedirectAction_PERMANENT_REDIRECT
		default:
			return nil, fmt.Errorf("%s: spec.http[%d].redirect.redirectCode: %d is not a redirect code", vs.Object.Where(), idx, rd.GetRedirectCode())
		}
		tmpl.Action = &routev3.Route_Redirect{Redirect: ra}
	case h.GetDirectResponse() != nil:
		dr := &routev3.DirectResponseAction{Status: h.GetDirectResponse().GetStatus()}
		if body := h.GetDirectResponse().GetBody(); body != nil {
			text := body.GetString_()
			if bs := body.GetBytes(); bs != nil {
				text = string(bs)
			}
			dr.Body = &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: text}}
		}
		tmpl.Action = &routev3.Route_DirectResponse{DirectResponse: dr}
	default:
		ra := &routev3.RouteAction{Timeout: durationpb.New(0)}
		dests := h.GetRoute()
		if len(dests) == 1 {
			c := b.destCluster(vs, dests[0].GetDestination(), port)
			ra.ClusterSpecifier = &routev3.RouteAction_Cluster{Cluster: c}
			if hp := b.hashes[c]; hp != nil {
				ra.HashPolicy = []*routev3.RouteAction_HashPolicy{hp}
			}
		} else {
			wc := &routev3.WeightedCluster{}
			for _, d := range dests {
				if d.GetWeight() == 0 {
					continue
				}
				cw := &routev3.WeightedCluster_ClusterWeight{Name: b.destCluster(vs, d.GetDestination(), port), Weight: wrapperspb.UInt32(uint32(d.GetWeight()))}
				cw.RequestHeadersToAdd, cw.RequestHeadersToRemove = headerOps(d.GetHeaders().GetRequest())
				cw.ResponseHeadersToAdd, cw.ResponseHeadersToRemove = headerOps(d.GetHeaders().GetResponse())
				wc.Clusters = append(wc.Clusters, cw)
			}
			ra.ClusterSpecifier = &routev3.RouteAction_WeightedClusters{WeightedClusters: wc}
		}
		if len(dests) == 1 {
			tmpl.RequestHeadersToAdd, tmpl.RequestHeadersToRemove = headerOps(dests[0].GetHeaders().GetRequest())
			tmpl.ResponseHeadersToAdd, tmpl.ResponseHeadersToRemove = headerOps(dests[0].GetHeaders().GetResponse())
		}
		if t := h.GetTimeout(); t != nil {
			ra.Timeout = t
		}
		switch r := h.GetRetries(); {
		case r == nil:
			ra.RetryPolicy = defaultRetry()
		case r.GetAttempts() > 0:
			rp := defaultRetry()
			rp.NumRetries = wrapperspb.UInt32(uint32(r.GetAttempts()))
			if r.GetRetryOn() != "" {
				rp.RetryOn, rp.RetriableStatusCodes = retryOn(r.GetRetryOn())
			}
			rp.PerTryTimeout = r.GetPerTryTimeout()
			if v := r.GetRetryIgnorePreviousHosts(); v != nil && !v.GetValue() {
				rp.RetryHostPredicate = nil
			}
			ra.RetryPolicy = rp
		}
		if rw := h.GetRewrite(); rw != nil {
			if rw.GetUri() != "" {
				ra.PrefixRewrite = rw.GetUri()
			}
			if rr := rw.GetUriRegexRewrite(); rr != nil {
				ra.RegexRewrite = &matcherv3.RegexMatchAndSubstitute{Pattern: &matcherv3.RegexMatcher{Regex: rr.GetMatch()}, Substitution: rr.GetRewrite()}
			}
			if rw.GetAuthority() != "" {
				ra.HostRewriteSpecifier = &routev3.RouteAction_HostRewriteLiteral{HostRewriteLiteral: rw.GetAuthority()}
			}
		}
		if m := h.GetMirror(); m != nil {
			ra.RequestMirrorPolicies = append(ra.RequestMirrorPolicies, &routev3.RouteAction_RequestMirrorPolicy{
				Cluster: b.destCluster(vs, m, port), RuntimeFraction: fraction(percent(h.GetMirrorPercentage(),
					//lint:ignore SA1019 users' YAML still sets the deprecated field; Istio honours it (an explicit 0 mirrors nothing)
					legacyPercent(h.GetMirrorPercent().GetValue(), h.GetMirrorPercent() != nil), 100))})
		}
		for _, m := range h.GetMirrors() {
			ra.RequestMirrorPolicies = append(ra.RequestMirrorPolicies, &routev3.RouteAction_RequestMirrorPolicy{
				Cluster: b.destCluster(vs, m.GetDestination(), port), RuntimeFraction: fraction(percent(m.GetPercentage(), nil, 100))})
		}
		tmpl.Action = &routev3.Route_Route{Route: ra}
	}
	if hs := h.GetHeaders(); hs != nil {
		add, rm := headerOps(hs.GetRequest())
		tmpl.RequestHeadersToAdd = append(tmpl.RequestHeadersToAdd, add...)
		tmpl.RequestHeadersToRemove = append(tmpl.RequestHeadersToRemove, rm...)
		add, rm = headerOps(hs.GetResponse())
		tmpl.ResponseHeadersToAdd = append(tmpl.ResponseHeadersToAdd, add...)
		tmpl.ResponseHeadersToRemove = append(tmpl.ResponseHeadersToRemove, rm...)
	}
	if f := h.GetFault(); f != nil {
		hf := &faultv3.HTTPFault{}
		if d := f.GetDelay(); d != nil {
			hf.Delay = &faultcommon.FaultDelay{FaultDelaySecifier: &faultcommon.FaultDelay_FixedDelay{FixedDelay: d.GetFixedDelay()},
				// Istio: "If left unspecified, no request will be delayed."
				//lint:ignore SA1019 users' YAML still sets the deprecated field; Istio honours it
				Percentage: fraction(percent(d.GetPercentage(), legacyPercent(d.GetPercent(), d.GetPercent() != 0), 0)).DefaultValue}
		}
		if a := f.GetAbort(); a != nil {
			hf.Abort = &faultv3.FaultAbort{ErrorType: &faultv3.FaultAbort_HttpStatus{HttpStatus: uint32(a.GetHttpStatus())},
				// Istio: "If not specified, no request will be aborted."
				Percentage: fraction(percent(a.GetPercentage(), nil, 0)).DefaultValue}
		}
		tmpl.TypedPerFilterConfig[FaultFilter] = typed(hf)
	}
	if c := h.GetCorsPolicy(); c != nil {
		cp := &corsv3.CorsPolicy{
			AllowMethods: strings.Join(c.GetAllowMethods(), ","), AllowHeaders: strings.Join(c.GetAllowHeaders(), ","),
			ExposeHeaders: strings.Join(c.GetExposeHeaders(), ","), AllowCredentials: c.GetAllowCredentials(),
		}
		// Istio forwards preflights whose origin does not match unless told to IGNORE them.
		if c.GetUnmatchedPreflights() == networking.CorsPolicy_IGNORE {
			cp.ForwardNotMatchingPreflights = wrapperspb.Bool(false)
		}
		if c.GetMaxAge() != nil {
			cp.MaxAge = strconv.FormatInt(int64(c.GetMaxAge().AsDuration()/time.Second), 10)
		}
		for _, o := range c.GetAllowOrigins() {
			sm := stringMatcher(o, false)
			if sm == nil { // an empty prefix: every origin
				sm = &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: ".*"}}}
			}
			cp.AllowOriginStringMatch = append(cp.AllowOriginStringMatch, sm)
		}
		//lint:ignore SA1019 users' YAML still sets the deprecated field; Istio honours it
		for _, o := range c.GetAllowOrigin() {
			cp.AllowOriginStringMatch = append(cp.AllowOriginStringMatch, &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: o}})
		}
		tmpl.TypedPerFilterConfig[CorsFilter] = typed(cp)
	}
	if len(tmpl.TypedPerFilterConfig) == 0 {
		tmpl.TypedPerFilterConfig = nil
	}
	out := make([]*routev3.Route, 0, len(matches))
	for _, m := range matches {
		r := proto.Clone(tmpl).(*routev3.Route)
		r.Match = m
		out = append(out, r)
	}
	return out, nil
}

// retryOn splits Istio's retryOn into Envoy's retry_on and status codes: a
// number in the list is a retriable status code.
func retryOn(s string) (string, []uint32) {
	var on []string
	var codes []uint32
	for _, t := range strings.Split(s, ",") {
		t = strings.TrimSpace(t)
		if n, err := strconv.Atoi(t); err == nil {
			codes = append(codes, uint32(n))
			continue
		}
		if t != "" {
			on = append(on, t)
		}
	}
	if len(codes) > 0 {
		on = append(on, "retriable-status-codes")
	}
	return strings.Join(on, ","), codes
}

// peerDisabled reports whether a mesh endpoint's PeerAuthentication turns
// mTLS off on the port it serves.
func (b *outboundBuilder) peerDisabled(ep registry.Endpoint, port uint32) bool {
	if len(b.n.PeerAuthns) == 0 {
		return false
	}
	wl := Workload{Namespace: ep.Object.Namespace, Name: ep.Object.Name, Labels: ep.Labels}
	m, _ := b.mesh.WithDefaults()
	pm, _ := ResolvePeerAuthentication(m, wl, int(port), b.n.PeerAuthns)
	return pm.Mode == ModeDisable
}
