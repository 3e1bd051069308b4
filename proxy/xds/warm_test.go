package xds

import (
	"context"
	"errors"
	"net"
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
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/google/go-cmp/cmp"
	"github.com/rampart-mesh/rampart/authz"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	testclock "k8s.io/utils/clock/testing"
)

const warmTimeout = 15 * time.Second

// warmHarness runs a Client with outbound resources against a scripted
// control plane, on a fake clock, recording every set it installs.
type warmHarness struct {
	t     *testing.T
	srv   *scripted
	clock *testclock.FakeClock
	mu    sync.Mutex
	sets  []*Resources
}

func newWarmHarness(t *testing.T, tweak ...func(*Config)) *warmHarness {
	t.Helper()
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
	h := &warmHarness{t: t, srv: &scripted{out: make(chan *discovery.DiscoveryResponse, 1)}, clock: testclock.NewFakeClock(time.Unix(1e9, 0))}
	gs := grpc.NewServer()
	discovery.RegisterAggregatedDiscoveryServiceServer(gs, h.srv)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = gs.Serve(lis) }()
	t.Cleanup(gs.Stop)
	cfg := Config{
		Dial: func() (*grpc.ClientConn, error) {
			return grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
		},
		Node:  &corev3.Node{Id: "spiffe://cluster.local/ns/foo/sa/web~web"},
		Apply: func(context.Context, authz.WireBundle) error { return nil },
		ApplyOutbound: func(_ context.Context, r *Resources) error {
			h.mu.Lock()
			defer h.mu.Unlock()
			h.sets = append(h.sets, r)
			return nil
		},
		WarmTimeout: warmTimeout,
		Clock:       h.clock,
	}
	for _, f := range tweak {
		f(&cfg)
	}
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return h
}

// send sends one response and returns the client's answer to it.
func (h *warmHarness) send(typ, version string, res ...*anypb.Any) *discovery.DiscoveryRequest {
	h.t.Helper()
	nonce := typ[strings.LastIndex(typ, ".")+1:] + "-" + version
	h.srv.out <- &discovery.DiscoveryResponse{VersionInfo: version, Nonce: nonce, TypeUrl: typ, Resources: res}
	return h.srv.reply(h.t, nonce)
}

// ack sends a response the client must accept.
func (h *warmHarness) ack(typ, version string, res ...*anypb.Any) {
	h.t.Helper()
	if r := h.send(typ, version, res...); r.GetErrorDetail() != nil || r.GetVersionInfo() != version {
		h.t.Fatalf("%s %s answered %v; want an ACK", typ, version, r)
	}
}

func (h *warmHarness) installed() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.sets)
}

// last describes the set installed last: per cluster its endpoints' addresses
// (or "-" for none), per listener its route configuration's virtual hosts.
func (h *warmHarness) last() map[string]string {
	h.t.Helper()
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.sets) == 0 {
		h.t.Fatal("nothing installed")
	}
	return describe(h.sets[len(h.sets)-1])
}

// endWarming lets the warming time pass once the client waits for it, and
// waits for the install that follows.
func (h *warmHarness) endWarming() {
	h.t.Helper()
	n := h.installed()
	for deadline := time.Now().Add(10 * time.Second); !h.clock.HasWaiters(); {
		if time.Now().After(deadline) {
			h.t.Fatal("the client set no warming timer")
		}
		time.Sleep(time.Millisecond)
	}
	h.clock.Step(warmTimeout)
	for deadline := time.Now().Add(10 * time.Second); h.installed() == n; {
		if time.Now().After(deadline) {
			h.t.Fatal("nothing installed when the warming time ended")
		}
		time.Sleep(time.Millisecond)
	}
}

func describe(r *Resources) map[string]string {
	out := map[string]string{}
	for name, c := range r.Clusters {
		d := c.GetEdsClusterConfig().GetServiceName() + ":"
		if cla := r.Endpoints[edsName(c)]; cla != nil {
			for _, lle := range cla.GetEndpoints() {
				for _, e := range lle.GetLbEndpoints() {
					d += e.GetEndpoint().GetAddress().GetSocketAddress().GetAddress() + " "
				}
			}
		} else {
			d += "-"
		}
		out["cluster "+name] = strings.TrimSpace(d)
	}
	for name, l := range r.Listeners {
		rn, _ := RouteNameOf(l)
		d := rn + ":"
		if rc := r.Routes[rn]; rc != nil {
			for _, vh := range rc.GetVirtualHosts() {
				d += vh.GetName() + " "
			}
			if len(rc.GetVirtualHosts()) == 0 {
				d += "empty"
			}
		} else {
			d += "-"
		}
		out["listener "+name] = strings.TrimSpace(d)
	}
	return out
}

func warmCluster(t *testing.T, name, service string) *anypb.Any {
	t.Helper()
	c := &clusterv3.Cluster{Name: name, ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS}}
	if service != "" {
		c.EdsClusterConfig = &clusterv3.Cluster_EdsClusterConfig{ServiceName: service}
	}
	return anyOf(t, c)
}

func warmEndpoints(t *testing.T, name string, addrs ...string) *anypb.Any {
	t.Helper()
	lle := &endpointv3.LocalityLbEndpoints{}
	for _, a := range addrs {
		lle.LbEndpoints = append(lle.LbEndpoints, &endpointv3.LbEndpoint{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
			Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
				Address: a, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 8080}}}}}}})
	}
	return anyOf(t, &endpointv3.ClusterLoadAssignment{ClusterName: name, Endpoints: []*endpointv3.LocalityLbEndpoints{lle}})
}

func warmListener(t *testing.T, name string, port uint32, routes string) *anypb.Any {
	t.Helper()
	hcm := &hcmv3.HttpConnectionManager{RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{RouteConfigName: routes}}}
	l := &listenerv3.Listener{Name: name, FilterChains: []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{{
		Name: hcmName, ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: anyOf(t, hcm)}}}}}}
	if port != 0 {
		l.Address = &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
			Address: "0.0.0.0", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port}}}}
	}
	return anyOf(t, l)
}

func warmRoutes(t *testing.T, name string, vhosts ...string) *anypb.Any {
	t.Helper()
	rc := &routev3.RouteConfiguration{Name: name}
	for _, vh := range vhosts {
		rc.VirtualHosts = append(rc.VirtualHosts, &routev3.VirtualHost{Name: vh, Domains: []string{vh}})
	}
	return anyOf(t, rc)
}

// Each response is validated when it arrives, with the checks the apply step
// runs, even while what it brings waits for endpoints or routes (Envoy
// validates each resource it receives): a bad resource is NACKed in the
// response that carried it, the later good responses of other types are
// ACKed and installed.
func TestClientRefusesBadResourcesWhileWarming(t *testing.T) {
	negativeTimeout := &clusterv3.Cluster{Name: "bad", ConnectTimeout: durationpb.New(-time.Second),
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS}}
	notADS := &clusterv3.Cluster{Name: "bad", ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
		EdsClusterConfig: &clusterv3.Cluster_EdsClusterConfig{EdsConfig: &corev3.ConfigSource{ConfigSourceSpecifier: &corev3.ConfigSource_Self{Self: &corev3.SelfConfigSource{}}}}}
	namedEndpoint := &endpointv3.ClusterLoadAssignment{ClusterName: "a", Endpoints: []*endpointv3.LocalityLbEndpoints{{
		LbEndpoints: []*endpointv3.LbEndpoint{{HostIdentifier: &endpointv3.LbEndpoint_EndpointName{EndpointName: "x"}}}}}}
	badRegex := &routev3.RouteConfiguration{Name: "r", VirtualHosts: []*routev3.VirtualHost{{Name: "v", Domains: []string{"*"}, Routes: []*routev3.Route{{
		Match:  &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: "/a("}}},
		Action: &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: "a"}}}}}}}}

	for _, tc := range []struct {
		name, typ, reason string
		bad               func(t *testing.T) []*anypb.Any
	}{
		{"a new cluster failing its proto validation", ClusterType, "ConnectTimeout",
			func(t *testing.T) []*anypb.Any {
				return []*anypb.Any{warmCluster(t, "a", ""), anyOf(t, negativeTimeout)}
			}},
		{"a new cluster the upstream manager refuses", ClusterType, "only ADS",
			func(t *testing.T) []*anypb.Any { return []*anypb.Any{warmCluster(t, "a", ""), anyOf(t, notADS)} }},
		{"an assignment the upstream manager refuses", EndpointType, "named endpoints",
			func(t *testing.T) []*anypb.Any { return []*anypb.Any{anyOf(t, namedEndpoint)} }},
		{"an HTTP listener without a port", ListenerType, "no port",
			func(t *testing.T) []*anypb.Any {
				return []*anypb.Any{warmListener(t, "l", 80, "r"), warmListener(t, "noport", 0, "r2")}
			}},
		{"a route configuration the route table refuses", RouteType, "/a(",
			func(t *testing.T) []*anypb.Any { return []*anypb.Any{anyOf(t, badRegex)} }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newWarmHarness(t)
			h.ack(ClusterType, "c1", warmCluster(t, "a", ""))
			h.ack(ListenerType, "l1", warmListener(t, "l", 80, "r"))
			h.ack(EndpointType, "e1", warmEndpoints(t, "a", "10.0.0.1"))
			h.ack(RouteType, "r1", warmRoutes(t, "r", "v1"))
			if h.installed() != 1 {
				t.Fatalf("complete set installed %d times, want 1", h.installed())
			}
			// Something is warming: cluster "w" waits for endpoints that do not come.
			h.ack(ClusterType, "c2", warmCluster(t, "a", ""), warmCluster(t, "w", ""))

			r := h.send(tc.typ, "bad", tc.bad(t)...)
			if r.GetErrorDetail() == nil || !strings.Contains(r.GetErrorDetail().GetMessage(), tc.reason) {
				t.Fatalf("answer %v; want a NACK mentioning %q", r, tc.reason)
			}
			if r.GetVersionInfo() == "bad" {
				t.Fatalf("NACK carries the refused version: %v", r)
			}
			// Good updates of every type are ACKed and installed.
			n := h.installed()
			h.ack(EndpointType, "e2", warmEndpoints(t, "a", "10.0.0.2"))
			h.ack(RouteType, "r2", warmRoutes(t, "r", "v2"))
			h.ack(ListenerType, "l2", warmListener(t, "l", 80, "r"))
			h.ack(ClusterType, "c3", warmCluster(t, "a", ""), warmCluster(t, "w", ""))
			if got := h.installed() - n; got != 4 {
				t.Fatalf("%d of 4 good updates installed", got)
			}
			want := map[string]string{"cluster a": ":10.0.0.2", "listener l": "r:v2"}
			if diff := cmp.Diff(want, h.last()); diff != "" {
				t.Fatalf("installed set (-want +got):\n%s", diff)
			}
		})
	}
}

// Envoy warms each cluster and listener on its own, for at most its
// initial_fetch_timeout: one whose endpoints or routes do not come does not
// hold back the others' updates; a changed one keeps its previous version
// while it warms; when the warming time ends it is installed without them.
func TestClientWarmsEachClusterOnItsOwn(t *testing.T) {
	h := newWarmHarness(t)
	h.ack(ClusterType, "c1", warmCluster(t, "a", ""), warmCluster(t, "b", "b1"))
	h.ack(ListenerType, "l1", warmListener(t, "l", 80, "r"))
	h.ack(EndpointType, "e1", warmEndpoints(t, "a", "10.0.0.1"), warmEndpoints(t, "b1", "10.0.1.1"))
	h.ack(RouteType, "r1", warmRoutes(t, "r", "v1"))
	if diff := cmp.Diff(map[string]string{"cluster a": ":10.0.0.1", "cluster b": "b1:10.0.1.1", "listener l": "r:v1"}, h.last()); diff != "" {
		t.Fatalf("first set (-want +got):\n%s", diff)
	}

	// A new cluster c, and b now takes assignment b2: neither has endpoints.
	h.ack(ClusterType, "c2", warmCluster(t, "a", ""), warmCluster(t, "b", "b2"), warmCluster(t, "c", ""))
	// A new listener m whose routes do not come, and a new version of l's.
	h.ack(ListenerType, "l2", warmListener(t, "l", 80, "r"), warmListener(t, "m", 81, "rm"))
	h.ack(RouteType, "r2", warmRoutes(t, "r", "v2"))
	// a's endpoints move.
	h.ack(EndpointType, "e2", warmEndpoints(t, "a", "10.0.0.2"), warmEndpoints(t, "b1", "10.0.1.1"))
	want := map[string]string{"cluster a": ":10.0.0.2", "cluster b": "b1:10.0.1.1", "listener l": "r:v2"}
	if diff := cmp.Diff(want, h.last()); diff != "" {
		t.Fatalf("while c, b's new version and m warm (-want +got):\n%s", diff)
	}

	h.endWarming()
	want = map[string]string{"cluster a": ":10.0.0.2", "cluster b": "b2:-", "cluster c": ":-", "listener l": "r:v2", "listener m": "rm:empty"}
	if diff := cmp.Diff(want, h.last()); diff != "" {
		t.Fatalf("after the warming time (-want +got):\n%s", diff)
	}
	// Endpoints that come late are installed.
	h.ack(EndpointType, "e3", warmEndpoints(t, "a", "10.0.0.2"), warmEndpoints(t, "b2", "10.0.2.1"), warmEndpoints(t, "c", "10.0.3.1"))
	want = map[string]string{"cluster a": ":10.0.0.2", "cluster b": "b2:10.0.2.1", "cluster c": ":10.0.3.1", "listener l": "r:v2", "listener m": "rm:empty"}
	if diff := cmp.Diff(want, h.last()); diff != "" {
		t.Fatalf("after late endpoints (-want +got):\n%s", diff)
	}
}

// The first configuration waits for all of its parts, as Envoy's
// initialization does, but not past the warming time.
func TestClientFirstSetWaitsAtMostTheWarmingTime(t *testing.T) {
	h := newWarmHarness(t)
	h.ack(ClusterType, "c1", warmCluster(t, "a", ""), warmCluster(t, "b", ""))
	h.ack(ListenerType, "l1", warmListener(t, "l", 80, "r"))
	h.ack(RouteType, "r1", warmRoutes(t, "r", "v1"))
	h.ack(EndpointType, "e1", warmEndpoints(t, "a", "10.0.0.1"))
	if h.installed() != 0 {
		t.Fatalf("first set installed %d times while b warms", h.installed())
	}
	h.endWarming()
	if diff := cmp.Diff(map[string]string{"cluster a": ":10.0.0.1", "cluster b": ":-", "listener l": "r:v1"}, h.last()); diff != "" {
		t.Fatalf("after the warming time (-want +got):\n%s", diff)
	}
}

// A listener the installer's own checks refuse (here a stand-in for the TCP
// listeners' parse, which this package cannot import) is NACKed in the LDS
// response that carried it, even while another listener waits for its
// routes, and the listeners that pass are ACKed.
func TestClientChecksListenersOnArrival(t *testing.T) {
	h := newWarmHarness(t, func(c *Config) {
		c.CheckListener = func(name string, _ *listenerv3.Listener) error {
			if name == "tcp-bad" {
				return errors.New("filter_chain_match supports only server_names")
			}
			return nil
		}
	})
	h.ack(ClusterType, "c1", warmCluster(t, "a", ""))
	h.ack(ListenerType, "l1", warmListener(t, "l", 80, "r"))
	r := h.send(ListenerType, "l2", warmListener(t, "l", 80, "r"), warmListener(t, "tcp-bad", 81, "r2"))
	if r.GetErrorDetail() == nil || !strings.Contains(r.GetErrorDetail().GetMessage(), "listener tcp-bad: filter_chain_match") {
		t.Fatalf("answer %v; want a NACK naming listener tcp-bad", r)
	}
	h.ack(ListenerType, "l3", warmListener(t, "l", 80, "r"), warmListener(t, "tcp-ok", 82, "r2"))
}
