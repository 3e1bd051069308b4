package outbound

import (
	"bufio"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
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
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rampart-mesh/rampart/ca"
	"github.com/rampart-mesh/rampart/ca/catest"
	"github.com/rampart-mesh/rampart/proxy/upstream"
	"github.com/rampart-mesh/rampart/proxy/xds"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// timerServer is routeServerWith with a metrics registry for the upstreams.
func timerServer(t *testing.T, addrs map[string]string, mod func(*clusterv3.Cluster), rt *routev3.Route) (string, *prometheus.Registry, *catest.SyncBuffer) {
	return timerServerGW(t, false, addrs, mod, rt)
}

func timerServerGW(t *testing.T, gw bool, addrs map[string]string, mod func(*clusterv3.Cluster), rt *routev3.Route) (string, *prometheus.Registry, *catest.SyncBuffer) {
	t.Helper()
	reg := prometheus.NewRegistry()
	a, err := ca.New(ca.Config{StateDir: t.TempDir(), TrustDomain: spiffeid.RequireTrustDomainFromString("cluster.local")})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Load(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	ups, err := upstream.NewManager(upstream.Config{SVID: staticSVID{catest.IssueSVID(t, a, "default", "client")}, Bundle: a.Bundle(), Metrics: reg})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ups.Close)
	var clusters []*clusterv3.Cluster
	for name, addr := range addrs {
		host, port, _ := net.SplitHostPort(addr)
		p, _ := strconv.Atoi(port)
		clusters = append(clusters, &clusterv3.Cluster{Name: name, ConnectTimeout: durationpb.New(5 * time.Second),
			ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
			LoadAssignment: &endpointv3.ClusterLoadAssignment{ClusterName: name, Endpoints: []*endpointv3.LocalityLbEndpoints{{LbEndpoints: []*endpointv3.LbEndpoint{{
				HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: &corev3.Address{Address: &corev3.Address_SocketAddress{
					SocketAddress: &corev3.SocketAddress{Address: host, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(p)}}}}}}}}}}},
		})
	}
	if mod != nil {
		for _, c := range clusters {
			mod(c)
		}
	}
	if err := ups.Update(clusters, nil); err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	log := &catest.SyncBuffer{}
	s, err := New(Config{Listener: lis, Upstreams: ups, Log: slog.New(slog.NewTextHandler(log, nil)), AccessLogAll: true, Gateway: gw})
	lport := uint32(80)
	if gw {
		lport = uint32(lis.Addr().(*net.TCPAddr).Port)
	}
	if err != nil {
		t.Fatal(err)
	}
	hcm := &hcmv3.HttpConnectionManager{RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{RouteConfigName: strconv.Itoa(int(lport))}}}
	l := &listenerv3.Listener{
		Name: "0.0.0.0_" + strconv.Itoa(int(lport)), TrafficDirection: trafficDir(gw),
		Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
			Address: "0.0.0.0", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: lport}}}},
		FilterChains: []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{{Name: "envoy.filters.network.http_connection_manager",
			ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(t, hcm)}}}}},
	}
	if rt.Match == nil {
		rt.Match = &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}}
	}
	rc := &routev3.RouteConfiguration{Name: strconv.Itoa(int(lport)), VirtualHosts: []*routev3.VirtualHost{{Name: "up", Domains: []string{"*"}, Routes: []*routev3.Route{rt}}}}
	apply, err := s.Prepare(&xds.Resources{Listeners: map[string]*listenerv3.Listener{l.Name: l}, Routes: map[string]*routev3.RouteConfiguration{rc.Name: rc}})
	if err != nil {
		t.Fatal(err)
	}
	apply()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- s.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-errc })
	return lis.Addr().String(), reg, log
}

// A per-try timeout on a hung host is an upstream timeout (UT) and a local
// origin failure for outlier detection: forward's timer causes wrap
// DeadlineExceeded, so the upstream package does not read them as DC.
func TestPerTryTimeoutCountsForOutlier(t *testing.T) {
	hold := make(chan struct{})
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-hold:
		case <-r.Context().Done():
		}
	}))
	defer up.Close()
	defer close(hold)
	a := clusterAction("up")
	a.Route.RetryPolicy = &routev3.RetryPolicy{RetryOn: "5xx", NumRetries: wrapperspb.UInt32(0),
		PerTryTimeout: durationpb.New(100 * time.Millisecond)}
	addr, reg, log := timerServer(t, map[string]string{"up": strings.TrimPrefix(up.URL, "http://")}, func(c *clusterv3.Cluster) {
		c.OutlierDetection = &clusterv3.OutlierDetection{Consecutive_5Xx: wrapperspb.UInt32(1), ConsecutiveGatewayFailure: wrapperspb.UInt32(1),
			EnforcingConsecutiveGatewayFailure: wrapperspb.UInt32(100), MaxEjectionPercent: wrapperspb.UInt32(100)}
	}, &routev3.Route{Action: a})
	resp := get(t, addr)
	if resp.StatusCode != 504 {
		t.Fatalf("status %d, want 504", resp.StatusCode)
	}
	time.Sleep(100 * time.Millisecond)
	mfs, _ := reg.Gather()
	var dump strings.Builder
	ut, dc, ej := 0.0, 0.0, 0.0
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			switch mf.GetName() {
			case "rampart_upstream_requests_total":
				if labels["flag"] == "UT" {
					ut = m.GetCounter().GetValue()
				}
				if labels["flag"] == "DC" {
					dc = m.GetCounter().GetValue()
				}
			case "rampart_upstream_ejections_total":
				ej = m.GetCounter().GetValue()
			}
		}
	}
	_ = testutil.ToFloat64
	dump.WriteString(log.String())
	if ut != 1 || dc != 0 || ej != 1 {
		t.Fatalf("after one per-try timeout: upstream requests UT=%v DC=%v, ejections=%v; want UT=1 DC=0 ejections=1 (the timeout of a hung host is a local-origin failure)\n%s", ut, dc, ej, dump.String())
	}
}

// Envoy's RetryStateImpl::shouldRetry calls resetRetry (releasing the retry
// resource the previous retry held) before it asks the breaker for the next
// one. With max_retries 1 and num_retries 2, one request alone may retry twice.
func TestSecondRetryNotBlockedByOwnSlot(t *testing.T) {
	var mu sync.Mutex
	calls := 0
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		calls++
		n := calls
		mu.Unlock()
		if n < 3 {
			w.WriteHeader(503)
			return
		}
		_, _ = w.Write([]byte("ok"))
	}))
	defer up.Close()
	a := clusterAction("up")
	a.Route.RetryPolicy = &routev3.RetryPolicy{RetryOn: "5xx", NumRetries: wrapperspb.UInt32(2),
		RetryBackOff: &routev3.RetryPolicy_RetryBackOff{BaseInterval: durationpb.New(time.Millisecond)}}
	addr, _, log := timerServer(t, map[string]string{"up": strings.TrimPrefix(up.URL, "http://")}, func(c *clusterv3.Cluster) {
		c.CircuitBreakers = &clusterv3.CircuitBreakers{Thresholds: []*clusterv3.CircuitBreakers_Thresholds{{MaxRetries: wrapperspb.UInt32(1)}}}
	}, &routev3.Route{Action: a})
	resp := get(t, addr)
	mu.Lock()
	n := calls
	mu.Unlock()
	if resp.StatusCode != 200 || n != 3 {
		t.Fatalf("one request alone, max_retries 1, num_retries 2, upstream 503,503,200: status %d after %d calls (flags %q); want 200 after 3 (its own first retry's slot is released before the second is asked)\n%s",
			resp.StatusCode, n, resp.Header.Get("x-rampart-response-flags"), log.String())
	}
}

// The same for connect failures (the error path's retry asks TryRetry while
// the previous retry's slot is held).
func TestSecondRetryAfterResetNotBlockedByOwnSlot(t *testing.T) {
	var mu sync.Mutex
	calls := 0
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		calls++
		n := calls
		mu.Unlock()
		if n < 3 {
			hj, _ := w.(http.Hijacker)
			c, _, _ := hj.Hijack()
			c.Close() // reset before a response
			return
		}
		_, _ = w.Write([]byte("ok"))
	}))
	defer up.Close()
	a := clusterAction("up")
	a.Route.RetryPolicy = &routev3.RetryPolicy{RetryOn: "reset", NumRetries: wrapperspb.UInt32(2),
		RetryBackOff: &routev3.RetryPolicy_RetryBackOff{BaseInterval: durationpb.New(time.Millisecond)}}
	addr, _, log := timerServer(t, map[string]string{"up": strings.TrimPrefix(up.URL, "http://")}, func(c *clusterv3.Cluster) {
		c.CircuitBreakers = &clusterv3.CircuitBreakers{Thresholds: []*clusterv3.CircuitBreakers_Thresholds{{MaxRetries: wrapperspb.UInt32(1)}}}
	}, &routev3.Route{Action: a})
	resp := get(t, addr)
	mu.Lock()
	n := calls
	mu.Unlock()
	if resp.StatusCode != 200 || n != 3 {
		t.Fatalf("max_retries 1, num_retries 2, upstream reset,reset,200: status %d after %d calls (flags %q); want 200 after 3\n%s",
			resp.StatusCode, n, resp.Header.Get("x-rampart-response-flags"), log.String())
	}
}

// An upgraded connection (WebSocket) is a tunnel: per_try_idle_timeout, whose
// timer forward starts at once for an upgrade and never resets (the idle
// reader is not installed on an upgrade), must not end a tunnel that is in use.
func TestPerTryIdleDoesNotCutActiveTunnel(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hj := w.(http.Hijacker)
		c, brw, err := hj.Hijack()
		if err != nil {
			return
		}
		defer c.Close()
		brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
		brw.Flush()
		buf := make([]byte, 1)
		for {
			n, err := brw.Read(buf)
			if err != nil {
				return
			}
			c.Write(buf[:n])
		}
	}))
	defer up.Close()
	a := clusterAction("up")
	a.Route.RetryPolicy = &routev3.RetryPolicy{RetryOn: "connect-failure", NumRetries: wrapperspb.UInt32(1),
		PerTryIdleTimeout: durationpb.New(300 * time.Millisecond)}
	a.Route.UpgradeConfigs = []*routev3.RouteAction_UpgradeConfig{{UpgradeType: "echo"}}
	addr, _, log := timerServer(t, map[string]string{"up": strings.TrimPrefix(up.URL, "http://")}, nil, &routev3.Route{Action: a})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "GET /ws HTTP/1.1\r\nHost: up\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 101 {
		t.Fatalf("upgrade: %v %v\n%s", resp, err, log.String())
	}
	// Keep the tunnel busy: a byte every 100ms for 1s, each echoed.
	for i := 0; i < 10; i++ {
		c.SetDeadline(time.Now().Add(2 * time.Second))
		if _, err := c.Write([]byte{'a' + byte(i)}); err != nil {
			t.Fatalf("write %d after %dms: %v\n%s", i, i*100, err, log.String())
		}
		b, err := br.ReadByte()
		if err != nil || b != 'a'+byte(i) {
			t.Fatalf("echo %d after %dms: %q %v: the tunnel, in use every 100ms, was cut (per_try_idle_timeout 300ms)\n%s", i, i*100, b, err, log.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// A gateway is the mesh's edge (Istio sets use_remote_address on it, and
// Envoy then overwrites x-forwarded-proto with the downstream connection's
// scheme unless xff_num_trusted_hops says the client is a trusted proxy). An
// external client on the plaintext gateway must not be able to tell the
// upstream its request came over https.
func TestGatewayOverwritesForwardedProto(t *testing.T) {
	got := make(chan string, 1)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- r.Header.Get("X-Forwarded-Proto")
	}))
	defer up.Close()
	addr, _, log := timerServerGW(t, true, map[string]string{"up": strings.TrimPrefix(up.URL, "http://")}, nil, &routev3.Route{Action: clusterAction("up")})
	resp := get(t, addr, "X-Forwarded-Proto", "https")
	if resp.StatusCode != 200 {
		t.Fatalf("status %d\n%s", resp.StatusCode, log.String())
	}
	if v := <-got; v != "http" {
		t.Fatalf("plaintext request to the gateway with x-forwarded-proto: https reached the upstream with %q; want http (the edge overwrites it)", v)
	}
}

func trafficDir(gw bool) corev3.TrafficDirection {
	if gw {
		return corev3.TrafficDirection_INBOUND
	}
	return corev3.TrafficDirection_UNSPECIFIED
}
