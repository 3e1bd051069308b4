package xds

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/rampart-mesh/rampart/ca/catest"
	"github.com/rampart-mesh/rampart/policies/compile"
	"github.com/rampart-mesh/rampart/policies/source"
	"google.golang.org/protobuf/types/known/structpb"
)

const proxylessMesh = `apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: echo}
spec:
  hosts: [echo.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9090, name: grpc, protocol: GRPC}]
  workloadSelector: {labels: {app: echo}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: other}
spec:
  hosts: [other.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 8080, name: http, protocol: HTTP}]
  workloadSelector: {labels: {app: other}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: echo-1}
spec: {address: 127.0.50.1, labels: {app: echo}, serviceAccount: echo}
`

// A proxyless client subscribes per name: it is answered with exactly the
// names it asks for that exist (go-control-plane's ADS mode would not answer
// a request that leaves out other listeners in the snapshot), and it is
// SYNCED once it has ACKed everything its subscriptions lead to.
func TestProxylessClientServedPerName(t *testing.T) {
	a := catest.Authority(t)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "mesh.yaml"), []byte(proxylessMesh), 0o644); err != nil {
		t.Fatal(err)
	}
	mesh, _ := compile.Mesh{}.WithDefaults()
	x, err := New(Config{Paths: []string{dir}, Mesh: mesh, Trust: a.Bundle()})
	if err != nil {
		t.Fatal(err)
	}
	catest.GoRun(t, "xds", x.Run)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st := adsStream(t, ctx, a, serveADS(t, ctx, a, x), catest.TLSCertificate(catest.IssueSVID(t, a, "default", "client")))
	md, _ := structpb.NewStruct(map[string]any{"GENERATOR": "grpc", "NAME": "client", "LABELS": map[string]any{"app": "client"}})
	node := &corev3.Node{Id: "spiffe://cluster.local/ns/default/sa/client~client", Metadata: md}
	status := func() string {
		for _, s := range x.Status() {
			if s.Proxy == node.Id {
				return s.Status
			}
		}
		return ""
	}
	// ask subscribes to names, ACKs the answer as gRPC does, and returns the
	// answer's resource names.
	last := map[string]*discovery.DiscoveryResponse{}
	ask := func(typ string, names ...string) []string {
		t.Helper()
		req := &discovery.DiscoveryRequest{Node: node, TypeUrl: typ, ResourceNames: names}
		if err := st.Send(req); err != nil {
			t.Fatal(err)
		}
		resp, err := st.Recv()
		if err != nil {
			t.Fatalf("%s %v: %v", typ, names, err)
		}
		if resp.GetTypeUrl() != typ {
			t.Fatalf("asked for %s, got %s", typ, resp.GetTypeUrl())
		}
		last[typ] = resp
		if err := st.Send(&discovery.DiscoveryRequest{TypeUrl: typ, ResourceNames: names, VersionInfo: resp.GetVersionInfo(), ResponseNonce: resp.GetNonce()}); err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, r := range resp.GetResources() {
			m, err := r.UnmarshalNew()
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, cachev3.GetResourceName(m))
		}
		return got
	}
	const lis = "echo.default.svc.cluster.local:9090"
	if got := ask(resource.ListenerType, lis, "nope.default.svc.cluster.local:1"); len(got) != 1 || got[0] != lis {
		t.Fatalf("LDS answer %v, want only %s", got, lis)
	}
	l := &listenerv3.Listener{}
	if err := last[resource.ListenerType].GetResources()[0].UnmarshalTo(l); err != nil || l.GetApiListener() == nil {
		t.Fatalf("listener %v (%v): want an api_listener", l, err)
	}
	const cluster = "outbound|9090||echo.default.svc.cluster.local"
	steps := []struct {
		typ  string
		name string
	}{{resource.RouteType, lis}, {resource.ClusterType, cluster}, {resource.EndpointType, cluster}}
	for _, s := range steps {
		if got := status(); got != "STALE" {
			t.Fatalf("before subscribing to %s: %s, want STALE", s.typ, got)
		}
		if got := ask(s.typ, s.name); len(got) != 1 || got[0] != s.name {
			t.Fatalf("%s answer %v, want %s", s.typ, got, s.name)
		}
	}
	// With everything its subscriptions lead to ACKed, the client is SYNCED.
	deadline := time.Now().Add(5 * time.Second)
	for status() != "SYNCED" {
		if time.Now().After(deadline) {
			t.Fatalf("status %s, want SYNCED", status())
		}
		time.Sleep(10 * time.Millisecond)
	}
	// grpc-go enforces no Rampart policy: no authorization bundle was
	// compiled for it, and none is offered.
	if b, _, ok := x.Config(node.Id); !ok || b.Revision != "" || len(b.Modules) != 0 {
		t.Fatalf("proxyless client's bundle: revision %q, %d modules (found %t); want none", b.Revision, len(b.Modules), ok)
	}
	if got := ask(resource.ExtensionConfigType); len(got) != 0 {
		t.Fatalf("ECDS offered %v to a proxyless client", got)
	}
}

func TestProxylessSynced(t *testing.T) {
	objs, err := source.Parse("mesh.yaml", []byte(proxylessMesh))
	if err != nil {
		t.Fatal(err)
	}
	n, _ := compile.DecodeNetworking(objs, compile.Mesh{}, "default")
	out, err := compile.CompileProxyless(n, compile.Mesh{}, compile.Workload{Namespace: "default", Name: "client"})
	if err != nil {
		t.Fatal(err)
	}
	const (
		lis     = "echo.default.svc.cluster.local:9090"
		cluster = "outbound|9090||echo.default.svc.cluster.local"
	)
	tests := []struct {
		name  string
		names map[string][]string
		acked map[string]string
		want  bool
	}{
		{"only an unknown listener, ACKed", map[string][]string{resource.ListenerType: {"nope:1"}}, map[string]string{resource.ListenerType: "v1"}, true},
		{"listener ACKed, its routes not asked for", map[string][]string{resource.ListenerType: {lis}}, map[string]string{resource.ListenerType: "v1"}, false},
		{"routes ACKed, clusters not asked for", map[string][]string{resource.ListenerType: {lis}, resource.RouteType: {lis}},
			map[string]string{resource.ListenerType: "v1", resource.RouteType: "v1"}, false},
		{"clusters ACKed, endpoints not asked for", map[string][]string{resource.ListenerType: {lis}, resource.RouteType: {lis}, resource.ClusterType: {cluster}},
			map[string]string{resource.ListenerType: "v1", resource.RouteType: "v1", resource.ClusterType: "v1"}, false},
		{"everything ACKed", map[string][]string{resource.ListenerType: {lis}, resource.RouteType: {lis}, resource.ClusterType: {cluster}, resource.EndpointType: {cluster}},
			map[string]string{resource.ListenerType: "v1", resource.RouteType: "v1", resource.ClusterType: "v1", resource.EndpointType: "v1"}, true},
		{"endpoints subscribed, older version ACKed", map[string][]string{resource.ListenerType: {lis}, resource.RouteType: {lis}, resource.ClusterType: {cluster}, resource.EndpointType: {cluster}},
			map[string]string{resource.ListenerType: "v1", resource.RouteType: "v1", resource.ClusterType: "v1", resource.EndpointType: "v0"}, false},
		{"nothing subscribed", nil, map[string]string{}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			nd := &node{proxyless: true, sent: "v1", outbound: out, names: tt.names, acked: tt.acked}
			if got := nd.synced(); got != tt.want {
				t.Fatalf("synced = %v, want %v", got, tt.want)
			}
		})
	}
}
