package compile

import (
	"strconv"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	faultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"github.com/rampart-mesh/rampart/policies/source"
)

const registryYAML = `
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews}
spec:
  hosts: [reviews.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9080, name: http, protocol: HTTP}]
  workloadSelector: {labels: {app: reviews}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ratings}
spec:
  hosts: [ratings.default.svc.cluster.local]
  resolution: STATIC
  ports: [{number: 9080, name: http}]
  workloadSelector: {labels: {app: ratings}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db}
spec:
  hosts: [db.default.svc.cluster.local]
  resolution: STATIC
  ports: [{number: 5432, name: tcp-db}]
  endpoints: [{address: 127.0.9.9}]
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-v1}
spec: {address: 127.0.1.1, labels: {app: reviews, version: v1}, serviceAccount: bookinfo-reviews}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-v2}
spec: {address: 127.0.1.2, labels: {app: reviews, version: v2}, serviceAccount: bookinfo-reviews, ports: {http: 19080}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: ratings-v1}
spec: {address: 127.0.2.1, labels: {app: ratings, version: v1}, serviceAccount: bookinfo-ratings}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer: {simple: LEAST_REQUEST}
    connectionPool: {tcp: {maxConnections: 7}, http: {http1MaxPendingRequests: 3, maxRequestsPerConnection: 1}}
    outlierDetection: {consecutive5xxErrors: 2, interval: 1s, baseEjectionTime: 30s, maxEjectionPercent: 50}
  subsets:
  - {name: v1, labels: {version: v1}}
  - name: v2
    labels: {version: v2}
    trafficPolicy: {loadBalancer: {consistentHash: {httpHeaderName: x-user}}}
`

func outbound(t *testing.T, extra string, wl Workload) (*Outbound, []Finding) {
	t.Helper()
	objs, err := source.Parse("mesh.yaml", []byte(registryYAML+"---\n"+extra))
	if err != nil {
		t.Fatal(err)
	}
	n, fs := DecodeNetworking(objs, Mesh{}, "default")
	out, err := CompileOutbound(n, Mesh{}, wl)
	if err != nil {
		t.Fatal(err)
	}
	return out, fs
}

func clusterByName(out *Outbound, name string) *clusterv3.Cluster {
	for _, c := range out.Clusters {
		if c.GetName() == name {
			return c
		}
	}
	return nil
}

func vhost(t *testing.T, out *Outbound, rc, host string) *routev3.VirtualHost {
	t.Helper()
	for _, r := range out.Routes {
		if r.GetName() != rc {
			continue
		}
		for _, vh := range r.GetVirtualHosts() {
			if strings.HasPrefix(vh.GetName(), host+":") {
				return vh
			}
		}
	}
	t.Fatalf("no virtual host %s in route configuration %s", host, rc)
	return nil
}

var productpage = Workload{Namespace: "default", Name: "productpage", Labels: map[string]string{"app": "productpage", "version": "v1"}}

func TestOutboundClustersAndEndpoints(t *testing.T) {
	out, fs := outbound(t, "", productpage)
	if len(fs) != 0 {
		t.Fatalf("findings: %v", fs)
	}
	for _, name := range []string{"outbound|9080||reviews.default.svc.cluster.local", "outbound|9080|v1|reviews.default.svc.cluster.local",
		"outbound|9080|v2|reviews.default.svc.cluster.local", "outbound|9080||ratings.default.svc.cluster.local", "outbound|5432||db.default.svc.cluster.local", BlackHole} {
		if clusterByName(out, name) == nil {
			t.Errorf("cluster %s missing", name)
		}
	}
	eps := map[string][]string{}
	for _, cla := range out.Endpoints {
		for _, lle := range cla.GetEndpoints() {
			for _, e := range lle.GetLbEndpoints() {
				sa := e.GetEndpoint().GetAddress().GetSocketAddress()
				tls := e.GetMetadata().GetFilterMetadata()[SocketMatchKey].GetFields()["tlsMode"].GetStringValue()
				eps[cla.GetClusterName()] = append(eps[cla.GetClusterName()], sa.GetAddress()+":"+strconv.Itoa(int(sa.GetPortValue()))+"/"+tls)
			}
		}
	}
	want := map[string]string{
		"outbound|9080||reviews.default.svc.cluster.local":   "127.0.1.1:9080/istio 127.0.1.2:19080/istio",
		"outbound|9080|v1|reviews.default.svc.cluster.local": "127.0.1.1:9080/istio",
		"outbound|9080|v2|reviews.default.svc.cluster.local": "127.0.1.2:19080/istio",
		"outbound|5432||db.default.svc.cluster.local":        "127.0.9.9:5432/",
	}
	for c, w := range want {
		if got := strings.Join(eps[c], " "); got != w {
			t.Errorf("%s endpoints = %q, want %q", c, got, w)
		}
	}
	// DestinationRule settings.
	c := clusterByName(out, "outbound|9080|v1|reviews.default.svc.cluster.local")
	if c.GetLbPolicy() != clusterv3.Cluster_LEAST_REQUEST {
		t.Errorf("v1 lb = %v", c.GetLbPolicy())
	}
	th := c.GetCircuitBreakers().GetThresholds()[0]
	if th.GetMaxConnections().GetValue() != 7 || th.GetMaxPendingRequests().GetValue() != 3 {
		t.Errorf("thresholds = %v", th)
	}
	if od := c.GetOutlierDetection(); od.GetConsecutive_5Xx().GetValue() != 2 || od.GetEnforcingConsecutive_5Xx().GetValue() != 100 ||
		od.GetBaseEjectionTime().AsDuration() != 30*time.Second || od.GetMaxEjectionPercent().GetValue() != 50 {
		t.Errorf("outlier detection = %v", od)
	}
	if v2 := clusterByName(out, "outbound|9080|v2|reviews.default.svc.cluster.local"); v2.GetLbPolicy() != clusterv3.Cluster_RING_HASH {
		t.Errorf("v2 (consistent hash subset) lb = %v", v2.GetLbPolicy())
	}
	// Auto mTLS: the in-mesh match carries the endpoints' SPIFFE IDs.
	m := c.GetTransportSocketMatches()
	if len(m) != 2 || m[0].GetMatch().GetFields()["tlsMode"].GetStringValue() != "istio" {
		t.Fatalf("transport socket matches = %v", m)
	}
	ctx := &tlsv3.UpstreamTlsContext{}
	if err := m[0].GetTransportSocket().GetTypedConfig().UnmarshalTo(ctx); err != nil {
		t.Fatal(err)
	}
	sans := ctx.GetCommonTlsContext().GetCombinedValidationContext().GetDefaultValidationContext().GetMatchTypedSubjectAltNames()
	if len(sans) != 1 || sans[0].GetMatcher().GetExact() != "spiffe://cluster.local/ns/default/sa/bookinfo-reviews" {
		t.Errorf("SANs = %v", sans)
	}
	// A TCP port gets a tcp_proxy listener, HTTP ports a route configuration by port.
	names := map[string]bool{}
	for _, l := range out.Listeners {
		names[l.GetName()] = true
	}
	if !names["0.0.0.0_9080"] || !names["db.default.svc.cluster.local_5432"] {
		t.Errorf("listeners = %v", names)
	}
	vh := vhost(t, out, "9080", "reviews.default.svc.cluster.local")
	doms := strings.Join(vh.GetDomains(), " ")
	for _, d := range []string{"reviews", "reviews:9080", "reviews.default", "reviews.default.svc.cluster.local:9080"} {
		if !strings.Contains(" "+doms+" ", " "+d+" ") {
			t.Errorf("domains %q lack %q", doms, d)
		}
	}
	if r := vh.GetRoutes()[0].GetRoute(); r.GetCluster() != "outbound|9080||reviews.default.svc.cluster.local" || r.GetRetryPolicy().GetNumRetries().GetValue() != 2 {
		t.Errorf("default route = %v", r)
	}
}

func TestOutboundVirtualService(t *testing.T) {
	const vs = `apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - name: jason
    match: [{headers: {end-user: {exact: jason}}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - name: from-ratings
    match: [{sourceLabels: {app: ratings}}]
    route: [{destination: {host: reviews, subset: v1}}]
  - name: canary
    match: [{uri: {prefix: /reviews}, ignoreUriCase: true}]
    fault: {abort: {httpStatus: 500, percentage: {value: 12.5}}, delay: {fixedDelay: 2s, percentage: {value: 100}}}
    retries: {attempts: 3, perTryTimeout: 1s, retryOn: "5xx,409"}
    timeout: 4s
    headers: {request: {set: {x-a: b}, remove: [x-drop]}}
    rewrite: {uri: /v2/reviews, authority: reviews.internal}
    mirror: {host: ratings}
    mirrorPercentage: {value: 50}
    route:
    - {destination: {host: reviews, subset: v1}, weight: 90}
    - {destination: {host: reviews, subset: v2}, weight: 10}
  - route: [{destination: {host: nowhere}}]
`
	out, fs := outbound(t, vs, productpage)
	if len(fs) != 1 || fs[0].Code != CodeVSUnknownHost {
		t.Fatalf("findings = %v, want one %s", fs, CodeVSUnknownHost)
	}
	routes := vhost(t, out, "9080", "reviews.default.svc.cluster.local").GetRoutes()
	var names []string
	for _, r := range routes {
		names = append(names, r.GetName())
	}
	// from-ratings does not apply to productpage (sourceLabels).
	if got := strings.Join(names, ","); got != "jason,canary,reviews.default.3" {
		t.Fatalf("routes = %s", got)
	}
	if h := routes[0].GetMatch().GetHeaders()[0]; h.GetName() != "end-user" || h.GetStringMatch().GetExact() != "jason" {
		t.Errorf("jason match = %v", h)
	}
	c := routes[1]
	if c.GetMatch().GetPrefix() != "/reviews" || c.GetMatch().GetCaseSensitive().GetValue() {
		t.Errorf("canary match = %v", c.GetMatch())
	}
	ra := c.GetRoute()
	wc := ra.GetWeightedClusters().GetClusters()
	if len(wc) != 2 || wc[0].GetName() != "outbound|9080|v1|reviews.default.svc.cluster.local" || wc[0].GetWeight().GetValue() != 90 || wc[1].GetWeight().GetValue() != 10 {
		t.Errorf("weighted = %v", wc)
	}
	if ra.GetTimeout().AsDuration() != 4*time.Second || ra.GetPrefixRewrite() != "/v2/reviews" || ra.GetHostRewriteLiteral() != "reviews.internal" {
		t.Errorf("timeout/rewrite = %v", ra)
	}
	if rp := ra.GetRetryPolicy(); rp.GetNumRetries().GetValue() != 3 || rp.GetRetryOn() != "5xx,retriable-status-codes" || rp.GetRetriableStatusCodes()[0] != 409 || rp.GetPerTryTimeout().AsDuration() != time.Second {
		t.Errorf("retry = %v", rp)
	}
	if m := ra.GetRequestMirrorPolicies(); len(m) != 1 || m[0].GetCluster() != "outbound|9080||ratings.default.svc.cluster.local" || m[0].GetRuntimeFraction().GetDefaultValue().GetNumerator() != 500000 {
		t.Errorf("mirror = %v", m)
	}
	f := &faultv3.HTTPFault{}
	if err := c.GetTypedPerFilterConfig()[FaultFilter].UnmarshalTo(f); err != nil {
		t.Fatal(err)
	}
	if f.GetAbort().GetHttpStatus() != 500 || f.GetAbort().GetPercentage().GetNumerator() != 125000 || f.GetDelay().GetFixedDelay().AsDuration() != 2*time.Second {
		t.Errorf("fault = %v", f)
	}
	if h := c.GetRequestHeadersToAdd(); len(h) != 1 || h[0].GetHeader().GetKey() != "x-a" || c.GetRequestHeadersToRemove()[0] != "x-drop" {
		t.Errorf("headers = %v %v", h, c.GetRequestHeadersToRemove())
	}
	if routes[2].GetRoute().GetCluster() != BlackHole {
		t.Errorf("unknown host routes to %q, want %s", routes[2].GetRoute().GetCluster(), BlackHole)
	}
	// The v2 subset's consistent hash shows on the route that targets it.
	if hp := routes[0].GetRoute().GetHashPolicy(); len(hp) != 1 || hp[0].GetHeader().GetHeaderName() != "x-user" {
		t.Errorf("hash policy = %v", hp)
	}
	// From ratings' point of view the sourceLabels rule applies.
	out, _ = outbound(t, vs, Workload{Namespace: "default", Name: "ratings", Labels: map[string]string{"app": "ratings"}})
	if got := vhost(t, out, "9080", "reviews.default.svc.cluster.local").GetRoutes()[1].GetName(); got != "from-ratings" {
		t.Errorf("ratings' second route = %s", got)
	}
}

func TestNetworkingValidation(t *testing.T) {
	for _, tc := range []struct{ name, yaml, code, path string }{
		{"bad regex", `apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: x}
spec: {hosts: [reviews], http: [{match: [{uri: {regex: "a("}}], route: [{destination: {host: reviews}}]}]}`, CodeVSBadRegex, "spec.http[0].match[0].uri.regex"},
		{"weights", `apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: x}
spec: {hosts: [reviews], http: [{route: [{destination: {host: reviews}, weight: -50}, {destination: {host: reviews}, weight: 150}]}]}`, CodeVSWeights, "spec.http[0].route[0].weight"},
		{"no weights", `apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: x}
spec: {hosts: [reviews], http: [{route: [{destination: {host: reviews}}, {destination: {host: ratings}}]}]}`, CodeVSWeights, "spec.http[0].route"},
		{"redirect code", `apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: x}
spec: {hosts: [reviews], http: [{redirect: {uri: /x, redirectCode: 300}}]}`, CodeVSBadValue, "spec.http[0].redirect.redirectCode"},
		{"no action", `apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: x}
spec: {hosts: [reviews], http: [{name: empty}]}`, CodeVSNoAction, "spec.http[0]"},
		{"unknown field", `apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: x}
spec: {hosts: [reviews], htpp: []}`, CodeVSSchema, "spec"},
		{"duplicate subset", `apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: x}
spec: {host: reviews, subsets: [{name: a}, {name: a}]}`, CodeDRSubset, "spec.subsets[1].name"},
		{"workload entry without address", `apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: x}
spec: {labels: {app: x}}`, CodeSESchema, "spec.address"},
		{"unknown subset", `apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: x}
spec: {hosts: [reviews], http: [{route: [{destination: {host: reviews, subset: v9}}]}]}`, CodeVSMissingSubset, "spec.http[0].route[0].destination.subset"},
		{"tcp destinationSubnets", `apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: x}
spec: {hosts: [db], tcp: [{match: [{port: 5432}, {destinationSubnets: [10.99.0.0/16]}], route: [{destination: {host: db}}]}]}`, CodeVSUnsupported, "spec.tcp[0].match[1].destinationSubnets"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, fs := outbound(t, tc.yaml, productpage)
			for _, f := range fs {
				if f.Code == tc.code && f.Path == tc.path && f.File == "mesh.yaml" && f.Line > 0 {
					return
				}
			}
			t.Errorf("findings %v lack %s at %s", fs, tc.code, tc.path)
		})
	}
}

func TestOutboundGateway(t *testing.T) {
	const gw = `apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: 8080, name: http, protocol: HTTP}, hosts: ["*"]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: front}
spec:
  hosts: ["*"]
  gateways: [gw]
  http:
  - match: [{uri: {exact: /reviews}}, {uri: {prefix: /api}, gateways: [mesh]}]
    route: [{destination: {host: reviews, port: {number: 9080}}}]
`
	out, _ := outbound(t, gw, ingress)
	var rc *routev3.RouteConfiguration
	for _, r := range out.Routes {
		if r.GetName() == "http.8080" {
			rc = r
		}
	}
	if rc == nil || len(rc.GetVirtualHosts()) != 1 {
		t.Fatalf("gateway route configuration = %v", rc)
	}
	vh := rc.GetVirtualHosts()[0]
	// The match limited to the mesh does not apply at the gateway.
	if len(vh.GetRoutes()) != 1 || vh.GetRoutes()[0].GetMatch().GetPath() != "/reviews" || vh.GetRoutes()[0].GetRoute().GetCluster() != "outbound|9080||reviews.default.svc.cluster.local" {
		t.Errorf("gateway routes = %v", vh.GetRoutes())
	}
	found := false
	for _, l := range out.Listeners {
		found = found || l.GetName() == "gateway_0.0.0.0_8080"
	}
	if !found {
		t.Error("no gateway listener")
	}
	// A sidecar gets neither the gateway's listener nor the gateway-bound routes.
	out, _ = outbound(t, gw, productpage)
	for _, r := range out.Routes {
		if r.GetName() == "http.8080" {
			t.Error("a sidecar got the gateway's routes")
		}
	}
}

func TestOutboundAutoMTLS(t *testing.T) {
	const extra = `apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: ratings-plain}
spec: {selector: {matchLabels: {app: ratings}}, mtls: {mode: DISABLE}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: external}
spec:
  hosts: [api.example.com]
  location: MESH_EXTERNAL
  resolution: DNS
  ports: [{number: 443, name: https, protocol: HTTPS}, {number: 80, name: http, protocol: HTTP}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: external}
spec:
  host: api.example.com
  trafficPolicy:
    portLevelSettings: [{port: {number: 443}, tls: {mode: SIMPLE, caCertificates: /etc/ca.pem}}]
`
	out, fs := outbound(t, extra, productpage)
	for _, f := range fs {
		t.Errorf("finding: %s", f)
	}
	tlsMode := map[string]string{}
	for _, cla := range out.Endpoints {
		for _, e := range cla.GetEndpoints()[0].GetLbEndpoints() {
			tlsMode[cla.GetClusterName()] = e.GetMetadata().GetFilterMetadata()[SocketMatchKey].GetFields()["tlsMode"].GetStringValue()
		}
	}
	if m := tlsMode["outbound|9080||ratings.default.svc.cluster.local"]; m != "" {
		t.Errorf("ratings (PeerAuthentication DISABLE) endpoint tlsMode = %q, want none (plaintext)", m)
	}
	if m := tlsMode["outbound|9080||reviews.default.svc.cluster.local"]; m != "istio" {
		t.Errorf("reviews endpoint tlsMode = %q, want istio", m)
	}
	ext := clusterByName(out, "outbound|443||api.example.com")
	if ext == nil || ext.GetType() != clusterv3.Cluster_STRICT_DNS || len(ext.GetTransportSocketMatches()) != 0 {
		t.Fatalf("external cluster = %v", ext)
	}
	ctx := &tlsv3.UpstreamTlsContext{}
	if err := ext.GetTransportSocket().GetTypedConfig().UnmarshalTo(ctx); err != nil {
		t.Fatalf("external 443 has no TLS transport socket: %v", err)
	}
	if ctx.GetSni() != "api.example.com" || ctx.GetCommonTlsContext().GetValidationContext().GetTrustedCa().GetFilename() != "/etc/ca.pem" {
		t.Errorf("external TLS = %v", ctx)
	}
	if plain := clusterByName(out, "outbound|80||api.example.com"); plain.GetTransportSocket() != nil || len(plain.GetTransportSocketMatches()) != 0 {
		t.Errorf("external port 80 should be plaintext: %v", plain)
	}
}

func TestOutboundSidecarScope(t *testing.T) {
	const sc = `apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: productpage}
spec:
  workloadSelector: {labels: {app: productpage}}
  egress: [{hosts: ["./ratings.default.svc.cluster.local", "istio-system/*"]}]
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default}
spec:
  egress: [{hosts: ["./*"]}]
`
	out, fs := outbound(t, sc, productpage)
	for _, f := range fs {
		t.Errorf("finding: %s", f)
	}
	var names []string
	for _, c := range out.Clusters {
		names = append(names, c.GetName())
	}
	if got := strings.Join(names, " "); got != "outbound|9080||ratings.default.svc.cluster.local "+BlackHole {
		t.Errorf("productpage (scoped to ratings) gets clusters %s", got)
	}
	// Another workload in the namespace gets the namespace-wide Sidecar: everything in default.
	x := Workload{Namespace: "default", Name: "x", Labels: map[string]string{"app": "x"}}
	out, _ = outbound(t, sc, x)
	all, _ := outbound(t, "", x)
	if len(out.Clusters) != len(all.Clusters) || len(all.Clusters) < 5 {
		t.Errorf("a workload under the namespace-wide Sidecar gets %d clusters, want all %d", len(out.Clusters), len(all.Clusters))
	}
	_, fs = outbound(t, "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: bad}\nspec: {egress: [{hosts: [ratings]}]}\n", productpage)
	if len(fs) != 1 || fs[0].Code != CodeSidecarSchema || fs[0].Path != "spec.egress[0].hosts[0]" {
		t.Errorf("findings = %v, want %s at spec.egress[0].hosts[0]", fs, CodeSidecarSchema)
	}
}

func TestOutboundH2Upgrade(t *testing.T) {
	h2 := func(c *clusterv3.Cluster) bool {
		po := &httpv3.HttpProtocolOptions{}
		if err := c.GetTypedExtensionProtocolOptions()[ProtocolOptions].UnmarshalTo(po); err != nil {
			t.Fatal(err)
		}
		return po.GetExplicitHttpConfig().GetHttp2ProtocolOptions() != nil
	}
	objs, err := source.Parse("mesh.yaml", []byte(registryYAML+`---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ratings}
spec: {host: ratings, trafficPolicy: {connectionPool: {http: {h2UpgradePolicy: DO_NOT_UPGRADE}}}}
`))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		policy          string
		reviews, rating bool
	}{{"", false, false}, {"DO_NOT_UPGRADE", false, false}, {"UPGRADE", true, false}} {
		mesh := Mesh{H2UpgradePolicy: tc.policy}
		n, _ := DecodeNetworking(objs, mesh, "default")
		out, err := CompileOutbound(n, mesh, productpage)
		if err != nil {
			t.Fatal(err)
		}
		if got := h2(clusterByName(out, "outbound|9080|v1|reviews.default.svc.cluster.local")); got != tc.reviews {
			t.Errorf("mesh h2UpgradePolicy %q: reviews h2 = %t", tc.policy, got)
		}
		if got := h2(clusterByName(out, "outbound|9080||ratings.default.svc.cluster.local")); got != tc.rating {
			t.Errorf("mesh h2UpgradePolicy %q: ratings (DestinationRule DO_NOT_UPGRADE) h2 = %t", tc.policy, got)
		}
	}
}

// The sidecar's TCP listener cannot match the destination address, so a tcp
// match with destinationSubnets never applies (and is reported) instead of
// taking every connection; the route's other matches still do.
func TestOutboundTCPDestinationSubnets(t *testing.T) {
	for _, tc := range []struct {
		name, match, want string
	}{
		{"subnets only", `[{destinationSubnets: ["10.99.0.0/16"]}]`, "outbound|5432||db.default.svc.cluster.local"},
		{"subnets with a port", `[{destinationSubnets: ["10.99.0.0/16"], port: 5432}]`, "outbound|5432||db.default.svc.cluster.local"},
		{"another match applies", `[{destinationSubnets: ["10.99.0.0/16"]}, {port: 5432}]`, "outbound|9080||ratings.default.svc.cluster.local"},
		{"no match", `[]`, "outbound|9080||ratings.default.svc.cluster.local"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := `apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: db, namespace: default}
spec:
  hosts: [db]
  tcp:
  - match: ` + tc.match + `
    route: [{destination: {host: ratings, port: {number: 9080}}}]
  - route: [{destination: {host: db, port: {number: 5432}}}]
`
			out, _ := outbound(t, cfg, productpage)
			for _, l := range out.Listeners {
				if l.GetName() != "db.default.svc.cluster.local_5432" {
					continue
				}
				tp := &tcpproxyv3.TcpProxy{}
				if err := l.GetFilterChains()[0].GetFilters()[0].GetTypedConfig().UnmarshalTo(tp); err != nil {
					t.Fatal(err)
				}
				if tp.GetCluster() != tc.want {
					t.Errorf("db's connections go to %q, want %q", tp.GetCluster(), tc.want)
				}
				return
			}
			t.Fatal("no listener for db")
		})
	}
}

// Istio leaves a destination with weight 0 out of the weighted clusters, for
// tcp routes as for http ones (Envoy's tcp_proxy refuses a weight of 0).
func TestOutboundZeroWeightDropped(t *testing.T) {
	const cfg = `apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: db, namespace: default}
spec:
  hosts: [db]
  tcp:
  - route:
    - {destination: {host: db, port: {number: 5432}}, weight: 100}
    - {destination: {host: ratings, port: {number: 9080}}, weight: 0}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - route:
    - {destination: {host: reviews, subset: v1}, weight: 100}
    - {destination: {host: reviews, subset: v2}, weight: 0}
`
	out, fs := outbound(t, cfg, productpage)
	if len(fs) != 0 {
		t.Fatalf("findings: %v", fs)
	}
	var tcp []string
	for _, l := range out.Listeners {
		if l.GetName() != "db.default.svc.cluster.local_5432" {
			continue
		}
		tp := &tcpproxyv3.TcpProxy{}
		if err := l.GetFilterChains()[0].GetFilters()[0].GetTypedConfig().UnmarshalTo(tp); err != nil {
			t.Fatal(err)
		}
		for _, c := range tp.GetWeightedClusters().GetClusters() {
			tcp = append(tcp, c.GetName()+"="+strconv.Itoa(int(c.GetWeight())))
		}
	}
	if got, want := strings.Join(tcp, " "), "outbound|5432||db.default.svc.cluster.local=100"; got != want {
		t.Errorf("tcp weighted clusters %q, want %q", got, want)
	}
	var http []string
	for _, r := range vhost(t, out, "9080", "reviews.default.svc.cluster.local").GetRoutes() {
		for _, c := range r.GetRoute().GetWeightedClusters().GetClusters() {
			http = append(http, c.GetName()+"="+strconv.Itoa(int(c.GetWeight().GetValue())))
		}
	}
	if got, want := strings.Join(http, " "), "outbound|9080|v1|reviews.default.svc.cluster.local=100"; got != want {
		t.Errorf("http weighted clusters %q, want %q", got, want)
	}
}
