package xds

import (
	"fmt"
	"maps"
	"sort"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
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
		for name, c := range r.Clusters {
			if c.GetType() == clusterv3.Cluster_EDS {
				if sn := c.GetEdsClusterConfig().GetServiceName(); sn != "" {
					name = sn
				}
				set[name] = true
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

// missing names the first thing the set lacks to be applied, or "".
func (r *Resources) missing() string {
	if r.Clusters == nil || r.Listeners == nil {
		return "clusters and listeners"
	}
	for _, n := range r.dependencies(EndpointType) {
		if _, ok := r.Endpoints[n]; !ok {
			return "endpoints of " + n
		}
	}
	for _, n := range r.dependencies(RouteType) {
		if _, ok := r.Routes[n]; !ok {
			return "route configuration " + n
		}
	}
	return ""
}
