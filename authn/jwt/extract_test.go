package jwt

import (
	"errors"
	"net/http"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestExtract(t *testing.T) {
	defaults := []Rule{{Issuer: issA}}
	headerNoPrefix := []Rule{{Issuer: issA, FromHeaders: []HeaderLocation{{"X-Jwt", ""}}}}
	headerPrefix := []Rule{{Issuer: issA, FromHeaders: []HeaderLocation{{"X-Auth", "Token "}}}}
	params := []Rule{{Issuer: issA, FromParams: []string{"jwt", "t k"}}}
	cookies := []Rule{{Issuer: issA, FromCookies: []string{"session", "other"}}}
	mixed := []Rule{{Issuer: issA, FromHeaders: []HeaderLocation{{"x-b", ""}, {"x-a", ""}}, FromParams: []string{"p"}, FromCookies: []string{"c"}}}

	for _, tc := range []struct {
		name    string
		rules   []Rule
		path    string
		headers []Header
		want    []string // "<location>=<token>"
		wantErr error
	}{
		{name: "defaults: Authorization Bearer", rules: defaults, headers: []Header{{"Authorization", "Bearer abc.def.ghi"}},
			want: []string{`header authorization (prefix "Bearer ")=abc.def.ghi`}},
		{name: "defaults: header name is case-insensitive", rules: defaults, headers: []Header{{"AUTHORIZATION", "Bearer t"}},
			want: []string{`header authorization (prefix "Bearer ")=t`}},
		{name: "defaults: prefix is case-sensitive, lower-case bearer is no token", rules: defaults, headers: []Header{{"Authorization", "bearer t"}}},
		{name: "defaults: Basic credentials are no token", rules: defaults, headers: []Header{{"Authorization", "Basic dXNlcjpwdw=="}}},
		{name: "defaults: access_token parameter", rules: defaults, path: "/x?a=1&access_token=t.u.v",
			want: []string{"query parameter access_token=t.u.v"}},
		{name: "defaults: header then parameter", rules: defaults, path: "/?access_token=p", headers: []Header{{"Authorization", "Bearer h"}},
			want: []string{`header authorization (prefix "Bearer ")=h`, "query parameter access_token=p"}},
		{name: "defaults: Bearer with no token characters keeps the whole value (Envoy)", rules: defaults, headers: []Header{{"Authorization", "Bearer "}},
			want: []string{`header authorization (prefix "Bearer ")=Bearer `}},
		{name: "defaults: spaces after the prefix are skipped", rules: defaults, headers: []Header{{"Authorization", "Bearer    t.u.v"}},
			want: []string{`header authorization (prefix "Bearer ")=t.u.v`}},
		{name: "defaults: the token ends at a space (Envoy)", rules: defaults, headers: []Header{{"Authorization", "Bearer abc.def.ghi extra"}},
			want: []string{`header authorization (prefix "Bearer ")=abc.def.ghi`}},
		{name: "defaults: the token ends at a comma (Envoy)", rules: defaults, headers: []Header{{"Authorization", "Bearer abc.def.ghi,"}},
			want: []string{`header authorization (prefix "Bearer ")=abc.def.ghi`}},
		{name: "defaults: a non-base64url character inside ends the token there", rules: defaults, headers: []Header{{"Authorization", "Bearer abc$def.ghi.jkl"}},
			want: []string{`header authorization (prefix "Bearer ")=abc`}},
		{name: "defaults: two Authorization headers", rules: defaults, headers: []Header{{"Authorization", "Bearer a"}, {"authorization", "Bearer b"}},
			wantErr: errDuplicateToken},
		{name: "defaults: a second Authorization without the prefix is not a token", rules: defaults,
			headers: []Header{{"Authorization", "Basic x"}, {"Authorization", "Bearer b"}},
			want:    []string{`header authorization (prefix "Bearer ")=b`}},
		{name: "fromHeaders without prefix: whole value", rules: headerNoPrefix, headers: []Header{{"x-jwt", "a.b.c"}},
			want: []string{"header x-jwt=a.b.c"}},
		{name: "fromHeaders without prefix: the whole value, trailing text too (Envoy)", rules: headerNoPrefix, headers: []Header{{"x-jwt", "a.b.c extra"}},
			want: []string{"header x-jwt=a.b.c extra"}},
		{name: "fromHeaders without prefix: empty value is an (invalid) token", rules: headerNoPrefix, headers: []Header{{"x-jwt", ""}},
			want: []string{"header x-jwt="}},
		{name: "fromHeaders: defaults no longer apply", rules: headerNoPrefix, path: "/?access_token=p", headers: []Header{{"Authorization", "Bearer h"}}},
		{name: "fromHeaders prefix present", rules: headerPrefix, headers: []Header{{"x-auth", "Token a.b.c"}},
			want: []string{`header x-auth (prefix "Token ")=a.b.c`}},
		{name: "fromHeaders prefix found mid-value (Envoy searches anywhere)", rules: headerPrefix, headers: []Header{{"x-auth", "v1 Token a.b.c"}},
			want: []string{`header x-auth (prefix "Token ")=a.b.c`}},
		{name: "fromHeaders prefix present, the token ends at ';'", rules: headerPrefix, headers: []Header{{"x-auth", "Token a.b.c; v=1"}},
			want: []string{`header x-auth (prefix "Token ")=a.b.c`}},
		{name: "fromHeaders prefix absent: header skipped, no token", rules: headerPrefix, headers: []Header{{"x-auth", "a.b.c"}}},
		{name: "fromParams: first value wins", rules: params, path: "/?jwt=first&jwt=second",
			want: []string{"query parameter jwt=first"}},
		{name: "fromParams: values and names are query-decoded", rules: params, path: "/?t+k=a%2Eb+c",
			want: []string{"query parameter t k=a.b c"}},
		{name: "fromParams: name without '=' is an empty token", rules: params, path: "/?jwt",
			want: []string{"query parameter jwt="}},
		{name: "fromParams: fragment is not query", rules: params, path: "/?x=1#jwt=t"},
		{name: "fromParams: access_token is not configured", rules: params, path: "/?access_token=t"},
		{name: "fromCookies", rules: cookies, headers: []Header{{"Cookie", "a=1; session=s.t.u;other=\"q.u.o\""}},
			want: []string{"cookie other=q.u.o", "cookie session=s.t.u"}},
		{name: "fromCookies: first occurrence across Cookie headers wins", rules: cookies,
			headers: []Header{{"cookie", "session=one"}, {"Cookie", "session=two"}},
			want:    []string{"cookie session=one"}},
		{name: "fromCookies: cookie name is case-sensitive", rules: cookies, headers: []Header{{"Cookie", "Session=x"}}},
		{name: "order: headers sorted, then params, then cookies", rules: mixed, path: "/?p=3",
			headers: []Header{{"Cookie", "c=4"}, {"x-b", "2"}, {"x-a", "1"}},
			want:    []string{"header x-a=1", "header x-b=2", "query parameter p=3", "cookie c=4"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			toks, _, err := newExtractor(tc.rules).extract(Request{Method: "GET", Path: tc.path, Headers: tc.headers}, nil)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("err %v, want %v", err, tc.wantErr)
			}
			var got []string
			for _, tk := range toks {
				got = append(got, tk.loc.String()+"="+tk.raw)
			}
			if tc.wantErr == nil {
				if diff := cmp.Diff(tc.want, got); diff != "" {
					t.Errorf("tokens (-want +got):\n%s", diff)
				}
			}
		})
	}
}

// Locations shared by rules merge their issuers, as Envoy's extractor does.
func TestExtractorMergesIssuers(t *testing.T) {
	e := newExtractor([]Rule{
		{Issuer: issA},
		{Issuer: issB, FromHeaders: []HeaderLocation{{"authorization", "Bearer "}}},
		{JWKSURI: "https://k/jwks", FromParams: []string{"tok"}},
	})
	toks, _, err := e.extract(Request{Path: "/?tok=x&access_token=y", Headers: []Header{{"Authorization", "Bearer z"}}}, nil)
	if err != nil || len(toks) != 3 {
		t.Fatalf("got %d tokens, err %v; want 3", len(toks), err)
	}
	for _, tc := range []struct {
		tok     int
		iss     string
		allowed bool
		rules   []int
	}{
		{0, issA, true, []int{0, 1}}, {0, issB, true, []int{0, 1}}, {0, "https://c", false, []int{0, 1}},
		{1, issA, true, []int{0}}, {1, issB, false, []int{0}},
		{2, "https://anything", true, []int{2}},
	} {
		l := toks[tc.tok].loc
		if l.allows(tc.iss) != tc.allowed || !cmp.Equal(l.rules, tc.rules) {
			t.Errorf("%s: allows(%s)=%v rules %v, want %v %v", l, tc.iss, l.allows(tc.iss), l.rules, tc.allowed, tc.rules)
		}
	}
}

// Through Authenticate: the same token passes from every configured location kind.
func TestAuthenticateLocations(t *testing.T) {
	k := keyES("e1", ec1)
	r := inlineRule(t, issA, k)
	r.FromHeaders = []HeaderLocation{{"x-token", "JWT "}}
	r.FromParams = []string{"jwt"}
	r.FromCookies = []string{"sess"}
	e := newEnv(t, Config{Rules: []Rule{r}})
	tok := sign(t, k, "e1", claims(issA))
	for _, tc := range []struct {
		name   string
		r      Request
		authed bool
	}{
		{"header with prefix", Request{Path: "/", Headers: []Header{{"X-Token", "JWT " + tok}}}, true},
		{"header without its prefix", Request{Path: "/", Headers: []Header{{"X-Token", tok}}}, false},
		{"param", Request{Path: "/a?jwt=" + tok}, true},
		{"cookie", Request{Path: "/", Headers: []Header{{"Cookie", "x=1; sess=" + tok}}}, true},
		{"default Authorization not configured", Request{Path: "/", Headers: []Header{{"Authorization", "Bearer " + tok}}}, false},
	} {
		res := e.auth(t, tc.r)
		if res.Status != 0 || (res.Auth != nil) != tc.authed {
			t.Errorf("%s: status %d (%s) authenticated %v, want 0 and %v", tc.name, res.Status, res.Reason, res.Auth != nil, tc.authed)
		}
	}
}

// Text after a Bearer token does not make it invalid, as in Envoy, whose
// extractor stops at the first character outside base64url and '.'; a token
// with such a character inside is cut there and fails.
func TestAuthenticateBearerTokenEnds(t *testing.T) {
	k := keyES("e1", ec1)
	e := newEnv(t, Config{Rules: []Rule{inlineRule(t, issA, k)}})
	tok := sign(t, k, "e1", claims(issA))
	for _, tc := range []struct {
		name   string
		value  string
		status int
		reason string
	}{
		{"followed by a space and text", "Bearer " + tok + " extra", 0, ""},
		{"followed by a comma", "Bearer " + tok + ",", 0, ""},
		{"followed by a comma and another scheme", "Bearer " + tok + ", Basic dXNlcjpwdw==", 0, ""},
		{"'$' inside the header segment", "Bearer " + tok[:5] + "$" + tok[5:], http.StatusUnauthorized, "not in the form"},
		{"'$' inside the signature", "Bearer " + tok[:len(tok)-5] + "$" + tok[len(tok)-5:], http.StatusUnauthorized, "jwt is invalid"},
		{"abc$def.ghi.jkl", "Bearer abc$def.ghi.jkl", http.StatusUnauthorized, "not in the form"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := e.auth(t, Request{Method: "GET", Path: "/", Headers: []Header{{"Authorization", tc.value}}})
			if res.Status != tc.status || !strings.Contains(res.Reason, tc.reason) {
				t.Fatalf("status %d (%s), want %d (%s)", res.Status, res.Reason, tc.status, tc.reason)
			}
			if (res.Auth != nil) != (tc.status == 0) {
				t.Fatalf("auth %+v with status %d", res.Auth, res.Status)
			}
			if tc.status == 0 && res.Auth.Principal != issA+"/alice" {
				t.Errorf("principal %q, want %q", res.Auth.Principal, issA+"/alice")
			}
		})
	}
}
