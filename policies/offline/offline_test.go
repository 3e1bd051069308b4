package offline

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/bundle"
	"github.com/rampart-mesh/rampart/policies/compile"
	"github.com/rampart-mesh/rampart/policies/source"
)

// A policy written for opa-envoy-plugin, in the request shape its documentation
// shows: input.attributes.request.http and parsed_path.
const opaEnvoyPolicy = `package envoy.authz

import rego.v1

default allow := false

allow if {
	input.attributes.request.http.method == "GET"
	input.parsed_path[0] == "api"
	startswith(input.attributes.source.principal, "spiffe://cluster.local/ns/bar/")
}

allow if {
	input.attributes.request.http.method == "POST"
	input.parsed_query.token == ["let-me-in"]
}
`

const customPolicy = `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: opa, namespace: foo}
spec:
  action: CUSTOM
  provider: {name: opa}
  rules:
  - to: [{operation: {paths: ["/api/*"]}}]
`

func writeBundle(t *testing.T, signKey *rsa.PrivateKey, tamper bool) string {
	t.Helper()
	b := bundle.Bundle{
		Manifest: bundle.Manifest{Revision: "v7", Roots: &[]string{"envoy"}},
		Modules:  []bundle.ModuleFile{{URL: "/envoy/authz.rego", Path: "/envoy/authz.rego", Raw: []byte(opaEnvoyPolicy), Parsed: ast.MustParseModule(opaEnvoyPolicy)}},
		Data:     map[string]any{},
	}
	if signKey != nil {
		der := x509.MarshalPKCS1PrivateKey(signKey)
		keyPEM := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: der})
		if err := b.GenerateSignature(bundle.NewSigningConfig(string(keyPEM), "RS256", ""), "rampart", false); err != nil {
			t.Fatal(err)
		}
	}
	if tamper {
		b.Modules[0].Raw = []byte(strings.Replace(opaEnvoyPolicy, `== "GET"`, `!= "DELETE"`, 1))
		b.Modules[0].Parsed = ast.MustParseModule(string(b.Modules[0].Raw))
	}
	var buf bytes.Buffer
	if err := bundle.NewWriter(&buf).Write(b); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "bundle.tar.gz")
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func meshWithRego(t *testing.T, bundlePath, keyPath string) compile.Mesh {
	t.Helper()
	y := "extensionProviders:\n- name: opa\n  rampartRego:\n    bundle: " + bundlePath + "\n"
	if keyPath != "" {
		y += "    publicKey: " + keyPath + "\n"
	}
	m, err := compile.ParseMesh([]byte(y))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func req(method, path, principal string) RequestSpec {
	var r RequestSpec
	r.Workload.Namespace = "foo"
	r.Method, r.Path, r.Source.Principal = method, path, principal
	return r
}

// An opa-envoy-plugin bundle attached with CUSTOM allows and denies as its Rego
// says, only for the requests the CUSTOM rules select.
func TestOPAEnvoyBundleThroughCustom(t *testing.T) {
	objs, err := source.Parse("custom.yaml", []byte(customPolicy))
	if err != nil {
		t.Fatal(err)
	}
	mesh := meshWithRego(t, writeBundle(t, nil, false), "")
	for _, tc := range []struct {
		name    string
		req     RequestSpec
		allowed bool
		status  int
	}{
		{"GET from bar is allowed by the bundle", req("GET", "/api/items", "cluster.local/ns/bar/sa/sleep"), true, 200},
		{"GET from another namespace is denied by the bundle", req("GET", "/api/items", "cluster.local/ns/baz/sa/sleep"), false, 403},
		{"POST with the token query parameter is allowed", req("POST", "/api/items?token=let-me-in", "cluster.local/ns/baz/sa/x"), true, 200},
		{"POST without it is denied", req("POST", "/api/items", "cluster.local/ns/bar/sa/sleep"), false, 403},
		{"a path the CUSTOM rules do not select never reaches the bundle", req("DELETE", "/other", ""), true, 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res, err := Check(context.Background(), objs, mesh, "", tc.req)
			if err != nil {
				t.Fatal(err)
			}
			if res.Allowed != tc.allowed || res.Status != tc.status {
				t.Fatalf("allowed=%t status=%d (%s); want allowed=%t status=%d", res.Allowed, res.Status, res.Reason, tc.allowed, tc.status)
			}
			if !tc.allowed && res.Policy != "foo/opa" {
				t.Fatalf("policy = %q, want foo/opa", res.Policy)
			}
		})
	}
}

// With a verification key configured, only a bundle signed with it loads.
func TestSignedBundles(t *testing.T) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	pubDER, _ := x509.MarshalPKIXPublicKey(&key.PublicKey)
	keyPath := filepath.Join(t.TempDir(), "pub.pem")
	if err := os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER}), 0o644); err != nil {
		t.Fatal(err)
	}
	objs, _ := source.Parse("custom.yaml", []byte(customPolicy))
	other, _ := rsa.GenerateKey(rand.Reader, 2048)
	for _, tc := range []struct {
		name    string
		bundle  string
		wantErr string
	}{
		{"signed with the key", writeBundle(t, key, false), ""},
		{"unsigned", writeBundle(t, nil, false), "missing .signatures.json"},
		{"tampered after signing", writeBundle(t, key, true), "digest mismatch"},
		{"signed with another key", writeBundle(t, other, false), "verification"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Check(context.Background(), objs, meshWithRego(t, tc.bundle, keyPath), "", req("GET", "/api/x", "cluster.local/ns/bar/sa/sleep"))
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("a correctly signed bundle was refused: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("err = %v, want it to mention %q", err, tc.wantErr)
			}
		})
	}
}
