package xds

import (
	"context"
	"crypto/tls"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/rampart-mesh/rampart/policies/registry"
	"github.com/rampart-mesh/rampart/policies/source"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rampart-mesh/rampart/authz"
	"github.com/rampart-mesh/rampart/ca"
	"github.com/rampart-mesh/rampart/ca/catest"
	"github.com/rampart-mesh/rampart/ca/server"
	"github.com/rampart-mesh/rampart/policies/compile"
	"google.golang.org/protobuf/types/known/structpb"
)

// A proxy gets the bundle compiled for its own workload, and only for the
// identity in its certificate.
func TestServerServesOwnIdentityOnly(t *testing.T) {
	a := catest.Authority(t)
	reg := prometheus.NewRegistry()
	x := startServer(t, a, reg, `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: only-httpbin, namespace: foo}
spec:
  selector: {matchLabels: {app: httpbin}}
  rules: [{from: [{source: {namespaces: [bar]}}]}]
`)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	addr := serveADS(t, ctx, a, x)
	dial := func(cert tls.Certificate) discovery.AggregatedDiscoveryService_StreamAggregatedResourcesClient {
		t.Helper()
		return adsStream(t, ctx, a, addr, cert)
	}
	md, _ := structpb.NewStruct(map[string]any{"NAME": "httpbin", "LABELS": map[string]any{"app": "httpbin"}})
	req := func(id string) *discovery.DiscoveryRequest {
		return &discovery.DiscoveryRequest{Node: &corev3.Node{Id: id, Metadata: md}, TypeUrl: "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig", ResourceNames: []string{authz.ExtensionName}}
	}

	own := dial(catest.TLSCertificate(catest.IssueSVID(t, a, "foo", "httpbin")))
	if err := own.Send(req("spiffe://cluster.local/ns/foo/sa/httpbin")); err != nil {
		t.Fatal(err)
	}
	resp, err := own.Recv()
	if err != nil {
		t.Fatalf("own identity: %v", err)
	}
	wb, err := authz.WireBundleFrom(resp.GetResources()[0])
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(wb.Modules["rampart/policy.rego"], "foo/only-httpbin") {
		t.Fatalf("the bundle lacks the workload's policy:\n%s", wb.Modules["rampart/policy.rego"])
	}
	// The sidecar combines matches in Go: the Rego reference decision is not shipped.
	var names []string
	for n := range wb.Modules {
		names = append(names, n)
	}
	sort.Strings(names)
	if got := strings.Join(names, " "); got != "rampart/lib.rego rampart/policy.rego" {
		t.Errorf("the bundle's modules are %s; want rampart/lib.rego rampart/policy.rego", got)
	}
	// The ACK makes the proxy SYNCED and records how long the change took to converge.
	ack := req("")
	ack.Node, ack.VersionInfo, ack.ResponseNonce = nil, resp.GetVersionInfo(), resp.GetNonce()
	if err := own.Send(ack); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		st := x.Status()
		if len(st) == 1 && st[0].Status == "SYNCED" && st[0].Acked == resp.GetVersionInfo() {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("status %+v; want the proxy SYNCED", st)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if n := testutil.CollectAndCount(reg, "rampart_xds_convergence_seconds"); n != 1 {
		t.Fatalf("convergence histogram series = %d", n)
	}
	mfs, _ := reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() == "rampart_xds_convergence_seconds" && mf.GetMetric()[0].GetHistogram().GetSampleCount() != 1 {
			t.Fatalf("convergence samples = %d, want 1", mf.GetMetric()[0].GetHistogram().GetSampleCount())
		}
	}

	other := dial(catest.TLSCertificate(catest.IssueSVID(t, a, "foo", "httpbin")))
	if err := other.Send(req("spiffe://cluster.local/ns/admin/sa/root")); err != nil {
		t.Fatal(err)
	}
	if _, err := other.Recv(); err == nil || !strings.Contains(err.Error(), "is not your identity") {
		t.Fatalf("asking for another identity: err = %v, want a refusal", err)
	}

	anonymous := dial(tls.Certificate{})
	_ = anonymous.Send(req("spiffe://cluster.local/ns/foo/sa/httpbin"))
	if _, err := anonymous.Recv(); err == nil || !strings.Contains(err.Error(), "X.509-SVID") {
		t.Fatalf("without a client certificate: err = %v, want a refusal", err)
	}
}

// a2 is an authenticator that refuses every token: these tests use SVIDs only.
func a2() server.Authenticator { return refuseAll{} }

type refuseAll struct{}

func (refuseAll) Authenticate(context.Context, string) (ca.Identity, error) {
	return ca.Identity{}, os.ErrPermission
}

func (refuseAll) Consume(context.Context, string) error { return os.ErrPermission }

// TestServerPushesOnlyAffectedProxies: a change in one namespace gives new
// snapshots to that namespace's proxies only.
func TestServerPushesOnlyAffectedProxies(t *testing.T) {
	a := catest.Authority(t)
	dir := t.TempDir()
	policy := func(path string) []byte {
		return []byte(`apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: p, namespace: foo}
spec: {rules: [{to: [{operation: {paths: ["` + path + `"]}}]}]}
`)
	}
	file := filepath.Join(dir, "p.yaml")
	if err := os.WriteFile(file, policy("/a"), 0o644); err != nil {
		t.Fatal(err)
	}
	mesh, _ := compile.Mesh{}.WithDefaults()
	reg := prometheus.NewRegistry()
	x, err := New(Config{Paths: []string{dir}, Mesh: mesh, Trust: a.Bundle(), Metrics: reg})
	if err != nil {
		t.Fatal(err)
	}
	if err := x.reload(true); err != nil {
		t.Fatal(err)
	}
	for _, ns := range []string{"foo", "bar"} {
		id := spiffeid.RequireFromString("spiffe://cluster.local/ns/" + ns + "/sa/app")
		x.nodes[id.String()] = &node{id: id, workload: compile.Workload{Namespace: ns, Name: "app", Labels: map[string]string{}}, acked: map[string]string{}}
		if err := x.push(id.String(), time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	sent := func() map[string]string {
		out := map[string]string{}
		for _, st := range x.Status() {
			out[st.Workload] = st.Sent
		}
		return out
	}
	before := sent()
	if err := os.WriteFile(file, policy("/changed"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := x.reload(false); err != nil {
		t.Fatal(err)
	}
	after := sent()
	if after["foo/app"] == before["foo/app"] {
		t.Errorf("foo's proxy kept version %s after a change in foo", before["foo/app"])
	}
	if after["bar/app"] != before["bar/app"] {
		t.Errorf("bar's proxy got a new version (%s → %s) for a change in foo", before["bar/app"], after["bar/app"])
	}
	if got := testutil.ToFloat64(x.pushes); got != 3 {
		t.Errorf("pushes = %v, want 3 (two first snapshots, then foo's)", got)
	}
}

// fakeKube stands in for the Kubernetes informers (policies/source/kube has
// its own tests against client-go's fakes).
type fakeKube struct {
	mu   sync.Mutex
	objs []source.Object
	reg  *registry.Registry
}

func (f *fakeKube) Objects() []source.Object {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]source.Object(nil), f.objs...)
}
func (f *fakeKube) Registry(string) *registry.Registry {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.reg
}
func (f *fakeKube) HasSynced() bool { return true }

// Objects and services from Kubernetes reach proxies like the files' do, and a
// change there (KubeChanged) is reloaded.
func TestServerKubernetesSource(t *testing.T) {
	a := catest.Authority(t)
	ap, err := source.Parse("kubernetes", []byte("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: from-kube, namespace: foo}\nspec: {}\n"))
	if err != nil {
		t.Fatal(err)
	}
	kube := &fakeKube{objs: ap, reg: &registry.Registry{Domain: "cluster.local", Services: []*registry.Service{{
		Host: "httpbin.foo.svc.cluster.local", Namespace: "foo", Name: "httpbin", Internal: true, Resolution: "STATIC",
		Ports:     []registry.Port{{Number: 8000, Name: "http", Protocol: "HTTP"}},
		Endpoints: []registry.Endpoint{{Address: "10.0.0.7", Ports: map[string]uint32{}, Labels: map[string]string{"app": "httpbin"}, ServiceAccount: "httpbin", Mesh: true, Object: source.Object{Namespace: "foo", Name: "httpbin-1"}}},
	}}}}
	mesh, _ := compile.Mesh{}.WithDefaults()
	x, err := New(Config{Kube: kube, Mesh: mesh, Trust: a.Bundle()})
	if err != nil {
		t.Fatal(err)
	}
	if err := x.reload(true); err != nil {
		t.Fatal(err)
	}
	id := spiffeid.RequireFromString("spiffe://cluster.local/ns/foo/sa/sleep")
	x.nodes[id.String()] = &node{id: id, workload: compile.Workload{Namespace: "foo", Name: "sleep", Labels: map[string]string{}}, acked: map[string]string{}}
	if err := x.push(id.String(), time.Now()); err != nil {
		t.Fatal(err)
	}
	wb, _, _ := x.Config(id.String())
	if !strings.Contains(wb.Modules["rampart/policy.rego"], "foo/from-kube") {
		t.Errorf("the Kubernetes AuthorizationPolicy is not in the bundle:\n%s", wb.Modules["rampart/policy.rego"])
	}
	out, _, _ := x.Outbound(id.String())
	found := false
	for _, c := range out.Clusters {
		found = found || c.GetName() == "outbound|8000||httpbin.foo.svc.cluster.local"
	}
	if !found {
		t.Errorf("the Kubernetes Service has no cluster")
	}
	// A change in the cluster: the policy is deleted.
	kube.mu.Lock()
	kube.objs = nil
	kube.mu.Unlock()
	if err := x.reload(false); err != nil {
		t.Fatal(err)
	}
	if wb, _, _ := x.Config(id.String()); !strings.Contains(wb.Modules["rampart/policy.rego"], "foo/from-kube") {
		t.Fatal("reloaded without a Kubernetes change being signalled")
	}
	x.KubeChanged()
	if err := x.reload(false); err != nil {
		t.Fatal(err)
	}
	if wb, _, _ := x.Config(id.String()); strings.Contains(wb.Modules["rampart/policy.rego"], "foo/from-kube") {
		t.Errorf("the deleted policy is still served")
	}
}

// A proxy that has ACKed clusters and listeners but not yet their endpoints
// and routes cannot route: it is not SYNCED.
func TestSyncedNeedsEndpointsAndRoutes(t *testing.T) {
	out := &compile.Outbound{Endpoints: []*endpointv3.ClusterLoadAssignment{{ClusterName: "c"}}, Routes: []*routev3.RouteConfiguration{{Name: "80"}}}
	n := &node{sent: "v1", outbound: out, acked: map[string]string{resource.ExtensionConfigType: "v1", resource.ClusterType: "v1", resource.ListenerType: "v1"}}
	if n.synced() {
		t.Fatal("synced before endpoints and routes were ACKed")
	}
	n.acked[resource.EndpointType] = "v1"
	if n.synced() {
		t.Fatal("synced before routes were ACKed")
	}
	n.acked[resource.RouteType] = "v1"
	if !n.synced() {
		t.Fatal("not synced with everything ACKed")
	}
	// A proxy that takes only the policy bundle is synced on it alone.
	if !(&node{sent: "v1", outbound: out, acked: map[string]string{resource.ExtensionConfigType: "v1"}}).synced() {
		t.Fatal("a policy-only proxy is not synced")
	}
}
