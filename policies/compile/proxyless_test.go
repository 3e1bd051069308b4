package compile

import (
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/google/go-cmp/cmp"
	"github.com/rampart-mesh/rampart/policies/source"
)

const proxylessYAML = `
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - match: [{headers: {x-user: {exact: jason}}}]
    timeout: 3s
    fault: {abort: {httpStatus: 503, percentage: {value: 10}}}
    corsPolicy: {allowOrigins: [{exact: "https://example.com"}]}
    route: [{destination: {host: reviews, subset: v2}}]
  - route:
    - {destination: {host: reviews, subset: v1}, weight: 75}
    - {destination: {host: reviews, subset: v2}, weight: 25}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: geo}
spec:
  hosts: [geo.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 7070, name: grpc, protocol: GRPC}]
  workloadSelector: {labels: {app: geo}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: geo-a1}
spec: {address: 127.0.7.1, labels: {app: geo}, serviceAccount: geo, locality: us-east/zone-a}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: geo-a2}
spec: {address: 127.0.7.2, labels: {app: geo}, serviceAccount: geo, locality: us-east/zone-a, weight: 3}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: geo-b1}
spec: {address: 127.0.7.3, labels: {app: geo}, serviceAccount: geo-b, locality: us-west/zone-b/rack-1}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api}
spec:
  hosts: [api.example.com]
  location: MESH_EXTERNAL
  resolution: DNS
  ports: [{number: 443, name: https, protocol: HTTPS}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: geo}
spec:
  host: geo
  trafficPolicy: {loadBalancer: {simple: RANDOM}}
`

func proxyless(t *testing.T) *Outbound {
	t.Helper()
	objs, err := source.Parse("mesh.yaml", []byte(registryYAML+"---\n"+proxylessYAML))
	if err != nil {
		t.Fatal(err)
	}
	n, fs := DecodeNetworking(objs, Mesh{}, "default")
	for _, f := range fs {
		if f.Severity == SeverityError {
			t.Fatal(f)
		}
	}
	out, err := CompileProxyless(n, Mesh{}, productpage)
	if err != nil {
		t.Fatal(err)
	}
	if err := CheckProxyless(out); err != nil {
		t.Fatalf("CheckProxyless: %v", err)
	}
	return out
}

func TestProxylessListeners(t *testing.T) {
	out := proxyless(t)
	got := map[string]string{} // listener → its route configuration
	for _, l := range out.Listeners {
		if l.GetAddress() != nil || len(l.GetFilterChains()) > 0 {
			t.Errorf("listener %s: address or filter chains on an api_listener", l.GetName())
		}
		hcm := &hcmv3.HttpConnectionManager{}
		if err := l.GetApiListener().GetApiListener().UnmarshalTo(hcm); err != nil {
			t.Fatalf("listener %s: %v", l.GetName(), err)
		}
		if hcm.GetRds().GetConfigSource().GetAds() == nil {
			t.Errorf("listener %s: RDS not over ADS", l.GetName())
		}
		fs := hcm.GetHttpFilters()
		if len(fs) == 0 || fs[len(fs)-1].GetName() != RouterFilter {
			t.Errorf("listener %s: filters %v, want the router last", l.GetName(), fs)
		}
		for _, f := range fs {
			if f.GetName() == CorsFilter {
				t.Errorf("listener %s: CORS filter (grpc-go has none)", l.GetName())
			}
		}
		got[l.GetName()] = hcm.GetRds().GetRouteConfigName()
	}
	const reviews = "reviews.default.svc.cluster.local:9080"
	want := map[string]string{
		reviews: reviews, "reviews.default.svc:9080": reviews, "reviews.default:9080": reviews, "reviews:9080": reviews,
		"ratings.default.svc.cluster.local:9080": "ratings.default.svc.cluster.local:9080",
		"geo.default.svc.cluster.local:7070":     "geo.default.svc.cluster.local:7070",
	}
	for name, rc := range want {
		if got[name] != rc {
			t.Errorf("listener %s → %q, want %q", name, got[name], rc)
		}
	}
	for name := range got {
		if strings.Contains(name, "db.") || strings.HasPrefix(name, "0.0.0.0") || strings.Contains(name, "example.com") {
			t.Errorf("listener %s: not an HTTP mesh service port", name)
		}
	}
}

func TestProxylessRoutes(t *testing.T) {
	out := proxyless(t)
	var vhs int
	for _, rc := range out.Routes {
		vhs += len(rc.GetVirtualHosts())
		if len(rc.GetVirtualHosts()) != 1 {
			t.Errorf("route configuration %s: %d virtual hosts, want 1", rc.GetName(), len(rc.GetVirtualHosts()))
		}
	}
	vh := vhost(t, out, "reviews.default.svc.cluster.local:9080", "reviews.default.svc.cluster.local")
	if !contains(vh.GetDomains(), "reviews.default.svc.cluster.local:9080") || !contains(vh.GetDomains(), "reviews:9080") {
		t.Errorf("domains %v: want the HOST:PORT forms the client dials", vh.GetDomains())
	}
	rs := vh.GetRoutes()
	if len(rs) != 2 {
		t.Fatalf("%d routes, want 2", len(rs))
	}
	h := rs[0]
	if hm := h.GetMatch().GetHeaders(); len(hm) != 1 || hm[0].GetName() != "x-user" || hm[0].GetStringMatch().GetExact() != "jason" {
		t.Errorf("header route match: %v", h.GetMatch())
	}
	if c := h.GetRoute().GetCluster(); c != "outbound|9080|v2|reviews.default.svc.cluster.local" {
		t.Errorf("header route cluster %q", c)
	}
	if d := h.GetRoute().GetMaxStreamDuration().GetMaxStreamDuration().AsDuration(); d != 3*time.Second {
		t.Errorf("max_stream_duration %v, want the VirtualService timeout 3s", d)
	}
	if _, ok := h.GetTypedPerFilterConfig()[CorsFilter]; ok {
		t.Error("CORS per-route config kept: grpc-go refuses filter configs it has no filter for")
	}
	if _, ok := h.GetTypedPerFilterConfig()[FaultFilter]; !ok {
		t.Error("fault per-route config dropped: grpc-go implements it")
	}
	var weights []string
	for _, c := range rs[1].GetRoute().GetWeightedClusters().GetClusters() {
		weights = append(weights, c.GetName()+"="+c.GetWeight().String())
	}
	if diff := cmp.Diff([]string{"outbound|9080|v1|reviews.default.svc.cluster.local=value:75", "outbound|9080|v2|reviews.default.svc.cluster.local=value:25"}, weights); diff != "" {
		t.Errorf("weighted clusters (-want +got):\n%s", diff)
	}
	if rs[1].GetRoute().GetMaxStreamDuration() != nil {
		t.Error("max_stream_duration on a route without a timeout")
	}
}

func TestProxylessClusters(t *testing.T) {
	out := proxyless(t)
	tests := []struct {
		name string
		lb   clusterv3.Cluster_LbPolicy
		sans []string // nil: no TLS
	}{
		{"outbound|9080||reviews.default.svc.cluster.local", clusterv3.Cluster_LEAST_REQUEST, []string{"spiffe://cluster.local/ns/default/sa/bookinfo-reviews"}},
		{"outbound|9080|v2|reviews.default.svc.cluster.local", clusterv3.Cluster_RING_HASH, []string{"spiffe://cluster.local/ns/default/sa/bookinfo-reviews"}},
		{"outbound|9080||ratings.default.svc.cluster.local", clusterv3.Cluster_ROUND_ROBIN, nil}, // MESH_EXTERNAL (Istio's default location)
		{"outbound|7070||geo.default.svc.cluster.local", clusterv3.Cluster_ROUND_ROBIN, []string{"spiffe://cluster.local/ns/default/sa/geo", "spiffe://cluster.local/ns/default/sa/geo-b"}},
		{"outbound|5432||db.default.svc.cluster.local", clusterv3.Cluster_ROUND_ROBIN, nil}, // inline endpoint, no sidecar
		{BlackHole, clusterv3.Cluster_ROUND_ROBIN, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := clusterByName(out, tt.name)
			if c == nil {
				t.Fatal("missing")
			}
			if c.GetType() != clusterv3.Cluster_EDS || c.GetEdsClusterConfig().GetEdsConfig().GetAds() == nil {
				t.Errorf("type %v, EDS config %v: want EDS over ADS", c.GetType(), c.GetEdsClusterConfig())
			}
			if c.GetLbPolicy() != tt.lb {
				t.Errorf("lb_policy %v, want %v", c.GetLbPolicy(), tt.lb)
			}
			if c.GetLbPolicy() == clusterv3.Cluster_LEAST_REQUEST && c.GetLeastRequestLbConfig().GetChoiceCount().GetValue() != 2 {
				t.Error("LEAST_REQUEST without choice_count 2")
			}
			if len(c.GetTransportSocketMatches()) > 0 {
				t.Error("transport_socket_matches: grpc-go refuses clusters with them")
			}
			if tt.sans == nil {
				if c.GetTransportSocket() != nil {
					t.Errorf("transport socket %v, want plaintext", c.GetTransportSocket())
				}
				return
			}
			ctx := &tlsv3.UpstreamTlsContext{}
			if err := c.GetTransportSocket().GetTypedConfig().UnmarshalTo(ctx); err != nil || c.GetTransportSocket().GetName() != TLSSocket {
				t.Fatalf("transport socket %v: %v", c.GetTransportSocket(), err)
			}
			common := ctx.GetCommonTlsContext()
			if p := common.GetTlsCertificateProviderInstance(); p.GetInstanceName() != CertProviderInstance {
				t.Errorf("identity provider %v, want instance %q", p, CertProviderInstance)
			}
			if len(common.GetTlsCertificateSdsSecretConfigs()) > 0 || len(common.GetAlpnProtocols()) > 0 {
				t.Error("SDS secrets or Istio ALPN left in a gRPC TLS context")
			}
			vc := common.GetValidationContext()
			if p := vc.GetCaCertificateProviderInstance(); p.GetInstanceName() != CertProviderInstance {
				t.Errorf("root provider %v, want instance %q", p, CertProviderInstance)
			}
			var sans []string
			//lint:ignore SA1019 the field grpc-go reads
			for _, m := range vc.GetMatchSubjectAltNames() {
				sans = append(sans, m.GetExact())
			}
			if diff := cmp.Diff(tt.sans, sans); diff != "" {
				t.Errorf("SANs (-want +got):\n%s", diff)
			}
		})
	}
	if c := clusterByName(out, "outbound|443||api.example.com"); c != nil {
		t.Errorf("STRICT_DNS cluster %s served to gRPC (it has no such type)", c.GetName())
	}
}

func TestProxylessEndpointsByLocality(t *testing.T) {
	out := proxyless(t)
	var cla *endpointv3.ClusterLoadAssignment
	for _, e := range out.Endpoints {
		if e.GetClusterName() == "outbound|7070||geo.default.svc.cluster.local" {
			cla = e
		}
	}
	if cla == nil {
		t.Fatal("no endpoints for geo")
	}
	var got []string
	for _, l := range cla.GetEndpoints() {
		var addrs []string
		for _, e := range l.GetLbEndpoints() {
			addrs = append(addrs, e.GetEndpoint().GetAddress().GetSocketAddress().GetAddress())
		}
		lc := l.GetLocality()
		got = append(got, lc.GetRegion()+"/"+lc.GetZone()+"/"+lc.GetSubZone()+" w="+l.GetLoadBalancingWeight().String()+" "+strings.Join(addrs, ","))
	}
	want := []string{"us-east/zone-a/ w=value:4 127.0.7.1,127.0.7.2", "us-west/zone-b/rack-1 w=value:1 127.0.7.3"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("localities (-want +got):\n%s", diff)
	}
	// Endpoints without a locality still get a named, weighted one (grpc-go skips weight 0).
	for _, e := range out.Endpoints {
		for _, l := range e.GetEndpoints() {
			if l.GetLocality() == nil || l.GetLoadBalancingWeight().GetValue() == 0 {
				t.Errorf("%s: locality %v weight %v", e.GetClusterName(), l.GetLocality(), l.GetLoadBalancingWeight())
			}
		}
	}
}

func TestCheckProxyless(t *testing.T) {
	out := proxyless(t)
	broken := *out
	broken.Routes = out.Routes[1:]
	if err := CheckProxyless(&broken); err == nil || !strings.Contains(err.Error(), "route configuration") {
		t.Errorf("a listener without its route configuration: %v", err)
	}
	broken = *out
	broken.Endpoints = nil
	if err := CheckProxyless(&broken); err == nil || !strings.Contains(err.Error(), "endpoints are missing") {
		t.Errorf("EDS clusters without endpoints: %v", err)
	}
	broken = *out
	broken.Listeners = append([]*listenerv3.Listener{{Name: "x:1"}}, out.Listeners...)
	if err := CheckProxyless(&broken); err == nil {
		t.Error("a listener without an api_listener passed")
	}
}

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}
