package xds

import (
	"strings"
	"testing"
)

// rampartd refuses a change that adds an
// unknown field to an AuthorizationPolicy (AP-UNKNOWN-FIELD) or a
// RequestAuthentication (RA-UNKNOWN-FIELD), and keeps the last good policy.
func TestUnknownFieldRefused(t *testing.T) {
	for name, content := range map[string]string{
		"ap": `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: p, namespace: a}
spec: {rules: [{to: [{operation: {paths: ["/x"], pathz: ["/y"]}}]}]}
`,
		"pa": `apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: a}
spec: {mtls: {mode: STRICT}, portLevelMtlz: {}}
`,
		"ra": `apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: a}
spec: {jwtRules: [{issuer: "https://issuer.example", jwks: '{"keys":[]}', jwksURI: x}]}
`,
	} {
		t.Run(name, func(t *testing.T) {
			f := newFixture(t, baseConfig, nil)
			f.write("ap-a-2.yaml", content)
			_, _, err := f.change()
			if err == nil || !strings.Contains(err.Error(), "UNKNOWN-FIELD") {
				t.Fatalf("reload: err = %v, want an UNKNOWN-FIELD refusal", err)
			}
			t.Logf("refused: %v", err)
			wb, _, _ := f.x.Config("spiffe://cluster.local/ns/a/sa/app1")
			if !strings.Contains(wb.Modules["rampart/policy.rego"], `"/a"`) || strings.Contains(wb.Modules["rampart/policy.rego"], `"/x"`) {
				t.Errorf("a's bundle is not the last good policy:\n%s", wb.Modules["rampart/policy.rego"])
			}
		})
	}
}

// A PeerAuthentication that does not decode (here a mode misspelt) is
// refused whole, as the API server would refuse it: left out, a STRICT would
// quietly fall back to PERMISSIVE.
func TestUndecodablePeerAuthenticationRefused(t *testing.T) {
	f := newFixture(t, baseConfig, nil)
	f.write("pa-typo.yaml", `apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: a}
spec: {mtls: {mode: STRICTT}}
`)
	if _, _, err := f.change(); err == nil || !strings.Contains(err.Error(), "PA-SCHEMA") {
		t.Fatalf("reload: err = %v, want a PA-SCHEMA refusal", err)
	}
}
