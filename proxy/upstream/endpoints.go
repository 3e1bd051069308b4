package upstream

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"sync/atomic"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
)

// Endpoint is the upstream host an attempt went to. Locality and Metadata
// point into the protos given to Update and must not be modified.
type Endpoint struct {
	Address  string // host:port
	Hostname string // EDS hostname, if any
	Locality *corev3.Locality
	Metadata *corev3.Metadata // the LbEndpoint's metadata
	Priority uint32
	Weight   uint32
	TLS      bool // the connection is TLS
	MTLS     bool // the connection is mesh mTLS with the sidecar's SVID
}

// host is an endpoint of one snapshot of a cluster.
type host struct {
	ep      Endpoint
	healthy bool // as EDS says; outlier ejection is in state
	sock    int  // index into the cluster's sockets
	state   *hostState
}

// hostState outlives snapshots: it is kept across updates for as long as the
// cluster keeps an endpoint with this address.
type hostState struct {
	addr         string
	active       atomic.Int64 // requests in flight (LEAST_REQUEST)
	ejectedUntil atomic.Int64 // unix nanoseconds; 0 when in service
	cons5xx      atomic.Uint32
	consGateway  atomic.Uint32
	consLocal    atomic.Uint32

	// Guarded by the cluster's outlier mutex.
	ejections int       // the ejection-time multiplier
	returned  time.Time // when it last came back from an ejection

	cw int64 // smooth weighted round robin; guarded by the pool's lbMu
}

func (hs *hostState) resetCounters() {
	hs.cons5xx.Store(0)
	hs.consGateway.Store(0)
	hs.consLocal.Store(0)
}

// usable reports whether h may be picked outside panic mode at now (unix ns).
func (h *host) usable(now int64) bool {
	if !h.healthy {
		return false
	}
	u := h.state.ejectedUntil.Load()
	return u == 0 || u <= now
}

// level is the endpoints of one priority.
type level struct {
	priority uint32
	hosts    []*host
	weighted bool // not every weight is the same
	ring     *ring
}

// endpointSet is the endpoints of a cluster, immutable once built.
type endpointSet struct {
	levels     []level // by priority, lowest first
	all        []*host
	allHealthy bool // EDS reports every host usable
}

// parseEndpoints validates a load assignment for cluster cc. The hosts have
// no state yet; attach gives them some.
func parseEndpoints(cc *clusterConfig, cla *endpointv3.ClusterLoadAssignment) (*endpointSet, error) {
	es := &endpointSet{allHealthy: true}
	if cla == nil {
		return es, nil
	}
	if err := cla.Validate(); err != nil {
		return nil, err
	}
	byPriority := map[uint32]int{}
	for li, lle := range cla.GetEndpoints() {
		for ei, lbe := range lle.GetLbEndpoints() {
			field := fmt.Sprintf("endpoints[%d].lb_endpoints[%d]", li, ei)
			h, err := parseHost(cc, lle, lbe)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", field, err)
			}
			i, ok := byPriority[lle.GetPriority()]
			if !ok {
				i = len(es.levels)
				byPriority[lle.GetPriority()] = i
				es.levels = append(es.levels, level{priority: lle.GetPriority()})
			}
			es.levels[i].hosts = append(es.levels[i].hosts, h)
			es.all = append(es.all, h)
			es.allHealthy = es.allHealthy && h.healthy
		}
	}
	slices.SortFunc(es.levels, func(a, b level) int { return int(int64(a.priority) - int64(b.priority)) })
	for i := range es.levels {
		lv := &es.levels[i]
		for _, h := range lv.hosts {
			lv.weighted = lv.weighted || h.ep.Weight != lv.hosts[0].ep.Weight
		}
		if cc.lb == lbHash {
			lv.ring = newRing(lv.hosts, cc.ringMax)
		}
	}
	return es, nil
}

func parseHost(cc *clusterConfig, lle *endpointv3.LocalityLbEndpoints, lbe *endpointv3.LbEndpoint) (*host, error) {
	if lbe.GetEndpointName() != "" {
		return nil, errors.New("endpoint_name: named endpoints are not supported")
	}
	ep := lbe.GetEndpoint()
	sa := ep.GetAddress().GetSocketAddress()
	if sa == nil {
		return nil, errors.New("endpoint.address: only socket_address is supported")
	}
	if sa.GetProtocol() != corev3.SocketAddress_TCP {
		return nil, fmt.Errorf("endpoint.address.socket_address.protocol: %v is not supported", sa.GetProtocol())
	}
	port, ok := sa.GetPortSpecifier().(*corev3.SocketAddress_PortValue)
	if !ok || port.PortValue == 0 || port.PortValue > 65535 {
		return nil, errors.New("endpoint.address.socket_address.port_value: a port from 1 to 65535 is required")
	}
	addr := sa.GetAddress()
	switch cc.discovery {
	case clusterv3.Cluster_STRICT_DNS, clusterv3.Cluster_LOGICAL_DNS:
		if addr == "" {
			return nil, errors.New("endpoint.address.socket_address.address: empty")
		}
	default:
		ip, err := netip.ParseAddr(addr)
		if err != nil {
			return nil, fmt.Errorf("endpoint.address.socket_address.address: %q is not an IP address (only DNS clusters take names)", addr)
		}
		addr = ip.String()
	}
	h := &host{
		ep: Endpoint{
			Address:  net.JoinHostPort(addr, strconv.FormatUint(uint64(port.PortValue), 10)),
			Hostname: ep.GetHostname(),
			Locality: lle.GetLocality(),
			Metadata: lbe.GetMetadata(),
			Priority: lle.GetPriority(),
			Weight:   1,
		},
	}
	if w := lbe.GetLoadBalancingWeight(); w != nil {
		h.ep.Weight = max(w.GetValue(), 1)
	}
	switch lbe.GetHealthStatus() {
	case corev3.HealthStatus_UNHEALTHY, corev3.HealthStatus_DRAINING, corev3.HealthStatus_TIMEOUT:
	default:
		h.healthy = true
	}
	h.sock = cc.socketFor(lbe.GetMetadata(), lle.GetMetadata())
	s := cc.sockets[h.sock]
	h.ep.TLS, h.ep.MTLS = s.tls, s.mesh()
	return h, nil
}

// socketFor applies transport_socket_matches: the endpoint's metadata first,
// then its locality's, then the cluster's transport_socket.
func (cc *clusterConfig) socketFor(mds ...*corev3.Metadata) int {
	for _, md := range mds {
		fields := md.GetFilterMetadata()[transportSocketMatchNS].GetFields()
		for _, m := range cc.matches {
			if structMatches(m.match, fields) {
				return m.sock
			}
		}
	}
	return 0
}

// structMatches reports whether every field of want is in got with an equal
// value; an empty want matches anything.
func structMatches(want *structpb.Struct, got map[string]*structpb.Value) bool {
	for k, v := range want.GetFields() {
		g, ok := got[k]
		if !ok || !proto.Equal(v, g) {
			return false
		}
	}
	return true
}

// attach gives every host its state, reusing those of addresses the cluster
// had already, and returns the new address → state map.
func (es *endpointSet) attach(old map[string]*hostState) map[string]*hostState {
	states := make(map[string]*hostState, len(es.all))
	for _, h := range es.all {
		hs, ok := states[h.ep.Address]
		if !ok {
			if hs, ok = old[h.ep.Address]; !ok {
				hs = &hostState{addr: h.ep.Address}
			}
			states[h.ep.Address] = hs
		}
		h.state = hs
	}
	return states
}
