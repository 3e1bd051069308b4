package registry

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/rampart-mesh/rampart/policies/source"
)

func build(t *testing.T, y string) (*Registry, []Issue) {
	t.Helper()
	objs, err := source.Parse("reg.yaml", []byte(y))
	if err != nil {
		t.Fatal(err)
	}
	return Build(objs, "default", "")
}

func TestBuild(t *testing.T) {
	r, issues := build(t, `apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews}
spec:
  hosts: [reviews.default.svc.cluster.local, Reviews.Alias.Example]
  ports: [{number: 9080, name: http-main}, {number: 9090, name: grpc-x, targetPort: 19090}, {number: 7000, name: db}]
  workloadSelector: {labels: {app: reviews}}
  exportTo: ["."]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext, namespace: other}
spec:
  hosts: [api.example.com]
  location: MESH_EXTERNAL
  resolution: DNS
  ports: [{number: 443, name: https, protocol: TLS}]
  endpoints: [{address: api.example.com, labels: {security.istio.io/tlsMode: istio}}]
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: r1, labels: {team: a}}
spec: {address: 127.0.0.5, labels: {app: reviews, version: v1}, serviceAccount: bookinfo-reviews}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: r2}
spec: {address: 127.0.0.6, labels: {app: reviews, version: v2, security.istio.io/tlsMode: disabled}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: elsewhere, namespace: other}
spec: {address: 127.0.0.7, labels: {app: reviews}}
`)
	if len(issues) != 0 {
		t.Fatalf("issues: %v", issues)
	}
	s := r.Service("REVIEWS.default.svc.cluster.local")
	if s == nil || r.Service("reviews.alias.example") == nil {
		t.Fatalf("services %v", r.Services)
	}
	wantPorts := []Port{{9080, "http-main", "HTTP", 0, false}, {9090, "grpc-x", "GRPC", 19090, false}, {7000, "db", "TCP", 0, true}}
	if d := cmp.Diff(wantPorts, s.Ports); d != "" {
		t.Errorf("ports (-want +got):\n%s", d)
	}
	var got []string
	for _, e := range r.EndpointsOf(s) {
		got = append(got, e.Address+"/"+e.ServiceAccount+"/"+map[bool]string{true: "mesh", false: "plain"}[e.Mesh]+"/"+e.Labels["team"])
	}
	// The other namespace's workload is not selected; r2 opted out of mTLS;
	// metadata labels merge with spec labels; the service account defaults.
	if d := cmp.Diff([]string{"127.0.0.5/bookinfo-reviews/mesh/a", "127.0.0.6/default/plain/"}, got); d != "" {
		t.Errorf("endpoints (-want +got):\n%s", d)
	}
	ext := r.Service("api.example.com")
	if ext.Internal || ext.Resolution != "DNS" || len(ext.Endpoints) != 1 || ext.Endpoints[0].Mesh {
		t.Errorf("external service %+v: an external endpoint never runs a sidecar", ext)
	}
	// exportTo ".": only its own namespace sees it.
	if n := len(r.VisibleTo("other")); n != 1 {
		t.Errorf("namespace other sees %d services, want 1 (its own)", n)
	}
	if n := len(r.VisibleTo("default")); n != 3 {
		t.Errorf("namespace default sees %d services, want 3", n)
	}
}

func TestResolveAndAliases(t *testing.T) {
	r := &Registry{Domain: DefaultDomain}
	for in, want := range map[string]string{"reviews": "reviews.bar.svc.cluster.local", "Reviews.foo": "reviews.foo", "*": "*", "a.b.c": "a.b.c"} {
		if got := r.Resolve(in, "bar"); got != want {
			t.Errorf("Resolve(%q) = %q, want %q", in, got, want)
		}
	}
	if got := strings.Join(r.Aliases("reviews.bar.svc.cluster.local", "bar"), " "); got != "reviews.bar.svc.cluster.local reviews.bar.svc reviews.bar reviews" {
		t.Errorf("aliases from the same namespace: %s", got)
	}
	if got := strings.Join(r.Aliases("reviews.bar.svc.cluster.local", "foo"), " "); got != "reviews.bar.svc.cluster.local reviews.bar.svc reviews.bar" {
		t.Errorf("aliases from another namespace (no short name): %s", got)
	}
	if got := r.Aliases("api.example.com", "foo"); len(got) != 1 {
		t.Errorf("an external host has no aliases: %v", got)
	}
}

func TestBuildIssues(t *testing.T) {
	for _, tc := range []struct{ name, yaml, field string }{
		{"no hosts", "kind: ServiceEntry\napiVersion: networking.istio.io/v1\nmetadata: {name: a}\nspec: {ports: [{number: 80, name: http}]}", "spec.hosts"},
		{"bad port", "kind: ServiceEntry\napiVersion: networking.istio.io/v1\nmetadata: {name: a}\nspec: {hosts: [a.b], ports: [{number: 70000, name: http}]}", "spec.ports[0].number"},
		{"duplicate port", "kind: ServiceEntry\napiVersion: networking.istio.io/v1\nmetadata: {name: a}\nspec: {hosts: [a.b], ports: [{number: 80, name: http}, {number: 80, name: http2}]}", "spec.ports[1].number"},
		{"unnamed port", "kind: ServiceEntry\napiVersion: networking.istio.io/v1\nmetadata: {name: a}\nspec: {hosts: [a.b], ports: [{number: 80}]}", "spec.ports[0].name"},
		{"static with a name", "kind: ServiceEntry\napiVersion: networking.istio.io/v1\nmetadata: {name: a}\nspec: {hosts: [a.b], resolution: STATIC, endpoints: [{address: db.example}]}", "spec.endpoints[0].address"},
		{"selector and endpoints", "kind: ServiceEntry\napiVersion: networking.istio.io/v1\nmetadata: {name: a}\nspec: {hosts: [a.b], workloadSelector: {labels: {a: b}}, endpoints: [{address: 1.2.3.4}]}", "spec.workloadSelector"},
		{"unknown field", "kind: WorkloadEntry\napiVersion: networking.istio.io/v1\nmetadata: {name: a}\nspec: {adress: 1.2.3.4}", "spec"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, issues := build(t, tc.yaml)
			if len(issues) != 1 || issues[0].Field != tc.field || issues[0].Object.Line == 0 {
				t.Fatalf("issues = %v, want one at %s", issues, tc.field)
			}
			if len(r.Services) != 0 || len(r.Workloads) != 0 {
				t.Errorf("a refused object is in the registry: %+v", r)
			}
		})
	}
}
