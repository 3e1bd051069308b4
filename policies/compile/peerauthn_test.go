package compile

import (
	"testing"

	"github.com/rampart-mesh/rampart/policies/source"
)

func pa(t *testing.T, y string) []*PeerAuthn {
	t.Helper()
	objs, err := source.Parse("pa.yaml", []byte(y))
	if err != nil {
		t.Fatal(err)
	}
	out, fs := DecodePeerAuthentications(objs, "foo")
	for _, f := range fs {
		t.Fatalf("decode: %s", f)
	}
	return out
}

func TestResolvePeerAuthentication(t *testing.T) {
	m, _ := Mesh{}.WithDefaults()
	wl := Workload{Namespace: "foo", Name: "httpbin", Labels: map[string]string{"app": "httpbin"}}
	const meshStrict = `apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: rampart-system}
spec: {mtls: {mode: STRICT}}
`
	for _, tc := range []struct {
		name   string
		yaml   string
		port   int
		want   string
		policy string
		codes  []string
	}{
		{name: "no policy: PERMISSIVE", yaml: "", port: 80, want: ModePermissive},
		{name: "mesh STRICT", yaml: meshStrict, port: 80, want: ModeStrict, policy: "rampart-system/default"},
		{name: "namespace overrides mesh", yaml: meshStrict + "---\n" + `apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: ns, namespace: foo}
spec: {mtls: {mode: PERMISSIVE}}
`, port: 80, want: ModePermissive, policy: "foo/ns"},
		{name: "UNSET inherits", yaml: meshStrict + "---\n" + `apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: ns, namespace: foo}
spec: {mtls: {mode: UNSET}}
`, port: 80, want: ModeStrict, policy: "rampart-system/default"},
		{name: "workload overrides namespace, port-level overrides workload", yaml: meshStrict + "---\n" + `apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: wl, namespace: foo}
spec:
  selector: {matchLabels: {app: httpbin}}
  mtls: {mode: DISABLE}
  portLevelMtls: {8080: {mode: STRICT}}
`, port: 8080, want: ModeStrict, policy: "foo/wl (port 8080)"},
		{name: "workload policy on another port", yaml: `apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: wl, namespace: foo}
spec:
  selector: {matchLabels: {app: httpbin}}
  mtls: {mode: DISABLE}
  portLevelMtls: {8080: {mode: STRICT}}
`, port: 80, want: ModeDisable, policy: "foo/wl"},
		{name: "selector that does not match", yaml: `apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: wl, namespace: foo}
spec: {selector: {matchLabels: {app: other}}, mtls: {mode: STRICT}}
`, port: 80, want: ModePermissive},
		{name: "the oldest namespace policy wins", yaml: `apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: newer, namespace: foo, creationTimestamp: "2025-01-02T00:00:00Z"}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: older, namespace: foo, creationTimestamp: "2024-01-01T00:00:00Z"}
spec: {mtls: {mode: DISABLE}}
`, port: 80, want: ModeDisable, policy: "foo/older"},
		{name: "selector in the root namespace is ignored", yaml: `apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: sel, namespace: rampart-system}
spec: {selector: {matchLabels: {app: httpbin}}, mtls: {mode: STRICT}}
`, port: 80, want: ModePermissive, codes: []string{CodePARootSelector}},
		{name: "portLevelMtls without selector is ignored", yaml: `apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: ns, namespace: foo}
spec: {mtls: {mode: PERMISSIVE}, portLevelMtls: {80: {mode: STRICT}}}
`, port: 80, want: ModePermissive, policy: "foo/ns", codes: []string{CodePAPortNoSelect}},
		{name: "another namespace's policy does not apply", yaml: `apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: ns, namespace: bar}
spec: {mtls: {mode: STRICT}}
`, port: 80, want: ModePermissive},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var pas []*PeerAuthn
			if tc.yaml != "" {
				pas = pa(t, tc.yaml)
			}
			got, fs := ResolvePeerAuthentication(m, wl, tc.port, pas)
			if got.Mode != tc.want || got.Policy != tc.policy {
				t.Fatalf("got %+v, want mode %s from %q", got, tc.want, tc.policy)
			}
			var codes []string
			for _, f := range fs {
				codes = append(codes, f.Code)
			}
			if len(codes) != len(tc.codes) || (len(codes) > 0 && codes[0] != tc.codes[0]) {
				t.Fatalf("findings %v, want %v", codes, tc.codes)
			}
		})
	}
}
