package upstream

import (
	"errors"
	"fmt"
	"math"
	"net"
	"strings"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	leastrequestv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/load_balancing_policies/least_request/v3"
	maglevv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/load_balancing_policies/maglev/v3"
	randomv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/load_balancing_policies/random/v3"
	ringhashv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/load_balancing_policies/ring_hash/v3"
	roundrobinv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/load_balancing_policies/round_robin/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// httpProtocolOptionsKey is where a cluster's HTTP protocol options live in
// typed_extension_protocol_options.
const httpProtocolOptionsKey = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

// Defaults are Envoy's.
const (
	defaultConnectTimeout  = 5 * time.Second
	defaultIdleTimeout     = time.Hour
	defaultMaxConnections  = 1024
	defaultMaxPending      = 1024
	defaultMaxRequests     = 1024
	defaultMaxRetries      = 3
	defaultPanicThreshold  = 50
	defaultChoiceCount     = 2
	defaultBudgetPercent   = 20
	defaultMinRetryConcur  = 3
	maxRingSize            = 1 << 20 // bounds memory; Envoy allows 8M
	originalDstHostHeader  = "x-envoy-original-dst-host"
	transportSocketMatchNS = "envoy.transport_socket_match"
)

type protocol int

const (
	protoHTTP1 protocol = iota
	protoHTTP2
	// protoAuto negotiates h2 or http/1.1 by ALPN over TLS, and is HTTP/1.1
	// over plaintext.
	protoAuto
)

type lbKind int

const (
	lbRoundRobin lbKind = iota
	lbLeastRequest
	lbRandom
	// lbHash serves both RING_HASH and MAGLEV with one consistent-hash ring:
	// both promise that a key sticks to a host and that removing a host moves
	// only that host's keys, which is what callers rely on.
	lbHash
	lbOriginalDst
)

// clusterConfig is a validated cluster, everything but its endpoints.
type clusterConfig struct {
	name           string
	discovery      clusterv3.Cluster_DiscoveryType
	edsName        string // the ClusterLoadAssignment to use (EDS)
	network        string // "tcp", "tcp4" or "tcp6"
	lb             lbKind
	choiceCount    int
	ringMax        int     // the most points the hash ring may have
	panicThreshold float64 // percent; 0 disables panic mode
	connectTimeout time.Duration
	keepAlive      net.KeepAliveConfig
	protocol       protocol
	idleTimeout    time.Duration
	maxReqPerConn  uint32 // 0: unlimited
	autoSNI        bool   // SNI from the request's Host (upstream_http_protocol_options.auto_sni)
	autoSAN        bool   // verify the certificate against the request's Host (auto_san_validation)
	breakers       thresholds
	outlier        *outlierConfig // nil: no outlier detection
	sockets        []*socket      // [0] is the cluster's transport_socket (or plaintext)
	matches        []socketMatch
	origDstHeader  string // ORIGINAL_DST: the header naming the destination, "" if none
	origDstPort    uint32 // ORIGINAL_DST: upstream_port_override
}

type socketMatch struct {
	match *structpb.Struct
	sock  int // index into sockets
}

type thresholds struct {
	maxConnections, maxPending, maxRequests, maxRetries int64
	budget                                              bool
	budgetPercent                                       float64
	minRetryConcurrency                                 int64
}

// parseCluster validates c and turns it into a clusterConfig. Errors name the
// field; the caller adds the cluster's name.
func (m *Manager) parseCluster(c *clusterv3.Cluster) (*clusterConfig, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	cc := &clusterConfig{
		name:           c.GetName(),
		network:        "tcp",
		choiceCount:    defaultChoiceCount,
		ringMax:        maxRingSize,
		panicThreshold: defaultPanicThreshold,
		connectTimeout: defaultConnectTimeout,
		idleTimeout:    defaultIdleTimeout,
	}
	switch t := c.GetClusterDiscoveryType().(type) {
	case nil:
		cc.discovery = clusterv3.Cluster_STATIC
	case *clusterv3.Cluster_Type:
		cc.discovery = t.Type
	case *clusterv3.Cluster_ClusterType:
		return nil, fmt.Errorf("cluster_type: custom cluster %q is not supported (use STATIC, EDS, STRICT_DNS, LOGICAL_DNS or ORIGINAL_DST)", t.ClusterType.GetName())
	}
	switch cc.discovery {
	case clusterv3.Cluster_STATIC, clusterv3.Cluster_STRICT_DNS, clusterv3.Cluster_LOGICAL_DNS:
	case clusterv3.Cluster_EDS:
		cc.edsName = c.GetName()
		if eds := c.GetEdsClusterConfig(); eds != nil {
			if eds.GetServiceName() != "" {
				cc.edsName = eds.GetServiceName()
			}
			switch eds.GetEdsConfig().GetConfigSourceSpecifier().(type) {
			case nil, *corev3.ConfigSource_Ads:
			default:
				return nil, errors.New("eds_cluster_config.eds_config: only ADS is supported (the sidecar has one xDS stream)")
			}
		}
	case clusterv3.Cluster_ORIGINAL_DST:
		cc.lb = lbOriginalDst
		if od := c.GetOriginalDstLbConfig(); od != nil {
			if od.GetUseHttpHeader() {
				cc.origDstHeader = originalDstHostHeader
				if od.GetHttpHeaderName() != "" {
					cc.origDstHeader = od.GetHttpHeaderName()
				}
			}
			if p := od.GetUpstreamPortOverride(); p != nil {
				if p.GetValue() == 0 || p.GetValue() > 65535 {
					return nil, fmt.Errorf("original_dst_lb_config.upstream_port_override: %d is not a port", p.GetValue())
				}
				cc.origDstPort = p.GetValue()
			}
		}
	default:
		return nil, fmt.Errorf("type: %v is not supported", cc.discovery)
	}
	switch c.GetDnsLookupFamily() {
	case clusterv3.Cluster_V4_ONLY:
		cc.network = "tcp4"
	case clusterv3.Cluster_V6_ONLY:
		cc.network = "tcp6"
	}
	if err := cc.parseLB(c); err != nil {
		return nil, err
	}
	if d := c.GetConnectTimeout(); d != nil {
		v, err := duration(d, "connect_timeout")
		if err != nil {
			return nil, err
		}
		if v > 0 {
			cc.connectTimeout = v
		}
	}
	if ka := c.GetUpstreamConnectionOptions().GetTcpKeepalive(); ka != nil {
		cc.keepAlive = net.KeepAliveConfig{
			Enable:   true,
			Idle:     time.Duration(ka.GetKeepaliveTime().GetValue()) * time.Second,
			Interval: time.Duration(ka.GetKeepaliveInterval().GetValue()) * time.Second,
			Count:    int(min(ka.GetKeepaliveProbes().GetValue(), math.MaxInt32)),
		}
	}
	if err := cc.parseProtocol(c); err != nil {
		return nil, err
	}
	if err := cc.parseBreakers(c.GetCircuitBreakers()); err != nil {
		return nil, err
	}
	if od := c.GetOutlierDetection(); od != nil {
		o, err := parseOutlier(od)
		if err != nil {
			return nil, fmt.Errorf("outlier_detection.%w", err)
		}
		cc.outlier = o
	}
	if p := c.GetCommonLbConfig().GetHealthyPanicThreshold(); p != nil {
		cc.panicThreshold = p.GetValue()
		if cc.panicThreshold < 0 || cc.panicThreshold > 100 || math.IsNaN(cc.panicThreshold) {
			return nil, fmt.Errorf("common_lb_config.healthy_panic_threshold: %v is not a percentage", p.GetValue())
		}
	}
	def, err := m.parseSocket(c.GetTransportSocket())
	if err != nil {
		return nil, fmt.Errorf("transport_socket: %w", err)
	}
	cc.sockets = []*socket{def}
	for i, tm := range c.GetTransportSocketMatches() {
		s, err := m.parseSocket(tm.GetTransportSocket())
		if err != nil {
			return nil, fmt.Errorf("transport_socket_matches[%d] (%s).transport_socket: %w", i, tm.GetName(), err)
		}
		cc.matches = append(cc.matches, socketMatch{match: tm.GetMatch(), sock: len(cc.sockets)})
		cc.sockets = append(cc.sockets, s)
	}
	if c.GetTransportSocketMatcher() != nil {
		return nil, errors.New("transport_socket_matcher: not supported (use transport_socket_matches)")
	}
	return cc, nil
}

func (cc *clusterConfig) parseLB(c *clusterv3.Cluster) error {
	policy := c.GetLbPolicy()
	if policy == clusterv3.Cluster_LOAD_BALANCING_POLICY_CONFIG || c.GetLoadBalancingPolicy() != nil {
		return cc.parseLBPolicy(c.GetLoadBalancingPolicy())
	}
	if cc.discovery == clusterv3.Cluster_ORIGINAL_DST {
		if policy != clusterv3.Cluster_CLUSTER_PROVIDED && policy != clusterv3.Cluster_ROUND_ROBIN {
			return fmt.Errorf("lb_policy: %v cannot be used with ORIGINAL_DST (use CLUSTER_PROVIDED)", policy)
		}
		return nil
	}
	switch policy {
	case clusterv3.Cluster_ROUND_ROBIN:
		cc.lb = lbRoundRobin
	case clusterv3.Cluster_LEAST_REQUEST:
		cc.lb = lbLeastRequest
		if n := c.GetLeastRequestLbConfig().GetChoiceCount(); n != nil {
			cc.choiceCount = int(min(n.GetValue(), 1024))
		}
	case clusterv3.Cluster_RANDOM:
		cc.lb = lbRandom
	case clusterv3.Cluster_RING_HASH:
		cc.lb = lbHash
		if rh := c.GetRingHashLbConfig(); rh != nil {
			return cc.ringBounds(rh.GetMinimumRingSize().GetValue(), rh.GetMaximumRingSize().GetValue(), "ring_hash_lb_config")
		}
	case clusterv3.Cluster_MAGLEV:
		cc.lb = lbHash
	case clusterv3.Cluster_CLUSTER_PROVIDED:
		return errors.New("lb_policy: CLUSTER_PROVIDED needs an ORIGINAL_DST cluster")
	default:
		return fmt.Errorf("lb_policy: %v is not supported", policy)
	}
	return nil
}

// parseLBPolicy takes the first policy of load_balancing_policy that is
// supported, as Envoy does.
func (cc *clusterConfig) parseLBPolicy(p *clusterv3.LoadBalancingPolicy) error {
	var names []string
	for _, pol := range p.GetPolicies() {
		tc := pol.GetTypedExtensionConfig().GetTypedConfig()
		if tc == nil {
			continue
		}
		switch tc.MessageName() {
		case "envoy.extensions.load_balancing_policies.round_robin.v3.RoundRobin":
			if err := tc.UnmarshalTo(&roundrobinv3.RoundRobin{}); err != nil {
				return fmt.Errorf("load_balancing_policy: %w", err)
			}
			cc.lb = lbRoundRobin
		case "envoy.extensions.load_balancing_policies.random.v3.Random":
			if err := tc.UnmarshalTo(&randomv3.Random{}); err != nil {
				return fmt.Errorf("load_balancing_policy: %w", err)
			}
			cc.lb = lbRandom
		case "envoy.extensions.load_balancing_policies.least_request.v3.LeastRequest":
			var lr leastrequestv3.LeastRequest
			if err := tc.UnmarshalTo(&lr); err != nil {
				return fmt.Errorf("load_balancing_policy: %w", err)
			}
			cc.lb = lbLeastRequest
			if n := lr.GetChoiceCount(); n != nil {
				cc.choiceCount = int(max(min(n.GetValue(), 1024), 2))
			}
		case "envoy.extensions.load_balancing_policies.ring_hash.v3.RingHash":
			var rh ringhashv3.RingHash
			if err := tc.UnmarshalTo(&rh); err != nil {
				return fmt.Errorf("load_balancing_policy: %w", err)
			}
			cc.lb = lbHash
			return cc.ringBounds(rh.GetMinimumRingSize().GetValue(), rh.GetMaximumRingSize().GetValue(), "load_balancing_policy ring_hash")
		case "envoy.extensions.load_balancing_policies.maglev.v3.Maglev":
			if err := tc.UnmarshalTo(&maglevv3.Maglev{}); err != nil {
				return fmt.Errorf("load_balancing_policy: %w", err)
			}
			cc.lb = lbHash
		default:
			names = append(names, string(tc.MessageName()))
			continue
		}
		return nil
	}
	return fmt.Errorf("load_balancing_policy: none of the policies is supported (%s); use round_robin, least_request, random, ring_hash or maglev", strings.Join(names, ", "))
}

// ringBounds checks the ring sizes. The ring gives every host a fixed number
// of points per unit of weight, whatever the number of hosts, so that removing
// a host moves only its own keys; minimum_ring_size therefore does not scale
// it, and maximum_ring_size (at most 1M points) caps it.
func (cc *clusterConfig) ringBounds(lo, hi uint64, field string) error {
	if hi != 0 && lo > hi {
		return fmt.Errorf("%s: minimum_ring_size %d exceeds maximum_ring_size %d", field, lo, hi)
	}
	if hi > 0 {
		cc.ringMax = int(min(hi, maxRingSize))
	}
	return nil
}

func (cc *clusterConfig) parseProtocol(c *clusterv3.Cluster) error {
	//lint:ignore SA1019 Envoy still honours this deprecated field, so the sidecar must too.
	common := c.GetCommonHttpProtocolOptions()
	//lint:ignore SA1019 Envoy still honours this deprecated field, so the sidecar must too.
	if c.GetHttp2ProtocolOptions() != nil {
		cc.protocol = protoHTTP2
	}
	//lint:ignore SA1019 Envoy still honours this deprecated field, so the sidecar must too.
	if n := c.GetMaxRequestsPerConnection(); n != nil {
		cc.maxReqPerConn = n.GetValue()
	}
	//lint:ignore SA1019 Envoy still honours this deprecated field, so the sidecar must too.
	if u := c.GetUpstreamHttpProtocolOptions(); u != nil {
		if err := cc.parseUpstreamHTTP(u, "upstream_http_protocol_options"); err != nil {
			return err
		}
	}
	if a, ok := c.GetTypedExtensionProtocolOptions()[httpProtocolOptionsKey]; ok {
		var hpo httpv3.HttpProtocolOptions
		if err := anyTo(a, &hpo); err != nil {
			return fmt.Errorf("typed_extension_protocol_options[%s]: %w", httpProtocolOptionsKey, err)
		}
		switch p := hpo.GetUpstreamProtocolOptions().(type) {
		case *httpv3.HttpProtocolOptions_ExplicitHttpConfig_:
			switch p.ExplicitHttpConfig.GetProtocolConfig().(type) {
			case *httpv3.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions:
				cc.protocol = protoHTTP2
			case *httpv3.HttpProtocolOptions_ExplicitHttpConfig_Http3ProtocolOptions:
				return fmt.Errorf("typed_extension_protocol_options[%s].explicit_http_config: HTTP/3 is not supported", httpProtocolOptionsKey)
			default:
				cc.protocol = protoHTTP1
			}
		case *httpv3.HttpProtocolOptions_UseDownstreamProtocolConfig:
			// The sidecar speaks HTTP/1.1 unless told h2 explicitly.
			cc.protocol = protoHTTP1
		case *httpv3.HttpProtocolOptions_AutoConfig:
			cc.protocol = protoAuto
		}
		if u := hpo.GetUpstreamHttpProtocolOptions(); u != nil {
			if err := cc.parseUpstreamHTTP(u, fmt.Sprintf("typed_extension_protocol_options[%s].upstream_http_protocol_options", httpProtocolOptionsKey)); err != nil {
				return err
			}
		}
		if hpo.GetCommonHttpProtocolOptions() != nil {
			common = hpo.GetCommonHttpProtocolOptions()
		}
	}
	if common != nil {
		if d := common.GetIdleTimeout(); d != nil {
			v, err := duration(d, "common_http_protocol_options.idle_timeout")
			if err != nil {
				return err
			}
			// Envoy reads 0 as "no idle timeout"; net/http reads 0 the same way.
			cc.idleTimeout = v
		}
		if n := common.GetMaxRequestsPerConnection(); n != nil {
			cc.maxReqPerConn = n.GetValue()
		}
	}
	return nil
}

// parseUpstreamHTTP reads auto_sni and auto_san_validation.
func (cc *clusterConfig) parseUpstreamHTTP(u *corev3.UpstreamHttpProtocolOptions, field string) error {
	if u.GetOverrideAutoSniHeader() != "" {
		return fmt.Errorf("%s.override_auto_sni_header: not supported (auto_sni uses the request's Host)", field)
	}
	cc.autoSNI, cc.autoSAN = u.GetAutoSni(), u.GetAutoSanValidation()
	return nil
}

func (cc *clusterConfig) parseBreakers(cb *clusterv3.CircuitBreakers) error {
	cc.breakers = thresholds{
		maxConnections: defaultMaxConnections,
		maxPending:     defaultMaxPending,
		maxRequests:    defaultMaxRequests,
		maxRetries:     defaultMaxRetries,
	}
	for _, t := range cb.GetThresholds() {
		if t.GetPriority() != corev3.RoutingPriority_DEFAULT {
			continue
		}
		// The first thresholds for a priority win, as in Envoy.
		cc.breakers.maxConnections = u32(t.GetMaxConnections(), defaultMaxConnections)
		cc.breakers.maxPending = u32(t.GetMaxPendingRequests(), defaultMaxPending)
		cc.breakers.maxRequests = u32(t.GetMaxRequests(), defaultMaxRequests)
		cc.breakers.maxRetries = u32(t.GetMaxRetries(), defaultMaxRetries)
		if rb := t.GetRetryBudget(); rb != nil {
			cc.breakers.budget = true
			cc.breakers.budgetPercent = defaultBudgetPercent
			if p := rb.GetBudgetPercent(); p != nil {
				cc.breakers.budgetPercent = p.GetValue()
				if cc.breakers.budgetPercent < 0 || cc.breakers.budgetPercent > 100 || math.IsNaN(cc.breakers.budgetPercent) {
					return fmt.Errorf("circuit_breakers.thresholds.retry_budget.budget_percent: %v is not a percentage", p.GetValue())
				}
			}
			cc.breakers.minRetryConcurrency = defaultMinRetryConcur
			if n := rb.GetMinRetryConcurrency(); n != nil {
				cc.breakers.minRetryConcurrency = int64(n.GetValue())
			}
		}
		break
	}
	return nil
}

func u32(v *wrapperspb.UInt32Value, def int64) int64 {
	if v == nil {
		return def
	}
	return int64(v.GetValue())
}

// anyTo unmarshals a into m after checking the type, so that a wrong type
// says which one it was.
func anyTo(a *anypb.Any, m proto.Message) error {
	want := m.ProtoReflect().Descriptor().FullName()
	if got := a.MessageName(); got != want {
		return fmt.Errorf("typed_config is %q, want %q", a.GetTypeUrl(), want)
	}
	return a.UnmarshalTo(m)
}

// duration converts d, refusing negative and out-of-range values.
func duration(d *durationpb.Duration, field string) (time.Duration, error) {
	if err := d.CheckValid(); err != nil {
		return 0, fmt.Errorf("%s: %w", field, err)
	}
	if d.GetSeconds() < 0 || d.GetNanos() < 0 {
		return 0, fmt.Errorf("%s: %v is negative", field, d.AsDuration())
	}
	if d.GetSeconds() > int64(math.MaxInt64/time.Second)-1 {
		return 0, fmt.Errorf("%s: %ds is too long", field, d.GetSeconds())
	}
	return d.AsDuration(), nil
}
