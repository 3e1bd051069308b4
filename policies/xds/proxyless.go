package xds

import (
	"slices"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/rampart-mesh/rampart/policies/compile"
)

// Proxyless gRPC clients (grpc-go's xds resolver; node metadata GENERATOR:
// grpc, as Istio's) get their own shape of configuration (compile.CompileProxyless)
// from their own snapshot cache.
//
// Their cache is not in ADS mode: go-control-plane's ADS mode answers a
// request only when it names every resource of its type in the snapshot,
// which suits Envoy and rampart-sidecar (they ask for all of them) but not
// gRPC, which subscribes to exactly the names its channels need. Without ADS
// mode a request is answered with the named resources that exist, and the
// client learns at once that the others do not.

const (
	cacheSidecar   = "sidecar"
	cacheProxyless = "proxyless"
)

// isProxyless reports whether a node is a proxyless gRPC client.
func isProxyless(n *corev3.Node) bool {
	return n.GetMetadata().GetFields()["GENERATOR"].GetStringValue() == compile.GeneratorGRPC
}

// newCaches makes the sidecars' (ADS mode) and proxyless clients' snapshot
// caches, and the cache the ADS server reads: each request goes to its node's.
func newCaches(keys cachev3.NodeHash) (sidecar, proxyless cachev3.SnapshotCache, mux cachev3.Cache) {
	sidecar = cachev3.NewSnapshotCache(true, keys, nil)
	proxyless = cachev3.NewSnapshotCache(false, keys, nil)
	classify := func(n *corev3.Node) string {
		if isProxyless(n) {
			return cacheProxyless
		}
		return cacheSidecar
	}
	mux = &cachev3.MuxCache{
		Classify:      func(r *cachev3.Request) string { return classify(r.GetNode()) },
		ClassifyDelta: func(r *cachev3.DeltaRequest) string { return classify(r.GetNode()) },
		Caches:        map[string]cachev3.Cache{cacheSidecar: sidecar, cacheProxyless: proxyless},
	}
	return sidecar, proxyless, mux
}

// cacheOf is the snapshot cache a node's snapshots go to.
func (s *Server) cacheOf(n *node) cachev3.SnapshotCache {
	if n.proxyless {
		return s.grpcCache
	}
	return s.cache
}

// compileFor is the compiler of a node's listeners, routes, clusters and endpoints.
func compileFor(n *node) func(*compile.Networking, compile.Mesh, compile.Workload) (*compile.Outbound, error) {
	if n.proxyless {
		return compile.CompileProxyless
	}
	return compile.CompileOutbound
}

// builtKey keeps a workload's proxyless and sidecar builds apart.
func builtKey(n *node) string {
	if n.proxyless {
		return workloadKey(n.workload) + "\x00" + cacheProxyless
	}
	return workloadKey(n.workload)
}

// consistent checks a snapshot before it is served.
func consistent(n *node, snap *cachev3.Snapshot, out *compile.Outbound) error {
	if n.proxyless {
		return compile.CheckProxyless(out)
	}
	return snap.Consistent()
}

// noteNames remembers which resources a proxyless client subscribes to, by type.
func (n *node) noteNames(req *discovery.DiscoveryRequest) {
	if !n.proxyless {
		return
	}
	if n.names == nil {
		n.names = map[string][]string{}
	}
	n.names[req.GetTypeUrl()] = slices.Clone(req.GetResourceNames())
}

// proxylessSynced is synced for a client that subscribes per name (gRPC):
// every type it subscribes to has ACKed the version sent, and everything it
// needs for what it asked for is subscribed too: the route configuration of
// each requested listener that exists, the clusters of each requested route
// configuration, the endpoints of each requested EDS cluster. A client that
// asks for a listener that does not exist is in sync once it has ACKed the
// answer saying so.
func (n *node) proxylessSynced() bool {
	if len(n.acked) == 0 {
		return false
	}
	for _, v := range n.acked {
		if v != n.sent {
			return false
		}
	}
	out := n.outbound
	if out == nil {
		return true
	}
	has := func(typ, name string) bool {
		_, subscribed := n.acked[typ]
		return subscribed && slices.Contains(n.names[typ], name)
	}
	for _, l := range out.Listeners {
		if !has(resource.ListenerType, l.GetName()) {
			continue
		}
		hcm := &hcmv3.HttpConnectionManager{}
		if err := l.GetApiListener().GetApiListener().UnmarshalTo(hcm); err != nil {
			return false
		}
		if !has(resource.RouteType, hcm.GetRds().GetRouteConfigName()) {
			return false
		}
	}
	clusters := map[string]*clusterv3.Cluster{}
	for _, c := range out.Clusters {
		clusters[c.GetName()] = c
	}
	for _, r := range out.Routes {
		if !has(resource.RouteType, r.GetName()) {
			continue
		}
		for _, name := range routeClusters(r) {
			if clusters[name] != nil && !has(resource.ClusterType, name) {
				return false
			}
		}
	}
	for _, c := range out.Clusters {
		if c.GetType() == clusterv3.Cluster_EDS && has(resource.ClusterType, c.GetName()) && !has(resource.EndpointType, c.GetName()) {
			return false
		}
	}
	return true
}

// routeClusters lists the clusters a route configuration's routes send to,
// as grpc-go subscribes to them.
func routeClusters(rc *routev3.RouteConfiguration) []string {
	var out []string
	for _, vh := range rc.GetVirtualHosts() {
		for _, r := range vh.GetRoutes() {
			if len(r.GetMatch().GetQueryParameters()) > 0 {
				continue // grpc-go skips routes that match on query parameters
			}
			ra := r.GetRoute()
			if c := ra.GetCluster(); c != "" {
				out = append(out, c)
			}
			for _, w := range ra.GetWeightedClusters().GetClusters() {
				out = append(out, w.GetName())
			}
		}
	}
	return out
}
