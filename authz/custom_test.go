package authz

import (
	"context"
	"encoding/base64"
	"errors"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/google/go-cmp/cmp"
	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/rampart-mesh/rampart/authn"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// regoProviderFor builds a Rego CUSTOM provider from one policy module, whose
// decision is data.envoy.authz.allow.
func regoProviderFor(t *testing.T, policy string) *RegoProvider {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, ".manifest"), []byte(`{"revision":"r1","roots":["envoy"]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "p.rego"), []byte(policy), 0o644); err != nil {
		t.Fatal(err)
	}
	p, err := NewRegoProvider(context.Background(), RegoProviderConfig{Bundle: dir})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// providerInput is the full input document a CUSTOM provider gets for raw,
// under the default path normalization.
func providerInput(t *testing.T, raw string) ast.Value {
	t.Helper()
	r := &Request{Protocol: ProtocolHTTP, Method: "GET", Host: "h", Path: raw, SourceIP: "10.0.0.1", DestinationIP: "10.0.0.2", DestinationPort: 80}
	p, q, err := NormalizePath(raw, "")
	if err != nil {
		t.Fatal(err)
	}
	return r.input(p, q)
}

func field(v ast.Value, path ...string) *ast.Term {
	cur := ast.NewTerm(v)
	for _, k := range path {
		o, ok := cur.Value.(ast.Object)
		if !ok {
			return nil
		}
		if cur = o.Get(ast.StringTerm(k)); cur == nil {
			return nil
		}
	}
	return cur
}

// opaEnvoyParsedTerms is opa-envoy-plugin's getParsedPathAndQuery
// (envoyauth/request.go), the reference parsed_path and parsed_query follow.
func opaEnvoyParsedTerms(t *testing.T, path string) (*ast.Term, *ast.Term) {
	t.Helper()
	u, err := url.Parse(path)
	if err != nil {
		t.Fatal(err)
	}
	segs := strings.Split(strings.TrimLeft(u.Path, "/"), "/")
	p, err := ast.InterfaceToValue(segs)
	if err != nil {
		t.Fatal(err)
	}
	q, err := ast.InterfaceToValue(map[string][]string(u.Query()))
	if err != nil {
		t.Fatal(err)
	}
	return ast.NewTerm(p), ast.NewTerm(q)
}

// A CUSTOM provider gets the path Envoy hands ext_authz: normalized, with
// the query; in the Rego input and in the ext_authz CheckRequest.
func TestProviderPathIsNormalized(t *testing.T) {
	for _, tc := range []struct{ name, raw, want string }{
		{"dot segments", "/public/../admin", "/admin"},
		{"escaped unreserved", "/%61dmin", "/admin"},
		{"dot", "/./admin", "/admin"},
		{"query kept", "/public/../admin?x=1&y=%zz", "/admin?x=1&y=%zz"},
		{"empty query kept", "/a/./b?", "/a/b?"},
		{"plain", "/a/b", "/a/b"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := providerInput(t, tc.raw)
			if got := field(in, "attributes", "request", "http", "path"); got == nil || !got.Equal(ast.StringTerm(tc.want)) {
				t.Errorf("input.attributes.request.http.path = %v, want %q", got, tc.want)
			}
			if got := field(in, "attributes", "request", "http", "headers", ":path"); got == nil || !got.Equal(ast.StringTerm(tc.want)) {
				t.Errorf("input headers[:path] = %v, want %q", got, tc.want)
			}
			r := &Request{Protocol: ProtocolHTTP, Method: "GET", Host: "h", Path: tc.raw}
			http := r.CheckRequest().GetAttributes().GetRequest().GetHttp()
			if http.GetPath() != tc.want || http.GetHeaders()[":path"] != tc.want {
				t.Errorf("CheckRequest path %q, headers[:path] %q; want %q", http.GetPath(), http.GetHeaders()[":path"], tc.want)
			}
		})
	}
}

// recordingProvider allows and records what it was asked.
type recordingProvider struct {
	calls int
	check *authv3.CheckRequest
	input ast.Value
	res   ProviderResult
}

func (p *recordingProvider) Check(_ context.Context, r *Request, input ast.Value) ProviderResult {
	p.calls++
	p.check, p.input = r.CheckRequest(), input
	return p.res
}

// customBundle is a bundle whose CUSTOM rules (each one match set) name
// provider "ext", plus extra modules.
func customBundle(mode string, prov Provider, rules int, extra string) Bundle {
	hits := "package rampart.policy\nimport rego.v1\n"
	for i := 0; i < rules; i++ {
		hits += "hits contains {\"action\": \"custom\", \"policy\": \"foo.ext\", \"rule\": " + strconv.Itoa(i) + ", \"provider\": \"ext\", \"dry_run\": false} if input.rampart.request.path != \"\"\n"
	}
	hits += "allow_policies := set()\ndry_run_allow_policies := set()\n" + extra
	return Bundle{Revision: "r", Modules: map[string]string{"p.rego": hits}, PathNormalization: mode, Providers: map[string]Provider{"ext": prov}}
}

// The engine hands providers the path under the mesh's normalization.
func TestEngineProviderPathUsesMeshNormalization(t *testing.T) {
	prov := &recordingProvider{res: ProviderResult{Allowed: true}}
	e := New(Config{})
	if err := e.Load(context.Background(), customBundle(NormalizeMergeSlashes, prov, 1, "")); err != nil {
		t.Fatal(err)
	}
	e.Decide(context.Background(), &Request{Protocol: ProtocolHTTP, Method: "GET", Host: "h", Path: "//a//./b?x=1"})
	if prov.check == nil {
		t.Fatal("provider not asked")
	}
	if got := prov.check.GetAttributes().GetRequest().GetHttp().GetPath(); got != "/a/b?x=1" {
		t.Errorf("CheckRequest path %q, want /a/b?x=1 (MERGE_SLASHES)", got)
	}
	if got := field(prov.input, "attributes", "request", "http", "path"); got == nil || !got.Equal(ast.StringTerm("/a/b?x=1")) {
		t.Errorf("input path %v, want /a/b?x=1", got)
	}
}

// parsed_path and parsed_query are what opa-envoy-plugin computes from the
// same :path.
func TestParsedPathAndQueryAsOPAEnvoyPlugin(t *testing.T) {
	for _, raw := range []string{
		"/", "/a/b/", "/admin%2Fusers", "//admin/users", "/%E2%82%AC/x",
		"/api?admin=true&x=%zz", "/q?a=1;b=2&c=3", "/q?a=1&a=2&b", "/q?",
	} {
		t.Run(raw, func(t *testing.T) {
			in := providerInput(t, raw)
			full := field(in, "attributes", "request", "http", "path").Value.(ast.String)
			wantPath, wantQuery := opaEnvoyParsedTerms(t, string(full))
			if got := field(in, "parsed_path"); !got.Equal(wantPath) {
				t.Errorf("parsed_path %v, opa-envoy-plugin %v", got, wantPath)
			}
			if got := field(in, "parsed_query"); !got.Equal(wantQuery) {
				t.Errorf("parsed_query %v, opa-envoy-plugin %v", got, wantQuery)
			}
		})
	}
}

// A policy written for opa-envoy-plugin decides on parsed_query and
// parsed_path as there.
func TestRegoProviderParsedFields(t *testing.T) {
	p := regoProviderFor(t, `package envoy.authz
import rego.v1
default allow := false
allow if {
	not input.parsed_query.admin
	input.parsed_path[0] != "admin"
}
`)
	for _, tc := range []struct {
		raw   string
		allow bool
	}{
		{"/api?admin=true&x=%zz", false},
		{"/api?x=%zz", true},
		{"/admin%2Fusers", false},
		{"/public/x", true},
		// opa-envoy-plugin fails a request whose path url.Parse refuses.
		{"/a%zz", false},
	} {
		if got := p.Check(context.Background(), nil, providerInput(t, tc.raw)); got.Allowed != tc.allow {
			t.Errorf("%s: allowed %v (%s), want %v", tc.raw, got.Allowed, got.Reason, tc.allow)
		}
	}
}

// A decision's header fields, in every shape opa-envoy-plugin accepts; any
// other shape is a provider error, which denies.
func TestRegoProviderDecisionHeaders(t *testing.T) {
	for _, tc := range []struct {
		name     string
		decision string
		want     ProviderResult
	}{
		{"string", `{"allowed": true, "headers": {"X-A": "1"}}`,
			ProviderResult{Allowed: true, Reason: "allowed by provider", Headers: map[string]string{"x-a": "1"}}},
		{"array: repeated, the last set wins", `{"allowed": true, "headers": {"x-a": ["1", "2"]}}`,
			ProviderResult{Allowed: true, Reason: "allowed by provider", Headers: map[string]string{"x-a": "2"}}},
		{"array of objects", `{"allowed": true, "headers": [{"x-a": "1"}, {"x-b": ["2"]}]}`,
			ProviderResult{Allowed: true, Reason: "allowed by provider", Headers: map[string]string{"x-a": "1", "x-b": "2"}}},
		{"removals, response headers, dynamic metadata", `{"allowed": true, "request_headers_to_remove": ["X-Api-Key"], "response_headers_to_add": {"x-r": ["1", "2"]}, "dynamic_metadata": {"k": 1}}`,
			ProviderResult{Allowed: true, Reason: "allowed by provider", Headers: map[string]string{}, RemoveHeaders: []string{"x-api-key"},
				ResponseHeaders: []ResponseHeader{{Name: "x-r", Value: "1"}, {Name: "x-r", Value: "2"}}}},
		{"denial", `{"allowed": false, "headers": {"content-type": "application/json"}, "body": "{}", "http_status": 401}`,
			ProviderResult{Status: 401, Reason: "denied by provider", Headers: map[string]string{"content-type": "application/json"}, Body: "{}"}},
		{"number header", `{"allowed": true, "headers": {"x-a": 1}}`, ProviderResult{}},
		{"array with a number", `{"allowed": true, "headers": {"x-a": ["1", 2]}}`, ProviderResult{}},
		{"array of strings at the top", `{"allowed": true, "headers": ["x-a"]}`, ProviderResult{}},
		{"removal not an array", `{"allowed": true, "request_headers_to_remove": "x-a"}`, ProviderResult{}},
		{"removal not a string", `{"allowed": true, "request_headers_to_remove": [1]}`, ProviderResult{}},
		{"dynamic metadata not an object", `{"allowed": true, "dynamic_metadata": "x"}`, ProviderResult{}},
		{"allowed not a boolean", `{"allowed": "true"}`, ProviderResult{}},
		{"body not a string", `{"allowed": false, "body": 1}`, ProviderResult{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := regoProviderFor(t, "package envoy.authz\nimport rego.v1\nallow := "+tc.decision+"\n")
			got := p.Check(context.Background(), nil, providerInput(t, "/x"))
			if tc.want.Reason == "" {
				if got.Allowed || !strings.HasPrefix(got.Reason, "provider error: ") {
					t.Errorf("got %+v; want a provider error", got)
				}
				return
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("result (-want +got):\n%s", diff)
			}
		})
	}
}

// opa-envoy-plugin refuses an http_status outside Envoy's StatusCode enum,
// and one that is not a number: a provider error, which denies with 403.
func TestRegoProviderHTTPStatus(t *testing.T) {
	for _, tc := range []struct {
		status string
		want   int
		err    bool
	}{
		{"401", 401, false}, {"503", 503, false},
		{"99", 0, true}, {"1000", 0, true}, {"299", 0, true}, {"0", 0, true}, {"-1", 0, true}, {"401.5", 0, true}, {`"401"`, 0, true},
	} {
		p := regoProviderFor(t, "package envoy.authz\nimport rego.v1\nallow := {\"allowed\": false, \"http_status\": "+tc.status+"}\n")
		got := p.Check(context.Background(), nil, providerInput(t, "/x"))
		if got.Allowed || got.Status != tc.want || tc.err != strings.HasPrefix(got.Reason, "provider error: ") {
			t.Errorf("http_status %s: %+v; want status %d, error %v", tc.status, got, tc.want, tc.err)
		}
	}
}

// fixedExtAuthz answers every check with resp.
type fixedExtAuthz struct {
	authv3.UnimplementedAuthorizationServer
	resp *authv3.CheckResponse
}

func (s *fixedExtAuthz) Check(context.Context, *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	return s.resp, nil
}

func hvo(k, v string, appendValue *bool) *corev3.HeaderValueOption {
	o := &corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: k, Value: v}}
	if appendValue != nil {
		//lint:ignore SA1019 the flag ext_authz servers send
		o.Append = wrapperspb.Bool(*appendValue)
	}
	return o
}

// An ext_authz OK response's header changes: headers (append unset or false
// replaces, true appends), headers_to_remove, response_headers_to_add.
func TestExtAuthzOKHeaderChanges(t *testing.T) {
	yes, no := true, false
	fixed := &fixedExtAuthz{resp: &authv3.CheckResponse{Status: &rpcstatus.Status{Code: int32(codes.OK)}, HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: &authv3.OkHttpResponse{
		Headers:              []*corev3.HeaderValueOption{hvo("X-Set", "1", nil), hvo("x-set2", "2", &no), hvo("x-app", "3", &yes)},
		HeadersToRemove:      []string{"Authorization"},
		ResponseHeadersToAdd: []*corev3.HeaderValueOption{hvo("x-r", "a", nil), hvo("x-r2", "b", &yes)},
	}}}}
	p, err := NewExtAuthzProvider(ExtAuthzConfig{Conn: startExtAuthz(t, fixed)})
	if err != nil {
		t.Fatal(err)
	}
	got := p.Check(context.Background(), &Request{Protocol: ProtocolHTTP, Method: "GET", Host: "h", Path: "/"}, nil)
	want := ProviderResult{Allowed: true, Reason: "allowed by ext_authz", Headers: map[string]string{"x-set": "1", "x-set2": "2"},
		AppendHeaders: []Header{{Name: "x-app", Value: "3"}}, RemoveHeaders: []string{"authorization"},
		ResponseHeaders: []ResponseHeader{{Name: "x-r", Value: "a"}, {Name: "x-r2", Value: "b", Append: true}}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("result (-want +got):\n%s", diff)
	}
}

// A denial with a status Envoy does not support is a server failure:
// statusOnError, and 403 when that is not valid either.
func TestExtAuthzInvalidStatus(t *testing.T) {
	deny := func(code int32) *fixedExtAuthz {
		return &fixedExtAuthz{resp: &authv3.CheckResponse{Status: &rpcstatus.Status{Code: int32(codes.PermissionDenied)}, HttpResponse: &authv3.CheckResponse_DeniedResponse{DeniedResponse: &authv3.DeniedHttpResponse{
			Status: &typev3.HttpStatus{Code: typev3.StatusCode(code)}, Body: "no"}}}}
	}
	for _, tc := range []struct {
		name          string
		code          int32
		statusOnError int
		want          int
	}{
		{"valid", 401, 0, 401},
		{"unset", 0, 0, 403},
		{"too small", 99, 0, 403},
		{"too large", 1000, 503, 503},
		{"not in the enum", 299, 500, 500},
		{"statusOnError invalid too", 99, 99, 403},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := NewExtAuthzProvider(ExtAuthzConfig{Conn: startExtAuthz(t, deny(tc.code)), StatusOnError: tc.statusOnError})
			if err != nil {
				t.Fatal(err)
			}
			got := p.Check(context.Background(), &Request{Protocol: ProtocolHTTP, Method: "GET", Host: "h", Path: "/"}, nil)
			if got.Allowed || got.Status != tc.want {
				t.Errorf("%+v; want a denial with %d", got, tc.want)
			}
		})
	}
	// An unreachable server with an invalid statusOnError.
	wb := WireBundle{Providers: map[string]WireProvider{"ext": {ExtAuthzGRPC: &WireExtAuthz{Target: "127.0.0.1:1", Timeout: "200ms", StatusOnError: 99}}}}
	provs, err := wb.LoadProviders(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if got := provs["ext"].Check(context.Background(), &Request{Protocol: ProtocolHTTP, Method: "GET", Host: "h", Path: "/"}, nil); got.Allowed || got.Status != 403 {
		t.Errorf("unreachable server, statusOnError 99: %+v; want a 403 denial", got)
	}
}

// Istio's envoyExtAuthzGrpc timeout defaults to 600s.
func TestExtAuthzDefaultTimeout(t *testing.T) {
	p, err := NewExtAuthzProvider(ExtAuthzConfig{Conn: startExtAuthz(t, &sampleExtAuthz{})})
	if err != nil {
		t.Fatal(err)
	}
	if p.cfg.Timeout != 600*time.Second {
		t.Errorf("default timeout %v, want 600s", p.cfg.Timeout)
	}
}

// A target that still names a namespace ("ns/host:port") never resolves;
// with failOpen it would allow everything. It is refused.
func TestLoadProvidersRefusesNamespacedTarget(t *testing.T) {
	for _, failOpen := range []bool{false, true} {
		wb := WireBundle{Providers: map[string]WireProvider{"ext": {ExtAuthzGRPC: &WireExtAuthz{Target: "foo/ext.foo.svc.cluster.local:9000", FailOpen: failOpen}}}}
		if _, err := wb.LoadProviders(context.Background()); err == nil || !strings.Contains(err.Error(), "provider ext") {
			t.Errorf("failOpen=%v: err %v; want an error naming provider ext", failOpen, err)
		}
	}
}

// funcProvider answers with f and counts its calls.
type funcProvider struct {
	calls int
	f     func(*Request) ProviderResult
}

func (p *funcProvider) Check(_ context.Context, r *Request, _ ast.Value) ProviderResult {
	p.calls++
	return p.f(r)
}

func headerOf(r *Request, name string) string {
	for _, h := range r.Headers {
		if strings.EqualFold(h.Name, name) {
			return h.Value
		}
	}
	return ""
}

// Envoy's ext_authz filter asks its server once per request, however many
// CUSTOM rules match.
func TestEngineAsksEachProviderOnce(t *testing.T) {
	prov := &funcProvider{f: func(*Request) ProviderResult { return ProviderResult{Allowed: true} }}
	e := New(Config{})
	if err := e.Load(context.Background(), customBundle("", prov, 3, "")); err != nil {
		t.Fatal(err)
	}
	d := e.Decide(context.Background(), httpReq("GET", "/x"))
	if !d.Allowed || prov.calls != 1 {
		t.Errorf("three matching CUSTOM rules: allowed %v, provider asked %d times; want once", d.Allowed, prov.calls)
	}
}

// denyOnHeaders denies requests whose x-user-tier is "blocked" or that carry
// x-debug, and audits x-user "alice".
const denyOnHeaders = `hits contains {"action": "deny", "policy": "foo.deny-blocked", "rule": 0, "dry_run": false} if input.attributes.request.http.headers["x-user-tier"] == "blocked"
hits contains {"action": "deny", "policy": "foo.deny-debug", "rule": 0, "dry_run": false} if input.attributes.request.http.headers["x-debug"]
hits contains {"action": "deny", "policy": "foo.deny-provider-user", "rule": 0, "dry_run": false} if input.attributes.request.http.headers["x-user"] == "provider"
hits contains {"action": "audit", "policy": "foo.audit", "rule": 0, "dry_run": false} if input.attributes.request.http.headers["x-user-tier"] == "gold"
`

// Envoy runs RBAC after ext_authz: DENY, ALLOW and AUDIT see the request with
// the provider's header changes, and authentication's after them. The
// verdict cache keeps each request's own answer.
func TestEngineRBACSeesProviderHeaders(t *testing.T) {
	prov := &funcProvider{f: func(r *Request) ProviderResult {
		res := ProviderResult{Allowed: true, Headers: map[string]string{}}
		switch headerOf(r, "x-who") {
		case "mallory":
			res.Headers["x-user-tier"] = "blocked"
		case "gold":
			res.Headers["x-user-tier"] = "gold"
		case "remover":
			res.RemoveHeaders = []string{"x-debug"}
		case "appender":
			res.AppendHeaders = []Header{{Name: "x-debug", Value: "1"}}
		case "setter":
			res.Headers["x-user"] = "provider"
		}
		return res
	}}
	e := New(Config{})
	if err := e.Load(context.Background(), customBundle("", prov, 1, denyOnHeaders)); err != nil {
		t.Fatal(err)
	}
	req := func(who string, extra ...Header) *Request {
		r := httpReq("GET", "/x")
		r.Headers = append([]Header{{Name: "x-who", Value: who}}, extra...)
		return r
	}
	for _, tc := range []struct {
		name    string
		req     *Request
		allowed bool
		policy  string
		audit   int
	}{
		{"provider sets the header DENY names", req("mallory"), false, "foo.deny-blocked", 0},
		{"no change", req("alice"), true, "", 0},
		{"provider sets the header DENY names, again (cached)", req("mallory"), false, "foo.deny-blocked", 0},
		{"no change, again (cached)", req("alice"), true, "", 0},
		{"AUDIT sees the provider's header", req("gold"), true, "", 1},
		{"provider removes the header DENY names", req("remover", Header{Name: "X-Debug", Value: "1"}), true, "", 0},
		{"the client's header, not removed", req("alice", Header{Name: "x-debug", Value: "1"}), false, "foo.deny-debug", 0},
		{"provider appends the header DENY names", req("appender"), false, "foo.deny-debug", 0},
		{"provider sets a header", req("setter"), false, "foo.deny-provider-user", 0},
		// jwt_authn runs after ext_authz: its header wins over the provider's.
		{"authentication sets the same header after", req("setter").AfterAuthn(nil, nil, []Header{{Name: "x-user", Value: "jwt"}}), true, "", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := e.Decide(context.Background(), tc.req)
			if d.Allowed != tc.allowed || d.Policy != tc.policy || len(d.Audit) != tc.audit {
				t.Errorf("allowed %v policy %q audit %v (%s); want allowed %v policy %q, %d audit", d.Allowed, d.Policy, d.Audit, d.Reason, tc.allowed, tc.policy, tc.audit)
			}
			if !d.Allowed && (d.Headers != nil || d.AppendHeaders != nil || d.RemoveHeaders != nil) {
				t.Errorf("denied by policy, yet the provider's request header changes are in the decision: %+v", d)
			}
		})
	}
}

// What a provider asks of the sidecar is checked: a header no HTTP message
// can carry, a pseudo-header, x-forwarded-client-cert, or a denial with a
// status Envoy does not support is a provider error, which denies with 403.
func TestEngineChecksProviderAnswer(t *testing.T) {
	for _, tc := range []struct {
		name string
		res  ProviderResult
		want int
	}{
		{"CR LF in a value", ProviderResult{Allowed: true, Headers: map[string]string{"x-a": "1\r\nx-b: 2"}}, 403},
		{"LF in an appended value", ProviderResult{Allowed: true, AppendHeaders: []Header{{Name: "x-a", Value: "1\n"}}}, 403},
		{"bad name", ProviderResult{Allowed: true, Headers: map[string]string{"x a": "1"}}, 403},
		{"pseudo-header", ProviderResult{Allowed: true, Headers: map[string]string{":path": "/admin"}}, 403},
		{"x-forwarded-client-cert", ProviderResult{Allowed: true, Headers: map[string]string{"X-Forwarded-Client-Cert": "By=x;URI=spiffe://evil"}}, 403},
		{"x-forwarded-client-cert appended", ProviderResult{Allowed: true, AppendHeaders: []Header{{Name: "x-forwarded-client-cert", Value: "x"}}}, 403},
		{"response header CR", ProviderResult{Allowed: true, ResponseHeaders: []ResponseHeader{{Name: "x-r", Value: "a\rb"}}}, 403},
		{"bad removal", ProviderResult{Allowed: true, RemoveHeaders: []string{"a b"}}, 403},
		{"denial header CR LF", ProviderResult{Status: 401, Headers: map[string]string{"www-authenticate": "x\r\n"}}, 403},
		{"status 99", ProviderResult{Status: 99}, 403},
		{"status 1000", ProviderResult{Status: 1000}, 403},
		{"status 1", ProviderResult{Status: 1}, 403},
		{"valid denial", ProviderResult{Status: 401, Headers: map[string]string{"WWW-Authenticate": "Bearer"}}, 401},
		{"valid allow", ProviderResult{Allowed: true, Headers: map[string]string{"X-User": "alice"}}, 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			prov := &funcProvider{f: func(*Request) ProviderResult { return tc.res }}
			e := New(Config{})
			if err := e.Load(context.Background(), customBundle("", prov, 1, "")); err != nil {
				t.Fatal(err)
			}
			d := e.Decide(context.Background(), httpReq("GET", "/x"))
			if d.Status != tc.want || d.Allowed != (tc.want == 200) {
				t.Fatalf("status %d allowed %v (%s); want %d", d.Status, d.Allowed, d.Reason, tc.want)
			}
			if tc.want == 403 && (d.Headers != nil || d.Body != "") {
				t.Errorf("provider error, yet its headers or body are in the decision: %+v", d)
			}
			if tc.want != 403 {
				for k := range d.Headers {
					if k != strings.ToLower(k) {
						t.Errorf("header name %q not in lower case", k)
					}
				}
			}
		})
	}
}

// A provider that removes or replaces the token's header leaves RBAC no
// identity from the client's token (Envoy's jwt_authn runs after ext_authz,
// on the provider's headers): a DENY on requests without a principal fires.
func TestProviderTokenChangeDropsIdentity(t *testing.T) {
	denyNoPrincipal := `hits contains {"action": "deny", "policy": "foo.require-jwt", "rule": 0, "dry_run": false} if not input.rampart.auth.principal
`
	alice := &authn.RequestAuth{Principal: "https://issuer/alice", Issuer: "https://issuer", Subject: "alice"}
	for _, tc := range []struct {
		name    string
		res     ProviderResult
		allowed bool
	}{
		{"removes authorization", ProviderResult{Allowed: true, RemoveHeaders: []string{"authorization"}}, false},
		{"replaces authorization", ProviderResult{Allowed: true, Headers: map[string]string{"authorization": "Bearer other"}}, false},
		{"changes another header", ProviderResult{Allowed: true, Headers: map[string]string{"x-user": "alice"}}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := tc.res
			prov := &funcProvider{f: func(*Request) ProviderResult { return res }}
			e := New(Config{})
			if err := e.Load(context.Background(), customBundle("", prov, 1, denyNoPrincipal)); err != nil {
				t.Fatal(err)
			}
			r := httpReq("GET", "/x")
			r.Headers = []Header{{Name: "authorization", Value: "Bearer aaa.bbb.ccc"}}
			if d := e.Decide(context.Background(), r.AfterAuthn(alice, nil, nil)); d.Allowed != tc.allowed {
				t.Fatalf("allowed = %v (%s), want %v", d.Allowed, d.Reason, tc.allowed)
			}
		})
	}
}

// A provider WithBody gets the request body in its CheckRequest and input as
// Envoy's with_request_body settings say; one without it gets neither, and
// parsed_body is null, as opa-envoy-plugin has it for a request without a
// body.
func TestEngineProviderBody(t *testing.T) {
	body := []byte(`{"user": "alice"}`)
	hdrs := []Header{{Name: "content-type", Value: "application/json"}, {Name: "content-length", Value: strconv.Itoa(len(body))},
		{Name: "x-envoy-auth-partial-body", Value: "forged"}}
	decide := func(t *testing.T, cfg *BodyConfig, data []byte, complete bool) (*recordingProvider, Decision) {
		t.Helper()
		prov := &recordingProvider{res: ProviderResult{Allowed: true}}
		e := New(Config{})
		if err := e.Load(context.Background(), customBundle("", WithBodyIf(prov, cfg), 1, "")); err != nil {
			t.Fatal(err)
		}
		d := e.Decide(context.Background(), &Request{Protocol: ProtocolHTTP, Method: "POST", Host: "h", Path: "/p", Headers: hdrs,
			Body: &RequestBody{Data: data, Complete: complete}})
		return prov, d
	}
	t.Run("text", func(t *testing.T) {
		prov, d := decide(t, &BodyConfig{MaxRequestBytes: 1024}, body, true)
		if !d.Allowed || prov.check == nil {
			t.Fatalf("decision %+v; provider asked %d times", d, prov.calls)
		}
		h := prov.check.GetAttributes().GetRequest().GetHttp()
		if h.GetBody() != string(body) || len(h.GetRawBody()) != 0 {
			t.Errorf("CheckRequest body %q raw %q, want the body as text", h.GetBody(), h.GetRawBody())
		}
		// Envoy sets x-envoy-auth-partial-body on every check that carries
		// the body, dropping the client's own.
		if got := h.GetHeaders()["x-envoy-auth-partial-body"]; got != "false" {
			t.Errorf("x-envoy-auth-partial-body %q for a whole body, want false (the client sent \"forged\")", got)
		}
		if got := field(prov.input, "attributes", "request", "http", "body"); got == nil || !got.Equal(ast.StringTerm(string(body))) {
			t.Errorf("input body %v", got)
		}
		if got := field(prov.input, "parsed_body", "user"); got == nil || !got.Equal(ast.StringTerm("alice")) {
			t.Errorf("parsed_body.user %v, want alice", got)
		}
		if got := field(prov.input, "truncated_body"); got == nil || !got.Equal(ast.BooleanTerm(false)) {
			t.Errorf("truncated_body %v, want false", got)
		}
	})
	t.Run("bytes, partial", func(t *testing.T) {
		prov, d := decide(t, &BodyConfig{MaxRequestBytes: 8, AllowPartialMessage: true, PackAsBytes: true}, body, true)
		if !d.Allowed || prov.check == nil {
			t.Fatalf("decision %+v", d)
		}
		h := prov.check.GetAttributes().GetRequest().GetHttp()
		if string(h.GetRawBody()) != string(body[:8]) || h.GetBody() != "" {
			t.Errorf("CheckRequest raw_body %q body %q, want the first 8 bytes as raw_body", h.GetRawBody(), h.GetBody())
		}
		if got := h.GetHeaders()["x-envoy-auth-partial-body"]; got != "true" {
			t.Errorf("x-envoy-auth-partial-body %q, want true", got)
		}
		if got := field(prov.input, "attributes", "request", "http", "raw_body"); got == nil || !got.Equal(ast.StringTerm(base64.StdEncoding.EncodeToString(body[:8]))) {
			t.Errorf("input raw_body %v, want the base64 of the first 8 bytes (protojson's bytes)", got)
		}
	})
	t.Run("too large", func(t *testing.T) {
		prov, d := decide(t, &BodyConfig{MaxRequestBytes: 8}, body, true)
		if d.Allowed || d.Status != 413 || prov.calls != 0 {
			t.Fatalf("decision %+v, provider asked %d times; want 413 without asking", d, prov.calls)
		}
		// The sidecar read only the limit: the body did not end there.
		if _, d = decide(t, &BodyConfig{MaxRequestBytes: 17}, body, false); d.Allowed || d.Status != 413 {
			t.Fatalf("an incomplete body: decision %+v, want 413", d)
		}
	})
	t.Run("without the body", func(t *testing.T) {
		prov, d := decide(t, nil, body, true)
		if !d.Allowed || prov.check == nil {
			t.Fatalf("decision %+v", d)
		}
		if h := prov.check.GetAttributes().GetRequest().GetHttp(); h.GetBody() != "" || len(h.GetRawBody()) != 0 {
			t.Errorf("a provider without includeRequestBodyInCheck got the body")
		} else if got := h.GetHeaders()["x-envoy-auth-partial-body"]; got != "forged" {
			t.Errorf("x-envoy-auth-partial-body %q on a check without the body, want the client's header as it came", got)
		}
		if got := field(prov.input, "parsed_body"); got == nil || !got.Equal(ast.NullTerm()) {
			t.Errorf("parsed_body %v, want null", got)
		}
	})
}

// Without the append flag, ext_authz header options follow append_action:
// ADD_IF_ABSENT and OVERWRITE_IF_EXISTS act on the request as the provider
// saw it (and on the response as the app sends it), OVERWRITE_IF_EXISTS_OR_ADD
// replaces, and the proto's default replaces, as Envoy did before
// append_action. The append flag, when sent, wins over append_action.
func TestExtAuthzAppendAction(t *testing.T) {
	act := func(k, v string, a corev3.HeaderValueOption_HeaderAppendAction) *corev3.HeaderValueOption {
		return &corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: k, Value: v}, AppendAction: a}
	}
	yes := true
	withFlag := act("x-flag", "f", corev3.HeaderValueOption_ADD_IF_ABSENT)
	//lint:ignore SA1019 the flag ext_authz servers send
	withFlag.Append = wrapperspb.Bool(yes)
	fixed := &fixedExtAuthz{resp: &authv3.CheckResponse{Status: &rpcstatus.Status{Code: int32(codes.OK)}, HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: &authv3.OkHttpResponse{
		Headers: []*corev3.HeaderValueOption{
			act("x-absent", "new", corev3.HeaderValueOption_ADD_IF_ABSENT),    // not in the request: added
			act("x-present", "new", corev3.HeaderValueOption_ADD_IF_ABSENT),   // in the request: left alone
			act("x-absent", "second", corev3.HeaderValueOption_ADD_IF_ABSENT), // added above: left alone
			act("x-over", "new", corev3.HeaderValueOption_OVERWRITE_IF_EXISTS),
			act("x-missing", "new", corev3.HeaderValueOption_OVERWRITE_IF_EXISTS),
			act("x-set", "new", corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD),
			act("x-default", "new", corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD),
			withFlag,
		},
		ResponseHeadersToAdd: []*corev3.HeaderValueOption{
			act("x-r-absent", "a", corev3.HeaderValueOption_ADD_IF_ABSENT),
			act("x-r-exists", "b", corev3.HeaderValueOption_OVERWRITE_IF_EXISTS),
			act("x-r-set", "c", corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD),
		},
	}}}}
	p, err := NewExtAuthzProvider(ExtAuthzConfig{Conn: startExtAuthz(t, fixed)})
	if err != nil {
		t.Fatal(err)
	}
	req := &Request{Protocol: ProtocolHTTP, Method: "GET", Host: "h", Path: "/",
		Headers: []Header{{Name: "X-Present", Value: "old"}, {Name: "x-over", Value: "old"}, {Name: "x-default", Value: "client"}}}
	got := p.Check(context.Background(), req, nil)
	want := ProviderResult{Allowed: true, Reason: "allowed by ext_authz",
		Headers:       map[string]string{"x-absent": "new", "x-over": "new", "x-set": "new", "x-default": "new"},
		AppendHeaders: []Header{{Name: "x-flag", Value: "f"}},
		ResponseHeaders: []ResponseHeader{{Name: "x-r-absent", Value: "a", IfAbsent: true}, {Name: "x-r-exists", Value: "b", IfExists: true},
			{Name: "x-r-set", Value: "c"}}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("provider result (-want +got):\n%s", diff)
	}
}

// The engine reads the body through Request.ReadBody only when a provider
// that includes it is asked, with the largest limit of the bundle it
// decides with (so a bundle swap cannot leave the body unread), and once.
func TestEngineReadsBodyLazily(t *testing.T) {
	other := &recordingProvider{res: ProviderResult{Allowed: true}}
	prov := &recordingProvider{res: ProviderResult{Allowed: true}}
	hits := "package rampart.policy\nimport rego.v1\n" +
		"hits contains {\"action\": \"custom\", \"policy\": \"foo.ext\", \"rule\": 0, \"provider\": \"ext\", \"dry_run\": false} if input.rampart.request.path == \"/checked\"\n" +
		"allow_policies := set()\ndry_run_allow_policies := set()\n"
	e := New(Config{})
	if err := e.Load(context.Background(), Bundle{Revision: "r", Modules: map[string]string{"p.rego": hits},
		Providers: map[string]Provider{"ext": WithBody(prov, BodyConfig{MaxRequestBytes: 8}), "big": WithBody(other, BodyConfig{MaxRequestBytes: 64})}}); err != nil {
		t.Fatal(err)
	}
	var limits []int
	req := func(path string) *Request {
		return &Request{Protocol: ProtocolHTTP, Method: "POST", Host: "h", Path: path, ReadBody: func(limit int) (*RequestBody, error) {
			limits = append(limits, limit)
			return &RequestBody{Data: []byte("hello"), Complete: true}, nil
		}}
	}
	if d := e.Decide(context.Background(), req("/unchecked")); !d.Allowed || len(limits) != 0 {
		t.Fatalf("a request no CUSTOM rule covers: %+v, body read with limits %v; want it allowed without reading", d, limits)
	}
	if d := e.Decide(context.Background(), req("/checked")); !d.Allowed || !slices.Equal(limits, []int{64}) {
		t.Fatalf("a request the body provider checks: %+v, body read with limits %v; want one read of 64 (the bundle's largest)", d, limits)
	}
	if got := prov.check.GetAttributes().GetRequest().GetHttp().GetBody(); got != "hello" {
		t.Errorf("the provider got body %q", got)
	}
	failing := &Request{Protocol: ProtocolHTTP, Method: "POST", Host: "h", Path: "/checked", ReadBody: func(int) (*RequestBody, error) {
		return nil, errors.New("unexpected EOF")
	}}
	if d := e.Decide(context.Background(), failing); d.Allowed || d.Status != 400 {
		t.Fatalf("a body that cannot be read: %+v, want 400", d)
	}
}
