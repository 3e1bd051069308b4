package route

import (
	"net/http/httptest"
	"strings"
	"testing"
)

func TestMatchPath(t *testing.T) {
	tests := []struct {
		name   string
		match  string // the route's match, YAML
		target string
		hdr    []string
		want   bool
	}{
		{"prefix", `prefix: /foo`, "/foo", nil, true},
		{"prefix longer path", `prefix: /foo`, "/foo/bar", nil, true},
		{"prefix is not segment-aware", `prefix: /foo`, "/foobar", nil, true},
		{"prefix shorter path", `prefix: /foo`, "/fo", nil, false},
		{"prefix case-sensitive by default", `prefix: /foo`, "/FOO", nil, false},
		{"prefix case-insensitive", `{prefix: /foo, case_sensitive: false}`, "/FoO/bar", nil, true},
		{"prefix ignores query", `prefix: /foo`, "/foo?x=/bar", nil, true},
		{"prefix does not see the query", `prefix: "/foo?x"`, "/foo?x=1", nil, false},
		{"path exact", `path: /foo`, "/foo", nil, true},
		{"path with query", `path: /foo`, "/foo?a=b", nil, true},
		{"path trailing slash differs", `path: /foo`, "/foo/", nil, false},
		{"path longer", `path: /foo`, "/foo/bar", nil, false},
		{"path case", `path: /foo`, "/Foo", nil, false},
		{"path case-insensitive", `{path: /foo, case_sensitive: false}`, "/Foo", nil, true},
		{"regex full match", `safe_regex: {regex: "/v[0-9]+/.*"}`, "/v12/items", nil, true},
		{"regex must match the whole path", `safe_regex: {regex: "/v[0-9]+"}`, "/v12/items", nil, false},
		{"regex not at start", `safe_regex: {regex: "/v[0-9]+/.*"}`, "/api/v1/x", nil, false},
		{"regex alternation needs a full match", `safe_regex: {regex: "/a|/ab"}`, "/ab", nil, true},
		{"regex ignores query", `safe_regex: {regex: "/items"}`, "/items?id=3", nil, true},
		{"regex ignores case_sensitive", `{safe_regex: {regex: "/items"}, case_sensitive: false}`, "/ITEMS", nil, false},
		{"regex anchors inside", `safe_regex: {regex: "^/x$"}`, "/x", nil, true},
		{"regex case-insensitive flag", `safe_regex: {regex: "(?i)/Items/[a-z]+"}`, "/ITEMS/abc", nil, true},
		{"regex literal prefix then alternation", `safe_regex: {regex: "/a(b|c)"}`, "/ac", nil, true},
		{"regex literal prefix differs", `safe_regex: {regex: "/a(b|c)"}`, "/bc", nil, false},
		{"regex quoting", `safe_regex: {regex: "\\Q/a.b\\E"}`, "/a.b", nil, true},
		{"regex quoting is literal", `safe_regex: {regex: "\\Q/a.b\\E"}`, "/axb", nil, false},
		{"unterminated quoting stays inside the anchors", `safe_regex: {regex: "\\Q/a"}`, "/a", nil, true},
		{"path_separated_prefix exact", `path_separated_prefix: /foo`, "/foo", nil, true},
		{"path_separated_prefix slash", `path_separated_prefix: /foo`, "/foo/", nil, true},
		{"path_separated_prefix segment", `path_separated_prefix: /foo`, "/foo/bar", nil, true},
		{"path_separated_prefix query", `path_separated_prefix: /foo`, "/foo?x=1", nil, true},
		{"path_separated_prefix not a segment", `path_separated_prefix: /foo`, "/foobar", nil, false},
		{"path_separated_prefix case-insensitive", `{path_separated_prefix: /foo, case_sensitive: false}`, "/FOO/x", nil, true},
		{"escaped path matched as sent", `prefix: /a%2Fb`, "/a%2Fb/c", nil, true},
		{"escaped path is not decoded", `prefix: /a/b`, "/a%2Fb/c", nil, false},
		{"grpc", `{prefix: /, grpc: {}}`, "/pkg.Svc/M", []string{"Content-Type", "application/grpc"}, true},
		{"grpc+proto", `{prefix: /, grpc: {}}`, "/pkg.Svc/M", []string{"Content-Type", "application/grpc+proto"}, true},
		{"not grpc", `{prefix: /, grpc: {}}`, "/pkg.Svc/M", []string{"Content-Type", "application/json"}, false},
		{"grpc lookalike", `{prefix: /, grpc: {}}`, "/pkg.Svc/M", []string{"Content-Type", "application/grpcx"}, false},
		{"grpc no content type", `{prefix: /, grpc: {}}`, "/pkg.Svc/M", nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := tt.match
			if !strings.HasPrefix(m, "{") {
				m = "{" + m + "}"
			}
			tab := oneVhost(t, "- match: "+m+"\n  route: {cluster: c}")
			got := tab.Match("rc", request("GET", tt.target, tt.hdr...)) != nil
			if got != tt.want {
				t.Errorf("match %s on %s: got %v, want %v", tt.match, tt.target, got, tt.want)
			}
		})
	}
}

func TestMatchHeaders(t *testing.T) {
	tests := []struct {
		name   string
		header string // one HeaderMatcher, YAML
		hdr    []string
		method string
		want   bool
	}{
		{"exact", `{name: x-v, string_match: {exact: v2}}`, []string{"X-V", "v2"}, "", true},
		{"exact other", `{name: x-v, string_match: {exact: v2}}`, []string{"X-V", "v3"}, "", false},
		{"exact absent", `{name: x-v, string_match: {exact: v2}}`, nil, "", false},
		{"exact inverted", `{name: x-v, string_match: {exact: v2}, invert_match: true}`, []string{"X-V", "v3"}, "", true},
		{"exact inverted same", `{name: x-v, string_match: {exact: v2}, invert_match: true}`, []string{"X-V", "v2"}, "", false},
		{"inverted absent never matches", `{name: x-v, string_match: {exact: v2}, invert_match: true}`, nil, "", false},
		{"inverted absent as empty", `{name: x-v, string_match: {exact: v2}, invert_match: true, treat_missing_header_as_empty: true}`, nil, "", true},
		{"absent as empty matches empty regex", `{name: x-v, string_match: {safe_regex: {regex: "^$"}}, treat_missing_header_as_empty: true}`, nil, "", true},
		{"absent not as empty", `{name: x-v, string_match: {safe_regex: {regex: "^$"}}}`, nil, "", false},
		{"exact ignore case", `{name: x-v, string_match: {exact: ABC, ignore_case: true}}`, []string{"X-V", "abc"}, "", true},
		{"exact case", `{name: x-v, string_match: {exact: ABC}}`, []string{"X-V", "abc"}, "", false},
		{"prefix", `{name: x-v, string_match: {prefix: "Bearer "}}`, []string{"X-V", "Bearer t"}, "", true},
		{"prefix no", `{name: x-v, string_match: {prefix: "Bearer "}}`, []string{"X-V", "Basic t"}, "", false},
		{"prefix ignore case", `{name: x-v, string_match: {prefix: "bearer ", ignore_case: true}}`, []string{"X-V", "BEARER t"}, "", true},
		{"suffix", `{name: x-v, string_match: {suffix: .jpg}}`, []string{"X-V", "a.jpg"}, "", true},
		{"suffix no", `{name: x-v, string_match: {suffix: .jpg}}`, []string{"X-V", "a.png"}, "", false},
		{"suffix ignore case", `{name: x-v, string_match: {suffix: .jpg, ignore_case: true}}`, []string{"X-V", "A.JPG"}, "", true},
		{"contains", `{name: x-v, string_match: {contains: beta}}`, []string{"X-V", "x-beta-1"}, "", true},
		{"contains no", `{name: x-v, string_match: {contains: beta}}`, []string{"X-V", "x-Beta-1"}, "", false},
		{"contains ignore case", `{name: x-v, string_match: {contains: beta, ignore_case: true}}`, []string{"X-V", "x-BeTa-1"}, "", true},
		{"regex", `{name: x-v, string_match: {safe_regex: {regex: "v[0-9]"}}}`, []string{"X-V", "v7"}, "", true},
		{"regex full match", `{name: x-v, string_match: {safe_regex: {regex: "v[0-9]"}}}`, []string{"X-V", "v77"}, "", false},
		{"regex inverted", `{name: x-v, string_match: {safe_regex: {regex: "\\d{3}"}}, invert_match: true}`, []string{"X-V", "1234"}, "", true},
		{"present", `{name: x-v, present_match: true}`, []string{"X-V", ""}, "", true},
		{"present absent", `{name: x-v, present_match: true}`, nil, "", false},
		{"present false absent", `{name: x-v, present_match: false}`, nil, "", true},
		{"present false present", `{name: x-v, present_match: false}`, []string{"X-V", "1"}, "", false},
		{"present inverted absent", `{name: x-v, present_match: true, invert_match: true}`, nil, "", true},
		{"present inverted present", `{name: x-v, present_match: true, invert_match: true}`, []string{"X-V", "1"}, "", false},
		{"no specifier is present", `{name: x-v}`, []string{"X-V", "1"}, "", true},
		{"no specifier absent", `{name: x-v}`, nil, "", false},
		{"range", `{name: x-n, range_match: {start: 10, end: 20}}`, []string{"X-N", "19"}, "", true},
		{"range end excluded", `{name: x-n, range_match: {start: 10, end: 20}}`, []string{"X-N", "20"}, "", false},
		{"range not a number", `{name: x-n, range_match: {start: 10, end: 20}}`, []string{"X-N", "15a"}, "", false},
		{"range inverted", `{name: x-n, range_match: {start: -10, end: 0}, invert_match: true}`, []string{"X-N", "-1"}, "", false},
		{"deprecated exact", `{name: x-v, exact_match: v2}`, []string{"X-V", "v2"}, "", true},
		{"deprecated exact empty matches any value", `{name: x-v, exact_match: ""}`, []string{"X-V", "anything"}, "", true},
		{"deprecated prefix", `{name: x-v, prefix_match: v}`, []string{"X-V", "v2"}, "", true},
		{"deprecated suffix", `{name: x-v, suffix_match: "2"}`, []string{"X-V", "v2"}, "", true},
		{"deprecated contains", `{name: x-v, contains_match: "x"}`, []string{"X-V", "v2"}, "", false},
		{"deprecated regex", `{name: x-v, safe_regex_match: {regex: "v."}}`, []string{"X-V", "v2"}, "", true},
		{"name is case-insensitive", `{name: X-Version, string_match: {exact: v2}}`, []string{"x-version", "v2"}, "", true},
		{"repeated header joined with comma", `{name: x-v, string_match: {exact: "a,b"}}`, []string{"X-V", "a", "X-V", "b"}, "", true},
		{":method", `{name: ":method", string_match: {exact: POST}}`, nil, "POST", true},
		{":method other", `{name: ":method", string_match: {exact: POST}}`, nil, "GET", false},
		{":authority", `{name: ":authority", string_match: {prefix: "reviews"}}`, []string{"Host", "reviews:9080"}, "", true},
		{":authority other", `{name: ":authority", string_match: {prefix: "reviews"}}`, []string{"Host", "ratings"}, "", false},
		{":path includes the query", `{name: ":path", string_match: {exact: "/p?q=1"}}`, nil, "", true},
		{":scheme", `{name: ":scheme", string_match: {exact: http}}`, nil, "", true},
		{"host is not a request header in Envoy", `{name: host, present_match: true}`, []string{"Host", "x"}, "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tab := oneVhost(t, "- match: {prefix: /, headers: ["+tt.header+"]}\n  route: {cluster: c}")
			m := tt.method
			if m == "" {
				m = "GET"
			}
			got := tab.Match("rc", request(m, "/p?q=1", tt.hdr...)) != nil
			if got != tt.want {
				t.Errorf("header %s with %q: got %v, want %v", tt.header, tt.hdr, got, tt.want)
			}
		})
	}
}

// A proxy request (the app using the sidecar as its HTTP proxy) carries an
// absolute target; ":path" is its origin form, as Envoy sees the request.
func TestMatchPathHeaderOfProxyRequest(t *testing.T) {
	tab := oneVhost(t, "- match: {prefix: /, headers: [{name: \":path\", string_match: {exact: \"/p?q=1\"}}]}\n  route: {cluster: c}")
	r := httptest.NewRequest("GET", "http://reviews:9080/p?q=1", nil)
	if r.RequestURI != "http://reviews:9080/p?q=1" {
		t.Fatalf("setup: RequestURI %q", r.RequestURI)
	}
	r.URL.Scheme, r.URL.Host = "", "" // as the outbound path leaves it
	if tab.Match("rc", r) == nil {
		t.Error(`":path" did not match the proxy request's origin-form target`)
	}
}

func TestMatchQueryParameters(t *testing.T) {
	tests := []struct {
		name   string
		query  string // one QueryParameterMatcher, YAML
		target string
		want   bool
	}{
		{"exact", `{name: debug, string_match: {exact: "1"}}`, "/?debug=1", true},
		{"exact other", `{name: debug, string_match: {exact: "1"}}`, "/?debug=0", false},
		{"absent", `{name: debug, string_match: {exact: "1"}}`, "/?x=1", false},
		{"no query", `{name: debug, string_match: {exact: "1"}}`, "/", false},
		{"first value only", `{name: v, string_match: {exact: "2"}}`, "/?v=1&v=2", false},
		{"among others", `{name: v, string_match: {exact: "2"}}`, "/?a=1&v=2&b", true},
		{"prefix", `{name: v, string_match: {prefix: "be"}}`, "/?v=beta", true},
		{"regex", `{name: id, string_match: {safe_regex: {regex: "[0-9]+"}}}`, "/?id=123", true},
		{"regex full", `{name: id, string_match: {safe_regex: {regex: "[0-9]+"}}}`, "/?id=123x", false},
		{"raw value not decoded", `{name: q, string_match: {exact: "a b"}}`, "/?q=a%20b", false},
		{"raw value", `{name: q, string_match: {exact: "a%20b"}}`, "/?q=a%20b", true},
		{"present", `{name: debug, present_match: true}`, "/?debug", true},
		{"present with value", `{name: debug, present_match: true}`, "/?debug=yes", true},
		{"present absent", `{name: debug, present_match: true}`, "/?x", false},
		{"present false absent", `{name: debug, present_match: false}`, "/?x", true},
		{"present false present", `{name: debug, present_match: false}`, "/?debug", false},
		{"no specifier is presence", `{name: debug}`, "/?debug=", true},
		{"key without value is empty", `{name: debug, string_match: {exact: ""}}`, "/?debug", true},
		{"name prefix is not the name", `{name: debug}`, "/?debugging=1", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tab := oneVhost(t, "- match: {prefix: /, query_parameters: ["+tt.query+"]}\n  route: {cluster: c}")
			got := tab.Match("rc", request("GET", tt.target)) != nil
			if got != tt.want {
				t.Errorf("query %s on %s: got %v, want %v", tt.query, tt.target, got, tt.want)
			}
		})
	}
}

func TestMatchFirstRouteWins(t *testing.T) {
	tab := oneVhost(t, `
- name: canary
  match: {prefix: /, headers: [{name: x-canary, present_match: true}]}
  route: {cluster: canary}
- name: api
  match: {prefix: /api}
  route: {cluster: api}
- name: api-v2
  match: {prefix: /api/v2}
  route: {cluster: never}
- name: rest
  match: {prefix: /}
  route: {cluster: rest}`)
	tests := []struct {
		name   string
		target string
		hdr    []string
		want   string
	}{
		{"header route first", "/api/v2", []string{"X-Canary", "1"}, "canary"},
		{"earlier prefix shadows a longer one", "/api/v2/x", nil, "api"},
		{"catch-all", "/other", nil, "rest"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := mustMatch(t, tab, request("GET", tt.target, tt.hdr...)).Name; got != tt.want {
				t.Errorf("got route %q, want %q", got, tt.want)
			}
		})
	}
	t.Run("no route", func(t *testing.T) {
		tab := oneVhost(t, "- match: {prefix: /api}\n  route: {cluster: c}")
		if rt := tab.Match("rc", request("GET", "/web")); rt != nil {
			t.Errorf("got route %q, want none", rt.Name)
		}
		if rt := tab.Match("other", request("GET", "/api")); rt != nil {
			t.Errorf("unknown configuration: got route %q, want none", rt.Name)
		}
	})
}

func TestVirtualHostSelection(t *testing.T) {
	const cfg = `
name: rc
virtual_hosts:
- {name: exact, domains: [api.example.com], routes: [{match: {prefix: /}, route: {cluster: c}}]}
- {name: exact-port, domains: ["api.example.com:8080"], routes: [{match: {prefix: /}, route: {cluster: c}}]}
- {name: suffix-long, domains: ["*.b.example.com"], routes: [{match: {prefix: /}, route: {cluster: c}}]}
- {name: suffix, domains: ["*.example.com"], routes: [{match: {prefix: /}, route: {cluster: c}}]}
- {name: suffix-dash, domains: ["*-bar"], routes: [{match: {prefix: /}, route: {cluster: c}}]}
- {name: prefix-long, domains: ["api.example.*"], routes: [{match: {prefix: /}, route: {cluster: c}}]}
- {name: prefix, domains: ["api.*"], routes: [{match: {prefix: /}, route: {cluster: c}}]}
- {name: default, domains: ["*"], routes: [{match: {prefix: /}, route: {cluster: c}}]}
`
	tab := newTable(t, cfg)
	noDefault := newTable(t, `
name: rc
virtual_hosts:
- {name: exact, domains: [api.example.com, "API.Other.Com"], routes: [{match: {prefix: /}, route: {cluster: c}}]}
`)
	ignorePort := newTable(t, `
name: rc
ignore_port_in_host_matching: true
virtual_hosts:
- {name: exact, domains: [api.example.com], routes: [{match: {prefix: /}, route: {cluster: c}}]}
- {name: default, domains: ["*"], routes: [{match: {prefix: /}, route: {cluster: c}}]}
`)
	vhostHeader := newTable(t, `
name: rc
vhost_header: x-target
virtual_hosts:
- {name: exact, domains: [api.example.com], routes: [{match: {prefix: /}, route: {cluster: c}}]}
- {name: default, domains: ["*"], routes: [{match: {prefix: /}, route: {cluster: c}}]}
`)
	onlyDefault := newTable(t, `
name: rc
virtual_hosts:
- {name: default, domains: ["*"], routes: [{match: {prefix: /}, route: {cluster: c}}]}
`)
	tests := []struct {
		name string
		tab  *Table
		host string
		hdr  []string
		want string // "" for no virtual host
	}{
		{"exact", tab, "api.example.com", nil, "exact"},
		{"exact is case-insensitive", tab, "API.Example.COM", nil, "exact"},
		{"domain with port", tab, "api.example.com:8080", nil, "exact-port"},
		{"port not listed falls to prefix wildcard", tab, "api.example.com:9090", nil, "prefix-long"},
		{"longest suffix", tab, "x.b.example.com", nil, "suffix-long"},
		{"shorter suffix", tab, "x.example.com", nil, "suffix"},
		{"suffix needs more than the suffix", tab, ".example.com", nil, "default"},
		{"dash suffix", tab, "foo-bar", nil, "suffix-dash"},
		{"suffix before prefix", tab, "api.b.example.com", nil, "suffix-long"},
		{"longest prefix", tab, "api.example.org", nil, "prefix-long"},
		{"shorter prefix", tab, "api.other", nil, "prefix"},
		{"prefix needs more than the prefix", tab, "api.", nil, "default"},
		{"default", tab, "unknown.org", nil, "default"},
		{"no default", noDefault, "unknown.org", nil, ""},
		{"configured domain is case-insensitive", noDefault, "api.other.com", nil, "exact"},
		{"port matters without ignore_port", noDefault, "api.example.com:80", nil, ""},
		{"no authority", noDefault, "", nil, ""},
		{"no authority with only a default host", onlyDefault, "", nil, "default"},
		{"ignore_port_in_host_matching", ignorePort, "api.example.com:9999", nil, "exact"},
		{"ignore_port_in_host_matching IPv6", ignorePort, "[::1]:80", nil, "default"},
		{"vhost_header", vhostHeader, "unknown.org", []string{"X-Target", "api.example.com"}, "exact"},
		{"vhost_header absent", vhostHeader, "api.example.com", nil, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := request("GET", "/", tt.hdr...)
			r.Host = tt.host
			got, _ := tt.tab.VirtualHost("rc", r)
			if got != tt.want {
				t.Errorf("host %q: got virtual host %q, want %q", tt.host, got, tt.want)
			}
			rt := tt.tab.Match("rc", r)
			switch {
			case tt.want == "" && rt != nil:
				t.Errorf("host %q: Match found a route of %q", tt.host, rt.VirtualHost)
			case tt.want != "" && (rt == nil || rt.VirtualHost != tt.want):
				t.Errorf("host %q: Match found %v, want a route of %q", tt.host, rt, tt.want)
			}
		})
	}
}

func TestNames(t *testing.T) {
	tab := newTable(t, `name: b`, `name: a`, `name: "8080"`)
	got := tab.Names()
	want := []string{"8080", "a", "b"}
	if len(got) != len(want) {
		t.Fatalf("Names() = %q, want %q", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("Names() = %q, want %q", got, want)
		}
	}
	got[0] = "changed"
	if tab.Names()[0] != "8080" {
		t.Error("Names returned the table's own slice")
	}
}

func TestMatchDoesNotAllocate(t *testing.T) {
	tab := newTable(t, benchConfig(20, 10))
	r := request("POST", "/svc7/items/42?debug=1", "Host", "SVC7.NS.svc.cluster.local:8080", "X-Version", "v2", "Content-Type", "application/json")
	if rt := tab.Match("8080", r); rt == nil || rt.Name != "svc7-r8" {
		t.Fatalf("Match = %v, want route svc7-r8", rt)
	}
	if n := testing.AllocsPerRun(100, func() { tab.Match("8080", r) }); n != 0 {
		t.Errorf("Match allocates %.0f times per call, want 0", n)
	}
}
