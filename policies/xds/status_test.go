package xds

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rampart-mesh/rampart/ca/catest"
	"github.com/rampart-mesh/rampart/policies/compile"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
)

// loadedServer is a Server whose configuration is one file, policy, loaded.
func loadedServer(t *testing.T, policy string) *Server {
	t.Helper()
	a := catest.Authority(t)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "p.yaml"), []byte(policy), 0o644); err != nil {
		t.Fatal(err)
	}
	mesh, _ := compile.Mesh{}.WithDefaults()
	x, err := New(Config{Paths: []string{dir}, Mesh: mesh, Trust: a.Bundle(), Metrics: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	if err := x.reload(true); err != nil {
		t.Fatal(err)
	}
	return x
}

func statusServer(t *testing.T) *Server {
	t.Helper()
	return loadedServer(t, "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: foo}\nspec: {rules: [{to: [{operation: {paths: [\"/a\"]}}]}]}\n")
}

// A NACK of one type must stay visible (status NACKED, with its error text)
// until that type is ACKed again: an ACK of another type must not erase it.
func TestNACKStaysUntilThatTypeIsACKed(t *testing.T) {
	x := statusServer(t)
	const id = "spiffe://cluster.local/ns/foo/sa/web"
	x.streams[1] = &stream{certID: id}
	send := func(r *discovery.DiscoveryRequest) {
		t.Helper()
		if err := x.onRequest(1, r); err != nil {
			t.Fatal(err)
		}
	}
	// Subscribe to ECDS and CDS.
	send(&discovery.DiscoveryRequest{Node: &corev3.Node{Id: id}, TypeUrl: resource.ExtensionConfigType})
	send(&discovery.DiscoveryRequest{TypeUrl: resource.ClusterType})
	sent := x.nodes[id].sent
	if sent == "" {
		t.Fatal("nothing sent")
	}
	// The proxy refuses the clusters ...
	send(&discovery.DiscoveryRequest{TypeUrl: resource.ClusterType, ResponseNonce: "1", VersionInfo: "",
		ErrorDetail: &rpcstatus.Status{Code: 3, Message: "cluster x: bad lb policy"}})
	if st := x.Status()[0]; st.Status != "NACKED" {
		t.Fatalf("after the NACK: %+v", st)
	}
	// ... and accepts the policy bundle of the same snapshot.
	send(&discovery.DiscoveryRequest{TypeUrl: resource.ExtensionConfigType, ResponseNonce: "2", VersionInfo: sent})
	st := x.Status()[0]
	if st.Status != "NACKED" || !strings.Contains(st.NACK, "bad lb policy") {
		t.Fatalf("the clusters are still refused, but status is %+v (NACK text lost)", st)
	}
}

// A proxy reconnecting (a restarted pod, a rollout) with other labels under
// the same node id must get the configuration of its labels now, not of the
// labels the node id was first seen with.
func TestReconnectWithNewLabelsGetsTheirConfig(t *testing.T) {
	x := loadedServer(t, onlyBDeny)
	const id = "spiffe://cluster.local/ns/foo/sa/default~default"
	connect := func(sid int64, app string) string {
		t.Helper()
		x.streams[sid] = &stream{certID: "spiffe://cluster.local/ns/foo/sa/default"}
		md, _ := structpb.NewStruct(map[string]any{"NAME": "default", "LABELS": map[string]any{"app": app}})
		if err := x.onRequest(sid, &discovery.DiscoveryRequest{Node: &corev3.Node{Id: id, Metadata: md}, TypeUrl: resource.ExtensionConfigType}); err != nil {
			t.Fatal(err)
		}
		return x.streams[sid].nodeKey
	}
	policy := func(key string) string {
		t.Helper()
		wb, _, found := x.Config(key)
		if !found {
			t.Fatalf("no proxy %q", key)
		}
		return wb.Modules["rampart/policy.rego"]
	}
	if k := connect(1, "a"); k != id || strings.Contains(policy(id), "only-b") {
		t.Fatalf("app=a (key %q) got app=b's policy", k)
	}
	x.onClosed(1, nil)
	// A rollout relabelled the pods: the new process takes the node id's
	// name over, with its labels' policy.
	if k := connect(2, "b"); k != id || !strings.Contains(policy(id), "only-b") {
		t.Fatalf("proxy now labelled app=b (key %q) is served the bundle of app=a (workload %+v): its DENY policy is missing", k, x.nodes[id].workload)
	}
	// While app=b is connected, a proxy with the same node id and app=a (a
	// second deployment under the service account and name) gets an entry of
	// its own.
	if k := connect(3, "a"); k == id || strings.Contains(policy(k), "only-b") || !strings.Contains(policy(id), "only-b") {
		t.Fatalf("a second workload under node id %s (key %q) is not served its own policy", id, k)
	}
	if st := x.Status(); len(st) != 2 || st[0].Status == "DISCONNECTED" || st[1].Status == "DISCONNECTED" {
		t.Errorf("status %+v; want both workloads, connected", st)
	}
}

// A proxy that restarted (its first request claims no version: it runs
// nothing) is not SYNCED until it ACKs on its new stream; the ACKs of its
// previous process must not speak for it.
func TestRestartedProxyIsNotSyncedUntilItACKs(t *testing.T) {
	x := statusServer(t)
	const id = "spiffe://cluster.local/ns/foo/sa/web"
	send := func(sid int64, r *discovery.DiscoveryRequest) {
		t.Helper()
		if err := x.onRequest(sid, r); err != nil {
			t.Fatal(err)
		}
	}
	x.streams[1] = &stream{certID: id}
	send(1, &discovery.DiscoveryRequest{Node: &corev3.Node{Id: id}, TypeUrl: resource.ExtensionConfigType})
	sent := x.nodes[id].sent
	send(1, &discovery.DiscoveryRequest{TypeUrl: resource.ExtensionConfigType, ResponseNonce: "1", VersionInfo: sent})
	if st := x.Status()[0]; st.Status != "SYNCED" {
		t.Fatalf("after the ACK: %+v", st)
	}
	x.onClosed(1, nil)
	// The sidecar process restarts: a new stream, a first request with no version.
	x.streams[2] = &stream{certID: id}
	send(2, &discovery.DiscoveryRequest{Node: &corev3.Node{Id: id}, TypeUrl: resource.ExtensionConfigType})
	if st := x.Status()[0]; st.Status == "SYNCED" {
		t.Fatalf("a restarted proxy that has applied nothing yet is reported %+v", st)
	}
}

// Node ids are chosen by the client after "~": an authenticated proxy that
// opens streams under many names cannot grow rampartd's state without bound.
// A disconnected proxy is forgotten after ForgetAfter, with its compiled
// output, and no identity keeps more than maxNodesPerIdentity at once.
func TestNodesAreBoundedAndForgotten(t *testing.T) {
	x := statusServer(t)
	const id = "spiffe://cluster.local/ns/foo/sa/web"
	open := func(sid int64, name string) error {
		x.streams[sid] = &stream{certID: id}
		md, _ := structpb.NewStruct(map[string]any{"NAME": name})
		return x.onRequest(sid, &discovery.DiscoveryRequest{Node: &corev3.Node{Id: id + "~" + name, Metadata: md}, TypeUrl: resource.ExtensionConfigType})
	}
	for i := range maxNodesPerIdentity {
		if err := open(int64(i+1), fmt.Sprintf("w%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := open(1000, "one-more"); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("node %d of one identity: %v; want ResourceExhausted", maxNodesPerIdentity+1, err)
	}
	now := time.Now()
	for i := range maxNodesPerIdentity {
		x.onClosed(int64(i+1), nil)
	}
	x.forgetGone(now) // not yet: closed just now
	if len(x.nodes) != maxNodesPerIdentity {
		t.Fatalf("%d nodes right after closing; want all %d kept (DISCONNECTED) for a while", len(x.nodes), maxNodesPerIdentity)
	}
	x.forgetGone(now.Add(x.cfg.ForgetAfter + time.Second))
	if len(x.nodes) != 0 || len(x.built) != 0 || len(x.keys.byID) != 0 {
		t.Fatalf("after ForgetAfter: %d nodes, %d compiled bundles, %d node ids kept; want none", len(x.nodes), len(x.built), len(x.keys.byID))
	}
	if err := open(1001, "one-more"); err != nil {
		t.Fatalf("after the others were forgotten: %v", err)
	}
}
