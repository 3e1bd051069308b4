package proxy

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	josejwt "github.com/go-jose/go-jose/v4/jwt"
	"github.com/google/go-cmp/cmp"
	"github.com/rampart-mesh/rampart/authn/jwt"
	"github.com/rampart-mesh/rampart/authz"
	"github.com/rampart-mesh/rampart/ca"
	"github.com/rampart-mesh/rampart/ca/agent"
	"github.com/rampart-mesh/rampart/ca/catest"
	"github.com/rampart-mesh/rampart/policies/compile"
	"github.com/rampart-mesh/rampart/policies/offline"
	"github.com/rampart-mesh/rampart/policies/source"
)

func TestMain(m *testing.M) { catest.MainWithLeakCheck(m) }

var testWorkload = authz.Workload{Namespace: "foo", Name: "httpbin", Labels: map[string]string{"app": "httpbin"}}

// Bundle v1 trusts issuer A and allows only A's alice. Bundle v2 moves to
// issuer B and allows any authenticated caller. Neither allows a token A
// issued to bob: v1's policy denies it, v2 does not trust A (401). v2's
// policy with v1's rules, a half-applied bundle, would allow it.
const (
	policyV1 = `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-alice, namespace: foo}
spec:
  selector: {matchLabels: {app: httpbin}}
  rules:
  - from: [{source: {requestPrincipals: ["https://a.example/alice"]}}]
`
	policyV2 = `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-any-jwt, namespace: foo}
spec:
  selector: {matchLabels: {app: httpbin}}
  rules:
  - from: [{source: {requestPrincipals: ["*"]}}]
`
	issuerA = "https://a.example"
	issuerB = "https://b.example"
)

// issuer is a JWT issuer with an EC signing key.
type issuer struct {
	iss  string
	sig  jose.Signer
	jwks string
}

func newIssuer(t *testing.T, iss string) issuer {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: jose.JSONWebKey{Key: key, KeyID: "k1"}}, (&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		t.Fatal(err)
	}
	jwks, err := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &key.PublicKey, KeyID: "k1", Algorithm: "ES256", Use: "sig"}}})
	if err != nil {
		t.Fatal(err)
	}
	return issuer{iss: iss, sig: s, jwks: string(jwks)}
}

func (i issuer) token(t *testing.T, sub string) string {
	t.Helper()
	tok, err := josejwt.Signed(i.sig).Claims(josejwt.Claims{Issuer: i.iss, Subject: sub, Expiry: josejwt.NewNumericDate(time.Now().Add(time.Hour))}).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func (i issuer) rule() jwt.Rule { return jwt.Rule{Issuer: i.iss, JWKS: i.jwks} }

// modules compiles the AuthorizationPolicies in policies for testWorkload, as rampartd does.
func modules(t *testing.T, policies string) map[string]string {
	t.Helper()
	objs, err := source.Parse("policies.yaml", []byte(policies))
	if err != nil {
		t.Fatal(err)
	}
	mesh, err := compile.Mesh{}.WithDefaults()
	if err != nil {
		t.Fatal(err)
	}
	out, fs := offline.Compile(objs, mesh, compile.Workload{Namespace: testWorkload.Namespace, Name: testWorkload.Name, Labels: testWorkload.Labels})
	for _, f := range fs {
		t.Fatalf("compile: %s", f)
	}
	return offline.Bundle(out, mesh, nil).Modules
}

func rulesJSON(t *testing.T, rules ...jwt.Rule) json.RawMessage {
	t.Helper()
	if rules == nil {
		rules = []jwt.Rule{}
	}
	js, err := json.Marshal(rules)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

func limits(n int) []authz.RateLimit {
	out := make([]authz.RateLimit, n)
	for i := range out {
		out[i] = authz.RateLimit{ID: fmt.Sprintf("foo/rl/l%d", i), Key: "Shared", Requests: 100, Period: "1s", Burst: 100}
	}
	return out
}

// newTestProxy builds an inbound sidecar with New; nothing runs.
func newTestProxy(t *testing.T, log *slog.Logger, bundleDir string) *Proxy {
	t.Helper()
	a := catest.Authority(t)
	p, err := New(Config{
		Agent:   agent.Config{ControlPlane: "127.0.0.1:1", RootCerts: a.Roots(), Identity: ca.Identity{Namespace: "foo", ServiceAccount: "httpbin"}},
		Inbound: &InboundConfig{Listen: "127.0.0.1:0", App: "127.0.0.1:8080", BundleDir: bundleDir, Workload: testWorkload},
		Log:     log,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.authn.stop)
	return p
}

// state is what the sidecar enforces: the bundle revision, the outcome for
// each caller (request authentication, then authorization, as the inbound
// path runs them), the mTLS mode and the number of rate limits.
type state struct {
	Revision string
	Outcomes map[string]string
	PeerMode string
	Limits   int
}

func stateOf(t *testing.T, p *Proxy, callers map[string]string) state {
	t.Helper()
	s := state{Revision: p.engine.Revision(), Outcomes: map[string]string{}, PeerMode: p.peerMode.get(), Limits: p.limiter.Limits()}
	for name, tok := range callers {
		hr := httptest.NewRequest("GET", "http://httpbin.foo/", nil)
		hr.Header.Set("Authorization", "Bearer "+tok)
		an := p.authn.Authenticate(t.Context(), hr)
		if an.Status != 0 {
			s.Outcomes[name] = fmt.Sprintf("%d (authn)", an.Status)
			continue
		}
		ar := &authz.Request{ID: name, Protocol: authz.ProtocolHTTP, Method: "GET", Host: "httpbin.foo", Path: "/", Scheme: "http",
			SourceIP: "10.0.0.1", Workload: testWorkload, Headers: []authz.Header{{Name: "authorization", Value: "Bearer " + tok}}}
		set := make([]authz.Header, len(an.SetHeaders))
		for i, h := range an.SetHeaders {
			set[i] = authz.Header{Name: h[0], Value: h[1]}
		}
		d := p.engine.Decide(t.Context(), ar.AfterAuthn(an.Auth, an.RemoveHeaders, set))
		if d.Allowed {
			s.Outcomes[name] = "allowed"
		} else {
			s.Outcomes[name] = fmt.Sprintf("%d (authz)", d.Status)
		}
	}
	return s
}

// bundleCase is a bundle v2 with one part broken (or none).
type bundleCase struct {
	name    string
	mutate  func(wb *authz.WireBundle)
	wantErr string // "" means v2 is valid and must be in force whole
	// dirErr is what the refusal says for a bundle directory, if not wantErr.
	dirErr string
	// xdsOnly: the broken part is not in a bundle directory (rate limits and
	// providers come only over xDS).
	xdsOnly bool
}

// mutateRule changes the bundle's first JWT rule.
func mutateRule(f func(*jwt.Rule)) func(*authz.WireBundle) {
	return func(wb *authz.WireBundle) {
		var rules []jwt.Rule
		if err := json.Unmarshal(wb.JWTRules, &rules); err != nil || len(rules) == 0 {
			panic(fmt.Sprintf("bundle JWT rules %s: %v", wb.JWTRules, err))
		}
		f(&rules[0])
		js, err := json.Marshal(rules)
		if err != nil {
			panic(err)
		}
		wb.JWTRules = js
	}
}

func bundleCases() []bundleCase {
	return []bundleCase{
		{name: "every part valid: v2 in force", mutate: func(*authz.WireBundle) {}},
		{name: "JWT rule with an empty fromParams entry", wantErr: "request authentication rules", dirErr: "authn.json: invalid jwt config",
			mutate: mutateRule(func(r *jwt.Rule) { r.FromParams = []string{""} })},
		{name: "JWT rule with both jwks and jwksUri", wantErr: "jwks and jwksUri",
			mutate: mutateRule(func(r *jwt.Rule) { r.JWKSURI = issuerB + "/jwks" })},
		{name: "JWT rule needing discovery from an issuer that is not a URL", wantErr: "discovery",
			mutate: mutateRule(func(r *jwt.Rule) { *r = jwt.Rule{Issuer: "b-issuer"} })},
		{name: "unknown PeerAuthentication mode", wantErr: "peer modes", dirErr: "peer.json: unknown mode", mutate: func(wb *authz.WireBundle) {
			wb.Peer = json.RawMessage(`{"mode":"BOGUS"}`)
		}},
		{name: "invalid rate limit", wantErr: "rate limits", xdsOnly: true, mutate: func(wb *authz.WireBundle) {
			wb.RateLimits = append(wb.RateLimits, authz.RateLimit{ID: "foo/rl/bad", Key: "Shared", Requests: 1, Period: "never", Burst: 1})
		}},
		{name: "CUSTOM provider that does not load", wantErr: "opa", xdsOnly: true, mutate: func(wb *authz.WireBundle) {
			wb.Providers = map[string]authz.WireProvider{"opa": {Query: "data.envoy.authz.allow", Bundle: []byte("not a bundle")}}
		}},
		{name: "Rego that does not compile", wantErr: "broken.rego", mutate: func(wb *authz.WireBundle) {
			wb.Modules["rampart/broken.rego"] = "package rampart.broken\n\nthis is not rego\n"
		}},
	}
}

// A bundle with any part refused changes nothing: apply returns an error (the
// update is NACKed) and the engine, the JWT rules, the mTLS mode and the rate
// limits all stay v1's. Before the fix, a refused JWT rule or peer mode left
// v2's Rego in force with v1's rules, and bob got through.
func TestApplyIsAllOrNothing(t *testing.T) {
	a, b := newIssuer(t, issuerA), newIssuer(t, issuerB)
	callers := map[string]string{"alice@A": a.token(t, "alice"), "bob@A": a.token(t, "bob"), "bob@B": b.token(t, "bob")}
	modsV1, modsV2 := modules(t, policyV1), modules(t, policyV2)
	v1State := state{Revision: "v1", PeerMode: "PERMISSIVE", Limits: 1,
		Outcomes: map[string]string{"alice@A": "allowed", "bob@A": "403 (authz)", "bob@B": "401 (authn)"}}
	v2State := state{Revision: "v2", PeerMode: "STRICT", Limits: 2,
		Outcomes: map[string]string{"alice@A": "401 (authn)", "bob@A": "401 (authn)", "bob@B": "allowed"}}

	for _, tc := range bundleCases() {
		t.Run(tc.name, func(t *testing.T) {
			p := newTestProxy(t, nil, "")
			ctx := t.Context()
			v1 := authz.WireBundle{Revision: "v1", Modules: modsV1, JWTRules: rulesJSON(t, a.rule()), Peer: json.RawMessage(`{"mode":"PERMISSIVE"}`), RateLimits: limits(1)}
			if err := p.apply(ctx, v1, p.authn, p.peerMode); err != nil {
				t.Fatalf("apply v1: %v", err)
			}
			if diff := cmp.Diff(v1State, stateOf(t, p, callers)); diff != "" {
				t.Fatalf("after v1 (-want +got):\n%s", diff)
			}
			mods := make(map[string]string, len(modsV2))
			for k, v := range modsV2 {
				mods[k] = v
			}
			v2 := authz.WireBundle{Revision: "v2", Modules: mods, JWTRules: rulesJSON(t, b.rule()), Peer: json.RawMessage(`{"mode":"STRICT"}`), RateLimits: limits(2)}
			tc.mutate(&v2)
			err := p.apply(ctx, v2, p.authn, p.peerMode)
			want := v1State
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("apply v2: %v", err)
				}
				want = v2State
			} else if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("apply v2: error %v, want one mentioning %q", err, tc.wantErr)
			}
			if diff := cmp.Diff(want, stateOf(t, p, callers)); diff != "" {
				t.Errorf("after v2 (-want +got):\n%s", diff)
			}
		})
	}
}

// writeBundleDir writes wb as `rampartctl authz compile --out` lays a bundle
// directory out: the modules, authn.json, peer.json and .revision last.
func writeBundleDir(t *testing.T, dir string, wb authz.WireBundle) {
	t.Helper()
	for name, src := range wb.Modules {
		path := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for name, data := range map[string][]byte{"authn.json": wb.JWTRules, "peer.json": wb.Peer} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, ".revision"), []byte(wb.Revision+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
}

// The bundle directory (--authz-bundle) is reloaded the same way: a new
// revision with any part refused is logged and leaves v1 in force, and is not
// retried until the revision changes.
func TestReloadBundleDirIsAllOrNothing(t *testing.T) {
	a, b := newIssuer(t, issuerA), newIssuer(t, issuerB)
	callers := map[string]string{"alice@A": a.token(t, "alice"), "bob@A": a.token(t, "bob"), "bob@B": b.token(t, "bob")}
	modsV1, modsV2 := modules(t, policyV1), modules(t, policyV2)
	// The directory holds no rate limits.
	v1State := state{Revision: "v1", PeerMode: "PERMISSIVE",
		Outcomes: map[string]string{"alice@A": "allowed", "bob@A": "403 (authz)", "bob@B": "401 (authn)"}}
	v2State := state{Revision: "v2", PeerMode: "STRICT",
		Outcomes: map[string]string{"alice@A": "401 (authn)", "bob@A": "401 (authn)", "bob@B": "allowed"}}

	for _, tc := range bundleCases() {
		if tc.xdsOnly {
			continue
		}
		if tc.dirErr == "" {
			tc.dirErr = tc.wantErr
		}
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			var logs catest.SyncBuffer
			p := newTestProxy(t, slog.New(slog.NewTextHandler(&logs, nil)), dir)
			ctx := t.Context()
			writeBundleDir(t, dir, authz.WireBundle{Revision: "v1", Modules: modsV1, JWTRules: rulesJSON(t, a.rule()), Peer: json.RawMessage(`{"mode":"PERMISSIVE"}`)})
			if rev := p.reloadBundleDir(ctx, "", p.authn, p.peerMode); rev != "v1" {
				t.Fatalf("revision %q after v1, want v1; log:\n%s", rev, logs.String())
			}
			if diff := cmp.Diff(v1State, stateOf(t, p, callers)); diff != "" {
				t.Fatalf("after v1 (-want +got):\n%s", diff)
			}
			mods := make(map[string]string, len(modsV2))
			for k, v := range modsV2 {
				mods[k] = v
			}
			v2 := authz.WireBundle{Revision: "v2", Modules: mods, JWTRules: rulesJSON(t, b.rule()), Peer: json.RawMessage(`{"mode":"STRICT"}`)}
			tc.mutate(&v2)
			writeBundleDir(t, dir, v2)
			if rev := p.reloadBundleDir(ctx, "v1", p.authn, p.peerMode); rev != "v2" {
				t.Fatalf("revision %q after v2, want v2 (seen, so not retried)", rev)
			}
			want := v1State
			if tc.wantErr == "" {
				want = v2State
				if strings.Contains(logs.String(), "refused") {
					t.Errorf("valid v2 refused; log:\n%s", logs.String())
				}
			} else if l := logs.String(); !strings.Contains(l, "new bundle refused") || !strings.Contains(l, "revision=v2") || !strings.Contains(l, tc.dirErr) {
				t.Errorf("log does not say v2 was refused and why (%q):\n%s", tc.dirErr, l)
			}
			if diff := cmp.Diff(want, stateOf(t, p, callers)); diff != "" {
				t.Errorf("after v2 (-want +got):\n%s", diff)
			}
		})
	}
}

// peer.json and authn.json are read after the modules. A writer that lays a
// new revision down in between has moved .revision as well: nothing is
// installed (not v1's Rego with v2's mode and rules), and the next poll reads
// the directory again and installs v2 whole.
func TestReloadBundleDirChangedWhileRead(t *testing.T) {
	a, b := newIssuer(t, issuerA), newIssuer(t, issuerB)
	callers := map[string]string{"alice@A": a.token(t, "alice"), "bob@A": a.token(t, "bob"), "bob@B": b.token(t, "bob")}
	dir := t.TempDir()
	p := newTestProxy(t, slog.New(slog.DiscardHandler), dir)
	ctx := t.Context()
	v1 := authz.WireBundle{Revision: "v1", Modules: modules(t, policyV1), JWTRules: rulesJSON(t, a.rule()), Peer: json.RawMessage(`{"mode":"PERMISSIVE"}`)}
	v2 := authz.WireBundle{Revision: "v2", Modules: modules(t, policyV2), JWTRules: rulesJSON(t, b.rule()), Peer: json.RawMessage(`{"mode":"STRICT"}`)}
	v3 := authz.WireBundle{Revision: "v3", Modules: modules(t, policyV1), JWTRules: rulesJSON(t, a.rule()), Peer: json.RawMessage(`{"mode":"PERMISSIVE"}`)}
	writeBundleDir(t, dir, v1)
	if rev := p.reloadBundleDir(ctx, "", p.authn, p.peerMode); rev != "v1" {
		t.Fatalf("revision %q, want v1", rev)
	}
	v1State := stateOf(t, p, callers)
	// v2 is read, and v3 written before its revision is checked again.
	writeBundleDir(t, dir, v2)
	afterBundleDirRead = func() { writeBundleDir(t, dir, v3) }
	t.Cleanup(func() { afterBundleDirRead = func() {} })
	if rev := p.reloadBundleDir(ctx, "v1", p.authn, p.peerMode); rev != "v1" {
		t.Fatalf("revision %q after a read the directory moved under, want v1 (read again)", rev)
	}
	if diff := cmp.Diff(v1State, stateOf(t, p, callers)); diff != "" {
		t.Fatalf("a half-read bundle was installed (-v1 +got):\n%s", diff)
	}
	afterBundleDirRead = func() {}
	if rev := p.reloadBundleDir(ctx, "v1", p.authn, p.peerMode); rev != "v3" {
		t.Fatalf("revision %q at the next poll, want v3", rev)
	}
	want := v1State
	want.Revision = "v3"
	if diff := cmp.Diff(want, stateOf(t, p, callers)); diff != "" {
		t.Errorf("after v3 (-want +got):\n%s", diff)
	}
}
