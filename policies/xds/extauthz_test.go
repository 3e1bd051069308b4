package xds

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/rampart-mesh/rampart/authz"
	"github.com/rampart-mesh/rampart/policies/compile"
	"github.com/rampart-mesh/rampart/policies/source"
)

// An envoyExtAuthzGrpc provider reaches the sidecar as the server to dial:
// Istio's service may name a namespace ([<Namespace>/]<Hostname>), which is
// not part of the address, and statusOnError as a number.
func TestCompileExtAuthzProvider(t *testing.T) {
	objs, err := source.Parse("p.yaml", []byte(`apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ext, namespace: foo}
spec:
  action: CUSTOM
  provider: {name: ext}
  rules: [{to: [{operation: {paths: ["/api/*"]}}]}]
`))
	if err != nil {
		t.Fatal(err)
	}
	wl := compile.Workload{Namespace: "foo", Name: "httpbin"}
	for _, tc := range []struct {
		name, service string
		want          authz.WireExtAuthz
	}{
		{"hostname", "ext.foo.svc.cluster.local", authz.WireExtAuthz{Target: "ext.foo.svc.cluster.local:9000", FailOpen: true, StatusOnError: 503}},
		{"namespace/hostname", "foo/ext.foo.svc.cluster.local", authz.WireExtAuthz{Target: "ext.foo.svc.cluster.local:9000", FailOpen: true, StatusOnError: 503}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mesh, err := compile.ParseMesh([]byte("extensionProviders:\n- name: ext\n  envoyExtAuthzGrpc: {service: " + tc.service + ", port: 9000, failOpen: true, statusOnError: \"503\"}\n"))
			if err != nil {
				t.Fatal(err)
			}
			wb, err := Compile(objs, mesh, wl)
			if err != nil {
				t.Fatal(err)
			}
			got := wb.Providers["ext"].ExtAuthzGRPC
			if got == nil {
				t.Fatalf("no ext_authz provider in the wire bundle: %+v", wb.Providers)
			}
			if diff := cmp.Diff(tc.want, *got); diff != "" {
				t.Errorf("provider (-want +got):\n%s", diff)
			}
		})
	}
	// A mesh built without ParseMesh still cannot carry a bad statusOnError.
	mesh := compile.Mesh{RootNamespace: compile.DefaultRootNamespace, TrustDomain: compile.DefaultTrustDomain, PathNormalization: &compile.PathNormalization{Normalization: "BASE"}, ExtensionProviders: []compile.ExtensionProvider{{Name: "ext", EnvoyExtAuthzGrpc: &compile.ExtAuthzGRPC{Service: "ext", Port: 9000, StatusOnError: "abc"}}}}
	if _, err := Compile(objs, mesh, wl); err == nil || !strings.Contains(err.Error(), `"ext"`) || !strings.Contains(err.Error(), "statusOnError") {
		t.Errorf("statusOnError abc: err %v; want an error naming the provider and field", err)
	}
}
