package xds

import (
	"context"
	"encoding/json"
	"testing"

	"github.com/rampart-mesh/rampart/authz"
	"github.com/rampart-mesh/rampart/policies/compile"
	"github.com/rampart-mesh/rampart/policies/source"
)

// The mesh's pathNormalization travels in the wire bundle, so a sidecar
// normalizes paths as the mesh says before its policies match them (it used
// to be left out, and every sidecar used BASE).
func TestWireBundleCarriesPathNormalization(t *testing.T) {
	objs, err := source.Parse("deny.yaml", []byte(`apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: foo}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin"]}}]}]
`))
	if err != nil {
		t.Fatal(err)
	}
	wl := compile.Workload{Namespace: "foo", Name: "httpbin"}
	for _, tc := range []struct {
		mode    string
		allowed bool // GET //admin
	}{{"BASE", true}, {"MERGE_SLASHES", false}} {
		mesh, err := compile.ParseMesh([]byte("pathNormalization: {normalization: " + tc.mode + "}\n"))
		if err != nil {
			t.Fatal(err)
		}
		wb, err := Compile(objs, mesh, wl)
		if err != nil {
			t.Fatal(err)
		}
		// As it reaches the sidecar: through JSON.
		data, err := json.Marshal(wb)
		if err != nil {
			t.Fatal(err)
		}
		var got authz.WireBundle
		if err := json.Unmarshal(data, &got); err != nil {
			t.Fatal(err)
		}
		eng := authz.New(authz.Config{})
		if err := eng.Load(context.Background(), got.Bundle()); err != nil {
			t.Fatal(err)
		}
		d := eng.Decide(context.Background(), &authz.Request{Protocol: authz.ProtocolHTTP, Method: "GET", Host: "httpbin", Path: "//admin",
			Workload: authz.Workload{Namespace: "foo", Name: "httpbin"}})
		if d.Allowed != tc.allowed {
			t.Errorf("pathNormalization %s: GET //admin allowed=%v (%s, normalized %q); want %v", tc.mode, d.Allowed, d.Reason, d.NormalizedPath, tc.allowed)
		}
	}
}
