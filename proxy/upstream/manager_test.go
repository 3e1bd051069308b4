package upstream

import (
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

func edsCluster(name, serviceName string) *clusterv3.Cluster {
	return &clusterv3.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
		EdsClusterConfig:     &clusterv3.Cluster_EdsClusterConfig{ServiceName: serviceName, EdsConfig: ads},
		ConnectTimeout:       durationpb.New(10 * time.Second),
	}
}

func TestNewManagerRequiresIdentity(t *testing.T) {
	if _, err := NewManager(Config{}); err == nil {
		t.Fatal("NewManager without SVID and Bundle succeeded")
	}
}

func TestEDSAssignments(t *testing.T) {
	e := newEnv(t)
	a, b := newBackend(t, "a"), newBackend(t, "b")
	const svc = "outbound|8000||httpbin.foo.svc.cluster.local"
	err := e.m.Update(
		[]*clusterv3.Cluster{edsCluster(svc, ""), edsCluster("by-service-name", "httpbin-eds")},
		[]*endpointv3.ClusterLoadAssignment{assignment(svc, lbEndpoint(t, a.addr)), assignment("httpbin-eds", lbEndpoint(t, b.addr))},
	)
	if err != nil {
		t.Fatal(err)
	}
	if got := mustGet(t, e.cluster(t, svc), Request{}); got != "a" {
		t.Errorf("cluster %s answered %s, want a", svc, got)
	}
	if got := mustGet(t, e.cluster(t, "by-service-name"), Request{}); got != "b" {
		t.Errorf("cluster with service_name answered %s, want b", got)
	}
	// An EDS cluster whose assignment has not come has no endpoints.
	if err := e.m.Update([]*clusterv3.Cluster{edsCluster(svc, "")}, nil); err != nil {
		t.Fatal(err)
	}
	_, _, _, err = get(t, e.cluster(t, svc), Request{})
	if Flag(err) != FlagNoHealthyUpstream || !errors.Is(err, ErrNoHealthyUpstream) {
		t.Fatalf("no endpoints: %v, want UH", err)
	}
}

func TestUpdateKeepsPoolsOfUnchangedClusters(t *testing.T) {
	e := newEnv(t)
	kept, changed, removed := newBackend(t, "kept"), newBackend(t, "changed"), newBackend(t, "removed")
	e.update(t, staticCluster("kept", lbEndpoint(t, kept.addr)), staticCluster("changed", lbEndpoint(t, changed.addr)), staticCluster("removed", lbEndpoint(t, removed.addr)))
	for _, name := range []string{"kept", "changed", "removed"} {
		mustGet(t, e.cluster(t, name), Request{})
	}
	oldChanged := e.cluster(t, "changed")

	changedCluster := staticCluster("changed", lbEndpoint(t, changed.addr))
	changedCluster.ConnectTimeout = durationpb.New(time.Second)
	// "kept" is the same configuration in a new proto, as the xDS client decodes it.
	e.update(t, staticCluster("kept", lbEndpoint(t, kept.addr)), changedCluster)

	if _, ok := e.m.Cluster("removed"); ok {
		t.Error("removed cluster is still there")
	}
	waitFor(t, "the removed cluster's idle connection to close", func() bool { return removed.closed.Load() == 1 })
	waitFor(t, "the changed cluster's idle connection to close", func() bool { return changed.closed.Load() == 1 })

	mustGet(t, e.cluster(t, "kept"), Request{})
	if got, closed := kept.opened.Load(), kept.closed.Load(); got != 1 || closed != 0 {
		t.Errorf("kept cluster: %d connections opened, %d closed; want its one connection reused", got, closed)
	}
	mustGet(t, e.cluster(t, "changed"), Request{})
	if got := changed.opened.Load(); got != 2 {
		t.Errorf("changed cluster: %d connections, want a new one after its configuration changed", got)
	}
	// An old Cluster stays usable after the update replaced it, and keeps
	// no connection open.
	if got := mustGet(t, oldChanged, Request{}); got != "changed" {
		t.Errorf("old cluster answered %q", got)
	}
	waitFor(t, "the replaced cluster's new connection to close", func() bool { return changed.closed.Load() == 2 })
}

func TestUpdateKeepsConnectionsAndOutlierState(t *testing.T) {
	e := newEnv(t)
	a, bad := newBackend(t, "a"), newBackend(t, "bad")
	bad.status.Store(500)
	build := func() *clusterv3.Cluster {
		c := staticCluster("c", lbEndpoint(t, a.addr), lbEndpoint(t, bad.addr))
		c.OutlierDetection = &clusterv3.OutlierDetection{Consecutive_5Xx: wrapperspb.UInt32(1), MaxEjectionPercent: wrapperspb.UInt32(50)}
		return c
	}
	e.update(t, build())
	spread(t, e.cluster(t, "c"), 2) // a, then bad: ejected
	if got := e.cluster(t, "c").pool.ejected(); got != 1 {
		t.Fatalf("%d ejected, want 1", got)
	}
	e.update(t, build(), staticCluster("other"))
	if got := spread(t, e.cluster(t, "c"), 6); got["bad"] != 0 || got["a"] != 6 {
		t.Errorf("after an update that kept the cluster, the ejected host got traffic: %v", got)
	}
	if got := a.opened.Load(); got != 1 {
		t.Errorf("a: %d connections, want the first one reused across the update", got)
	}
}

func TestUpdateRefusesBadInputAtomically(t *testing.T) {
	e := newEnv(t)
	good := newBackend(t, "good")
	goodCluster := func() *clusterv3.Cluster { return staticCluster("good", lbEndpoint(t, good.addr)) }
	e.update(t, goodCluster())
	before := e.cluster(t, "good")

	withType := func(c *clusterv3.Cluster, typ clusterv3.Cluster_DiscoveryType) *clusterv3.Cluster {
		c.ClusterDiscoveryType = &clusterv3.Cluster_Type{Type: typ}
		return c
	}
	hostname := staticCluster("bad", lbEndpoint(t, good.addr))
	hostname.LoadAssignment.Endpoints[0].LbEndpoints[0].GetEndpoint().GetAddress().GetSocketAddress().Address = "example.com"
	port0 := staticCluster("bad", lbEndpoint(t, good.addr))
	port0.LoadAssignment.Endpoints[0].LbEndpoints[0].GetEndpoint().GetAddress().GetSocketAddress().PortSpecifier = &corev3.SocketAddress_PortValue{PortValue: 0}
	provided := staticCluster("bad")
	provided.LbPolicy = clusterv3.Cluster_CLUSTER_PROVIDED
	pathEDS := edsCluster("bad", "")
	//lint:ignore SA1019 the deprecated file source is what the manager must refuse
	pathEDS.EdsClusterConfig.EdsConfig = &corev3.ConfigSource{ConfigSourceSpecifier: &corev3.ConfigSource_Path{Path: "/etc/eds.yaml"}}
	odPct := staticCluster("bad")
	odPct.OutlierDetection = &clusterv3.OutlierDetection{MaxEjectionPercent: wrapperspb.UInt32(150)}
	negTimeout := staticCluster("bad")
	negTimeout.ConnectTimeout = durationpb.New(-time.Second)

	tests := []struct {
		name        string
		clusters    []*clusterv3.Cluster
		assignments []*endpointv3.ClusterLoadAssignment
		want        []string // substrings of the error
	}{
		{name: "nameless cluster", clusters: []*clusterv3.Cluster{goodCluster(), {}}, want: []string{"clusters[1]: name: empty"}},
		{name: "duplicate name", clusters: []*clusterv3.Cluster{goodCluster(), goodCluster()}, want: []string{`cluster "good": name: given twice`}},
		{name: "host name in a STATIC cluster", clusters: []*clusterv3.Cluster{goodCluster(), hostname}, want: []string{`cluster "bad"`, "socket_address.address", "example.com"}},
		{name: "port 0", clusters: []*clusterv3.Cluster{goodCluster(), port0}, want: []string{`cluster "bad"`, "lb_endpoints[0]"}},
		{name: "CLUSTER_PROVIDED without ORIGINAL_DST", clusters: []*clusterv3.Cluster{goodCluster(), provided}, want: []string{`cluster "bad"`, "lb_policy"}},
		{name: "EDS from a file", clusters: []*clusterv3.Cluster{goodCluster(), pathEDS}, want: []string{`cluster "bad"`, "eds_config", "ADS"}},
		{name: "ejection percent over 100", clusters: []*clusterv3.Cluster{goodCluster(), odPct}, want: []string{`cluster "bad"`, "OutlierDetection.MaxEjectionPercent"}},
		{name: "negative connect timeout", clusters: []*clusterv3.Cluster{goodCluster(), negTimeout}, want: []string{`cluster "bad"`, "ConnectTimeout"}},
		{name: "duplicate assignment", clusters: []*clusterv3.Cluster{goodCluster()}, assignments: []*endpointv3.ClusterLoadAssignment{assignment("x"), assignment("x")}, want: []string{`assignment "x"`, "given twice"}},
		{name: "custom cluster type", clusters: []*clusterv3.Cluster{goodCluster(), {Name: "bad", ClusterDiscoveryType: &clusterv3.Cluster_ClusterType{ClusterType: &clusterv3.Cluster_CustomClusterType{Name: "envoy.clusters.aggregate"}}}}, want: []string{`cluster "bad"`, "cluster_type", "aggregate"}},
		{name: "bad EDS endpoint", clusters: []*clusterv3.Cluster{goodCluster(), withType(staticCluster("bad"), clusterv3.Cluster_EDS)},
			assignments: []*endpointv3.ClusterLoadAssignment{assignment("bad", &endpointv3.LbEndpoint{})}, want: []string{`cluster "bad": assignment "bad"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := e.m.Update(tt.clusters, tt.assignments)
			if err == nil {
				t.Fatal("Update accepted bad input")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
			if got, _ := e.m.Cluster("good"); got != before {
				t.Error("a refused update changed the clusters")
			}
			if _, ok := e.m.Cluster("bad"); ok {
				t.Error("a refused update added a cluster")
			}
		})
	}
}

func TestMaxRequestsPerConnection(t *testing.T) {
	tests := []struct {
		name      string
		max       uint32
		h2        bool
		requests  int
		wantConns int64
	}{
		{name: "unlimited reuses one connection", requests: 4, wantConns: 1},
		{name: "1: a connection per request", max: 1, requests: 3, wantConns: 3},
		{name: "2: a connection per two requests", max: 2, requests: 4, wantConns: 2},
		{name: "1 over HTTP/2", max: 1, h2: true, requests: 3, wantConns: 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			var opts []backendOpt
			if tt.h2 {
				opts = append(opts, withH2C())
			}
			b := newBackend(t, "b", opts...)
			c := staticCluster("c", lbEndpoint(t, b.addr))
			if tt.max > 0 {
				maxRequestsPerConnection(t, c, tt.max)
			}
			if tt.h2 {
				http2(t, c)
				if tt.max > 0 {
					//lint:ignore SA1019 the deprecated field is what this case tests.
					c.MaxRequestsPerConnection = wrapperspb.UInt32(tt.max)
				}
			}
			e.update(t, c)
			cl := e.cluster(t, "c")
			for range tt.requests {
				mustGet(t, cl, Request{})
				if tt.h2 {
					// HTTP/2 closes a connection it may not reuse once its
					// stream is done; wait for that before the next request.
					waitFor(t, "the used connection to close", func() bool { return b.closed.Load() == b.opened.Load() || tt.max == 0 })
				}
			}
			if got := b.opened.Load(); got != tt.wantConns {
				t.Errorf("%d connections for %d requests, want %d", got, tt.requests, tt.wantConns)
			}
		})
	}
}

func TestHTTP2Upstream(t *testing.T) {
	e := newEnv(t)
	tests := []struct {
		name      string
		backend   *backend
		mesh      bool
		h2        bool
		wantProto int64
	}{
		{name: "h2c when configured", backend: newBackend(t, "h2c", withH2C()), h2: true, wantProto: 2},
		{name: "HTTP/1.1 by default", backend: newBackend(t, "h1", withH2C()), wantProto: 1},
		{name: "h2 over mesh mTLS", backend: newBackend(t, "h2-mtls", withTLS(e.mesh.serverTLS("foo", "httpbin"))), mesh: true, h2: true, wantProto: 2},
		{name: "HTTP/1.1 over mesh mTLS", backend: newBackend(t, "h1-mtls", withTLS(e.mesh.serverTLS("foo", "httpbin"))), mesh: true, wantProto: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := staticCluster("c", lbEndpoint(t, tt.backend.addr))
			if tt.mesh {
				c.TransportSocket = meshSocket(t)
			}
			if tt.h2 {
				http2(t, c)
			}
			e.update(t, c)
			if got := mustGet(t, e.cluster(t, "c"), Request{}); got != tt.backend.name {
				t.Fatalf("answer from %q", got)
			}
			if got := tt.backend.proto.Load(); got != tt.wantProto {
				t.Errorf("server saw HTTP/%d, want HTTP/%d", got, tt.wantProto)
			}
		})
	}
}

func TestOriginalDst(t *testing.T) {
	e := newEnv(t)
	b := newBackend(t, "b")
	e.update(t, &clusterv3.Cluster{
		Name:                 "PassthroughCluster",
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_ORIGINAL_DST},
		LbPolicy:             clusterv3.Cluster_CLUSTER_PROVIDED,
		ConnectTimeout:       durationpb.New(10 * time.Second),
	})
	cl := e.cluster(t, "PassthroughCluster")
	ep, _, body, err := get(t, cl, Request{OriginalDst: b.addr})
	if err != nil || body != "b" || ep.Address != b.addr {
		t.Fatalf("got %q from %v, err %v", body, ep, err)
	}
	if _, _, _, err := get(t, cl, Request{}); !errors.Is(err, ErrNoOriginalDst) || Flag(err) != FlagNoHealthyUpstream {
		t.Fatalf("no original destination: %v, want UH", err)
	}
}

func TestDNSCluster(t *testing.T) {
	e := newEnv(t)
	b := newBackend(t, "b")
	_, port, _ := net.SplitHostPort(b.addr)
	c := staticCluster("dns", lbEndpoint(t, "localhost:"+port))
	c.ClusterDiscoveryType = &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STRICT_DNS}
	c.DnsLookupFamily = clusterv3.Cluster_V4_ONLY
	e.update(t, c)
	ep, _, body, err := get(t, e.cluster(t, "dns"), Request{})
	if err != nil || body != "b" {
		t.Fatalf("got %q, err %v", body, err)
	}
	if ep.Address != "localhost:"+port {
		t.Errorf("endpoint %q, want the name as configured", ep.Address)
	}
}

func TestDialTCP(t *testing.T) {
	e := newEnv(t)
	plain := newBackend(t, "plain")
	sidecar := newBackend(t, "sidecar", withTLS(e.mesh.serverTLS("foo", "httpbin")))
	c := autoMTLS(t, staticCluster("tcp", istioMTLS(lbEndpoint(t, sidecar.addr)), lbEndpoint(t, plain.addr)))
	c.TransportSocketMatches[0].TransportSocket = meshSocketALPN(t, []string{"istio-peer-exchange", "istio", "http/1.1"})
	c.CircuitBreakers = &clusterv3.CircuitBreakers{Thresholds: []*clusterv3.CircuitBreakers_Thresholds{{MaxConnections: wrapperspb.UInt32(1)}}}
	e.update(t, c)
	cl := e.cluster(t, "tcp")

	for _, tt := range []struct {
		target, other *backend
		mtls          bool
	}{{sidecar, plain, true}, {plain, sidecar, false}} {
		conn, ep, err := cl.DialTCP(t.Context(), Request{Exclude: []string{tt.other.addr}})
		if err != nil {
			t.Fatal(err)
		}
		if ep.MTLS != tt.mtls || ep.Address != tt.target.addr {
			t.Errorf("endpoint %+v, want %s with mTLS %v", ep, tt.target.addr, tt.mtls)
		}
		// max_connections is 1: a second connection overflows while this one is open.
		if _, _, err := cl.DialTCP(t.Context(), Request{}); Flag(err) != FlagOverflow {
			t.Errorf("second connection: %v, want UO", err)
		}
		// Speak HTTP/1.1 over it by hand.
		if _, err := conn.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 4096)
		var got []byte
		conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		for {
			n, err := conn.Read(buf)
			got = append(got, buf[:n]...)
			if err != nil {
				break
			}
		}
		conn.Close()
		if !strings.HasSuffix(string(got), tt.target.name) {
			t.Errorf("TCP answer %q, want one from %s", got, tt.target.name)
		}
		if want := map[bool]string{true: "spiffe://cluster.local/ns/foo/sa/sleep", false: ""}[tt.mtls]; tt.target.peer.Load() != want {
			t.Errorf("server saw client %q, want %q", tt.target.peer.Load(), want)
		}
	}
}

func TestMetricsExposition(t *testing.T) {
	e := newEnv(t)
	b := newBackend(t, "b")
	e.update(t, staticCluster("m", lbEndpoint(t, b.addr)), staticCluster("empty"))
	mustGet(t, e.cluster(t, "m"), Request{})
	mustGet(t, e.cluster(t, "m"), Request{})
	get(t, e.cluster(t, "empty"), Request{})
	if got := counterValue(t, e.reg, "rampart_upstream_requests_total", map[string]string{"cluster": "m", "flag": "-"}); got != 2 {
		t.Errorf("requests{m,-} = %v, want 2", got)
	}
	if got := counterValue(t, e.reg, "rampart_upstream_requests_total", map[string]string{"cluster": "empty", "flag": "UH"}); got != 1 {
		t.Errorf("requests{empty,UH} = %v, want 1", got)
	}
	if got := counterValue(t, e.reg, "rampart_upstream_connections_total", map[string]string{"cluster": "m"}); got != 1 {
		t.Errorf("connections_total{m} = %v, want 1", got)
	}
	if got := counterValue(t, e.reg, "rampart_upstream_connections_active", map[string]string{"cluster": "m"}); got != 1 {
		t.Errorf("connections_active{m} = %v, want 1", got)
	}
	// A removed cluster's series go.
	e.update(t, staticCluster("m", lbEndpoint(t, b.addr)))
	mfs, err := e.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "cluster" && l.GetValue() == "empty" {
					t.Errorf("%s still has a series for the removed cluster", mf.GetName())
				}
			}
		}
	}
	// Two managers cannot share a registry.
	if _, err := NewManager(Config{SVID: staticSVID{e.mesh.me}, Bundle: e.mesh.ca.Bundle(), Metrics: e.reg}); err == nil {
		t.Error("a second Manager registered on the same registry")
	}
}

// counterValue reads one series from reg; 0 when absent.
func counterValue(t testing.TB, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			have := map[string]string{}
			for _, l := range m.GetLabel() {
				have[l.GetName()] = l.GetValue()
			}
			for k, v := range labels {
				if have[k] != v {
					continue next
				}
			}
			if m.GetCounter() != nil {
				return m.GetCounter().GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	return 0
}

// TestConcurrentUpdatesAndRequests runs requests while updates change the
// endpoints and, every other time, the configuration; under -race this checks
// the publication and the shared pool state.
func TestConcurrentUpdatesAndRequests(t *testing.T) {
	e := newEnv(t)
	a, b := newBackend(t, "a"), newBackend(t, "b")
	build := func(i int) *clusterv3.Cluster {
		eps := []*endpointv3.LbEndpoint{lbEndpoint(t, a.addr)}
		if i%2 == 0 {
			eps = append(eps, lbEndpoint(t, b.addr))
		}
		c := staticCluster("c", eps...)
		c.LbPolicy = []clusterv3.Cluster_LbPolicy{clusterv3.Cluster_ROUND_ROBIN, clusterv3.Cluster_LEAST_REQUEST}[i/2%2]
		c.OutlierDetection = &clusterv3.OutlierDetection{}
		return c
	}
	e.update(t, build(0))
	done := make(chan error, 4)
	for range 4 {
		go func() {
			for range 50 {
				cl, _ := e.m.Cluster("c")
				if _, _, body, err := get(t, cl, Request{}); err != nil || (body != "a" && body != "b") {
					done <- errors.Join(err, errors.New("answer "+body))
					return
				}
			}
			done <- nil
		}()
	}
	for i := range 20 {
		if err := e.m.Update([]*clusterv3.Cluster{build(i)}, nil); err != nil {
			t.Fatal(err)
		}
	}
	for range 4 {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
}
