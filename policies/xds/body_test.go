package xds

import (
	"testing"

	"github.com/rampart-mesh/rampart/policies/compile"
	"github.com/rampart-mesh/rampart/policies/source"
)

// The bundle revision covers includeRequestBodyInCheck as it covers the other
// provider settings: two bundles that send different bodies to the provider
// (or none) must not share a revision, or the decision log and proxy-status
// could not tell them apart.
func TestBodyRevisionCoversBodySetting(t *testing.T) {
	objs, err := source.Parse("p.yaml", []byte(`apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ext, namespace: foo}
spec:
  action: CUSTOM
  provider: {name: ext}
  rules:
  - to: [{operation: {paths: ["/x"]}}]
`))
	if err != nil {
		t.Fatal(err)
	}
	wl := compile.Workload{Namespace: "foo", Name: "w", Labels: map[string]string{"app": "w"}}
	rev := func(body string) string {
		t.Helper()
		m, err := compile.ParseMesh([]byte("extensionProviders:\n- name: ext\n  envoyExtAuthzGrpc: {service: ext, port: 9000" + body + "}\n"))
		if err != nil {
			t.Fatal(err)
		}
		if m, err = m.WithDefaults(); err != nil {
			t.Fatal(err)
		}
		wb, err := Compile(objs, m, wl)
		if err != nil {
			t.Fatal(err)
		}
		return wb.Revision
	}
	none := rev("")
	small := rev(", includeRequestBodyInCheck: {maxRequestBytes: 16}")
	large := rev(", includeRequestBodyInCheck: {maxRequestBytes: 1048576, allowPartialMessage: true, packAsBytes: true}")
	if none == small || small == large {
		t.Errorf("revisions: no body %s, 16 bytes %s, 1 MiB partial bytes %s; want all different", none, small, large)
	}
}
