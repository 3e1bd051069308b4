package xds

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rampart-mesh/rampart/policies/compile"
	"github.com/rampart-mesh/rampart/policies/registry"
	"github.com/rampart-mesh/rampart/policies/source"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// The mesh these tests change: namespaces a and b with a service each, the
// root namespace, and an ingress gateway.
var baseConfig = map[string]string{
	"ap-a.yaml":    apYAML("a", "p", "/a"),
	"ap-b.yaml":    apYAML("b", "p", "/b"),
	"ap-root.yaml": apYAML("rampart-system", "mesh", "/"),
	"services.yaml": `apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: svc-a, namespace: a}
spec:
  hosts: [svc-a.a.svc.cluster.local]
  ports: [{number: 8080, name: http}]
  workloadSelector: {labels: {app: svc-a}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: svc-b, namespace: b}
spec:
  hosts: [svc-b.b.svc.cluster.local]
  ports: [{number: 9090, name: http}]
  workloadSelector: {labels: {app: svc-b}}
  exportTo: [".", "a"]
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: svc-a-1, namespace: a}
spec: {address: 127.0.0.11, labels: {app: svc-a}, serviceAccount: app1}
`,
	"we-b.yaml": weBYAML("127.0.0.21"),
	"sidecar-b.yaml": `apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: b}
spec: {egress: [{hosts: ["./*", "a/*"]}]}
`,
	"gateway.yaml": gatewayYAML(80),
	// Two namespaces' objects in one file.
	"both.yaml": apYAML("a", "q", "/q") + "---\n" + apYAML("b", "q", "/q"),
}

func apYAML(ns, name, path string) string {
	return fmt.Sprintf(`apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: %s, namespace: %s}
spec: {rules: [{to: [{operation: {paths: [%q]}}]}]}
`, name, ns, path)
}

func weBYAML(addr string) string {
	return `apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: svc-b-1, namespace: b}
spec: {address: ` + addr + `, labels: {app: svc-b}, serviceAccount: app}
`
}

func gatewayYAML(port int) string {
	return fmt.Sprintf(`apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: ingress}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: %d, name: http, protocol: HTTP}, hosts: ["*"]}]
`, port)
}

// vsYAML routes svc-b with a timeout; exportTo and gateways are YAML flow lists or "".
func vsYAML(ns, timeout, exportTo, gateways string) string {
	s := `apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: to-b, namespace: ` + ns + `}
spec:
  hosts: [svc-b.b.svc.cluster.local]
  http: [{timeout: ` + timeout + `, route: [{destination: {host: svc-b.b.svc.cluster.local}}]}]
`
	if exportTo != "" {
		s += "  exportTo: " + exportTo + "\n"
	}
	if gateways != "" {
		s += "  gateways: " + gateways + "\n"
	}
	return s
}

// The proxies: two workloads in a, one in b, one in the root namespace, a gateway.
var testProxies = []struct {
	ns, name string
	labels   map[string]string
}{
	{"a", "app1", map[string]string{"app": "svc-a"}},
	{"a", "app2", map[string]string{"app": "other"}},
	{"b", "app", map[string]string{"app": "svc-b"}},
	{"rampart-system", "app", map[string]string{}},
	{"ingress", "gw", map[string]string{"istio": "ingressgateway"}},
}

type fixture struct {
	t    testing.TB
	dir  string
	kube *fakeKube
	x    *Server
}

func newFixture(t testing.TB, files map[string]string, kube *fakeKube) *fixture {
	t.Helper()
	f := &fixture{t: t, dir: t.TempDir(), kube: kube}
	for name, content := range files {
		f.write(name, content)
	}
	f.x = f.server()
	if err := f.x.reload(true); err != nil {
		t.Fatal(err)
	}
	f.connect(f.x)
	return f
}

func (f *fixture) server() *Server {
	f.t.Helper()
	mesh, err := compile.Mesh{}.WithDefaults()
	if err != nil {
		f.t.Fatal(err)
	}
	cfg := Config{Paths: []string{f.dir}, Mesh: mesh, Trust: x509bundle.New(spiffeid.RequireTrustDomainFromString("cluster.local")), Metrics: prometheus.NewRegistry()}
	if f.kube != nil {
		cfg.Kube = f.kube
	}
	x, err := New(cfg)
	if err != nil {
		f.t.Fatal(err)
	}
	return x
}

// connect registers the test proxies with x and gives each its first snapshot.
func (f *fixture) connect(x *Server) {
	f.t.Helper()
	for _, p := range testProxies {
		id := spiffeid.RequireFromString("spiffe://cluster.local/ns/" + p.ns + "/sa/" + p.name)
		wl := compile.Workload{Namespace: p.ns, Name: p.name, Labels: p.labels, Gateway: p.labels["istio"] == "ingressgateway"}
		x.nodes[id.String()] = &node{id: id, workload: wl, acked: map[string]string{}}
		if err := x.push(id.String(), time.Now()); err != nil {
			f.t.Fatal(err)
		}
	}
}

func (f *fixture) write(name, content string) {
	f.t.Helper()
	if err := os.WriteFile(filepath.Join(f.dir, name), []byte(content), 0o644); err != nil {
		f.t.Fatal(err)
	}
}

func (f *fixture) remove(name string) {
	f.t.Helper()
	if err := os.Remove(filepath.Join(f.dir, name)); err != nil {
		f.t.Fatal(err)
	}
}

// versions is the snapshot version sent to each proxy, by workload.
func versions(x *Server) map[string]string {
	out := map[string]string{}
	for _, st := range x.Status() {
		out[st.Workload] = st.Sent
	}
	return out
}

// change applies a reload and reports which workloads were compiled again
// (their cache entry replaced) and which proxies got a new version.
func (f *fixture) change() (recompiled, changed []string, err error) {
	f.t.Helper()
	f.x.mu.Lock()
	before := maps.Clone(f.x.built)
	f.x.mu.Unlock()
	vBefore := versions(f.x)
	compiles := testutil.ToFloat64(f.x.compiles)
	// first: read even when the files' stamp (size, mtime) looks the same.
	err = f.x.reload(true)
	f.x.mu.Lock()
	after := maps.Clone(f.x.built)
	f.x.mu.Unlock()
	for k, b := range after {
		if before[k] != b {
			recompiled = append(recompiled, b.wl.Namespace+"/"+b.wl.Name)
		}
	}
	sort.Strings(recompiled)
	if got := testutil.ToFloat64(f.x.compiles) - compiles; got != float64(len(recompiled)) {
		f.t.Errorf("rampart_xds_compiles_total went up by %v, but %d workloads were compiled again", got, len(recompiled))
	}
	for w, v := range versions(f.x) {
		if vBefore[w] != v {
			changed = append(changed, w)
		}
	}
	sort.Strings(changed)
	return recompiled, changed, err
}

// checkAgainstFull compares every proxy's snapshot with what a fresh server
// compiles from the same configuration.
func (f *fixture) checkAgainstFull() {
	f.t.Helper()
	y := f.server()
	if err := y.reload(true); err != nil {
		f.t.Fatal(err)
	}
	f.connect(y)
	if d := cmp.Diff(versions(y), versions(f.x)); d != "" {
		f.t.Errorf("incremental snapshots differ from a full compile (-full +incremental):\n%s", d)
	}
}

var (
	nsA      = []string{"a/app1", "a/app2"}
	everyone = []string{"a/app1", "a/app2", "b/app", "ingress/gw", "rampart-system/app"}
)

func TestChangeRecomputesAffectedWorkloadsOnly(t *testing.T) {
	tests := []struct {
		name           string
		edit           func(f *fixture)
		wantRecompiled []string
		wantChanged    []string
		wantErr        bool
	}{{
		name:           "AuthorizationPolicy in a",
		edit:           func(f *fixture) { f.write("ap-a.yaml", apYAML("a", "p", "/changed")) },
		wantRecompiled: nsA, wantChanged: nsA,
	}, {
		name: "AuthorizationPolicy in a, above b's in the same file",
		edit: func(f *fixture) {
			f.write("both.yaml", "# a longer first document moves the second one down\n"+apYAML("a", "q", "/changed")+"---\n"+apYAML("b", "q", "/q"))
		},
		wantRecompiled: nsA, wantChanged: nsA,
	}, {
		name:           "AuthorizationPolicy in the root namespace",
		edit:           func(f *fixture) { f.write("ap-root.yaml", apYAML("rampart-system", "mesh", "/changed")) },
		wantRecompiled: everyone, wantChanged: everyone,
	}, {
		name:           "AuthorizationPolicy deleted in a",
		edit:           func(f *fixture) { f.remove("ap-a.yaml") },
		wantRecompiled: nsA, wantChanged: nsA,
	}, {
		name:           "RequestAuthentication created in b",
		edit:           func(f *fixture) { f.write("ra-b.yaml", raYAML("b")) },
		wantRecompiled: []string{"b/app"}, wantChanged: []string{"b/app"},
	}, {
		name: "RateLimitPolicy created in b",
		edit: func(f *fixture) {
			f.write("rl-b.yaml", "apiVersion: policy.rampart.dev/v1alpha1\nkind: RateLimitPolicy\nmetadata: {name: rl, namespace: b}\n"+
				"spec:\n  limits: [{name: all, rate: {requests: 5, per: 1s}}]\n")
		},
		wantRecompiled: []string{"b/app"}, wantChanged: []string{"b/app"},
	}, {
		name: "RateLimitPolicy in the root namespace",
		edit: func(f *fixture) {
			f.write("rl-root.yaml", "apiVersion: policy.rampart.dev/v1alpha1\nkind: RateLimitPolicy\nmetadata: {name: rl, namespace: rampart-system}\n"+
				"spec:\n  limits: [{name: all, rate: {requests: 5, per: 1s}}]\n")
		},
		wantRecompiled: everyone, wantChanged: everyone,
	}, {
		name:           "VirtualService exported to its own namespace",
		edit:           func(f *fixture) { f.write("vs.yaml", vsYAML("a", "3s", `["."]`, "")) },
		wantRecompiled: nsA, wantChanged: nsA,
	}, {
		name: "VirtualService exported everywhere (the default)",
		edit: func(f *fixture) { f.write("vs.yaml", vsYAML("a", "3s", "", "")) },
		// Only the proxies that can see svc-b get new routes.
		wantRecompiled: everyone, wantChanged: []string{"a/app1", "a/app2", "b/app"},
	}, {
		name: "VirtualService bound to a gateway in another namespace, exported to its own",
		edit: func(f *fixture) { f.write("vs.yaml", vsYAML("b", "3s", `["."]`, `[ingress/gw]`)) },
		// Istio: exportTo applies at gateways too; the gateway does not see it.
		wantRecompiled: []string{"b/app", "ingress/gw"},
	}, {
		name: "VirtualService bound to a gateway by its legacy FQDN, exported to its own",
		edit: func(f *fixture) { f.write("vs.yaml", vsYAML("b", "3s", `["."]`, `[gw.ingress.svc.cluster.local]`)) },
		// The same gateway as ingress/gw (Istio's resolveGatewayName).
		wantRecompiled: []string{"b/app", "ingress/gw"},
	}, {
		name:           "VirtualService bound to a gateway by ./name, exported to another namespace",
		edit:           func(f *fixture) { f.write("vs.yaml", vsYAML("ingress", "3s", `["b"]`, `[./gw]`)) },
		wantRecompiled: []string{"b/app", "ingress/gw"},
	}, {
		name:           "VirtualService bound to a gateway in another namespace, exported to the gateway's",
		edit:           func(f *fixture) { f.write("vs.yaml", vsYAML("b", "3s", `["ingress"]`, `[ingress/gw]`)) },
		wantRecompiled: []string{"ingress/gw"}, wantChanged: []string{"ingress/gw"},
	}, {
		name:           "DestinationRule exported to a",
		edit:           func(f *fixture) { f.write("dr.yaml", drYAML("b", `["a"]`)) },
		wantRecompiled: nsA, wantChanged: nsA,
	}, {
		name: "Sidecar in b",
		edit: func(f *fixture) {
			f.write("sidecar-b.yaml", strings.Replace(baseConfig["sidecar-b.yaml"], `, "a/*"`, "", 1))
		},
		wantRecompiled: []string{"b/app"}, wantChanged: []string{"b/app"},
	}, {
		name: "PeerAuthentication DISABLE in b",
		edit: func(f *fixture) { f.write("pa-b.yaml", paYAML("b", "DISABLE")) },
		// b's proxy, and (auto mTLS) a's, which see svc-b and now send it plaintext.
		wantRecompiled: []string{"a/app1", "a/app2", "b/app"}, wantChanged: []string{"a/app1", "a/app2", "b/app"},
	}, {
		name:           "WorkloadEntry in b",
		edit:           func(f *fixture) { f.write("we-b.yaml", weBYAML("127.0.0.22")) },
		wantRecompiled: []string{"a/app1", "a/app2", "b/app"}, wantChanged: []string{"a/app1", "a/app2", "b/app"},
	}, {
		name: "ServiceEntry exported to its own namespace",
		edit: func(f *fixture) {
			f.write("se-b.yaml", `apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: private, namespace: b}
spec: {hosts: [private.b.svc.cluster.local], ports: [{number: 7070, name: http}], exportTo: ["."]}
`)
		},
		wantRecompiled: []string{"b/app"}, wantChanged: []string{"b/app"},
	}, {
		name: "Gateway",
		edit: func(f *fixture) { f.write("gateway.yaml", gatewayYAML(8080)) },
		// Its server port has a listener, a VirtualService bound to it or not (Istio's).
		wantRecompiled: []string{"ingress/gw"}, wantChanged: []string{"ingress/gw"},
	}, {
		name: "Gateway without a selector",
		edit: func(f *fixture) {
			f.write("gateway.yaml", strings.Replace(gatewayYAML(80), "  selector: {istio: ingressgateway}\n", "", 1))
		},
		// Istio applies it to every gateway proxy, which the node metadata
		// tells (ROUTER); scope recompiles every workload, and no config
		// changes: the gateway had it by its labels, sidecars get none.
		wantRecompiled: everyone,
	}, {
		name: "a kind whose effect is not classified",
		edit: func(f *fixture) {
			f.write("ef.yaml", "apiVersion: networking.istio.io/v1alpha3\nkind: EnvoyFilter\nmetadata: {name: x, namespace: b}\nspec: {}\n")
		},
		wantRecompiled: everyone,
	}, {
		name: "files rewritten with the same objects",
		edit: func(f *fixture) { f.write("ap-a.yaml", apYAML("a", "p", "/a")) },
	}, {
		name:    "a bad edit is refused whole",
		edit:    func(f *fixture) { f.write("ap-a.yaml", apYAML("a", "p", "/x")+"  bogus: true\n") },
		wantErr: true,
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, baseConfig, nil)
			tt.edit(f)
			recompiled, changed, err := f.change()
			if (err != nil) != tt.wantErr {
				t.Fatalf("reload: err = %v, want error: %t", err, tt.wantErr)
			}
			if d := cmp.Diff(tt.wantRecompiled, recompiled); d != "" {
				t.Errorf("workloads compiled again (-want +got):\n%s", d)
			}
			if d := cmp.Diff(tt.wantChanged, changed); d != "" {
				t.Errorf("proxies with a new version (-want +got):\n%s", d)
			}
			if tt.wantErr {
				// The last good configuration stays: a's proxies keep path /a.
				wb, _, _ := f.x.Config("spiffe://cluster.local/ns/a/sa/app1")
				if !strings.Contains(wb.Modules["rampart/policy.rego"], `"/a"`) {
					t.Errorf("a's bundle lost the last good policy:\n%s", wb.Modules["rampart/policy.rego"])
				}
				return
			}
			f.checkAgainstFull()
		})
	}
}

func raYAML(ns string) string {
	return `apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: ` + ns + `}
spec: {jwtRules: [{issuer: "https://issuer.example", jwks: '{"keys":[]}'}]}
`
}

func paYAML(ns, mode string) string {
	return `apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: ` + ns + `}
spec: {mtls: {mode: ` + mode + `}}
`
}

func drYAML(ns, exportTo string) string {
	return `apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: svc-b, namespace: ` + ns + `}
spec:
  host: svc-b.b.svc.cluster.local
  trafficPolicy: {loadBalancer: {simple: RANDOM}}
  exportTo: ` + exportTo + `
`
}

// A change in the Kubernetes registry (an endpoint of a Service seen only in
// its namespace) recompiles that namespace's workloads only.
func TestKubernetesRegistryChangeIsScoped(t *testing.T) {
	svc := func(ns, addr string) *registry.Service {
		return &registry.Service{
			Host: "kube." + ns + ".svc.cluster.local", Namespace: ns, Name: "kube", Internal: true, Resolution: "STATIC", ExportTo: []string{"."},
			Ports:     []registry.Port{{Number: 8000, Name: "http", Protocol: "HTTP"}},
			Endpoints: []registry.Endpoint{{Address: addr, Ports: map[string]uint32{}, Labels: map[string]string{"app": "kube"}, ServiceAccount: "kube", Mesh: true, Object: source.Object{Namespace: ns, Name: "kube-1"}}},
		}
	}
	kube := &fakeKube{reg: &registry.Registry{Domain: "cluster.local", Services: []*registry.Service{svc("a", "10.0.0.1"), svc("b", "10.0.1.1")}}}
	f := newFixture(t, baseConfig, kube)
	kube.mu.Lock()
	kube.reg = &registry.Registry{Domain: "cluster.local", Services: []*registry.Service{svc("a", "10.0.0.1"), svc("b", "10.0.1.2")}}
	kube.mu.Unlock()
	f.x.KubeChanged()
	recompiled, changed, err := f.change()
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"b/app"}; !slices.Equal(recompiled, want) || !slices.Equal(changed, want) {
		t.Errorf("recompiled %v, changed %v; want %v for both", recompiled, changed, want)
	}
	f.checkAgainstFull()
}

// A sequence of edits, applied incrementally, leaves every proxy with exactly
// what a full compile of the same configuration gives it.
func TestIncrementalMatchesFullCompile(t *testing.T) {
	f := newFixture(t, baseConfig, nil)
	rng := rand.New(rand.NewPCG(7, 11))
	path := func() string { return fmt.Sprintf("/p%d", rng.IntN(5)) }
	pick := func(xs ...string) string { return xs[rng.IntN(len(xs))] }
	edits := []func(){
		func() { f.write("ap-a.yaml", apYAML("a", "p", path())) },
		func() { f.write("ap-b.yaml", apYAML("b", "p", path())) },
		func() { f.write("ap-root.yaml", apYAML("rampart-system", "mesh", path())) },
		func() { f.write("ra-b.yaml", raYAML(pick("a", "b"))) },
		func() {
			f.write("vs.yaml", vsYAML(pick("a", "b"), pick("1s", "2s"), pick("", `["."]`, `["a"]`, `["~"]`), pick("", `[ingress/gw]`, `[mesh, ingress/gw]`)))
		},
		func() { _ = os.Remove(filepath.Join(f.dir, "vs.yaml")) },
		func() { f.write("dr.yaml", drYAML(pick("a", "b", "rampart-system"), pick(`["*"]`, `["."]`, `["a"]`))) },
		func() {
			f.write("pa-b.yaml", paYAML(pick("a", "b", "rampart-system"), pick("DISABLE", "STRICT", "PERMISSIVE")))
		},
		func() { _ = os.Remove(filepath.Join(f.dir, "pa-b.yaml")) },
		func() { f.write("we-b.yaml", weBYAML(pick("127.0.0.21", "127.0.0.22", "127.0.0.23"))) },
		func() {
			f.write("sidecar-b.yaml", strings.Replace(baseConfig["sidecar-b.yaml"], `"a/*"`, pick(`"a/*"`, `"*/svc-a.a.svc.cluster.local"`, `"./*"`), 1))
		},
		func() { f.write("gateway.yaml", gatewayYAML([]int{80, 8080}[rng.IntN(2)])) },
	}
	recompiledAll := 0
	for step := range 30 {
		i := rng.IntN(len(edits))
		edits[i]()
		recompiled, _, err := f.change()
		if err != nil {
			t.Fatalf("step %d (edit %d): %v", step, i, err)
		}
		if len(recompiled) == len(everyone) {
			recompiledAll++
		}
		f.checkAgainstFull()
		if t.Failed() {
			t.Fatalf("step %d (edit %d) went wrong", step, i)
		}
	}
	// Not a vacuous comparison: most steps reused some compiled output.
	if recompiledAll > 15 {
		t.Errorf("%d of 30 steps recompiled every workload", recompiledAll)
	}
}

// BenchmarkReload times one reload after an AuthorizationPolicy edit, with
// 105 workloads connected (the fixture's five and 100 in 20 namespaces): in
// one namespace (5 compiles) and in the root namespace (105).
func BenchmarkReload(b *testing.B) {
	for _, ns := range []string{"ns-0", "rampart-system"} {
		b.Run(ns, func(b *testing.B) {
			f := newFixture(b, map[string]string{"ap.yaml": apYAML(ns, "p", "/0")}, nil)
			for i := range 100 {
				wns := fmt.Sprintf("ns-%d", i%20)
				id := spiffeid.RequireFromString(fmt.Sprintf("spiffe://cluster.local/ns/%s/sa/w%d", wns, i))
				f.x.nodes[id.String()] = &node{id: id, workload: compile.Workload{Namespace: wns, Name: id.Path(), Labels: map[string]string{}}, acked: map[string]string{}}
				if err := f.x.push(id.String(), time.Now()); err != nil {
					b.Fatal(err)
				}
			}
			compiles := testutil.ToFloat64(f.x.compiles)
			b.ResetTimer()
			for i := range b.N {
				b.StopTimer()
				f.write("ap.yaml", apYAML(ns, "p", fmt.Sprintf("/%d", i+1)))
				b.StartTimer()
				if err := f.x.reload(true); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric((testutil.ToFloat64(f.x.compiles)-compiles)/float64(b.N), "compiles/op")
		})
	}
}
