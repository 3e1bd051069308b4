package offline

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	josejwt "github.com/go-jose/go-jose/v4/jwt"
	"github.com/rampart-mesh/rampart/policies/compile"
	"github.com/rampart-mesh/rampart/policies/source"
)

func signer(t *testing.T) (jose.Signer, string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: jose.JSONWebKey{Key: key, KeyID: "k1"}}, (&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		t.Fatal(err)
	}
	jwks, _ := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &key.PublicKey, KeyID: "k1", Algorithm: "ES256", Use: "sig"}}})
	return s, string(jwks)
}

func token(t *testing.T, s jose.Signer, aud string, exp time.Duration, extra map[string]any) string {
	t.Helper()
	claims := josejwt.Claims{Issuer: "https://issuer.example.com", Subject: "alice", Audience: josejwt.Audience{aud},
		Expiry: josejwt.NewNumericDate(time.Now().Add(exp)), IssuedAt: josejwt.NewNumericDate(time.Now())}
	tok, err := josejwt.Signed(s).Claims(claims).Claims(extra).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// RequestAuthentication through the offline pipeline: the same authenticator a
// sidecar runs, before authorization.
func TestRequestAuthentication(t *testing.T) {
	s, jwks := signer(t)
	jwksJSON, _ := json.Marshal(jwks)
	y := `apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: foo}
spec:
  jwtRules:
  - issuer: https://issuer.example.com
    audiences: [httpbin]
    jwks: ` + string(jwksJSON) + `
    outputClaimToHeaders: [{header: x-jwt-group, claim: group}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: require-jwt, namespace: foo}
spec:
  rules:
  - from: [{source: {requestPrincipals: ["https://issuer.example.com/alice"]}}]
`
	objs, err := source.Parse("ra.yaml", []byte(y))
	if err != nil {
		t.Fatal(err)
	}
	mesh, _ := compile.Mesh{}.WithDefaults()
	good := token(t, s, "httpbin", time.Hour, map[string]any{"group": "admins"})
	for _, tc := range []struct {
		name    string
		headers map[string]any
		status  int
		check   func(t *testing.T, r Result)
	}{
		{"valid token: allowed, claim copied to a header, token removed", map[string]any{"authorization": "Bearer " + good}, 200, func(t *testing.T, r Result) {
			if r.UpstreamHeaders.Added["x-jwt-group"] != "admins" {
				t.Errorf("upstream headers %+v: want x-jwt-group: admins added", r.UpstreamHeaders)
			}
			if len(r.UpstreamHeaders.Removed) != 1 || r.UpstreamHeaders.Removed[0] != "authorization" {
				t.Errorf("upstream headers %+v: want authorization removed", r.UpstreamHeaders)
			}
		}},
		{"no token: no principal, the ALLOW policy denies", nil, 403, nil},
		{"expired token: 401", map[string]any{"authorization": "Bearer " + token(t, s, "httpbin", -time.Hour, nil)}, 401, func(t *testing.T, r Result) {
			if !strings.HasPrefix(r.WWWAuthenticate, "Bearer") {
				t.Errorf("WWW-Authenticate %q", r.WWWAuthenticate)
			}
		}},
		{"wrong audience: 403", map[string]any{"authorization": "Bearer " + token(t, s, "other", time.Hour, nil)}, 403, func(t *testing.T, r Result) {
			if r.Stage != "authn" {
				t.Errorf("stage %q, want authn", r.Stage)
			}
		}},
		{"forged output header is stripped", map[string]any{"authorization": "Bearer " + good, "x-jwt-group": "forged"}, 200, func(t *testing.T, r Result) {
			if r.UpstreamHeaders.Changed["x-jwt-group"] != "admins" {
				t.Errorf("upstream headers %+v: want x-jwt-group changed to admins", r.UpstreamHeaders)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var req RequestSpec
			req.Workload.Namespace = "foo"
			req.Headers = tc.headers
			res, err := Check(context.Background(), objs, mesh, "", req)
			if err != nil {
				t.Fatal(err)
			}
			if res.Status != tc.status {
				t.Fatalf("status %d (%s), want %d", res.Status, res.Reason, tc.status)
			}
			if tc.check != nil {
				tc.check(t, res)
			}
		})
	}
}

// A claim a RequestAuthentication lists in spaceDelimitedClaims is split on
// whitespace before authorization matches it; one it does not list is not.
func TestSpaceDelimitedClaims(t *testing.T) {
	s, jwks := signer(t)
	jwksJSON, _ := json.Marshal(jwks)
	policy := func(split string) []byte {
		return []byte(`apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: foo}
spec:
  jwtRules:
  - issuer: https://issuer.example.com
    jwks: ` + string(jwksJSON) + `
    spaceDelimitedClaims: [` + split + `]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: admins, namespace: foo}
spec:
  rules:
  - when: [{key: "request.auth.claims[roles]", values: [admin]}]
`)
	}
	tok := token(t, s, "x", time.Hour, map[string]any{"roles": "admin editor"})
	mesh, _ := compile.Mesh{}.WithDefaults()
	for _, tc := range []struct {
		split  string
		status int
	}{{"roles", 200}, {"other", 403}} {
		objs, err := source.Parse("ra.yaml", policy(tc.split))
		if err != nil {
			t.Fatal(err)
		}
		var req RequestSpec
		req.Workload.Namespace = "foo"
		req.Headers = map[string]any{"authorization": "Bearer " + tok}
		res, err := Check(context.Background(), objs, mesh, "", req)
		if err != nil {
			t.Fatal(err)
		}
		if res.Status != tc.status {
			t.Fatalf("spaceDelimitedClaims [%s]: status %d (%s), want %d", tc.split, res.Status, res.Reason, tc.status)
		}
	}
}

// AUDIT, DENY and ALLOW policies see the request after request authentication,
// as Envoy's RBAC filter runs after jwt_authn: the headers authentication writes
// cannot be forged by the client, and the token header it removes is gone.
// CUSTOM policies run before authentication and see the request as sent.
func TestAuthorizationSeesAuthenticatedRequest(t *testing.T) {
	s, jwks := signer(t)
	jwksJSON, _ := json.Marshal(jwks)
	ra := `apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: foo}
spec:
  jwtRules:
  - issuer: https://issuer.example.com
    jwks: ` + string(jwksJSON) + `
    outputClaimToHeaders: [{header: x-user, claim: sub}]
`
	mesh, err := compile.ParseMesh([]byte("extensionProviders:\n- name: ext\n  envoyExtAuthzGrpc: {service: ext.foo.svc.cluster.local, port: 9000}\n"))
	if err != nil {
		t.Fatal(err)
	}
	alice := "Bearer " + token(t, s, "httpbin", time.Hour, nil)
	for _, tc := range []struct {
		name     string
		policy   string
		headers  map[string]any
		extDeny  bool
		status   int
		policyID string
	}{
		{"a forged output header without a token does not satisfy ALLOW", `
spec:
  rules: [{when: [{key: "request.headers[x-user]", values: [admin]}]}]`, map[string]any{"x-user": "admin"}, false, 403, ""},
		{"a forged output header beside a valid token does not satisfy ALLOW", `
spec:
  rules: [{when: [{key: "request.headers[x-user]", values: [admin]}]}]`, map[string]any{"x-user": "admin", "authorization": alice}, false, 403, ""},
		{"the output header authentication sets satisfies ALLOW", `
spec:
  rules: [{when: [{key: "request.headers[x-user]", values: [alice]}]}]`, map[string]any{"authorization": alice}, false, 200, "foo/p"},
		{"the token header removed after success is not seen by DENY", `
spec:
  action: DENY
  rules: [{when: [{key: "request.headers[authorization]", values: ["*"]}]}]`, map[string]any{"authorization": alice}, false, 200, ""},
		{"CUSTOM does not see the token's identity", `
spec:
  action: CUSTOM
  provider: {name: ext}
  rules: [{from: [{source: {requestPrincipals: ["*"]}}]}]`, map[string]any{"authorization": alice}, true, 200, ""},
		{"CUSTOM does not see headers authentication sets", `
spec:
  action: CUSTOM
  provider: {name: ext}
  rules: [{when: [{key: "request.headers[x-user]", values: [alice]}]}]`, map[string]any{"authorization": alice}, true, 200, ""},
		{"CUSTOM sees the token header authentication removes", `
spec:
  action: CUSTOM
  provider: {name: ext}
  rules: [{when: [{key: "request.headers[authorization]", values: ["*"]}]}]`, map[string]any{"authorization": alice}, true, 403, "foo/p"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			objs, err := source.Parse("p.yaml", []byte(ra+"---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: foo}"+tc.policy+"\n"))
			if err != nil {
				t.Fatal(err)
			}
			var req RequestSpec
			req.Workload.Namespace = "foo"
			req.Headers = tc.headers
			if tc.extDeny {
				req.ExtAuthz = "deny"
			}
			res, err := Check(context.Background(), objs, mesh, "", req)
			if err != nil {
				t.Fatal(err)
			}
			if res.Status != tc.status || res.Policy != tc.policyID {
				t.Fatalf("status %d policy %q (%s); want %d %q", res.Status, res.Policy, res.Reason, tc.status, tc.policyID)
			}
		})
	}
}
