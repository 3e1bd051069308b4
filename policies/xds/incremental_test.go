package xds

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rampart-mesh/rampart/authz"
	"github.com/rampart-mesh/rampart/ca/catest"
	"github.com/rampart-mesh/rampart/policies/compile"
	"google.golang.org/protobuf/types/known/structpb"
)

// adsProxy is a real ADS client over mTLS with its own SVID, subscribed to
// the policy bundle.
type adsProxy struct {
	id     string
	stream discovery.AggregatedDiscoveryService_StreamAggregatedResourcesClient
	last   *discovery.DiscoveryResponse
}

// recv waits for the next response, checks it carries the bundle, and ACKs it.
func (p *adsProxy) recv(t *testing.T) authz.WireBundle {
	t.Helper()
	resp, err := p.stream.Recv()
	if err != nil {
		t.Fatalf("%s: %v", p.id, err)
	}
	wb, err := authz.WireBundleFrom(resp.GetResources()[0])
	if err != nil {
		t.Fatal(err)
	}
	p.last = resp
	ack := &discovery.DiscoveryRequest{TypeUrl: resource.ExtensionConfigType, ResourceNames: []string{authz.ExtensionName},
		VersionInfo: resp.GetVersionInfo(), ResponseNonce: resp.GetNonce()}
	if err := p.stream.Send(ack); err != nil {
		t.Fatal(err)
	}
	return wb
}

// Proxies in namespaces a and b and the root namespace, connected over ADS:
// an AuthorizationPolicy edit in a recompiles a's workload only and a's proxy
// gets it, b's keeps its version; an edit in the root namespace recompiles and
// pushes all three.
func TestIncrementalPushOverADS(t *testing.T) {
	a := catest.Authority(t)
	dir := t.TempDir()
	write := func(name, content string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("a.yaml", apYAML("a", "p", "/a"))
	write("b.yaml", apYAML("b", "p", "/b"))
	write("root.yaml", apYAML("rampart-system", "mesh", "/root"))
	mesh, _ := compile.Mesh{}.WithDefaults()
	x, err := New(Config{Paths: []string{dir}, Mesh: mesh, Trust: a.Bundle(), Metrics: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	// The test drives reload itself (Run would poll): it returns once every
	// affected proxy has been pushed.
	if err := x.reload(true); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	addr := serveADS(t, ctx, a, x)
	connect := func(ns, sa string) *adsProxy {
		t.Helper()
		st := adsStream(t, ctx, a, addr, catest.TLSCertificate(catest.IssueSVID(t, a, ns, sa)))
		id := "spiffe://cluster.local/ns/" + ns + "/sa/" + sa
		md, _ := structpb.NewStruct(map[string]any{"NAME": sa, "LABELS": map[string]any{"app": sa}})
		if err := st.Send(&discovery.DiscoveryRequest{Node: &corev3.Node{Id: id + "~" + sa, Metadata: md}, TypeUrl: resource.ExtensionConfigType, ResourceNames: []string{authz.ExtensionName}}); err != nil {
			t.Fatal(err)
		}
		p := &adsProxy{id: id + "~" + sa, stream: st}
		p.recv(t)
		return p
	}
	pa, pb, pr := connect("a", "httpbin"), connect("b", "httpbin"), connect("rampart-system", "httpbin")
	cacheVersion := func(p *adsProxy) string {
		t.Helper()
		snap, err := x.cache.GetSnapshot(p.id)
		if err != nil {
			t.Fatal(err)
		}
		return snap.GetVersion(resource.ExtensionConfigType)
	}
	bVersion := cacheVersion(pb)
	if bVersion != pb.last.GetVersionInfo() {
		t.Fatalf("b's proxy holds %s, the cache %s", pb.last.GetVersionInfo(), bVersion)
	}

	compiles, pushes := testutil.ToFloat64(x.compiles), testutil.ToFloat64(x.pushes)
	write("a.yaml", apYAML("a", "p", "/changed-in-a"))
	if err := x.reload(false); err != nil {
		t.Fatal(err)
	}
	if got := testutil.ToFloat64(x.compiles) - compiles; got != 1 {
		t.Errorf("an edit in a compiled %v workloads, want 1 (a's)", got)
	}
	if got := testutil.ToFloat64(x.pushes) - pushes; got != 1 {
		t.Errorf("an edit in a pushed %v snapshots, want 1 (a's)", got)
	}
	if wb := pa.recv(t); !strings.Contains(wb.Modules["rampart/policy.rego"], "/changed-in-a") {
		t.Errorf("a's proxy did not get the edited policy:\n%s", wb.Modules["rampart/policy.rego"])
	}
	if v := cacheVersion(pb); v != bVersion {
		t.Errorf("b's snapshot changed (%s → %s) for an edit in a", bVersion, v)
	}

	compiles = testutil.ToFloat64(x.compiles)
	write("root.yaml", apYAML("rampart-system", "mesh", "/changed-in-root"))
	if err := x.reload(false); err != nil {
		t.Fatal(err)
	}
	if got := testutil.ToFloat64(x.compiles) - compiles; got != 3 {
		t.Errorf("an edit in the root namespace compiled %v workloads, want 3", got)
	}
	for _, p := range []*adsProxy{pa, pb, pr} {
		if wb := p.recv(t); !strings.Contains(wb.Modules["rampart/policy.rego"], "/changed-in-root") {
			t.Errorf("%s did not get the root namespace's edit", p.id)
		}
	}
	for _, st := range x.Status() {
		if st.Status == "DISCONNECTED" || st.Status == "NACKED" {
			t.Errorf("proxy %s is %s", st.Proxy, st.Status)
		}
	}
	// The recompute histogram saw the three loads: 0 (before any proxy), 1, 3.
	if n := testutil.CollectAndCount(x.recomputed); n != 1 {
		t.Fatalf("rampart_xds_recomputed_proxies series = %d", n)
	}
	if got := histogramSum(t, x.recomputed); got != 4 {
		t.Errorf("proxies recomputed over the three loads = %v, want 0+1+3", got)
	}
}

func histogramSum(t *testing.T, h prometheus.Histogram) float64 {
	t.Helper()
	reg := prometheus.NewRegistry()
	if err := reg.Register(h); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	return mfs[0].GetMetric()[0].GetHistogram().GetSampleSum()
}
