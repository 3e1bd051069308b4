package compile

import (
	"cmp"
	"fmt"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"

	"github.com/rampart-mesh/rampart/proxy/route"
)

var ingress = Workload{Namespace: "istio-system", Name: "istio-ingressgateway", Labels: map[string]string{"istio": "ingressgateway"}, Gateway: true}

// gatewayTable compiles the ingress workload's config and builds the route
// table the sidecar would, so a test sees what a request meets.
func gatewayTable(t *testing.T, cfg string) (*route.Table, []Finding) {
	t.Helper()
	out, fs := outbound(t, cfg, ingress)
	tab, err := route.New(out.Routes)
	if err != nil {
		t.Fatalf("the sidecar refuses the compiled routes: %v", err)
	}
	return tab, fs
}

// gatewayGet matches a GET for url on the gateway's route configuration http.8080.
func gatewayGet(tab *route.Table, url string) *route.Route {
	return tab.Match(GatewayRoutePrefix+"8080", httptest.NewRequest("GET", url, nil))
}

// Istio binds a VirtualService to a server for the intersection of the
// server's hosts (those open to the VirtualService's namespace) and its own.
func TestGatewayServerHosts(t *testing.T) {
	for _, tc := range []struct {
		name        string
		serverHosts string // YAML list
		vsNS        string
		vsHosts     string // YAML list
		routed      []string
		notRouted   []string
	}{
		{name: "vs * within one server host", serverHosts: `["bookinfo.example.com"]`, vsNS: "default", vsHosts: `["*"]`,
			routed: []string{"bookinfo.example.com"}, notRouted: []string{"internal-admin.corp", "x.bookinfo.example.com"}},
		{name: "vs wildcard wider than the server host", serverHosts: `["a.example.com"]`, vsNS: "default", vsHosts: `["*.example.com"]`,
			routed: []string{"a.example.com"}, notRouted: []string{"b.example.com"}},
		{name: "server wildcard wider than the vs host", serverHosts: `["*.example.com"]`, vsNS: "default", vsHosts: `["a.example.com"]`,
			routed: []string{"a.example.com"}, notRouted: []string{"b.example.com"}},
		{name: "nested wildcards", serverHosts: `["*.example.com"]`, vsNS: "default", vsHosts: `["*.eu.example.com", "other.org"]`,
			routed: []string{"x.eu.example.com"}, notRouted: []string{"x.us.example.com", "other.org"}},
		{name: "no overlap", serverHosts: `["a.example.com"]`, vsNS: "default", vsHosts: `["b.example.com"]`,
			notRouted: []string{"a.example.com", "b.example.com"}},
		{name: "case does not matter", serverHosts: `["A.Example.com"]`, vsNS: "default", vsHosts: `["a.EXAMPLE.com"]`,
			routed: []string{"a.example.com"}},
		{name: "dot is the gateway's namespace, not the vs's", serverHosts: `["./a.example.com"]`, vsNS: "default", vsHosts: `["a.example.com"]`,
			notRouted: []string{"a.example.com"}},
		{name: "dot admits the gateway's namespace", serverHosts: `["./a.example.com"]`, vsNS: "istio-system", vsHosts: `["a.example.com"]`,
			routed: []string{"a.example.com"}},
		{name: "named namespace admits it", serverHosts: `["default/a.example.com"]`, vsNS: "default", vsHosts: `["a.example.com"]`,
			routed: []string{"a.example.com"}},
		{name: "named namespace refuses others", serverHosts: `["team/a.example.com"]`, vsNS: "default", vsHosts: `["a.example.com"]`,
			notRouted: []string{"a.example.com"}},
		{name: "star namespace admits all", serverHosts: `["*/a.example.com"]`, vsNS: "default", vsHosts: `["*"]`,
			routed: []string{"a.example.com"}, notRouted: []string{"b.example.com"}},
		// Istio resolves a VirtualService's short hosts in its namespace
		// (resolveVirtualServiceShortnames) before binding; server hosts stay as written.
		{name: "short vs host is the vs's namespace", serverHosts: `["*"]`, vsNS: "bookinfo", vsHosts: `["reviews"]`,
			routed: []string{"reviews.bookinfo.svc.cluster.local"}, notRouted: []string{"reviews", "reviews.default.svc.cluster.local"}},
		{name: "short vs host under a server wildcard", serverHosts: `["*.svc.cluster.local"]`, vsNS: "bookinfo", vsHosts: `["Reviews"]`,
			routed: []string{"reviews.bookinfo.svc.cluster.local"}, notRouted: []string{"reviews"}},
		{name: "short server host is not resolved", serverHosts: `["reviews"]`, vsNS: "bookinfo", vsHosts: `["reviews"]`,
			notRouted: []string{"reviews", "reviews.bookinfo.svc.cluster.local"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := fmt.Sprintf(`apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: 8080, name: http, protocol: HTTP}, hosts: %s}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: front, namespace: %s}
spec:
  hosts: %s
  gateways: [istio-system/gw]
  http:
  - route: [{destination: {host: reviews.default.svc.cluster.local, port: {number: 9080}}}]
`, tc.serverHosts, tc.vsNS, tc.vsHosts)
			tab, _ := gatewayTable(t, cfg)
			for _, h := range tc.routed {
				if rt := gatewayGet(tab, "http://"+h+"/"); rt == nil || rt.Cluster != "outbound|9080||reviews.default.svc.cluster.local" {
					t.Errorf("Host %s: %v, want reviews", h, rt)
				}
			}
			for _, h := range tc.notRouted {
				if rt := gatewayGet(tab, "http://"+h+"/"); rt != nil {
					t.Errorf("Host %s routed to %s (virtual host %s); want no route", h, rt.Cluster, rt.VirtualHost)
				}
			}
		})
	}
}

// The domains are the intersection's hosts, the more specific of each pair,
// as Istio's Names.Intersection.
func TestGatewayHostsIntersection(t *testing.T) {
	for _, tc := range []struct {
		server, vs, want []string
	}{
		{[]string{"foo.com", "bar.com"}, []string{"*.com"}, []string{"foo.com", "bar.com"}},
		{[]string{"foo.com", "*.net"}, []string{"*.com", "bar.net"}, []string{"foo.com", "bar.net"}},
		{[]string{"foo.com", "*.net"}, []string{"*.bar.net"}, []string{"*.bar.net"}},
		{[]string{"foo.com"}, []string{"bar.com"}, nil},
		{[]string{"*"}, []string{"a.com", "*.b.com"}, []string{"a.com", "*.b.com"}},
		{[]string{"a.com"}, []string{"*"}, []string{"a.com"}},
		{[]string{"*.com"}, []string{"com"}, nil},
	} {
		if got := gatewayHosts(tc.server, tc.vs); !slices.Equal(got, tc.want) {
			t.Errorf("gatewayHosts(%v, %v) = %v, want %v", tc.server, tc.vs, got, tc.want)
		}
	}
}

func TestGatewayServerHostsNamespace(t *testing.T) {
	hosts := []string{"./own.example.com", "*/any.example.com", "team/team.example.com", "Bare.example.com"}
	for _, tc := range []struct {
		vsNS string
		want string
	}{
		{"istio-system", "own.example.com any.example.com bare.example.com"},
		{"team", "any.example.com team.example.com bare.example.com"},
		{"default", "any.example.com bare.example.com"},
	} {
		if got := strings.Join(serverHostsFor(hosts, "istio-system", tc.vsNS), " "); got != tc.want {
			t.Errorf("VirtualService in %s: %s, want %s", tc.vsNS, got, tc.want)
		}
	}
}

// Istio's VirtualServicesForGateway honours exportTo: the gateway proxy's
// namespace must see the VirtualService.
func TestGatewayExportTo(t *testing.T) {
	for _, tc := range []struct {
		name     string
		vsNS     string
		exportTo string
		served   bool
	}{
		{"unset", "default", "", true},
		{"everywhere", "default", `exportTo: ["*"]`, true},
		{"own namespace only", "default", `exportTo: ["."]`, false},
		{"another namespace", "default", `exportTo: ["team"]`, false},
		{"the gateway's namespace", "default", `exportTo: ["istio-system"]`, true},
		{"own namespace is the gateway's", "istio-system", `exportTo: ["."]`, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := fmt.Sprintf(`apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: 8080, name: http, protocol: HTTP}, hosts: ["*/a.example.com"]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: front, namespace: %s}
spec:
  hosts: ["a.example.com"]
  %s
  gateways: [istio-system/gw]
  http:
  - route: [{destination: {host: reviews.default.svc.cluster.local, port: {number: 9080}}}]
`, tc.vsNS, tc.exportTo)
			tab, _ := gatewayTable(t, cfg)
			if rt := gatewayGet(tab, "http://a.example.com/"); (rt != nil) != tc.served {
				t.Errorf("served = %v, want %v", rt != nil, tc.served)
			}
		})
	}
}

// Gateway names in spec.gateways and in match gateways are compared once
// resolved to ns/name, whatever form each is written in.
func TestGatewayNameForms(t *testing.T) {
	for _, tc := range []struct {
		name       string
		vsNS       string // default when empty
		gateways   string // spec.gateways
		matchGWs   string // http[0].match[0].gateways
		bound      bool
		matchApply bool
	}{
		{"short and qualified", "", "[gw]", "[default/gw]", true, true},
		{"qualified and short", "", "[default/gw]", "[gw]", true, true},
		{"dot", "", "[./gw]", "[./gw]", true, true},
		{"legacy FQDN", "", "[gw.default.svc.cluster.local]", "[gw.default]", true, true},
		{"legacy FQDN in a match", "", "[default/gw]", "[gw.default.svc.cluster.local]", true, true},
		{"legacy FQDN of another namespace", "", "[gw.team.svc.cluster.local]", "[gw]", false, false},
		{"match names another gateway", "", "[gw]", "[other/gw]", true, false},
		{"match names the mesh", "", "[gw, mesh]", "[mesh]", true, false},
		{"short name is the vs's namespace", "team", "[gw]", "[gw]", false, false},
		{"short name in a match is the vs's namespace", "team", "[default/gw]", "[gw]", true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := fmt.Sprintf(`apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: 8080, name: http, protocol: HTTP}, hosts: ["*"]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: front, namespace: %s}
spec:
  hosts: ["a.example.com"]
  gateways: %s
  http:
  - match: [{uri: {prefix: /admin}, gateways: %s}]
    directResponse: {status: 403}
  - route: [{destination: {host: reviews.default.svc.cluster.local, port: {number: 9080}}}]
`, cmp.Or(tc.vsNS, "default"), tc.gateways, tc.matchGWs)
			tab, _ := gatewayTable(t, cfg)
			rt := gatewayGet(tab, "http://a.example.com/admin/users")
			switch {
			case !tc.bound:
				if rt != nil {
					t.Errorf("not bound, yet routed: %+v", rt)
				}
			case rt == nil:
				t.Error("bound, yet not routed")
			case (rt.Direct != nil) != tc.matchApply:
				t.Errorf("/admin: direct response %v, want the match to apply = %v (cluster %q)", rt.Direct != nil, tc.matchApply, rt.Cluster)
			}
		})
	}
}

func TestResolveGateway(t *testing.T) {
	for in, want := range map[string]string{
		"mesh": "mesh", "gw": "vsns/gw", "./gw": "vsns/gw", "ns/gw": "ns/gw", "*/gw": "*/gw",
		"gw.ns": "ns/gw", "gw.ns.svc.cluster.local": "ns/gw",
	} {
		if got := ResolveGateway(in, "vsns"); got != want {
			t.Errorf("ResolveGateway(%q) = %q, want %q", in, got, want)
		}
	}
}

// Istio merges the servers of every Gateway on a port into one route
// configuration with one virtual host per host name; the sidecar refuses a
// route configuration where two virtual hosts share a domain.
func TestGatewayServersShareAPort(t *testing.T) {
	const cfg = `apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: public, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: 8080, name: http, protocol: HTTP}, hosts: ["*"]}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: partners, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - {port: {number: 8080, name: http, protocol: HTTP}, hosts: ["a.example.com", "*.example.com"]}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: front, namespace: default}
spec:
  hosts: ["a.example.com"]
  gateways: [istio-system/public, istio-system/partners]
  http:
  - match: [{uri: {prefix: /partners}, gateways: [istio-system/partners]}]
    directResponse: {status: 418}
  - route: [{destination: {host: reviews.default.svc.cluster.local, port: {number: 9080}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: other, namespace: default}
spec:
  hosts: ["A.example.com"]
  gateways: [istio-system/public]
  http:
  - route: [{destination: {host: ratings.default.svc.cluster.local, port: {number: 9080}}}]
`
	out, _ := outbound(t, cfg, ingress)
	var names []string
	for _, rc := range out.Routes {
		if rc.GetName() == GatewayRoutePrefix+"8080" {
			for _, vh := range rc.GetVirtualHosts() {
				names = append(names, vh.GetName())
			}
		}
	}
	if want := []string{"a.example.com:8080"}; !slices.Equal(names, want) {
		t.Errorf("virtual hosts %v, want %v", names, want)
	}
	tab, _ := gatewayTable(t, cfg)
	// The routes of each binding, public's, partners' then other's, with the
	// catch-alls last (Istio's SortVHostRoutes): partners' /partners rule is
	// not hidden by public's catch-all, which comes before other's.
	if rt := gatewayGet(tab, "http://a.example.com/partners"); rt == nil || rt.Direct == nil || rt.Direct.Status != 418 {
		t.Errorf("/partners: %+v, want partners' 418", rt)
	}
	if rt := gatewayGet(tab, "http://a.example.com/"); rt == nil || rt.Cluster != "outbound|9080||reviews.default.svc.cluster.local" {
		t.Errorf("/: %+v, want reviews", rt)
	}
}

// Istio: a server with tls.httpsRedirect answers every request for its hosts
// with a 301 to https (require_tls ALL), bound VirtualService or not, and on
// every server of the port that shares the host.
func TestGatewayHTTPSRedirect(t *testing.T) {
	const cfg = `apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 8080, name: http, protocol: HTTP}
    hosts: ["a.example.com", "istio-system/unbound.example.com"]
    tls: {httpsRedirect: true}
  - port: {number: 8080, name: http-plain, protocol: HTTP}
    hosts: ["plain.example.com", "a.example.com"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: front, namespace: default}
spec:
  hosts: ["a.example.com", "plain.example.com"]
  gateways: [istio-system/gw]
  http:
  - route: [{destination: {host: reviews.default.svc.cluster.local, port: {number: 9080}}}]
`
	tab, _ := gatewayTable(t, cfg)
	for _, tc := range []struct{ url, location string }{
		{"http://a.example.com/x?y=1", "https://a.example.com/x?y=1"},
		{"http://a.example.com:8080/", "https://a.example.com:8080/"},
		{"http://a.example.com:80/", "https://a.example.com/"},
		{"http://unbound.example.com/z", "https://unbound.example.com/z"},
	} {
		rt := gatewayGet(tab, tc.url)
		if rt == nil || rt.Redirect == nil {
			t.Errorf("%s: %+v, want a redirect to %s", tc.url, rt, tc.location)
			continue
		}
		req := httptest.NewRequest("GET", tc.url, nil)
		if got := rt.Redirect.Location(req); got != tc.location || rt.Redirect.Code != 301 {
			t.Errorf("%s: %d %s, want 301 %s", tc.url, rt.Redirect.Code, got, tc.location)
		}
	}
	if rt := gatewayGet(tab, "http://plain.example.com/"); rt == nil || rt.Cluster != "outbound|9080||reviews.default.svc.cluster.local" {
		t.Errorf("plain.example.com, on a server without httpsRedirect: %+v, want reviews", rt)
	}
}

// Servers Rampart does not serve are reported, each by its path, so
// rampartctl analyze tells the operator; the Gateway's HTTP servers still work.
func TestGatewayUnsupportedServers(t *testing.T) {
	const cfg = `apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - {port: {number: 8080, name: http, protocol: HTTP}, hosts: ["*"]}
  - {port: {number: 8443, name: https, protocol: HTTPS}, hosts: ["*"], tls: {mode: SIMPLE, credentialName: cert}}
  - {port: {number: 8444, name: tls, protocol: TLS}, hosts: ["*"], tls: {mode: PASSTHROUGH}}
  - {port: {number: 8445, name: mtls, protocol: tls}, hosts: ["*"], tls: {mode: AUTO_PASSTHROUGH}}
  - {port: {number: 9000, name: tcp, protocol: TCP}, hosts: ["*"]}
  - {port: {number: 8081, name: grpc-web, protocol: GRPC-WEB}, hosts: ["*"]}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: front, namespace: default}
spec:
  hosts: ["a.example.com"]
  gateways: [istio-system/gw]
  http:
  - route: [{destination: {host: reviews.default.svc.cluster.local, port: {number: 9080}}}]
`
	tab, fs := gatewayTable(t, cfg)
	var got []string
	for _, f := range fs {
		if f.Code != CodeGWUnsupported {
			continue
		}
		if f.Severity != SeverityWarning || f.Object != "Gateway istio-system/gw" || f.Line == 0 {
			t.Errorf("finding %s: want a warning on Gateway istio-system/gw with a line", f)
		}
		got = append(got, f.Path+" "+strings.SplitN(f.Message, ":", 2)[0])
	}
	want := []string{
		`spec.servers[1].port.protocol server on port 8443 (https) with protocol "HTTPS" and tls.mode SIMPLE is not served`,
		`spec.servers[2].port.protocol server on port 8444 (tls) with protocol "TLS" and tls.mode PASSTHROUGH is not served`,
		`spec.servers[3].port.protocol server on port 8445 (mtls) with protocol "tls" and tls.mode AUTO_PASSTHROUGH is not served`,
		`spec.servers[4].port.protocol server on port 9000 (tcp) with protocol "TCP" is not served`,
	}
	if !slices.Equal(got, want) {
		t.Errorf("GW-UNSUPPORTED findings:\n got %q\nwant %q", got, want)
	}
	if rt := gatewayGet(tab, "http://a.example.com/"); rt == nil {
		t.Error("the Gateway's HTTP server stopped serving")
	}
	if rt := tab.Match(GatewayRoutePrefix+"8081", httptest.NewRequest("GET", "http://a.example.com/", nil)); rt == nil {
		t.Error("the GRPC-WEB server is not served")
	}
}

// Istio (BuildHTTPRoutesForVirtualService) stops a VirtualService's routes at
// its first catch-all rule: the rules after it are never reached, at a
// gateway too (catch-alls go last only across VirtualServices).
func TestGatewayCatchAllEndsItsVirtualService(t *testing.T) {
	tab, _ := gatewayTable(t, `apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: 8080, name: http, protocol: HTTP}, hosts: ["*"]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: front, namespace: default}
spec:
  hosts: ["a.example.com"]
  gateways: [istio-system/gw]
  http:
  - route: [{destination: {host: reviews.default.svc.cluster.local, port: {number: 9080}}}]
  - match: [{uri: {prefix: /internal}}]
    route: [{destination: {host: ratings.default.svc.cluster.local, port: {number: 9080}}}]
`)
	rt := gatewayGet(tab, "http://a.example.com/internal/x")
	if rt == nil || rt.Cluster != "outbound|9080||reviews.default.svc.cluster.local" {
		c := "<nil>"
		if rt != nil {
			c = rt.Cluster
		}
		t.Fatalf("/internal on the gateway goes to %s; Istio sends every request to reviews (the first rule is a catch-all)", c)
	}
}

// Istio gives every server port a listener, a VirtualService bound to it or
// not; with no virtual host its route configuration has one for "*" without
// routes ("blackhole:PORT"), and every request there is a 404 (NR).
func TestGatewayUnboundPort(t *testing.T) {
	const cfg = `apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - {port: {number: 8080, name: http, protocol: HTTP}, hosts: ["*"]}
  - {port: {number: 8081, name: http-admin, protocol: HTTP}, hosts: ["admin.example.com"]}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: front, namespace: default}
spec:
  hosts: ["a.example.com"]
  gateways: [istio-system/gw]
  http:
  - route: [{destination: {host: reviews.default.svc.cluster.local, port: {number: 9080}}}]
`
	out, _ := outbound(t, cfg, ingress)
	var listeners []string
	for _, l := range out.Listeners {
		if strings.HasPrefix(l.GetName(), "gateway_") {
			listeners = append(listeners, l.GetName()+" "+l.GetTrafficDirection().String())
		}
	}
	if want := []string{"gateway_0.0.0.0_8080 INBOUND", "gateway_0.0.0.0_8081 INBOUND"}; !slices.Equal(listeners, want) {
		t.Errorf("gateway listeners %q, want %q", listeners, want)
	}
	var vhosts []string
	for _, rc := range out.Routes {
		if rc.GetName() == GatewayRoutePrefix+"8081" {
			for _, vh := range rc.GetVirtualHosts() {
				vhosts = append(vhosts, fmt.Sprintf("%s %v %d", vh.GetName(), vh.GetDomains(), len(vh.GetRoutes())))
			}
		}
	}
	if want := []string{"blackhole:8081 [*] 0"}; !slices.Equal(vhosts, want) {
		t.Errorf("http.8081 virtual hosts %q, want %q", vhosts, want)
	}
	tab, _ := gatewayTable(t, cfg)
	for _, url := range []string{"http://admin.example.com/", "http://a.example.com/"} {
		if rt := tab.Match(GatewayRoutePrefix+"8081", httptest.NewRequest("GET", url, nil)); rt != nil {
			t.Errorf("%s on 8081: routed to %+v, want no route (404 NR)", url, rt)
		}
	}
	if rt := gatewayGet(tab, "http://a.example.com/"); rt == nil {
		t.Error("the bound port 8080 stopped routing")
	}
}

// Istio's mergeGateways applies a Gateway without a selector (absent or
// empty) to every gateway proxy; one with a selector to those it matches.
func TestGatewaySelector(t *testing.T) {
	for _, tc := range []struct {
		name     string
		selector string // YAML line, or ""
		sidecar  bool   // the proxy serves no gateway listeners
		served   bool
	}{
		{"absent", "", false, true},
		{"empty", "selector: {}", false, true},
		{"absent, at a sidecar", "", true, false},
		{"empty, at a sidecar", "selector: {}", true, false},
		{"matching", "selector: {istio: ingressgateway}", false, true},
		{"matching a sidecar's labels", "selector: {istio: ingressgateway}", true, false},
		{"another gateway's", "selector: {istio: egressgateway}", false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := fmt.Sprintf(`apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  %s
  servers: [{port: {number: 8080, name: http, protocol: HTTP}, hosts: ["*"]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: front, namespace: default}
spec:
  hosts: ["a.example.com"]
  gateways: [istio-system/gw]
  http:
  - route: [{destination: {host: reviews.default.svc.cluster.local, port: {number: 9080}}}]
`, tc.selector)
			wl := ingress
			wl.Gateway = !tc.sidecar
			out, fs := outbound(t, cfg, wl)
			tab, err := route.New(out.Routes)
			if err != nil {
				t.Fatal(err)
			}
			if len(fs) != 0 {
				t.Errorf("findings: %v", fs)
			}
			if rt := gatewayGet(tab, "http://a.example.com/"); (rt != nil) != tc.served {
				t.Errorf("served = %v, want %v", rt != nil, tc.served)
			}
		})
	}
}
