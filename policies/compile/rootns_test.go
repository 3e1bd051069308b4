package compile

import (
	"testing"

	"github.com/rampart-mesh/rampart/policies/source"
)

// Security policies in istio-system, written for Istio's default root
// namespace, are flagged when the mesh's root namespace is another, and only
// then.
func TestRootNamespaceFindings(t *testing.T) {
	objs, err := source.Parse("p.yaml", []byte(`apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-all, namespace: istio-system}
spec: {}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: app, namespace: foo}
spec: {}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: dr, namespace: istio-system}
spec: {host: x}
`))
	if err != nil {
		t.Fatal(err)
	}
	def, _ := Mesh{}.WithDefaults()
	fs := RootNamespaceFindings(objs, def)
	if len(fs) != 2 {
		t.Fatalf("findings %v; want the PeerAuthentication and the AuthorizationPolicy in istio-system", fs)
	}
	for _, f := range fs {
		if f.Code != CodeIstioRootNamespace || f.Severity != SeverityWarning || f.Path != "metadata.namespace" {
			t.Errorf("finding %s", f)
		}
	}
	istio, err := ParseMesh([]byte("rootNamespace: istio-system\n"))
	if err != nil {
		t.Fatal(err)
	}
	if fs := RootNamespaceFindings(objs, istio); len(fs) != 0 {
		t.Fatalf("with rootNamespace istio-system: %v; want none", fs)
	}
}
