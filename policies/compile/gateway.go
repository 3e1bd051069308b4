package compile

import (
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"github.com/rampart-mesh/rampart/policies/registry"
	"github.com/rampart-mesh/rampart/policies/source"
	"google.golang.org/protobuf/types/known/wrapperspb"
	networking "istio.io/api/networking/v1alpha3"
)

// MeshGateway is the gateway name that stands for every sidecar.
const MeshGateway = "mesh"

// gwOrMesh is the gateway a route is compiled for: "ns/name", or "mesh" for sidecars.
func gwOrMesh(gw string) string {
	if gw == "" {
		return MeshGateway
	}
	return gw
}

// ResolveGateway names a gateway in a VirtualService's spec.gateways or
// match gateways as "ns/name", as Istio's resolveGatewayName: "mesh" stays,
// "./name" and a short name are in the VirtualService's namespace vsNS, and
// the legacy "name.ns[.svc.cluster.local]" is ns/name.
func ResolveGateway(name, vsNS string) string {
	if name == MeshGateway {
		return name
	}
	if ns, n, ok := strings.Cut(name, "/"); ok {
		if ns == "." {
			return vsNS + "/" + n
		}
		return name
	}
	n, rest, ok := strings.Cut(name, ".")
	if !ok {
		return vsNS + "/" + name
	}
	ns, _, _ := strings.Cut(rest, ".")
	return ns + "/" + n
}

// boundTo reports whether a VirtualService's spec.gateways names the gateway "ns/name".
func boundTo(vs *VirtualService, gw string) bool {
	for _, name := range vs.Spec.GetGateways() {
		if ResolveGateway(name, vs.Object.Namespace) == gw {
			return true
		}
	}
	return false
}

// matchesGateway reports whether a match's gateways (none: all the
// VirtualService's) include the gateway a route is compiled for.
func matchesGateway(gws []string, vsNS, gw string) bool {
	if len(gws) == 0 {
		return true
	}
	for _, name := range gws {
		if ResolveGateway(name, vsNS) == gwOrMesh(gw) {
			return true
		}
	}
	return false
}

// GatewayRoutePrefix names a gateway's route configurations: "http.<port>", as Istio.
const GatewayRoutePrefix = "http."

// gateways adds, for a gateway proxy that Istio Gateways select by its
// labels (or select with no selector at all), a
// listener per HTTP server port and a route configuration "http.PORT" that
// merges every server on the port, as Istio's buildGatewayHTTPRouteConfig: a
// virtual host per host name, holding the routes of every VirtualService
// bound to a server there, in the order the servers and VirtualServices come.
func (b *outboundBuilder) gateways() error {
	ports := map[uint32]*gatewayPort{}
	for _, g := range b.n.Gateways {
		// A Gateway applies to the gateway proxies its selector matches, or
		// without one to every gateway proxy (Istio's mergeGateways), and to
		// no sidecar whatever its labels: Istio gives gateways only to router
		// proxies.
		if !b.wl.Gateway {
			continue
		}
		if !registry.Matches(g.Spec.GetSelector(), b.wl.Labels) {
			continue
		}
		full := g.Object.Namespace + "/" + g.Object.Name
		for _, srv := range g.Spec.GetServers() {
			if !gatewayServes(srv) {
				continue // validateGateway reports it (GW-UNSUPPORTED)
			}
			port := srv.GetPort().GetNumber()
			gp := ports[port]
			if gp == nil {
				gp = &gatewayPort{port: port, vhosts: map[string]*routev3.VirtualHost{}, redirect: map[string]bool{}}
				ports[port] = gp
			}
			redirect := srv.GetTls().GetHttpsRedirect()
			for i := range b.n.VirtualServices {
				vs := &b.n.VirtualServices[i]
				// Istio's VirtualServicesForGateway: bound to the gateway and
				// exported to the gateway proxy's namespace.
				if !visible(vs.Spec.GetExportTo(), vs.Object.Namespace, b.wl.Namespace) || !boundTo(vs, full) {
					continue
				}
				hosts := gatewayHosts(serverHostsFor(srv.GetHosts(), g.Object.Namespace, vs.Object.Namespace), b.vsHosts(vs))
				if len(hosts) == 0 {
					continue
				}
				var routes []*routev3.Route
				for j, hr := range vs.Spec.GetHttp() {
					rs, err := b.httpRoute(vs, j, hr, port, full)
					if err != nil {
						return err
					}
					routes = append(routes, rs...)
				}
				// Istio's BuildHTTPRoutesForVirtualService stops at a
				// VirtualService's first catch-all: its later rules are
				// never reached, at the gateway as in a sidecar.
				for k, r := range routes {
					if isCatchAll(r) {
						routes = routes[:k+1]
						break
					}
				}
				for _, h := range hosts {
					vh := gp.vhost(h)
					vh.Routes = append(vh.Routes, routes...)
					gp.redirect[h] = gp.redirect[h] || redirect
				}
			}
			if redirect {
				// Every host of the server redirects, bound or not.
				for _, h := range srv.GetHosts() {
					if _, name, ok := strings.Cut(h, "/"); ok {
						h = name
					}
					h = strings.ToLower(h)
					gp.vhost(h)
					gp.redirect[h] = true
				}
			}
		}
	}
	// Every served port gets a listener, bound to a VirtualService or not:
	// one with no virtual host answers 404 (NR), as Istio's.
	keys := make([]uint32, 0, len(ports))
	for p := range ports {
		keys = append(keys, p)
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i] < keys[j] })
	for _, p := range keys {
		name := GatewayRoutePrefix + strconv.Itoa(int(p))
		b.out.Routes = append(b.out.Routes, &routev3.RouteConfiguration{Name: name, VirtualHosts: ports[p].virtualHosts(),
			ValidateClusters: wrapperspb.Bool(false), IgnorePortInHostMatching: true})
		l, err := httpListener(p)
		if err != nil {
			return err
		}
		l.Name = fmt.Sprintf("gateway_0.0.0.0_%d", p)
		l.TrafficDirection = corev3.TrafficDirection_INBOUND
		hcm := &hcmv3.HttpConnectionManager{}
		if err := l.FilterChains[0].Filters[0].GetTypedConfig().UnmarshalTo(hcm); err != nil {
			return err
		}
		hcm.GetRds().RouteConfigName = name
		hcm.StatPrefix = "gateway_" + strconv.Itoa(int(p))
		l.FilterChains[0].Filters[0].ConfigType = &listenerv3.Filter_TypedConfig{TypedConfig: typed(hcm)}
		b.out.Listeners = append(b.out.Listeners, l)
	}
	return nil
}

// validateGateway warns about the servers Rampart does not serve: they get
// no listener, so the operator learns it here rather than from refused
// connections.
func validateGateway(o source.Object, gw *networking.Gateway) []Finding {
	var fs []Finding
	for i, srv := range gw.GetServers() {
		if gatewayServes(srv) {
			continue
		}
		tls := ""
		if t := srv.GetTls(); t != nil {
			tls = " and tls.mode " + t.GetMode().String()
		}
		port := srv.GetPort().GetNumber()
		fs = append(fs, newFinding(o, SeverityWarning, CodeGWUnsupported, fmt.Sprintf("spec.servers[%d].port.protocol", i),
			"server on port %d (%s) with protocol %q%s is not served: Rampart gateways serve plaintext HTTP, HTTP2, GRPC and GRPC-WEB servers only, not TLS termination, passthrough or TCP; this server gets no listener, so connections to port %d are refused",
			port, srv.GetPort().GetName(), srv.GetPort().GetProtocol(), tls, port))
	}
	return fs
}

// gatewayServes reports whether Rampart serves a gateway server: plaintext
// HTTP only (HTTP, HTTP2, GRPC, GRPC-WEB). TLS termination, passthrough and
// TCP servers are not, and validateGateway says so.
func gatewayServes(srv *networking.Server) bool {
	return registry.IsHTTP(strings.ToUpper(srv.GetPort().GetProtocol()))
}

// gatewayPort is what the servers on one gateway port serve: a virtual host
// per host name (Istio's vHostDedupMap), since two virtual hosts with one
// domain make the sidecar refuse the whole route configuration.
type gatewayPort struct {
	port     uint32
	hosts    []string // in the order first seen
	vhosts   map[string]*routev3.VirtualHost
	redirect map[string]bool // a server with tls.httpsRedirect has the host
}

// vhost is the virtual host for a lower-case host name, made on first use.
func (p *gatewayPort) vhost(h string) *routev3.VirtualHost {
	if vh, ok := p.vhosts[h]; ok {
		return vh
	}
	// One domain: the route configuration ignores the Host's port (Istio's).
	vh := &routev3.VirtualHost{Name: fmt.Sprintf("%s:%d", h, p.port), Domains: []string{h}}
	p.hosts = append(p.hosts, h)
	p.vhosts[h] = vh
	return vh
}

// virtualHosts is the port's virtual hosts, or with none, one that matches
// every request to no route. Istio gives a host with
// httpsRedirect require_tls ALL, which the sidecar's route table does not
// implement; on a plaintext server it answers every request with a 301 to
// https, which is what a redirect route with https_redirect does.
func (p *gatewayPort) virtualHosts() []*routev3.VirtualHost {
	if len(p.hosts) == 0 {
		// Istio's default for a port no VirtualService is bound to: a
		// virtual host for every domain without routes, so every request
		// gets a 404 (NR).
		return []*routev3.VirtualHost{{Name: fmt.Sprintf("blackhole:%d", p.port), Domains: []string{"*"}}}
	}
	out := make([]*routev3.VirtualHost, 0, len(p.hosts))
	for _, h := range p.hosts {
		vh := p.vhosts[h]
		vh.Routes = catchAllLast(vh.Routes)
		if p.redirect[h] {
			vh.Routes = []*routev3.Route{httpsRedirectRoute()}
		}
		out = append(out, vh)
	}
	return out
}

// isCatchAll reports whether a route matches every request: prefix "/" and
// no header or query parameter matches.
func isCatchAll(r *routev3.Route) bool {
	m := r.GetMatch()
	return m.GetPrefix() == "/" && len(m.GetHeaders()) == 0 && len(m.GetQueryParameters()) == 0 && m.GetRuntimeFraction() == nil
}

// catchAllLast moves the routes that match every request (prefix "/", no
// header or query matches) after the others, keeping each group's order, as
// Istio's SortVHostRoutes does for gateway virtual hosts: a VirtualService's
// catch-all does not hide the rules of one bound after it.
func catchAllLast(routes []*routev3.Route) []*routev3.Route {
	out := make([]*routev3.Route, 0, len(routes))
	var all []*routev3.Route
	for _, r := range routes {
		if isCatchAll(r) {
			all = append(all, r)
			continue
		}
		out = append(out, r)
	}
	return append(out, all...)
}

func httpsRedirectRoute() *routev3.Route {
	return &routev3.Route{
		Name:  "https-redirect",
		Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
		Action: &routev3.Route_Redirect{Redirect: &routev3.RedirectAction{
			SchemeRewriteSpecifier: &routev3.RedirectAction_HttpsRedirect{HttpsRedirect: true},
			ResponseCode:           routev3.RedirectAction_MOVED_PERMANENTLY,
		}},
	}
}

// serverHostsFor is the host names of a server's hosts that a VirtualService
// in namespace vsNS may bind to (Istio's NamesForNamespace): "host" and
// "*/host" admit every namespace, "ns/host" only ns, and "./host" only the
// Gateway's own namespace (Istio's sanitizeServerHostNamespace).
func serverHostsFor(hosts []string, gwNS, vsNS string) []string {
	var out []string
	for _, h := range hosts {
		if ns, name, ok := strings.Cut(h, "/"); ok {
			if ns == "." {
				ns = gwNS
			}
			if ns != "*" && ns != vsNS {
				continue
			}
			h = name
		}
		out = append(out, strings.ToLower(h))
	}
	return out
}

// vsHosts is a VirtualService's hosts as Istio binds them to a gateway
// server: a short name (no dot) is resolved in the VirtualService's
// namespace, "reviews" in bookinfo being reviews.bookinfo.svc.cluster.local
// (Istio's resolveVirtualServiceShortnames); "*" and IP addresses stay. The
// server's hosts are not resolved.
func (b *outboundBuilder) vsHosts(vs *VirtualService) []string {
	out := make([]string, 0, len(vs.Spec.GetHosts()))
	for _, h := range vs.Spec.GetHosts() {
		if _, err := netip.ParseAddr(h); err == nil {
			out = append(out, h)
			continue
		}
		out = append(out, b.n.Registry.Resolve(h, vs.Object.Namespace))
	}
	return out
}

// gatewayHosts is the intersection of a server's host names and a
// VirtualService's hosts, as Istio's Names.Intersection: for each pair where
// one covers the other, the more specific of the two. A VirtualService host
// "*" bound to a server for a.example.com serves a.example.com only.
func gatewayHosts(server, vs []string) []string {
	var out []string
	add := func(h string) {
		if !slices.Contains(out, h) {
			out = append(out, h)
		}
	}
	for _, sh := range server {
		for _, vh := range vs {
			vh = strings.ToLower(vh)
			switch {
			case hostSubsetOf(sh, vh):
				add(sh)
			case hostSubsetOf(vh, sh):
				add(vh)
			}
		}
	}
	return out
}

// hostSubsetOf reports whether every name host a covers is covered by b
// (Istio's Name.SubsetOf): a wildcard "*suffix" covers the names ending in
// suffix, so "*" covers all.
func hostSubsetOf(a, b string) bool {
	if !strings.HasPrefix(b, "*") {
		return a == b
	}
	return strings.HasSuffix(strings.TrimPrefix(a, "*"), b[1:])
}
