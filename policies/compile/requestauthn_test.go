package compile

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"testing"

	"github.com/go-jose/go-jose/v4"
	"github.com/google/go-cmp/cmp"
	"github.com/rampart-mesh/rampart/authn/jwt"
	"github.com/rampart-mesh/rampart/policies/source"
)

// raYAML is RequestAuthentication foo/<name> with the given jwtRules (a YAML
// flow sequence).
func raYAML(name, rules string) string {
	return "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: " + name + ", namespace: foo}\nspec:\n  jwtRules: " + rules + "\n"
}

// ecJWKS is an inline key set with one EC P-256 signing key.
func ecJWKS(t *testing.T) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	js, err := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &key.PublicKey, KeyID: "k1", Algorithm: "ES256", Use: "sig"}}})
	if err != nil {
		t.Fatal(err)
	}
	return string(js)
}

// quoted is s as a YAML (JSON) string.
func quoted(s string) string {
	js, _ := json.Marshal(s)
	return string(js)
}

// Every jwtRules entry the sidecar's authenticator refuses has an error
// finding with its own code and the field's path, so `rampartctl analyze`
// shows it; rules it accepts have none.
func TestJWTRulesFindings(t *testing.T) {
	ec := quoted(ecJWKS(t))
	hs256 := quoted(`{"keys":[{"kty":"oct","kid":"h","alg":"HS256","k":"c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA"}]}`)
	for _, tc := range []struct {
		name string
		docs string
		want []string // "severity CODE path", sorted
	}{
		{name: "inline EC key set", docs: raYAML("jwt", "[{issuer: https://a.example, jwks: "+ec+"}]")},
		{name: "inline key set with an issuer that is not a URL", docs: raYAML("jwt", "[{issuer: demo@rampart.local, jwks: "+ec+"}]")},
		{name: "jwksUri with an issuer that is not a URL", docs: raYAML("jwt", "[{issuer: demo@rampart.local, jwksUri: https://a.example/jwks}]")},
		{name: "discovery from an https issuer", docs: raYAML("jwt", "[{issuer: https://a.example}]")},
		{name: "valid token locations and output headers", docs: raYAML("jwt", `[{issuer: https://a.example, fromHeaders: [{name: x-jwt, prefix: "Bearer "}], fromParams: [token], fromCookies: [session], outputPayloadToHeader: x-payload, outputClaimToHeaders: [{header: x-sub, claim: sub}], timeout: 3s}]`)},

		{name: "HS256 inline key set", docs: raYAML("jwt", "[{issuer: https://a.example, jwks: "+hs256+"}]"),
			want: []string{"warning RA-JWKS-INLINE spec.jwtRules[0].jwks"}},
		{name: "inline key set that is not JSON", docs: raYAML("jwt", "[{issuer: https://a.example, jwks: 'not json'}]"),
			want: []string{"warning RA-JWKS-INLINE spec.jwtRules[0].jwks"}},
		{name: "empty inline key set", docs: raYAML("jwt", `[{issuer: https://a.example, jwks: '{"keys":[]}'}]`),
			want: []string{"warning RA-JWKS-INLINE spec.jwtRules[0].jwks"}},
		{name: "jwks and jwksUri", docs: raYAML("jwt", "[{issuer: https://a.example, jwks: "+ec+", jwksUri: https://a.example/jwks}]"),
			want: []string{"error RA-JWKS spec.jwtRules[0]"}},
		{name: "discovery from an issuer that is not a URL", docs: raYAML("jwt", "[{issuer: demo@rampart.local}]"),
			want: []string{"error RA-ISSUER-NOT-URL spec.jwtRules[0].issuer"}},
		{name: "negative timeout", docs: raYAML("jwt", "[{issuer: https://a.example, timeout: -1s}]"),
			want: []string{"error RA-TIMEOUT spec.jwtRules[0].timeout"}},
		{name: "fromHeaders name that is not a header name", docs: raYAML("jwt", `[{issuer: https://a.example, fromHeaders: [{name: "x jwt"}]}]`),
			want: []string{"error RA-HEADER spec.jwtRules[0].fromHeaders[0].name"}},
		{name: "empty fromParams entry", docs: raYAML("jwt", `[{issuer: https://a.example, fromParams: [token, ""]}]`),
			want: []string{"error RA-TOKEN-LOCATION spec.jwtRules[0].fromParams[1]"}},
		{name: "fromCookies entry that is not a cookie name", docs: raYAML("jwt", `[{issuer: https://a.example, fromCookies: ["a=b"]}]`),
			want: []string{"error RA-TOKEN-LOCATION spec.jwtRules[0].fromCookies[0]"}},
		{name: "outputPayloadToHeader that is not a header name", docs: raYAML("jwt", `[{issuer: https://a.example, outputPayloadToHeader: "x payload"}]`),
			want: []string{"error RA-HEADER spec.jwtRules[0].outputPayloadToHeader"}},
		{name: "outputClaimToHeaders header that is not a header name", docs: raYAML("jwt", `[{issuer: https://a.example, outputClaimToHeaders: [{header: x-ok, claim: a}, {header: "x:sub", claim: sub}]}]`),
			want: []string{"error RA-HEADER spec.jwtRules[0].outputClaimToHeaders[1].header"}},
		{name: "several refusals in one rule", docs: raYAML("jwt", `[{issuer: demo@rampart.local, fromParams: [""], timeout: -2s}]`),
			want: []string{"error RA-ISSUER-NOT-URL spec.jwtRules[0].issuer", "error RA-TIMEOUT spec.jwtRules[0].timeout", "error RA-TOKEN-LOCATION spec.jwtRules[0].fromParams[0]"}},
		{name: "a warning on a rule does not hide its refusal", docs: raYAML("a", "[{issuer: https://a.example, jwks: "+ec+"}]") + "---\n" + raYAML("b", "[{issuer: https://a.example, fromParams: [\"\"], jwks: "+ec+"}]"),
			want: []string{"error RA-TOKEN-LOCATION spec.jwtRules[0].fromParams[0]", "warning RA-DUPLICATE-ISSUER spec.jwtRules[0].issuer"}},
		{name: "the bad rule is named, not its neighbour", docs: raYAML("jwt", "[{issuer: https://a.example, jwks: "+ec+"}, {issuer: https://b.example, jwks: "+hs256+"}]"),
			want: []string{"warning RA-JWKS-INLINE spec.jwtRules[1].jwks"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			objs, err := source.Parse("ra.yaml", []byte(tc.docs))
			if err != nil {
				t.Fatalf("parse: %v\n%s", err, tc.docs)
			}
			ras, fs := DecodeRequestAuthentications(objs, "foo")
			for _, f := range fs {
				t.Fatalf("decode: %s", f)
			}
			m, _ := Mesh{}.WithDefaults()
			rules, fs := JWTRules(m, Workload{Namespace: "foo", Name: "httpbin"}, ras)
			got := []string{}
			for _, f := range fs {
				if !strings.HasPrefix(f.Object, "RequestAuthentication foo/") || f.File != "ra.yaml" || f.Line == 0 || f.Message == "" {
					t.Errorf("finding %+v lacks its object, file:line or message", f)
				}
				got = append(got, fmt.Sprintf("%s %s %s", f.Severity, f.Code, f.Path))
			}
			sort.Strings(got)
			want := tc.want
			if want == nil {
				want = []string{}
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("findings (-want +got):\n%s\n%v", diff, fs)
			}
			// What rampartd would push: the sidecar refuses it exactly when
			// there is an error finding.
			_, err = jwt.New(jwt.Config{Rules: rules, TokenCacheSize: -1})
			if (err != nil) != hasError(fs) {
				t.Errorf("jwt.New: %v, but error findings: %v", err, hasError(fs))
			}
		})
	}
}

// A refusal no specific check names is still reported, with the
// authenticator's reason and without its "invalid jwt config" prefix.
func TestRefusedRuleCatchAll(t *testing.T) {
	o := source.Object{Kind: "RequestAuthentication", Namespace: "foo", Name: "jwt", File: "ra.yaml", Line: 1}
	// An empty issuer without jwksUri; JWTRules checks that itself, so
	// refusedRule does not.
	fs := refusedRule(o, "spec.jwtRules[2]", jwt.Rule{}, false)
	if len(fs) != 1 || fs[0].Code != CodeRARefused || fs[0].Severity != SeverityError || fs[0].Path != "spec.jwtRules[2]" ||
		!strings.Contains(fs[0].Message, "needs jwksUri") || strings.Contains(fs[0].Message, "invalid jwt config") {
		t.Fatalf("findings %v, want one %s error at spec.jwtRules[2] with the authenticator's reason", fs, CodeRARefused)
	}
	if fs := refusedRule(o, "spec.jwtRules[2]", jwt.Rule{}, true); len(fs) != 0 {
		t.Errorf("with an error finding already: %v, want none", fs)
	}
}
