package xds

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/rampart-mesh/rampart/authz"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// Listeners, routes, clusters and endpoints: malformed resources are NACKed and
// never applied; a set is applied only once complete (EDS and RDS arrive after
// CDS and LDS), and the client asks for exactly the names CDS and LDS list.
func TestClientOutboundResources(t *testing.T) {
	srv, dial := startScripted(t)

	var mu sync.Mutex
	var applied []*Resources
	c, err := New(Config{
		Dial:  dial,
		Node:  &corev3.Node{Id: "spiffe://cluster.local/ns/foo/sa/web~web"},
		Apply: func(context.Context, authz.WireBundle) error { return nil },
		ApplyOutbound: func(_ context.Context, r *Resources) error {
			mu.Lock()
			defer mu.Unlock()
			applied = append(applied, r)
			return nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	defer func() { cancel(); <-done }()
	appliedN := func() int { mu.Lock(); defer mu.Unlock(); return len(applied) }

	send := func(typ, version, nonce string, res ...*anypb.Any) *discovery.DiscoveryRequest {
		srv.out <- &discovery.DiscoveryResponse{VersionInfo: version, Nonce: nonce, TypeUrl: typ, Resources: res}
		return srv.reply(t, nonce)
	}
	eds := &clusterv3.Cluster{Name: "outbound|80||a", ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS}}
	hcm := &hcmv3.HttpConnectionManager{RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{RouteConfigName: "80"}}}
	listener := &listenerv3.Listener{Name: "0.0.0.0_80", Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address: "0.0.0.0", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 80}}}}, FilterChains: []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{{
		Name: hcmName, ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: anyOf(t, hcm)}}}}}}
	noRDS := &listenerv3.Listener{Name: "bad", FilterChains: []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{{
		Name: hcmName, ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: anyOf(t, &hcmv3.HttpConnectionManager{})}}}}}}

	for i, tc := range []struct {
		name, typ, reason string
		res               []*anypb.Any
	}{
		{"a cluster that is not a cluster", ClusterType, "resource 0", []*anypb.Any{anyOf(t, wrapperspb.String("x"))}},
		{"a cluster without a name", ClusterType, "no name", []*anypb.Any{anyOf(t, &clusterv3.Cluster{})}},
		{"the same cluster twice", ClusterType, "sent twice", []*anypb.Any{anyOf(t, eds), anyOf(t, eds)}},
		{"a listener without rds", ListenerType, "without rds", []*anypb.Any{anyOf(t, noRDS)}},
		{"garbage bytes", RouteType, "resource 0", []*anypb.Any{{TypeUrl: RouteType, Value: []byte{0xff, 0xff, 0x01}}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := send(tc.typ, "bad"+string(rune('a'+i)), "bad"+string(rune('a'+i)), tc.res...)
			if r.GetErrorDetail() == nil || !strings.Contains(r.GetErrorDetail().GetMessage(), tc.reason) {
				t.Fatalf("answer %v; want a NACK mentioning %q", r, tc.reason)
			}
			if appliedN() != 0 {
				t.Fatal("a malformed resource was applied")
			}
		})
	}

	// A good set, in Envoy's order: nothing is applied until it is complete.
	if r := send(ClusterType, "v1", "c1", anyOf(t, eds)); r.GetErrorDetail() != nil {
		t.Fatalf("clusters: %v", r)
	}
	edsReq := waitFor(t, srv, func(r *discovery.DiscoveryRequest) bool { return r.GetTypeUrl() == EndpointType })
	if got := strings.Join(edsReq.GetResourceNames(), ","); got != "outbound|80||a" {
		t.Fatalf("EDS request names %q, want the EDS cluster", got)
	}
	if r := send(ListenerType, "v1", "l1", anyOf(t, listener)); r.GetErrorDetail() != nil {
		t.Fatalf("listeners: %v", r)
	}
	rdsReq := waitFor(t, srv, func(r *discovery.DiscoveryRequest) bool {
		return r.GetTypeUrl() == RouteType && r.GetResponseNonce() == ""
	})
	if got := strings.Join(rdsReq.GetResourceNames(), ","); got != "80" {
		t.Fatalf("RDS request names %q, want 80", got)
	}
	if appliedN() != 0 {
		t.Fatal("applied before endpoints and routes arrived")
	}
	send(EndpointType, "v1", "e1", anyOf(t, &endpointv3.ClusterLoadAssignment{ClusterName: "outbound|80||a"}))
	if appliedN() != 0 {
		t.Fatal("applied before the routes arrived")
	}
	if r := send(RouteType, "v1", "r1", anyOf(t, &routev3.RouteConfiguration{Name: "80"})); r.GetErrorDetail() != nil {
		t.Fatalf("routes: %v", r)
	}
	if appliedN() != 1 {
		t.Fatalf("applied %d times once complete, want 1", appliedN())
	}
	mu.Lock()
	got := applied[0]
	mu.Unlock()
	if got.Clusters["outbound|80||a"] == nil || got.Routes["80"] == nil || got.Endpoints["outbound|80||a"] == nil || got.Listeners["0.0.0.0_80"] == nil {
		t.Fatalf("applied set %+v", got)
	}
}

func waitFor(t *testing.T, s *scripted, ok func(*discovery.DiscoveryRequest) bool) *discovery.DiscoveryRequest {
	t.Helper()
	var found *discovery.DiscoveryRequest
	for i := 0; i < 500 && found == nil; i++ {
		s.mu.Lock()
		for _, r := range s.reqs {
			if ok(r) {
				found = r
			}
		}
		s.mu.Unlock()
		if found == nil {
			sleepBriefly()
		}
	}
	if found == nil {
		t.Fatal("no such request")
	}
	return found
}

func sleepBriefly() { <-time.After(10 * time.Millisecond) }
