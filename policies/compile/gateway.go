package compile

import (
	"fmt"
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

func gwOrMesh(gw string) string {
	if gw == "" {
		return "mesh"
	}
	return gw
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
				bound := ""
				for _, name := range vs.Spec.GetGateways() {
					if name == full || (name == g.Object.Name && vs.Object.Namespace == g.Object.Namespace) {
						bound = name
					}
				}
				if bound == "" {
					continue
				}
				for _, h := range vs.Spec.GetHosts() {
					if !gatewayHostAllowed(srv.GetHosts(), h, vs.Object.Namespace) {
						continue
					}
					vh := &routev3.VirtualHost{Name: fmt.Sprintf("%s:%d", h, port), Domains: []string{h}}
					if h != "*" {
						vh.Domains = append(vh.Domains, fmt.Sprintf("%s:%d", h, port))
					}
					for j, hr := range vs.Spec.GetHttp() {
						rs, err := b.httpRoute(vs, j, hr, port, bound)
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

// gatewayHostAllowed reports whether a server's hosts ("ns/host" or "host",
// wildcards allowed) admit a VirtualService host.
func gatewayHostAllowed(serverHosts []string, host, vsNS string) bool {
	for _, sh := range serverHosts {
		ns, h, ok := strings.Cut(sh, "/")
		if !ok {
			ns, h = "*", sh
		}
		if ns != "*" && ns != "." && ns != vsNS {
			continue
		}
		if h == "*" || hostMatches(h, host) || hostMatches(host, h) {
			return true
		}
	}
	return false
}
