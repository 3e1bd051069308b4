package jwt

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rampart-mesh/rampart/authn"
)

func TestDiscovery(t *testing.T) {
	kr, ke := keyRS("k1", rsa1), keyES("e1", ec1)
	is := newIssuer(t, kr, ke)
	e := newEnv(t, Config{Rules: []Rule{{Issuer: is.URL}}})
	e.run(t)
	eventually(t, "first fetch", func() bool { return e.up(is.URL) == 1 })

	for _, tc := range []struct {
		name string
		key  *signingKey
	}{{"RS256", kr}, {"ES256", ke}} {
		t.Run(tc.name, func(t *testing.T) {
			tok := sign(t, tc.key, tc.key.kid, claims(is.URL, "azp", "web", "aud", []string{"a", "b"}, "n", 12345678901234567))
			res := e.auth(t, bearer(tok))
			if res.Status != 0 {
				t.Fatalf("status %d (%s), want 0", res.Status, res.Reason)
			}
			want := &authn.RequestAuth{
				Principal: is.URL + "/alice", Issuer: is.URL, Subject: "alice",
				Audiences: []string{"a", "b"}, Presenter: "web",
				Claims: map[string]any{
					"iss": is.URL, "sub": "alice", "aud": []any{"a", "b"}, "azp": "web",
					"iat": json.Number("1772366400"), "exp": json.Number("1772370000"),
					"n": json.Number("12345678901234567"),
				},
			}
			if diff := cmp.Diff(want, res.Auth); diff != "" {
				t.Errorf("Auth (-want +got):\n%s", diff)
			}
		})
	}
	if got := is.discoveryHits.Load(); got != 1 {
		t.Errorf("discovery document fetched %d times, want 1", got)
	}
	if got := e.fetches(is.URL, "success"); got != 1 {
		t.Errorf("rampart_jwks_fetch_total{result=success} = %v, want 1", got)
	}
	if got := testutil.ToFloat64(e.a.m.lastSuccess.WithLabelValues(is.URL)); got != float64(t0.Unix()) {
		t.Errorf("last success timestamp = %v, want %v", got, t0.Unix())
	}
}

// Without Run, the first token that needs keys fetches them (rate-limited).
func TestDiscoveryOnDemand(t *testing.T) {
	k := keyRS("k1", rsa1)
	is := newIssuer(t, k)
	e := newEnv(t, Config{Rules: []Rule{{Issuer: is.URL}}})
	if res := e.auth(t, bearer(sign(t, k, "k1", claims(is.URL)))); res.Status != 0 || res.Auth == nil {
		t.Fatalf("got status %d (%s) auth %v, want a principal", res.Status, res.Reason, res.Auth)
	}
	if got := is.jwksHits.Load(); got != 1 {
		t.Errorf("jwks fetched %d times, want 1", got)
	}
}

func TestKeyRotation(t *testing.T) {
	k1, k2, k3 := keyRS("k1", rsa1), keyRS("k2", rsa2), keyES("k3", ec1)
	is := newIssuer(t, k1)
	e := newEnv(t, Config{Rules: []Rule{{Issuer: is.URL}}})
	e.run(t)
	eventually(t, "first fetch", func() bool { return e.up(is.URL) == 1 })

	old := sign(t, k1, "k1", claims(is.URL))
	if res := e.auth(t, bearer(old)); res.Status != 0 {
		t.Fatalf("k1 before rotation: status %d (%s)", res.Status, res.Reason)
	}

	is.publish(k2) // k1 removed, k2 added
	if res := e.auth(t, bearer(sign(t, k2, "k2", claims(is.URL, "sub", "bob")))); res.Status != 0 || res.Auth.Subject != "bob" {
		t.Fatalf("k2 after rotation: status %d (%s), want 0 with subject bob", res.Status, res.Reason)
	}
	if got := is.jwksHits.Load(); got != 2 {
		t.Errorf("jwks fetched %d times, want 2 (initial + unknown kid)", got)
	}
	// The cached k1 token belongs to the old key generation: re-verified, and k1 is gone.
	if res := e.auth(t, bearer(old)); res.Status != http.StatusUnauthorized {
		t.Errorf("cached k1 token after k1 was removed: status %d, want 401", res.Status)
	}

	// A second rotation within MinRefreshInterval is rate-limited ...
	is.publish(k3)
	tok3 := sign(t, k3, "k3", claims(is.URL))
	if res := e.auth(t, bearer(tok3)); res.Status != http.StatusUnauthorized || !strings.Contains(res.Reason, `kid "k3"`) {
		t.Errorf("k3 within the rate limit: status %d (%s), want 401 naming the kid", res.Status, res.Reason)
	}
	if got := is.jwksHits.Load(); got != 2 {
		t.Errorf("jwks fetched %d times, want still 2 (rate-limited)", got)
	}
	// ... and allowed once it has passed.
	e.clock.Step(DefaultMinRefreshInterval)
	if res := e.auth(t, bearer(tok3)); res.Status != 0 {
		t.Errorf("k3 after MinRefreshInterval: status %d (%s), want 0", res.Status, res.Reason)
	}
}

func TestIssuerDown(t *testing.T) {
	k1 := keyRS("k1", rsa1)
	is := newIssuer(t, k1)
	e := newEnv(t, Config{Rules: []Rule{{Issuer: is.URL}}})
	e.run(t)
	eventually(t, "first fetch", func() bool { return e.up(is.URL) == 1 })

	is.srv.Close()
	eventually(t, "refresh timer armed", e.clock.HasWaiters)
	e.clock.Step(DefaultRefreshInterval)
	eventually(t, "issuer_up to drop to 0", func() bool { return e.up(is.URL) == 0 })
	if got := e.fetches(is.URL, "error"); got < 1 {
		t.Errorf("rampart_jwks_fetch_total{result=error} = %v, want >= 1", got)
	}
	if got := testutil.ToFloat64(e.a.m.lastSuccess.WithLabelValues(is.URL)); got != float64(t0.Unix()) {
		t.Errorf("last success timestamp = %v, want the first fetch's %v", got, t0.Unix())
	}

	// Never seen before, so not from the token cache: verified with the cached keys.
	fresh := sign(t, k1, "k1", claims(is.URL, "sub", "carol"))
	if res := e.auth(t, bearer(fresh)); res.Status != 0 || res.Auth.Subject != "carol" {
		t.Fatalf("token signed by a cached key while the issuer is down: status %d (%s)", res.Status, res.Reason)
	}
	e.clock.Step(DefaultMinRefreshInterval) // let the on-demand refresh try (and fail)
	res := e.auth(t, bearer(sign(t, keyRS("k9", rsa2), "k9", claims(is.URL))))
	if res.Status != http.StatusUnauthorized || !strings.Contains(res.Reason, `kid "k9"`) {
		t.Errorf("unknown kid while the issuer is down: status %d (%s), want 401", res.Status, res.Reason)
	}
}

// An issuer down from the start: no keys, every token 401, no token still passes.
func TestIssuerNeverReachable(t *testing.T) {
	is := newIssuer(t)
	url := is.URL
	is.srv.Close()
	e := newEnv(t, Config{Rules: []Rule{{Issuer: url}}})
	res := e.auth(t, bearer(sign(t, keyRS("k1", rsa1), "k1", claims(url))))
	if res.Status != http.StatusUnauthorized || !strings.Contains(res.Reason, "no keys") {
		t.Errorf("status %d (%s), want 401 no keys", res.Status, res.Reason)
	}
	if e.up(url) != 0 {
		t.Errorf("issuer_up = %v, want 0", e.up(url))
	}
	if res := e.auth(t, Request{Method: "GET", Path: "/"}); res.Status != 0 || res.Auth != nil {
		t.Errorf("no token: status %d auth %v, want pass without auth", res.Status, res.Auth)
	}
}

// inlineRule is a rule with inline keys: no network.
func inlineRule(t testing.TB, iss string, keys ...*signingKey) Rule {
	var ks []jose.JSONWebKey
	for _, k := range keys {
		ks = append(ks, k.jwk())
	}
	return Rule{Issuer: iss, JWKS: jwksJSON(t, ks...)}
}

const issA, issB = "https://a.example", "https://b.example"

func TestOutputHeaders(t *testing.T) {
	k := keyES("e1", ec1)
	base := inlineRule(t, issA, k)
	base.OutputPayloadToHeader = "X-Jwt-Payload"
	base.OutputClaimToHeaders = []ClaimToHeader{
		{"x-sub", "sub"}, {"x-org", "org.id"}, {"x-admin", "admin"}, {"x-ratio", "ratio"},
		{"x-neg", "neg"}, {"x-groups", "groups"}, {"x-missing", "nope"}, {"x-crlf", "crlf"},
	}
	c := claims(issA, "org", map[string]any{"id": 42}, "admin", true, "ratio", 1.5, "neg", -3,
		"groups", []string{"g"}, "crlf", "a\r\nx-injected: 1")
	tok := sign(t, k, "e1", c)
	payload, _ := base64.RawURLEncoding.DecodeString(strings.Split(tok, ".")[1])
	outputs := []Header{
		{"x-jwt-payload", strings.Split(tok, ".")[1]},
		{"x-sub", "alice"}, {"x-org", "42"}, {"x-admin", "true"}, {"x-ratio", "1.500000"}, {"x-neg", "-3.000000"},
	}
	stripped := []string{"x-admin", "x-crlf", "x-groups", "x-jwt-payload", "x-missing", "x-neg", "x-org", "x-ratio", "x-sub"}

	for _, tc := range []struct {
		name        string
		forward     bool
		req         Request
		wantRemove  []string
		wantSet     []Header
		wantPayload bool
	}{
		{
			name:       "token header removed, outputs set",
			req:        Request{Method: "GET", Path: "/", Headers: []Header{{"x-sub", "forged"}, {"Authorization", "Bearer " + tok}}},
			wantRemove: append(stripped, "authorization"),
			wantSet:    outputs,
		},
		{
			name:       "forwardOriginalToken keeps the token header",
			forward:    true,
			req:        bearer(tok),
			wantRemove: stripped,
			wantSet:    outputs,
		},
		{
			name:       "no token: forged output headers still stripped",
			req:        Request{Method: "GET", Path: "/", Headers: []Header{{"x-sub", "forged"}}},
			wantRemove: stripped,
		},
		{
			name:       "token in a query parameter: nothing to remove from headers",
			req:        Request{Method: "GET", Path: "/?access_token=" + tok},
			wantRemove: stripped,
			wantSet:    outputs,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := base
			r.ForwardOriginalToken = tc.forward
			e := newEnv(t, Config{Rules: []Rule{r}})
			res := e.auth(t, tc.req)
			if res.Status != 0 {
				t.Fatalf("status %d (%s)", res.Status, res.Reason)
			}
			if diff := cmp.Diff(tc.wantRemove, res.RemoveHeaders); diff != "" {
				t.Errorf("RemoveHeaders (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.wantSet, res.SetHeaders); diff != "" {
				t.Errorf("SetHeaders (-want +got):\n%s", diff)
			}
		})
	}
	var decoded map[string]any
	if err := json.Unmarshal(payload, &decoded); err != nil || decoded["sub"] != "alice" {
		t.Errorf("x-jwt-payload does not decode to the token's payload: %v %v", err, decoded)
	}
}

func TestTokenCache(t *testing.T) {
	k := keyRS("k1", rsa1)
	e := newEnv(t, Config{Rules: []Rule{inlineRule(t, issA, k)}})
	tok := sign(t, k, "k1", claims(issA)) // exp t0+1h

	steps := []struct {
		name       string
		advance    time.Duration
		wantStatus int
		wantChecks uint64 // signature verifications so far
		wantCached int
	}{
		{"first use verifies", 0, 0, 1, 1},
		{"second use is a cache hit", 0, 0, 1, 1},
		{"within clock skew after exp still passes from cache", time.Hour + 59*time.Second, 0, 1, 1},
		{"past exp+skew fails and is evicted", 2 * time.Second, http.StatusUnauthorized, 1, 0},
		{"stays invalid", 0, http.StatusUnauthorized, 1, 0},
	}
	for _, s := range steps {
		e.clock.Step(s.advance)
		res := e.auth(t, bearer(tok))
		if res.Status != s.wantStatus || (s.wantStatus == 0) != (res.Auth != nil) {
			t.Errorf("%s: status %d (%s) auth %v, want %d", s.name, res.Status, res.Reason, res.Auth != nil, s.wantStatus)
		}
		if got := e.a.sigChecks.Load(); got != s.wantChecks {
			t.Errorf("%s: %d signature checks, want %d", s.name, got, s.wantChecks)
		}
		if got := e.a.cache.len(); got != s.wantCached {
			t.Errorf("%s: %d cached tokens, want %d", s.name, got, s.wantCached)
		}
	}
	if got := testutil.ToFloat64(e.a.m.cacheHit); got != 2 {
		t.Errorf("cache hits = %v, want 2", got)
	}
}

func TestTokenCacheBounded(t *testing.T) {
	k := keyES("e1", ec1)
	e := newEnv(t, Config{Rules: []Rule{inlineRule(t, issA, k)}, TokenCacheSize: 3})
	for i := range 10 {
		if res := e.auth(t, bearer(sign(t, k, "e1", claims(issA, "n", i)))); res.Status != 0 {
			t.Fatalf("token %d: %d %s", i, res.Status, res.Reason)
		}
		if n := e.a.cache.len(); n > 3 {
			t.Fatalf("after %d tokens the cache holds %d, want <= 3", i+1, n)
		}
	}
	off := newEnv(t, Config{Rules: []Rule{inlineRule(t, issA, k)}, TokenCacheSize: -1})
	tok := sign(t, k, "e1", claims(issA))
	off.auth(t, bearer(tok))
	off.auth(t, bearer(tok))
	if got := off.a.sigChecks.Load(); got != 2 {
		t.Errorf("cache disabled: %d signature checks for two requests, want 2", got)
	}
}

func TestTimeClaims(t *testing.T) {
	k := keyES("e1", ec1)
	now := t0.Unix()
	for _, tc := range []struct {
		name   string
		skew   time.Duration
		kv     []any
		status int
	}{
		{"no exp is accepted (Envoy: exp optional)", 0, []any{"exp", nil}, 0},
		{"exp 59s ago within default skew", 0, []any{"exp", now - 59}, 0},
		{"exp 61s ago beyond default skew", 0, []any{"exp", now - 61}, 401},
		{"nbf 60s ahead within skew", 0, []any{"nbf", now + 60}, 0},
		{"nbf 61s ahead beyond skew", 0, []any{"nbf", now + 61}, 401},
		{"custom skew 5m accepts exp 4m ago", 5 * time.Minute, []any{"exp", now - 240}, 0},
		{"custom skew 5s rejects exp 10s ago", 5 * time.Second, []any{"exp", now - 10}, 401},
		{"exp as a string", 0, []any{"exp", "tomorrow"}, 401},
		{"fractional exp", 0, []any{"exp", float64(now) + 0.5}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, Config{Rules: []Rule{inlineRule(t, issA, k)}, ClockSkew: tc.skew})
			res := e.auth(t, bearer(sign(t, k, "e1", claims(issA, tc.kv...))))
			if res.Status != tc.status {
				t.Errorf("status %d (%s), want %d", res.Status, res.Reason, tc.status)
			}
		})
	}
}

func TestRules(t *testing.T) {
	ka, kb := keyES("a1", ec1), keyRS("b1", rsa1)
	ra := inlineRule(t, issA, ka)
	ra.Audiences = []string{"rampart", "api"}
	rb := inlineRule(t, issB, kb)
	rb.FromHeaders = []HeaderLocation{{"x-b-token", ""}}
	rb.SpaceDelimitedClaims = []string{"roles"}
	e := newEnv(t, Config{Rules: []Rule{ra, rb}})

	tokA := sign(t, ka, "a1", claims(issA))
	tokB := sign(t, kb, "b1", claims(issB, "sub", "bob"))
	req := func(hs ...Header) Request { return Request{Method: "GET", Path: "/p", Headers: hs} }
	for _, tc := range []struct {
		name      string
		r         Request
		status    int
		principal string
		spaceDel  []string
	}{
		{"A in Authorization", req(Header{"Authorization", "Bearer " + tokA}), 0, issA + "/alice", []string{"scope", "permission"}},
		{"B in its header", req(Header{"X-B-Token", tokB}), 0, issB + "/bob", []string{"scope", "permission", "roles"}},
		{"B in Authorization: issuer not configured there", req(Header{"Authorization", "Bearer " + tokB}), 401, "", nil},
		{"A in B's header", req(Header{"x-b-token", tokA}), 401, "", nil},
		{"A's aud as a list containing an allowed one", req(Header{"Authorization", "Bearer " + sign(t, ka, "a1", claims(issA, "aud", []string{"x", "api"}))}), 0, issA + "/alice", []string{"scope", "permission"}},
		{"A without aud", req(Header{"Authorization", "Bearer " + sign(t, ka, "a1", claims(issA, "aud", nil))}), 403, "", nil},
		{"B's rule has no audiences: any aud", req(Header{"x-b-token", sign(t, kb, "b1", claims(issB, "aud", "whatever"))}), 0, issB + "/alice", []string{"scope", "permission", "roles"}},
		{"both valid: principal of the first location", req(Header{"x-b-token", tokB}, Header{"Authorization", "Bearer " + tokA}), 0, issA + "/alice", []string{"scope", "permission"}},
		{"one valid, one invalid: 401", req(Header{"Authorization", "Bearer " + tokA}, Header{"x-b-token", tokA}), 401, "", nil},
		{"one valid, one wrong audience: 403", req(Header{"x-b-token", tokB}, Header{"Authorization", "Bearer " + sign(t, ka, "a1", claims(issA, "aud", "x"))}), 403, "", nil},
		{"wrong audience and invalid: 401 wins", req(Header{"x-b-token", "x.y.z"}, Header{"Authorization", "Bearer " + sign(t, ka, "a1", claims(issA, "aud", "x"))}), 401, "", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := e.auth(t, tc.r)
			if res.Status != tc.status {
				t.Fatalf("status %d (%s), want %d", res.Status, res.Reason, tc.status)
			}
			got := ""
			if res.Auth != nil {
				got = res.Auth.Principal
			}
			if got != tc.principal {
				t.Errorf("principal %q, want %q", got, tc.principal)
			}
			if diff := cmp.Diff(tc.spaceDel, res.SpaceDelimitedClaims); diff != "" {
				t.Errorf("SpaceDelimitedClaims (-want +got):\n%s", diff)
			}
		})
	}
}

// Two rules with the same issuer and location: the token passes if either accepts it.
func TestSameIssuerTwoRules(t *testing.T) {
	k1, k2 := keyES("e1", ec1), keyRS("k1", rsa1)
	r1 := inlineRule(t, issA, k1)
	r1.Audiences = []string{"one"}
	r2 := inlineRule(t, issA, k2)
	r2.Audiences = []string{"two"}
	e := newEnv(t, Config{Rules: []Rule{r1, r2}})
	for _, tc := range []struct {
		name   string
		tok    string
		status int
	}{
		{"rule 1 keys and audience", sign(t, k1, "e1", claims(issA, "aud", "one")), 0},
		{"rule 2 keys and audience", sign(t, k2, "k1", claims(issA, "aud", "two")), 0},
		{"rule 1 keys, rule 2 audience: 403", sign(t, k1, "e1", claims(issA, "aud", "two")), 403},
	} {
		if res := e.auth(t, bearer(tc.tok)); res.Status != tc.status {
			t.Errorf("%s: status %d (%s), want %d", tc.name, res.Status, res.Reason, tc.status)
		}
	}
}

// An any-issuer rule (jwksUri, no issuer) accepts any iss its keys signed.
func TestAnyIssuer(t *testing.T) {
	k := keyRS("k1", rsa1)
	is := newIssuer(t, k)
	e := newEnv(t, Config{Rules: []Rule{{JWKSURI: is.URL + "/jwks"}}})
	res := e.auth(t, bearer(sign(t, k, "k1", claims("https://whoever.example"))))
	if res.Status != 0 || res.Auth.Principal != "https://whoever.example/alice" {
		t.Fatalf("status %d (%s)", res.Status, res.Reason)
	}
	if e.up(is.URL+"/jwks") != 1 {
		t.Errorf("issuer_up for the jwksUri label = %v, want 1", e.up(is.URL+"/jwks"))
	}
}

func TestCORSPreflight(t *testing.T) {
	e := newEnv(t, Config{Rules: []Rule{inlineRule(t, issA, keyES("e1", ec1))}})
	bad := []Header{{"Authorization", "Bearer not.a.token"}}
	for _, tc := range []struct {
		name   string
		method string
		hs     []Header
		status int
	}{
		{"preflight bypasses", "OPTIONS", append([]Header{{"Origin", "https://x"}, {"Access-Control-Request-Method", "POST"}}, bad...), 0},
		{"OPTIONS without Origin", "OPTIONS", append([]Header{{"Access-Control-Request-Method", "POST"}}, bad...), 401},
		{"OPTIONS without the request method", "OPTIONS", append([]Header{{"Origin", "https://x"}}, bad...), 401},
		{"GET with both headers", "GET", append([]Header{{"Origin", "https://x"}, {"Access-Control-Request-Method", "POST"}}, bad...), 401},
	} {
		res := e.auth(t, Request{Method: tc.method, Path: "/", Headers: tc.hs})
		if res.Status != tc.status || res.Auth != nil {
			t.Errorf("%s: status %d auth %v, want %d and no auth", tc.name, res.Status, res.Auth, tc.status)
		}
	}
}

func TestWWWAuthenticate(t *testing.T) {
	k := keyES("e1", ec1)
	r := inlineRule(t, issA, k)
	r.Audiences = []string{"rampart"}
	e := newEnv(t, Config{Rules: []Rule{r}})
	for _, tc := range []struct {
		name string
		r    Request
		want string
	}{
		{"401", Request{Method: "GET", Path: "/a/b?q=1", Headers: []Header{{"Host", "svc:8080"}, {"Authorization", "Bearer x"}}},
			`Bearer realm="http://svc:8080/a/b", error="invalid_token"`},
		{"403 with x-forwarded-proto", Request{Method: "GET", Path: "/", Headers: []Header{{":authority", "svc"}, {"x-forwarded-proto", "https"},
			{"Authorization", "Bearer " + sign(t, k, "e1", claims(issA, "aud", "other"))}}},
			`Bearer realm="https://svc/", error="invalid_token"`},
		{"quotes in the path cannot break out", Request{Method: "GET", Path: `/"x\`, Headers: []Header{{"Host", "h"}, {"Authorization", "Bearer x"}}},
			`Bearer realm="http://h/%22x%5C", error="invalid_token"`},
	} {
		if got := e.auth(t, tc.r).WWWAuthenticate; got != tc.want {
			t.Errorf("%s: WWW-Authenticate %q, want %q", tc.name, got, tc.want)
		}
	}
	if got := e.auth(t, Request{Method: "GET", Path: "/"}).WWWAuthenticate; got != "" {
		t.Errorf("no token: WWW-Authenticate %q, want none", got)
	}
}

func TestRequestMetrics(t *testing.T) {
	k := keyES("e1", ec1)
	r := inlineRule(t, issA, k)
	r.Audiences = []string{"rampart"}
	e := newEnv(t, Config{Rules: []Rule{r}})
	e.auth(t, Request{Method: "GET", Path: "/"})
	e.auth(t, bearer(sign(t, k, "e1", claims(issA))))
	e.auth(t, bearer(sign(t, k, "e1", claims(issA, "aud", "x"))))
	e.auth(t, bearer("garbage"))
	e.auth(t, bearer("garbage"))
	want := `
# HELP rampart_jwt_requests_total Requests seen by JWT authentication, by result: no_token, valid, invalid (401), audience (403).
# TYPE rampart_jwt_requests_total counter
rampart_jwt_requests_total{result="audience"} 1
rampart_jwt_requests_total{result="invalid"} 2
rampart_jwt_requests_total{result="no_token"} 1
rampart_jwt_requests_total{result="valid"} 1
`
	if err := testutil.GatherAndCompare(e.reg, strings.NewReader(want), "rampart_jwt_requests_total"); err != nil {
		t.Error(err)
	}
}

// A rule whose inline JWK Set the authenticator cannot use (not a set, only
// a symmetric or weak key, no key) loads, as in Envoy: every token for it
// gets 401, a request without a token passes, and the issuer's key gauge
// says 0.
func TestUnusableInlineJWKSRejectsEveryToken(t *testing.T) {
	k := keyES("e1", ec1)
	weak := jwksJSON(t, keyRS("w", rsaWeak).jwk())
	for name, jwks := range map[string]string{
		"not JSON":        "{",
		"only a weak key": weak,
		"HS256 only":      `{"keys":[{"kty":"oct","kid":"h","alg":"HS256","k":"c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA"}]}`,
		"no keys":         `{"keys":[]}`,
	} {
		t.Run(name, func(t *testing.T) {
			e := newEnv(t, Config{Rules: []Rule{{Issuer: issA, JWKS: jwks}}})
			if r := e.auth(t, bearer(sign(t, k, "e1", claims(issA)))); r.Status != http.StatusUnauthorized {
				t.Fatalf("a signed token: status %d (%s); want 401", r.Status, r.Reason)
			}
			if r := e.auth(t, Request{Method: "GET", Path: "/"}); r.Status != 0 || r.Auth != nil {
				t.Fatalf("no token: status %d; want it passed on", r.Status)
			}
			if up := e.up(issA); up != 0 {
				t.Fatalf("key gauge %v; want 0", up)
			}
		})
	}
}

func TestNewRejects(t *testing.T) {
	good := jwksJSON(t, keyES("e", ec1).jwk())
	for _, tc := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"jwks and jwksUri", Config{Rules: []Rule{{Issuer: issA, JWKS: good, JWKSURI: "https://x/jwks"}}}, "both set"},
		{"empty issuer without jwksUri", Config{Rules: []Rule{{JWKS: good}}}, "needs jwksUri"},
		{"discovery needs a URL issuer", Config{Rules: []Rule{{Issuer: "accounts"}}}, "discovery"},
		{"bad jwksUri", Config{Rules: []Rule{{Issuer: issA, JWKSURI: "ftp://x"}}}, "jwksUri"},
		{"bad header name", Config{Rules: []Rule{{Issuer: issA, JWKS: good, FromHeaders: []HeaderLocation{{"x y", ""}}}}}, "fromHeaders[0]"},
		{"bad output header", Config{Rules: []Rule{{Issuer: issA, JWKS: good, OutputClaimToHeaders: []ClaimToHeader{{"x:y", "sub"}}}}}, "outputClaimToHeaders[0]"},
		{"negative skew", Config{ClockSkew: -time.Second}, "negative"},
		{"min refresh above refresh", Config{RefreshInterval: time.Second, MinRefreshInterval: time.Minute}, "exceeds"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(tc.cfg)
			if !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("New: %v, want ErrInvalidConfig mentioning %q", err, tc.want)
			}
		})
	}
}

// signAppended signs c with raw JSON members appended after its own. The order
// matters: encoding/json decoding into a struct (go-oidc's IDToken) matches keys
// case-insensitively and the last match wins, so "SUB" after "sub" would become
// the subject. Envoy's jwt_verify_lib reads only the exact keys.
func signAppended(t *testing.T, k *signingKey, c map[string]any, members string) string {
	t.Helper()
	b := mustJSON(t, c)
	return signRaw(t, k.alg, k.priv, k.kid, append(b[:len(b)-1], ","+members+"}"...), nil)
}

// The registered claims are the exact keys iss, sub, aud, exp, nbf and iat, as
// in jwt_verify_lib: case variants are ordinary claims, and a malformed
// registered claim makes the token invalid.
func TestStandardClaimsExactKeys(t *testing.T) {
	k := keyES("e1", ec1)
	fixed := inlineRule(t, issA, k)
	fixed.Audiences = []string{"svc"}
	fe := newEnv(t, Config{Rules: []Rule{fixed}})
	is := newIssuer(t, k)
	ae := newEnv(t, Config{Rules: []Rule{{JWKSURI: is.URL + "/jwks"}}})

	const tenant, trusted = "https://tenant.example", "https://trusted.example"
	svc := claims(issA, "aud", "svc")
	for _, tc := range []struct {
		name      string
		anyIssuer bool // the any-issuer rule instead of issA's
		tok       string
		status    int
		reason    string // substring of Reason
		principal string
		auds      []string
	}{
		{name: "SUB after sub", tok: signAppended(t, k, svc, `"SUB":"admin"`), principal: issA + "/alice", auds: []string{"svc"}},
		{name: "Sub after sub", tok: signAppended(t, k, svc, `"Sub":"admin"`), principal: issA + "/alice", auds: []string{"svc"}},
		{name: "long s (U+017F) sub after sub", tok: signAppended(t, k, svc, `"ſub":"admin"`), principal: issA + "/alice", auds: []string{"svc"}},
		{name: "SUB without sub: no subject", tok: signAppended(t, k, claims(issA, "aud", "svc", "sub", nil), `"SUB":"admin"`), principal: issA + "/", auds: []string{"svc"}},
		{name: "AUD with the allowed audience beside a wrong aud: 403",
			tok: signAppended(t, k, claims(issA, "aud", "other"), `"AUD":"svc"`), status: http.StatusForbidden, reason: "audiences are not allowed"},
		{name: "AUD of the wrong type beside a good aud is ignored", tok: signAppended(t, k, svc, `"AUD":5`), principal: issA + "/alice", auds: []string{"svc"}},
		{name: "ISS beside iss under an issuer rule", tok: signAppended(t, k, svc, `"ISS":"`+trusted+`"`), principal: issA + "/alice", auds: []string{"svc"}},
		{name: "ISS beside iss under an any-issuer rule", anyIssuer: true,
			tok: signAppended(t, k, claims(tenant), `"ISS":"`+trusted+`"`), principal: tenant + "/alice", auds: []string{"rampart"}},
		{name: "ISS naming the configured issuer beside another iss: 401",
			tok: signAppended(t, k, claims("https://evil.example", "aud", "svc"), `"ISS":"`+issA+`"`), status: http.StatusUnauthorized, reason: "issuer is not configured"},
		{name: "EXP in the future beside an expired exp: 401",
			tok:    signAppended(t, k, claims(issA, "aud", "svc", "exp", t0.Add(-time.Hour).Unix()), `"EXP":`+strconv.FormatInt(t0.Add(time.Hour).Unix(), 10)),
			status: http.StatusUnauthorized, reason: "expired"},
		{name: "EXP not a number beside a good exp is ignored", tok: signAppended(t, k, svc, `"EXP":"never"`), principal: issA + "/alice", auds: []string{"svc"}},
		{name: "IAT not a number beside a good iat is ignored", tok: signAppended(t, k, svc, `"IAT":"x"`), principal: issA + "/alice", auds: []string{"svc"}},
		{name: "sub a number", tok: sign(t, k, "e1", claims(issA, "aud", "svc", "sub", 42)), status: http.StatusUnauthorized, reason: "sub is not a string"},
		{name: "sub null", tok: signAppended(t, k, claims(issA, "aud", "svc", "sub", nil), `"sub":null`), status: http.StatusUnauthorized, reason: "sub is not a string"},
		{name: "aud list with a number", tok: sign(t, k, "e1", claims(issA, "aud", []any{"svc", 5})), status: http.StatusUnauthorized, reason: "aud[1] is not a string"},
		{name: "aud an object", tok: sign(t, k, "e1", claims(issA, "aud", map[string]any{"svc": true})), status: http.StatusUnauthorized, reason: "aud is not a string or a list of strings"},
		{name: "aud list", tok: sign(t, k, "e1", claims(issA, "aud", []string{"x", "svc"})), principal: issA + "/alice", auds: []string{"x", "svc"}},
		{name: "iat a numeric string", tok: sign(t, k, "e1", claims(issA, "aud", "svc", "iat", "1772366400")), status: http.StatusUnauthorized, reason: "iat is not a number"},
		{name: "nbf a string", tok: sign(t, k, "e1", claims(issA, "aud", "svc", "nbf", "0")), status: http.StatusUnauthorized, reason: "nbf is not a number"},
		{name: "iat negative", tok: sign(t, k, "e1", claims(issA, "aud", "svc", "iat", -5)), status: http.StatusUnauthorized, reason: "iat is out of range"},
		{name: "jti a number", tok: sign(t, k, "e1", claims(issA, "aud", "svc", "jti", 7)), status: http.StatusUnauthorized, reason: "jti is not a string"},
		{name: "jti a string", tok: sign(t, k, "e1", claims(issA, "aud", "svc", "jti", "id-1")), principal: issA + "/alice", auds: []string{"svc"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := fe
			if tc.anyIssuer {
				e = ae
			}
			res := e.auth(t, bearer(tc.tok))
			if res.Status != tc.status || !strings.Contains(res.Reason, tc.reason) {
				t.Fatalf("status %d (%s), want %d (%s)", res.Status, res.Reason, tc.status, tc.reason)
			}
			if tc.status != 0 {
				if res.Auth != nil {
					t.Errorf("denied token produced a principal %q", res.Auth.Principal)
				}
				return
			}
			got := [3]any{res.Auth.Principal, res.Auth.Issuer + "/" + res.Auth.Subject, res.Auth.Audiences}
			if diff := cmp.Diff([3]any{tc.principal, tc.principal, tc.auds}, got); diff != "" {
				t.Errorf("principal, issuer/subject, audiences (-want +got):\n%s", diff)
			}
		})
	}
}
