package inbound

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/rampart-mesh/rampart/authz"
	"github.com/rampart-mesh/rampart/policies/compile"
	"github.com/rampart-mesh/rampart/policies/offline"
	"github.com/rampart-mesh/rampart/policies/source"
)

// fixedResult is a CUSTOM provider that always gives the same answer.
type fixedResult authz.ProviderResult

func (f fixedResult) Check(context.Context, *authz.Request, ast.Value) authz.ProviderResult {
	return authz.ProviderResult(f)
}

// withCustom makes p the CUSTOM provider "opa" the test policies name.
func withCustom(t *testing.T, p authz.Provider) func(*Config) {
	t.Helper()
	return withCustomPolicies(t, policies, p)
}

// withCustomPolicies loads pols, compiled for foo/httpbin, with p as the
// CUSTOM provider "opa".
func withCustomPolicies(t *testing.T, pols string, p authz.Provider) func(*Config) {
	t.Helper()
	return func(c *Config) {
		eng := authz.New(authz.Config{})
		if err := eng.Load(context.Background(), customBundle(t, pols, p)); err != nil {
			t.Fatal(err)
		}
		c.Engine = eng
	}
}

// customBundle is pols compiled for foo/httpbin, with p as the CUSTOM
// provider "opa".
func customBundle(t *testing.T, pols string, p authz.Provider) authz.Bundle {
	t.Helper()
	mesh, err := compile.ParseMesh([]byte("extensionProviders:\n- name: opa\n  envoyExtAuthzGrpc: {service: opa.foo.svc.cluster.local, port: 9000}\n"))
	if err != nil {
		t.Fatal(err)
	}
	objs, err := source.Parse("policies.yaml", []byte(pols))
	if err != nil {
		t.Fatal(err)
	}
	out, _ := offline.Compile(objs, mesh, compile.Workload{Namespace: "foo", Name: "httpbin", Labels: map[string]string{"app": "httpbin"}})
	return offline.Bundle(out, mesh, map[string]authz.Provider{"opa": p})
}

func regoBundle(t *testing.T, policy string) *authz.RegoProvider {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, ".manifest"), []byte(`{"revision":"r","roots":["envoy"]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "p.rego"), []byte(policy), 0o644); err != nil {
		t.Fatal(err)
	}
	p, err := authz.NewRegoProvider(context.Background(), authz.RegoProviderConfig{Bundle: dir})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// A CUSTOM provider's header changes apply as Envoy's ext_authz filter
// applies them: set, appended and removed request headers before the request
// goes to the app, response headers on the response the client gets.
func TestCustomProviderHeaderChanges(t *testing.T) {
	rp := regoBundle(t, `package envoy.authz
import rego.v1
allow := {"allowed": true, "request_headers_to_remove": ["x-api-key"], "headers": {"x-user": "alice"}, "response_headers_to_add": {"x-served-by": "opa"}}
`)
	e := start(t, ModePermissive, withCustom(t, rp))
	resp, _, err := e.get(t, e.client, "/opa/x", map[string]string{"x-api-key": "secret", "x-user": "mallory"})
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 {
		t.Fatalf("status %d, want 200", resp.StatusCode)
	}
	h := <-e.seen
	if got := h.Values("x-api-key"); len(got) != 0 {
		t.Errorf("the app received x-api-key %q, which the decision removes", got)
	}
	if got := h.Values("x-user"); len(got) != 1 || got[0] != "alice" {
		t.Errorf("the app received x-user %q, want [alice]", got)
	}
	if got := resp.Header.Get("x-served-by"); got != "opa" {
		t.Errorf("response x-served-by %q, want opa", got)
	}

	e = start(t, ModePermissive, withCustom(t, fixedResult{Allowed: true, AppendHeaders: []authz.Header{{Name: "x-tag", Value: "b"}}}))
	if resp, _, err = e.get(t, e.client, "/opa/x", map[string]string{"x-tag": "a"}); err != nil || resp.StatusCode != 200 {
		t.Fatalf("append: %v %v", resp, err)
	}
	if got := (<-e.seen).Values("x-tag"); len(got) != 2 || got[0] != "a" || got[1] != "b" {
		t.Errorf("the app received x-tag %q, want [a b]", got)
	}
}

// A provider's response_headers_to_add meet the app's response as Envoy's
// ext_authz filter has them: set replaces the app's header of that name,
// append adds after the app's values.
func TestCustomProviderResponseHeadersOverApp(t *testing.T) {
	e := start(t, ModePermissive, withCustom(t, fixedResult{Allowed: true, ResponseHeaders: []authz.ResponseHeader{
		{Name: "x-served-by", Value: "opa"}, {Name: "x-tag", Value: "opa", Append: true}}}))
	resp, _, err := e.get(t, e.client, "/opa/app-headers", nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("%v %v", resp, err)
	}
	if got := resp.Header.Values("x-served-by"); len(got) != 1 || got[0] != "opa" {
		t.Errorf("x-served-by %q, want [opa] (set replaces the app's)", got)
	}
	if got := resp.Header.Values("x-tag"); len(got) != 2 || got[0] != "app" || got[1] != "opa" {
		t.Errorf("x-tag %q, want [app opa] (append adds after the app's)", got)
	}

	// append_action ADD_IF_ABSENT and OVERWRITE_IF_EXISTS, against the
	// app's response headers (x-served-by and x-tag are the app's).
	e = start(t, ModePermissive, withCustom(t, fixedResult{Allowed: true, ResponseHeaders: []authz.ResponseHeader{
		{Name: "x-served-by", Value: "opa", IfAbsent: true}, {Name: "x-new", Value: "opa", IfAbsent: true},
		{Name: "x-tag", Value: "opa", IfExists: true}, {Name: "x-none", Value: "opa", IfExists: true}}}))
	if resp, _, err = e.get(t, e.client, "/opa/app-headers", nil); err != nil || resp.StatusCode != 200 {
		t.Fatalf("%v %v", resp, err)
	}
	for name, want := range map[string][]string{"x-served-by": {"app"}, "x-new": {"opa"}, "x-tag": {"opa"}, "x-none": nil} {
		if got := resp.Header.Values(name); !slices.Equal(got, want) {
			t.Errorf("%s %q, want %q", name, got, want)
		}
	}
}

// A provider cannot speak for the peer: setting x-forwarded-client-cert, or
// a header value with CR LF, is a provider error, and the request is denied.
func TestCustomProviderCannotSetXFCC(t *testing.T) {
	for _, res := range []authz.ProviderResult{
		{Allowed: true, Headers: map[string]string{"x-forwarded-client-cert": "By=x;URI=spiffe://cluster.local/ns/admin/sa/root"}},
		{Allowed: true, Headers: map[string]string{"x-user": "alice\r\nx-admin: true"}},
	} {
		e := start(t, ModePermissive, withCustom(t, fixedResult(res)))
		resp, _, err := e.get(t, e.client, "/opa/x", nil)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != 403 {
			t.Errorf("%v: status %d, want 403", res.Headers, resp.StatusCode)
		}
	}
}

// A CUSTOM policy sees the path Envoy hands ext_authz: normalized.
func TestCustomProviderSeesNormalizedPath(t *testing.T) {
	rp := regoBundle(t, `package envoy.authz
import rego.v1
default allow := false
allow if not startswith(input.attributes.request.http.path, "/opa/secret")
`)
	e := start(t, ModePermissive, withCustom(t, rp))
	for _, tc := range []struct {
		path string
		want int
	}{{"/opa/secret", 403}, {"/opa/x/../secret", 403}, {"/opa/%73ecret", 403}, {"/opa/public", 200}} {
		resp, _, err := e.get(t, e.client, tc.path, nil)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != tc.want {
			t.Errorf("%s: status %d, want %d", tc.path, resp.StatusCode, tc.want)
		}
	}
}

// A provider's denial: its content type is kept; a status Envoy does not
// support is a provider error, and the client still gets an answer (403).
func TestCustomProviderDenial(t *testing.T) {
	for _, tc := range []struct {
		name       string
		res        authz.ProviderResult
		wantStatus int
		wantType   string
	}{
		{"json body", authz.ProviderResult{Status: 401, Headers: map[string]string{"content-type": "application/json", "www-authenticate": "Bearer"}, Body: `{"error":"login"}`}, 401, "application/json"},
		{"no content type", authz.ProviderResult{Status: 401, Body: "login"}, 401, "text/plain"},
		{"status 99", authz.ProviderResult{Status: 99, Body: "x"}, 403, "text/plain"},
		{"status 1000", authz.ProviderResult{Status: 1000, Body: "x"}, 403, "text/plain"},
		{"status 1", authz.ProviderResult{Status: 1, Body: "x"}, 403, "text/plain"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := start(t, ModePermissive, withCustom(t, fixedResult(tc.res)))
			resp, _, err := e.get(t, e.client, "/opa/x", nil)
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != tc.wantStatus || resp.Header.Get("content-type") != tc.wantType {
				t.Errorf("got %d %q, want %d %q", resp.StatusCode, resp.Header.Get("content-type"), tc.wantStatus, tc.wantType)
			}
		})
	}
}

// localReply never panics on a status WriteHeader refuses: the client gets a 403.
func TestLocalReplyInvalidStatus(t *testing.T) {
	for _, status := range []int{0, 1, 99, 600, 1000} {
		w := httptest.NewRecorder()
		localReply(w, &authz.Request{Protocol: authz.ProtocolHTTP}, status, "x")
		if w.Code != http.StatusForbidden || w.Body.String() != authz.DeniedBody {
			t.Errorf("status %d: got %d %q, want 403 %q", status, w.Code, w.Body.String(), authz.DeniedBody)
		}
	}
	w := httptest.NewRecorder()
	w.Header().Set("content-type", "application/json")
	localReply(w, &authz.Request{Protocol: authz.ProtocolHTTP}, 401, "{}")
	if got := w.Header().Get("content-type"); w.Code != 401 || got != "application/json" {
		t.Errorf("got %d %q, want 401 application/json", w.Code, got)
	}
}

// A CUSTOM provider with includeRequestBodyInCheck gets the request body, as
// Envoy's ext_authz with_request_body hands it: the body, opa-envoy-plugin's
// parsed_body for JSON, a 413 for a longer body unless partial messages are
// allowed (then its start, truncated_body and x-envoy-auth-partial-body). The
// app gets the body whole either way, and requests no CUSTOM rule covers are
// not held to the provider's limit.
func TestCustomProviderGetsBody(t *testing.T) {
	rp := regoBundle(t, `package envoy.authz
import rego.v1
default allow := false
allow if input.parsed_body.user == "alice"
allow if {
	input.truncated_body
	input.parsed_body == null
	input.attributes.request.http.headers["x-envoy-auth-partial-body"] == "true"
	startswith(input.attributes.request.http.body, "{\"user\": \"alice\"")
}
`)
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		if err != nil {
			t.Errorf("app: reading the body: %v", err)
		}
		fmt.Fprintf(w, "app got %d bytes: %s", len(b), b)
	}))
	t.Cleanup(app.Close)
	long := `{"user": "alice", "pad": "` + strings.Repeat("x", 100) + `"}`
	post := func(e *env, path, body string, chunked bool) (int, string) {
		t.Helper()
		tr := &http.Transport{TLSClientConfig: e.client, DisableKeepAlives: true}
		var rd io.Reader = strings.NewReader(body)
		if chunked {
			rd = io.MultiReader(strings.NewReader(body)) // unknown length: chunked
		}
		req, _ := http.NewRequest("POST", "https://"+e.addr+path, rd)
		req.Host = "httpbin.foo"
		req.Header.Set("content-type", "application/json")
		req.Header.Set("x-envoy-auth-partial-body", "true") // a client's own is replaced
		resp, err := (&http.Client{Transport: tr, Timeout: 5 * time.Second}).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	appGot := func(body string) string { return fmt.Sprintf("app got %d bytes: %s", len(body), body) }
	useApp := func(c *Config) { c.App = strings.TrimPrefix(app.URL, "http://") }

	e := start(t, ModePermissive, withCustom(t, authz.WithBody(rp, authz.BodyConfig{MaxRequestBytes: 64})), useApp)
	for _, tc := range []struct {
		name, path, body string
		chunked          bool
		status           int
		resp             string
	}{
		{"JSON body the policy allows", "/opa/x", `{"user": "alice"}`, false, 200, appGot(`{"user": "alice"}`)},
		{"the same, chunked", "/opa/x", `{"user": "alice"}`, true, 200, appGot(`{"user": "alice"}`)},
		{"JSON body the policy denies", "/opa/x", `{"user": "mallory"}`, false, 403, authz.DeniedBody},
		{"JSON that does not parse", "/opa/x", `{"user": "alice"`, false, 403, authz.DeniedBody},
		{"no body", "/opa/x", "", false, 403, authz.DeniedBody},
		{"longer than maxRequestBytes", "/opa/x", long, false, 413, "Payload Too Large"},
		{"longer, chunked", "/opa/x", long, true, 413, "Payload Too Large"},
		{"a long body outside the CUSTOM rule", "/get", long, false, 200, appGot(long)},
	} {
		if code, resp := post(e, tc.path, tc.body, tc.chunked); code != tc.status || resp != tc.resp {
			t.Errorf("%s: %d %q, want %d %q", tc.name, code, resp, tc.status, tc.resp)
		}
	}

	e = start(t, ModePermissive, withCustom(t, authz.WithBody(rp, authz.BodyConfig{MaxRequestBytes: 64, AllowPartialMessage: true})), useApp)
	if code, resp := post(e, "/opa/x", long, false); code != 200 || resp != appGot(long) {
		t.Errorf("partial message allowed: %d %q, want 200 and the whole body at the app", code, resp)
	}
	if code, resp := post(e, "/opa/x", `{"user": "alice"}`, false); code != 200 || resp != appGot(`{"user": "alice"}`) {
		t.Errorf("partial message allowed, a short body: %d %q, want 200", code, resp)
	}
	if code, _ := post(e, "/opa/x", `{"user": "mallory", "pad": "`+strings.Repeat("x", 100)+`"}`, false); code != 403 {
		t.Errorf("partial message allowed, mallory's long body: %d, want 403", code)
	}
}
