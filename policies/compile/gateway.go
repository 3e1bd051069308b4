package compile

import (
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"github.com/rampart-mesh/rampart/policies/registry"
	"google.golang.org/protobuf/types/known/wrapperspb"
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

// resolveGateway names a gateway in a VirtualService's spec.gateways or
// match gateways as "ns/name", as Istio's resolveGatewayName: "mesh" stays,
// "./name" and a short name are in the VirtualService's namespace, and the
// legacy "name.ns[.svc.cluster.local]" is ns/name.
func resolveGateway(name, vsNS string) string {
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
		if resolveGateway(name, vs.Object.Namespace) == gw {
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
		if resolveGateway(name, vsNS) == gwOrMesh(gw) {
			return true
		}
	}
	return false
}

// GatewayRoutePrefix names a gateway's route configurations: "http.<port>", as Istio.
const GatewayRoutePrefix = "http."

// gateways adds, for a proxy that Istio Gateways select by its labels, a
// listener per HTTP server port and the routes of the VirtualServices bound to
// those gateways ("<namespace>/<name>", or "<name>" from the gateway's namespace).
func (b *outboundBuilder) gateways() error {
	ports := map[uint32][]*routev3.VirtualHost{}
	for _, g := range b.n.Gateways {
		if len(g.Spec.GetSelector()) == 0 || !registry.Matches(g.Spec.GetSelector(), b.wl.Labels) {
			continue
		}
		full := g.Object.Namespace + "/" + g.Object.Name
		for _, srv := range g.Spec.GetServers() {
			proto := strings.ToUpper(srv.GetPort().GetProtocol())
			if proto != "HTTP" && proto != "HTTP2" && proto != "GRPC" {
				continue // TLS termination at the gateway is not served yet
			}
			port := srv.GetPort().GetNumber()
			for i := range b.n.VirtualServices {
				vs := &b.n.VirtualServices[i]
				// Istio's VirtualServicesForGateway: bound to the gateway and
				// exported to the gateway proxy's namespace.
				if !visible(vs.Spec.GetExportTo(), vs.Object.Namespace, b.wl.Namespace) || !boundTo(vs, full) {
					continue
				}
				for _, h := range gatewayHosts(serverHostsFor(srv.GetHosts(), g.Object.Namespace, vs.Object.Namespace), vs.Spec.GetHosts()) {
					vh := &routev3.VirtualHost{Name: fmt.Sprintf("%s:%d", h, port), Domains: []string{h}}
					if h != "*" {
						vh.Domains = append(vh.Domains, fmt.Sprintf("%s:%d", h, port))
					}
					for j, hr := range vs.Spec.GetHttp() {
						rs, err := b.httpRoute(vs, j, hr, port, full)
						if err != nil {
							return err
						}
						vh.Routes = append(vh.Routes, rs...)
					}
					ports[port] = append(ports[port], vh)
				}
			}
		}
	}
	keys := make([]uint32, 0, len(ports))
	for p := range ports {
		keys = append(keys, p)
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i] < keys[j] })
	for _, p := range keys {
		name := GatewayRoutePrefix + strconv.Itoa(int(p))
		b.out.Routes = append(b.out.Routes, &routev3.RouteConfiguration{Name: name, VirtualHosts: ports[p], ValidateClusters: wrapperspb.Bool(false)})
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
