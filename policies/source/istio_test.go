package source

import (
	"strings"
	"testing"
)

// Objects in Istio's groups that the API server would refuse are refused
// here too, naming the file, line and object, rather than read as nothing (a
// misspelt kind) or as something Istio does not serve.
func TestIstioKinds(t *testing.T) {
	doc := func(apiVersion, kind string) string {
		return "# policy\napiVersion: " + apiVersion + "\nkind: " + kind + "\nmetadata: {name: x, namespace: foo}\nspec: {}\n"
	}
	for _, tc := range []struct {
		apiVersion, kind, wantErr string
	}{
		{"security.istio.io/v1", "AuthorizationPolicy", ""},
		{"security.istio.io/v1beta1", "PeerAuthentication", ""},
		{"networking.istio.io/v1alpha3", "VirtualService", ""},
		{"networking.istio.io/v1alpha3", "EnvoyFilter", ""},
		{"apps/v1", "Deployment", ""},
		{"security.istio.io/v1", "authorizationpolicy", `f.yaml:2: authorizationpolicy foo/x: security.istio.io has no kind "authorizationpolicy" (known: AuthorizationPolicy, PeerAuthentication, RequestAuthentication)`},
		{"security.istio.io/v1", "AuthorizationPolicies", `has no kind "AuthorizationPolicies"`},
		{"security.istio.io/v1alpha1", "AuthorizationPolicy", `apiVersion "security.istio.io/v1alpha1": AuthorizationPolicy is served at security.istio.io/v1, security.istio.io/v1beta1`},
		{"security.istio.io/v2", "AuthorizationPolicy", `"security.istio.io/v2"`},
		{"security.istio.io/", "AuthorizationPolicy", "has no version"},
		{"Security.Istio.io/v1", "AuthorizationPolicy", "in lower case"},
		{"networking.istio.io/v1", "EnvoyFilter", "EnvoyFilter is served at networking.istio.io/v1alpha3"},
	} {
		_, err := Parse("f.yaml", []byte(doc(tc.apiVersion, tc.kind)))
		if tc.wantErr == "" {
			if err != nil {
				t.Errorf("%s %s: %v", tc.apiVersion, tc.kind, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
			t.Errorf("%s %s: %v; want an error with %q", tc.apiVersion, tc.kind, err, tc.wantErr)
		}
	}
}
