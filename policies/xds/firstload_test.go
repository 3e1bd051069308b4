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
	"github.com/rampart-mesh/rampart/authz"
	"github.com/rampart-mesh/rampart/ca/catest"
	"github.com/rampart-mesh/rampart/policies/compile"
	"google.golang.org/protobuf/types/known/structpb"
)

// onlyBarPolicy is a configuration directory with one AuthorizationPolicy
// for namespace foo.
func onlyBarPolicy(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "p.yaml"), []byte(`apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: only-bar, namespace: foo}
spec:
  rules: [{from: [{source: {namespaces: [bar]}}]}]
`), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// A sidecar that connects before rampartd has loaded its configuration (a
// restart, the Kubernetes caches still syncing) must be sent nothing until
// the configuration is in: a bundle compiled from no configuration has no
// policy, and the sidecar would allow every request.
func TestNothingServedBeforeFirstLoad(t *testing.T) {
	a := catest.Authority(t)
	dir := onlyBarPolicy(t)
	mesh, _ := compile.Mesh{}.WithDefaults()
	x, err := New(Config{Paths: []string{dir}, Mesh: mesh, Trust: a.Bundle()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st := adsStream(t, ctx, a, serveADS(t, ctx, a, x), catest.TLSCertificate(catest.IssueSVID(t, a, "foo", "httpbin")))
	md, _ := structpb.NewStruct(map[string]any{"NAME": "httpbin", "LABELS": map[string]any{"app": "httpbin"}})
	if err := st.Send(&discovery.DiscoveryRequest{Node: &corev3.Node{Id: "spiffe://cluster.local/ns/foo/sa/httpbin", Metadata: md},
		TypeUrl: "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig", ResourceNames: []string{authz.ExtensionName}}); err != nil {
		t.Fatal(err)
	}
	got := make(chan *discovery.DiscoveryResponse, 1)
	go func() {
		resp, err := st.Recv()
		if err != nil {
			t.Error(err)
			close(got)
			return
		}
		got <- resp
	}()
	// The proxy is registered (its request reached the server) and waits.
	deadline := time.Now().Add(5 * time.Second)
	for len(x.Status()) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the proxy never registered")
		}
		time.Sleep(5 * time.Millisecond)
	}
	select {
	case resp := <-got:
		wb, _ := authz.WireBundleFrom(resp.GetResources()[0])
		t.Fatalf("a bundle was served before the configuration loaded (modules %d, policy:\n%s)", len(wb.Modules), wb.Modules["rampart/policy.rego"])
	case <-time.After(300 * time.Millisecond):
	}
	catest.GoRun(t, "xds", x.Run)
	select {
	case resp, ok := <-got:
		if !ok {
			return
		}
		wb, err := authz.WireBundleFrom(resp.GetResources()[0])
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(wb.Modules["rampart/policy.rego"], "foo/only-bar") {
			t.Fatalf("the first bundle lacks the workload's policy:\n%s", wb.Modules["rampart/policy.rego"])
		}
	case <-ctx.Done():
		t.Fatal("no bundle after the configuration loaded")
	}
}

// A sidecar that reconnects to a restarted rampartd before its first load,
// already running the version that load computes, is sent nothing
// (go-control-plane answers only a different version), so it has nothing to
// ACK: the version its first request claims counts, and it shows SYNCED.
func TestReconnectBeforeFirstLoadIsSynced(t *testing.T) {
	a := catest.Authority(t)
	dir := onlyBarPolicy(t)
	mesh, _ := compile.Mesh{}.WithDefaults()
	md, _ := structpb.NewStruct(map[string]any{"NAME": "httpbin", "LABELS": map[string]any{"app": "httpbin"}})
	node := &corev3.Node{Id: "spiffe://cluster.local/ns/foo/sa/httpbin", Metadata: md}
	const typ = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig"
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cert := catest.TLSCertificate(catest.IssueSVID(t, a, "foo", "httpbin"))

	// The first rampartd: the version the sidecar runs.
	first, err := New(Config{Paths: []string{dir}, Mesh: mesh, Trust: a.Bundle()})
	if err != nil {
		t.Fatal(err)
	}
	catest.GoRun(t, "xds", first.Run)
	st := adsStream(t, ctx, a, serveADS(t, ctx, a, first), cert)
	if err := st.Send(&discovery.DiscoveryRequest{Node: node, TypeUrl: typ, ResourceNames: []string{authz.ExtensionName}}); err != nil {
		t.Fatal(err)
	}
	resp, err := st.Recv()
	if err != nil {
		t.Fatal(err)
	}
	version := resp.GetVersionInfo()

	// The restarted one: the sidecar is back, with that version, before the load.
	second, err := New(Config{Paths: []string{dir}, Mesh: mesh, Trust: a.Bundle()})
	if err != nil {
		t.Fatal(err)
	}
	st2 := adsStream(t, ctx, a, serveADS(t, ctx, a, second), cert)
	if err := st2.Send(&discovery.DiscoveryRequest{Node: node, TypeUrl: typ, ResourceNames: []string{authz.ExtensionName}, VersionInfo: version}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(second.Status()) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the proxy never registered")
		}
		time.Sleep(5 * time.Millisecond)
	}
	catest.GoRun(t, "xds", second.Run)
	for {
		ps := second.Status()
		if len(ps) == 1 && ps[0].Status == "SYNCED" && ps[0].Acked == version {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("status %+v; want the proxy SYNCED at %s", ps, version)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A restarted rampartd (another process) gives the same configuration a
// version of its own, so sidecars that reconnected before its first load are
// answered (and subscribe to their endpoints and routes again).
func TestSnapshotVersionIsTheProcesss(t *testing.T) {
	out := &compile.Outbound{}
	v1, err := snapshotVersion("rev", out)
	if err != nil {
		t.Fatal(err)
	}
	saved := bootID
	defer func() { bootID = saved }()
	bootID[0] ^= 1
	v2, err := snapshotVersion("rev", out)
	if err != nil {
		t.Fatal(err)
	}
	if v1 == v2 {
		t.Fatalf("another process computes the same version %s for the same configuration", v1)
	}
}
