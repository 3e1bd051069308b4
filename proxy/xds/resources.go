package xds

import (
	"fmt"
	"maps"
	"slices"
	"sort"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/rampart-mesh/rampart/proxy/route"
	"github.com/rampart-mesh/rampart/proxy/upstream"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// Type URLs of the resources the client subscribes to.
const (
	ClusterType  = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
	EndpointType = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
	ListenerType = "type.googleapis.com/envoy.config.listener.v3.Listener"
	RouteType    = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
	hcmName      = "envoy.filters.network.http_connection_manager"
)

// Resources is one consistent set of a proxy's listeners, routes, clusters
// and endpoints, by name. A value is never modified once built.
type Resources struct {
	Listeners map[string]*listenerv3.Listener
	Routes    map[string]*routev3.RouteConfiguration
	Clusters  map[string]*clusterv3.Cluster
	Endpoints map[string]*endpointv3.ClusterLoadAssignment
}

// with returns a copy of r with one response's resources replacing those of its type.
func (r *Resources) with(resp *discovery.DiscoveryResponse) (*Resources, error) {
	next := &Resources{Listeners: r.Listeners, Routes: r.Routes, Clusters: r.Clusters, Endpoints: r.Endpoints}
	switch resp.GetTypeUrl() {
	case ClusterType:
		m, err := decodeAll(resp.GetResources(), func() *clusterv3.Cluster { return &clusterv3.Cluster{} }, (*clusterv3.Cluster).GetName)
		if err != nil {
			return nil, err
		}
		next.Clusters = m
	case EndpointType:
		m, err := decodeAll(resp.GetResources(), func() *endpointv3.ClusterLoadAssignment { return &endpointv3.ClusterLoadAssignment{} }, (*endpointv3.ClusterLoadAssignment).GetClusterName)
		if err != nil {
			return nil, err
		}
		next.Endpoints = m
	case ListenerType:
		m, err := decodeAll(resp.GetResources(), func() *listenerv3.Listener { return &listenerv3.Listener{} }, (*listenerv3.Listener).GetName)
		if err != nil {
			return nil, err
		}
		for name, l := range m {
			if _, err := RouteNameOf(l); err != nil {
				return nil, fmt.Errorf("listener %s: %w", name, err)
			}
		}
		next.Listeners = m
	case RouteType:
		m, err := decodeAll(resp.GetResources(), func() *routev3.RouteConfiguration { return &routev3.RouteConfiguration{} }, (*routev3.RouteConfiguration).GetName)
		if err != nil {
			return nil, err
		}
		next.Routes = m
	}
	return next, nil
}

func decodeAll[T proto.Message](anys []*anypb.Any, mk func() T, name func(T) string) (map[string]T, error) {
	out := make(map[string]T, len(anys))
	for i, a := range anys {
		m := mk()
		if err := a.UnmarshalTo(m); err != nil {
			return nil, fmt.Errorf("resource %d: %w", i, err)
		}
		n := name(m)
		if n == "" {
			return nil, fmt.Errorf("resource %d has no name", i)
		}
		if _, dup := out[n]; dup {
			return nil, fmt.Errorf("resource %q sent twice", n)
		}
		out[n] = m
	}
	return out, nil
}

// RouteNameOf returns the RDS route configuration an HTTP listener uses ("" for
// a listener without an HTTP connection manager).
func RouteNameOf(l *listenerv3.Listener) (string, error) {
	for _, fc := range l.GetFilterChains() {
		for _, f := range fc.GetFilters() {
			if f.GetName() != hcmName {
				continue
			}
			h := &hcmv3.HttpConnectionManager{}
			if err := f.GetTypedConfig().UnmarshalTo(h); err != nil {
				return "", fmt.Errorf("http connection manager: %w", err)
			}
			if h.GetRds() == nil {
				return "", fmt.Errorf("http connection manager without rds is not supported")
			}
			return h.GetRds().GetRouteConfigName(), nil
		}
	}
	return "", nil
}

// dependencies lists the names to request of an EDS or RDS type: the EDS
// clusters' names, or the listeners' route configurations.
func (r *Resources) dependencies(typ string) []string {
	set := map[string]bool{}
	switch typ {
	case EndpointType:
		for _, c := range r.Clusters {
			if eds := edsName(c); eds != "" {
				set[eds] = true
			}
		}
	case RouteType:
		for _, l := range r.Listeners {
			if n, _ := RouteNameOf(l); n != "" {
				set[n] = true
			}
		}
	}
	out := make([]string, 0, len(set))
	for n := range maps.Keys(set) {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// edsName is the assignment an EDS cluster takes ("" for other clusters).
func edsName(c *clusterv3.Cluster) string {
	if c.GetType() != clusterv3.Cluster_EDS {
		return ""
	}
	if sn := c.GetEdsClusterConfig().GetServiceName(); sn != "" {
		return sn
	}
	return c.GetName()
}

// waiting lists what the set lacks to be complete, as "endpoints NAME" (an EDS
// cluster's assignment) and "routes NAME" (a listener's route configuration).
func (r *Resources) waiting() []string {
	var out []string
	for _, n := range r.dependencies(EndpointType) {
		if _, ok := r.Endpoints[n]; !ok {
			out = append(out, "endpoints "+n)
		}
	}
	for _, n := range r.dependencies(RouteType) {
		if _, ok := r.Routes[n]; !ok {
			out = append(out, "routes "+n)
		}
	}
	return out
}

// active returns the set to install, given prev, the set installed last (nil:
// none), and whether a missing dependency is still warming. As Envoy warms
// each cluster and listener on its own: a cluster or listener whose endpoints
// or routes are still warming is left out, or keeps its previous version;
// once its warming time is over it is installed without them (no endpoints:
// 503 UH; an empty route configuration: 404 NR). Nil while clusters or
// listeners have not arrived.
func (r *Resources) active(prev *Resources, warming func(key string) bool) *Resources {
	if r.Clusters == nil || r.Listeners == nil {
		return nil
	}
	if prev == nil {
		prev = &Resources{}
	}
	out := &Resources{
		Listeners: make(map[string]*listenerv3.Listener, len(r.Listeners)),
		Routes:    maps.Clone(r.Routes),
		Clusters:  make(map[string]*clusterv3.Cluster, len(r.Clusters)),
		Endpoints: maps.Clone(r.Endpoints),
	}
	if out.Routes == nil {
		out.Routes = map[string]*routev3.RouteConfiguration{}
	}
	if out.Endpoints == nil {
		out.Endpoints = map[string]*endpointv3.ClusterLoadAssignment{}
	}
	for name, c := range r.Clusters {
		eds := edsName(c)
		if _, ok := r.Endpoints[eds]; eds == "" || ok || !warming("endpoints "+eds) {
			out.Clusters[name] = c
			continue
		}
		if old := prev.Clusters[name]; old != nil {
			out.Clusters[name] = old
			if oe := edsName(old); oe != "" && out.Endpoints[oe] == nil && prev.Endpoints[oe] != nil {
				out.Endpoints[oe] = prev.Endpoints[oe]
			}
		}
	}
	for name, l := range r.Listeners {
		rn, _ := RouteNameOf(l)
		if _, ok := r.Routes[rn]; rn == "" || ok {
			out.Listeners[name] = l
			continue
		}
		if !warming("routes " + rn) {
			out.Listeners[name] = l
			out.Routes[rn] = &routev3.RouteConfiguration{Name: rn}
			continue
		}
		if old := prev.Listeners[name]; old != nil {
			out.Listeners[name] = old
			if orn, _ := RouteNameOf(old); orn != "" && out.Routes[orn] == nil && prev.Routes[orn] != nil {
				out.Routes[orn] = prev.Routes[orn]
			}
		}
	}
	return out
}

// check validates r, the set with one response's resources, with the checks
// the apply step runs on that response's type, and installs nothing: a bad
// resource is refused in the response that carried it, even while it waits
// for endpoints or routes that may never come.
func (r *Resources) check(typ string) error {
	switch typ {
	case ClusterType:
		// New clusters may read the endpoints already held differently.
		return upstream.Check(byName(r.Clusters), byName(r.Endpoints))
	case EndpointType:
		var fed []*clusterv3.Cluster
		for _, c := range byName(r.Clusters) {
			if _, ok := r.Endpoints[edsName(c)]; ok {
				fed = append(fed, c)
			}
		}
		return upstream.Check(fed, byName(r.Endpoints))
	case ListenerType:
		for _, name := range slices.Sorted(maps.Keys(r.Listeners)) {
			l := r.Listeners[name]
			// As outbound.Server.Prepare: an HTTP listener is served by port.
			if rn, _ := RouteNameOf(l); rn != "" && l.GetAddress().GetSocketAddress().GetPortValue() == 0 {
				return fmt.Errorf("listener %s: no port", name)
			}
		}
	case RouteType:
		_, err := route.New(byName(r.Routes))
		return err
	}
	return nil
}

// byName lists m's values in the order of their names, so that of several
// errors the same one is reported each time.
func byName[T any](m map[string]T) []T {
	out := make([]T, 0, len(m))
	for _, k := range slices.Sorted(maps.Keys(m)) {
		out = append(out, m[k])
	}
	return out
}
