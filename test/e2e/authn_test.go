package e2e

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	josejwt "github.com/go-jose/go-jose/v4/jwt"
	"github.com/rampart-mesh/rampart/test/internal/procs"
)

// A PERMISSIVE sidecar with RequestAuthentication: a JWT from the test issuer
// passes with outputClaimToHeaders applied (the client's forged copy of that
// header is gone before authorization), a bad one gets 401; plaintext and
// mTLS callers are both served and the metrics tell them apart.
func TestSidecarJWTAndPermissive(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	sig, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: jose.JSONWebKey{Key: key, KeyID: "k1"}}, (&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		t.Fatal(err)
	}
	jwks, _ := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &key.PublicKey, KeyID: "k1", Algorithm: "ES256", Use: "sig"}}})
	jwksJSON, _ := json.Marshal(string(jwks))
	tok := func(exp time.Duration) string {
		s, err := josejwt.Signed(sig).Claims(josejwt.Claims{Issuer: "https://issuer.test", Subject: "alice",
			Expiry: josejwt.NewNumericDate(time.Now().Add(exp))}).Claims(map[string]any{"group": "admins"}).Serialize()
		if err != nil {
			t.Fatal(err)
		}
		return s
	}

	m := startMesh(t)
	policies := filepath.Join(m.dir, "authn.yaml")
	if err := os.WriteFile(policies, []byte(`apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: foo}
spec:
  jwtRules:
  - issuer: https://issuer.test
    jwks: `+string(jwksJSON)+`
    outputClaimToHeaders: [{header: x-jwt-group, claim: group}]
---
# Authorization sees the request after authentication: the header it writes
# cannot be forged, so this never matches the client's copy.
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-forged, namespace: foo}
spec:
  action: DENY
  rules: [{when: [{key: "request.headers[x-jwt-group]", values: [forged]}]}]
`), 0o644); err != nil {
		t.Fatal(err)
	}
	bundle := filepath.Join(m.dir, "bundle")
	procs.Run(t, "rampartctl", "authz", "compile", "-f", policies, "--workload", "foo/httpbin", "--out", bundle)

	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "group=%s authz=%s", r.Header.Get("x-jwt-group"), r.Header.Get("authorization"))
	}))
	defer app.Close()
	inboundAddr := procs.FreeAddr(t)
	side := procs.Start(t, m.dir, "sidecar-httpbin", "rampart-sidecar", "--control-plane", m.cp, "--root-cert", m.root,
		"--token-file", m.token(t, "foo", "httpbin"), "--inbound-listen", inboundAddr, "--app", strings.TrimPrefix(app.URL, "http://"),
		"--mtls-mode", "PERMISSIVE", "--authz-bundle", bundle)
	procs.WaitTCP(t, inboundAddr, 20*time.Second)
	side.WaitLog(t, "metrics serving", 5*time.Second)
	metricsURL := regexp.MustCompile(`addr=(http://\S+/metrics)`).FindStringSubmatch(side.Output())[1]

	plain := &http.Client{Timeout: 5 * time.Second}
	call := func(c *http.Client, scheme, bearer string) (int, string, http.Header) {
		t.Helper()
		req, _ := http.NewRequest("GET", scheme+"://"+inboundAddr+"/headers", nil)
		if bearer != "" {
			req.Header.Set("authorization", "Bearer "+bearer)
		}
		req.Header.Set("x-jwt-group", "forged")
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("request: %v", err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), resp.Header
	}
	if code, body, _ := call(plain, "http", tok(time.Hour)); code != 200 || body != "group=admins authz=" {
		t.Fatalf("valid JWT: %d %q; want 200 with the claim header set and the token removed", code, body)
	}
	if code, _, h := call(plain, "http", tok(-time.Hour)); code != 401 || !strings.HasPrefix(h.Get("WWW-Authenticate"), "Bearer") {
		t.Fatalf("expired JWT: %d, WWW-Authenticate %q; want 401 with a Bearer challenge", code, h.Get("WWW-Authenticate"))
	}
	if code, body, _ := call(plain, "http", ""); code != 200 || body != "group= authz=" {
		t.Fatalf("no JWT: %d %q; want 200 with the forged claim header stripped", code, body)
	}

	// The same port also serves mTLS callers.
	sock, _ := m.sidecar(t, "bar", "sleep")
	src := source(t, sock)
	mtls := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: meshPeerTLS(src, td)}}
	if code, _, _ := call(mtls, "https", tok(time.Hour)); code != 200 {
		t.Fatalf("mTLS caller on a PERMISSIVE port: %d", code)
	}
	resp, err := http.Get(metricsURL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	text, _ := io.ReadAll(resp.Body)
	for _, want := range []string{`connection_security_policy="mutual_tls"`, `connection_security_policy="none"`, `response_code="401"`} {
		if !strings.Contains(string(text), want) {
			t.Errorf("sidecar metrics lack %s", want)
		}
	}
	// Plaintext callers are still there, so STRICT is not safe yet, and the report says who.
	out, err := procs.RunErr(t, "rampartctl", "mtls", "readiness", "--metrics", metricsURL)
	if err == nil || !strings.Contains(out, "foo/httpbin") || !strings.Contains(out, "127.0.0.1") || !strings.Contains(out, "not yet") {
		t.Fatalf("mtls readiness: err %v\n%s", err, out)
	}
}
