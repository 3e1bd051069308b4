package route

import (
	"net/http"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestWeightedPick(t *testing.T) {
	tab := oneVhost(t, `
- match: {prefix: /}
  route:
    weighted_clusters:
      clusters:
      - {name: a, weight: 1}
      - {name: b, weight: 3}
      - {name: zero, weight: 0}
      - {name: d, weight: 6}`)
	rt := mustMatch(t, tab, request("GET", "/"))
	if rt.TotalWeight() != 10 || rt.Cluster != "" {
		t.Fatalf("TotalWeight = %d, Cluster = %q; want 10 and none", rt.TotalWeight(), rt.Cluster)
	}
	// Every value of [0, total) picks once: the counts are the weights exactly.
	got := map[string]int{}
	for rnd := uint64(0); rnd < 10; rnd++ {
		got[rt.PickCluster(rnd)]++
	}
	if diff := cmp.Diff(map[string]int{"a": 1, "b": 3, "d": 6}, got); diff != "" {
		t.Errorf("picks over [0, 10) (-want +got):\n%s", diff)
	}
	// Envoy's order: cumulative ranges [0,1) a, [1,4) b, [4,4) zero, [4,10) d.
	order := ""
	for rnd := uint64(0); rnd < 10; rnd++ {
		order += rt.PickCluster(rnd)
	}
	if order != "abbbdddddd" {
		t.Errorf("picks in rnd order = %q, want %q", order, "abbbdddddd")
	}
	// A full-range uniform value is reduced modulo the total.
	for _, rnd := range []uint64{10, 1<<64 - 1, 1<<63 + 3} {
		if got, want := rt.PickCluster(rnd), rt.PickCluster(rnd%10); got != want {
			t.Errorf("PickCluster(%d) = %q, want %q (as for %d)", rnd, got, want, rnd%10)
		}
	}

	single := mustMatch(t, oneVhost(t, "- match: {prefix: /}\n  route: {cluster: only}"), request("GET", "/"))
	if got := single.PickCluster(12345); got != "only" {
		t.Errorf("single-cluster PickCluster = %q, want only", got)
	}
}

func TestTimeout(t *testing.T) {
	tests := []struct {
		name   string
		action string
		want   time.Duration
	}{
		{"unset is Envoy's 15s", `{cluster: c}`, 15 * time.Second},
		{"explicit 0 disables", `{cluster: c, timeout: 0s}`, 0},
		{"set", `{cluster: c, timeout: 2.5s}`, 2500 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rt := mustMatch(t, oneVhost(t, "- match: {prefix: /}\n  route: "+tt.action), request("GET", "/"))
			if rt.Timeout != tt.want {
				t.Errorf("Timeout = %v, want %v", rt.Timeout, tt.want)
			}
		})
	}
}

func TestRedirect(t *testing.T) {
	tests := []struct {
		name     string
		match    string
		redirect string
		target   string
		hdr      []string
		want     string
		code     int
	}{
		{"https keeps host, path and query", `{prefix: /}`, `{https_redirect: true}`, "http://foo.com/a?b=1", nil, "https://foo.com/a?b=1", 301},
		{"https drops the default http port", `{prefix: /}`, `{https_redirect: true}`, "/a", []string{"Host", "foo.com:80"}, "https://foo.com/a", 301},
		{"https keeps another port", `{prefix: /}`, `{https_redirect: true}`, "/a", []string{"Host", "foo.com:8080"}, "https://foo.com:8080/a", 301},
		{"same scheme keeps port 80", `{prefix: /}`, `{host_redirect: ""}`, "/a", []string{"Host", "foo.com:80"}, "http://foo.com:80/a", 301},
		{"host and port", `{prefix: /}`, `{host_redirect: bar.com, port_redirect: 8443}`, "/a?x", nil, "http://bar.com:8443/a?x", 301},
		{"port replaces the request's", `{prefix: /}`, `{port_redirect: 9000}`, "/a", []string{"Host", "foo.com:8080"}, "http://foo.com:9000/a", 301},
		{"IPv6 host port", `{prefix: /}`, `{port_redirect: 9000}`, "/a", []string{"Host", "[::1]:8080"}, "http://[::1]:9000/a", 301},
		{"scheme_redirect", `{prefix: /}`, `{scheme_redirect: HTTPS, response_code: FOUND}`, "/a", []string{"Host", "foo.com"}, "https://foo.com/a", 302},
		{"path_redirect keeps the query", `{prefix: /}`, `{path_redirect: /new, response_code: SEE_OTHER}`, "/old?q=1", nil, "http://example.com/new?q=1", 303},
		{"path_redirect strip_query", `{prefix: /}`, `{path_redirect: /new, strip_query: true, response_code: TEMPORARY_REDIRECT}`, "/old?q=1", nil, "http://example.com/new", 307},
		{"path_redirect with its own query wins", `{prefix: /}`, `{path_redirect: "/new?x=y", strip_query: true, response_code: PERMANENT_REDIRECT}`, "/old?q=1", nil, "http://example.com/new?x=y", 308},
		{"prefix_rewrite", `{prefix: /old}`, `{prefix_rewrite: /new}`, "/old/x?q", nil, "http://example.com/new/x?q", 301},
		{"prefix_rewrite strip_query", `{prefix: /old}`, `{prefix_rewrite: /new, strip_query: true}`, "/old/x?q", nil, "http://example.com/new/x", 301},
		{"prefix_rewrite to /", `{prefix: /old}`, `{prefix_rewrite: /}`, "/old/x", nil, "http://example.com//x", 301},
		{"regex_rewrite", `{prefix: /}`, `{regex_rewrite: {pattern: {regex: "^/v1/(.*)$"}, substitution: "/v2/\\1"}}`, "/v1/items?q", nil, "http://example.com/v2/items?q", 301},
		{"path without slash gets one", `{prefix: /}`, `{path_redirect: new}`, "/old", nil, "http://example.com/new", 301},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tab := oneVhost(t, "- match: "+tt.match+"\n  redirect: "+tt.redirect)
			rt := mustMatch(t, tab, request("GET", tt.target, tt.hdr...))
			if rt.Redirect == nil || rt.Cluster != "" || rt.Direct != nil {
				t.Fatalf("route = %+v, want only a redirect", rt)
			}
			if got := rt.Redirect.Location(request("GET", tt.target, tt.hdr...)); got != tt.want {
				t.Errorf("Location = %q, want %q", got, tt.want)
			}
			if rt.Redirect.Code != tt.code {
				t.Errorf("Code = %d, want %d", rt.Redirect.Code, tt.code)
			}
		})
	}
}

func TestDirectResponse(t *testing.T) {
	rt := mustMatch(t, oneVhost(t, `
- match: {prefix: /}
  direct_response: {status: 418, body: {inline_string: "short and stout"}}`), request("GET", "/"))
	if diff := cmp.Diff(&DirectResponse{Status: 418, Body: "short and stout"}, rt.Direct); diff != "" {
		t.Errorf("Direct (-want +got):\n%s", diff)
	}
	if rt.Timeout != 0 || rt.Retry != nil {
		t.Errorf("a direct response has Timeout %v and Retry %v, want none", rt.Timeout, rt.Retry)
	}
}

func TestApplyRequestPath(t *testing.T) {
	tests := []struct {
		name      string
		match     string
		action    string
		target    string
		wantPath  string // r.URL.EscapedPath()
		wantQuery string
	}{
		{"prefix_rewrite replaces the matched prefix", `{prefix: /foo}`, `prefix_rewrite: /bar`, "/foo/x", "/bar/x", ""},
		{"/foo to / leaves a double slash, as Envoy", `{prefix: /foo}`, `prefix_rewrite: /`, "/foo/bar", "//bar", ""},
		{"/foo to / on /foo", `{prefix: /foo}`, `prefix_rewrite: /`, "/foo", "/", ""},
		{"/foo/ to / strips cleanly", `{prefix: /foo/}`, `prefix_rewrite: /`, "/foo/bar", "/bar", ""},
		{"prefix_rewrite keeps the query", `{prefix: /foo}`, `prefix_rewrite: /bar`, "/foo/x?a=1&b", "/bar/x", "a=1&b"},
		{"prefix_rewrite case-insensitive match", `{prefix: /FOO, case_sensitive: false}`, `prefix_rewrite: /x`, "/foo/y", "/x/y", ""},
		{"prefix_rewrite path match", `{path: /old}`, `prefix_rewrite: /new`, "/old", "/new", ""},
		{"prefix_rewrite path_separated_prefix", `{path_separated_prefix: /foo}`, `prefix_rewrite: /bar`, "/foo/x", "/bar/x", ""},
		{"prefix_rewrite on a regex route replaces the path", `{safe_regex: {regex: "/api/.*"}}`, `prefix_rewrite: /z`, "/api/v1?q=1", "/z", "q=1"},
		{"prefix_rewrite keeps escapes", `{prefix: /foo}`, `prefix_rewrite: /bar`, "/foo/a%2Fb", "/bar/a%2Fb", ""},
		{"regex_rewrite with groups", `{prefix: /}`, `regex_rewrite: {pattern: {regex: "^/service/([^/]+)(/.*)$"}, substitution: "\\2/instance/\\1"}`, "/service/foo/v1/api", "/v1/api/instance/foo", ""},
		{"regex_rewrite replaces every match", `{prefix: /}`, `regex_rewrite: {pattern: {regex: "one"}, substitution: "two"}`, "/xxx/one/yyy/one/zzz", "/xxx/two/yyy/two/zzz", ""},
		{"regex_rewrite first only", `{prefix: /}`, `regex_rewrite: {pattern: {regex: "^(.*?)one(.*)$"}, substitution: "\\1two\\2"}`, "/xxx/one/yyy/one/zzz", "/xxx/two/yyy/one/zzz", ""},
		{"regex_rewrite case-insensitive", `{prefix: /}`, `regex_rewrite: {pattern: {regex: "(?i)/xxx/"}, substitution: "/yyy/"}`, "/aaa/XxX/bbb", "/aaa/yyy/bbb", ""},
		{"regex_rewrite literal dollar", `{prefix: /}`, `regex_rewrite: {pattern: {regex: "^/a$"}, substitution: "/$1"}`, "/a", "/$1", ""},
		{"regex_rewrite keeps the query", `{prefix: /}`, `regex_rewrite: {pattern: {regex: "a"}, substitution: "b"}`, "/a?a=a", "/b", "a=a"},
		{"path_rewrite", `{prefix: /}`, `path_rewrite: /fixed`, "/any/thing?q", "/fixed", "q"},
		{"no rewrite", `{prefix: /}`, `timeout: 1s`, "/keep%2Fme?q", "/keep%2Fme", "q"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tab := oneVhost(t, "- match: "+tt.match+"\n  route: {cluster: c, "+tt.action+"}")
			r := request("GET", tt.target)
			rt := mustMatch(t, tab, r)
			rt.ApplyRequest(r)
			if got := r.URL.EscapedPath(); got != tt.wantPath {
				t.Errorf("path = %q, want %q", got, tt.wantPath)
			}
			if r.URL.RawQuery != tt.wantQuery {
				t.Errorf("query = %q, want %q", r.URL.RawQuery, tt.wantQuery)
			}
		})
	}
}

func TestApplyRequestHost(t *testing.T) {
	tests := []struct {
		name    string
		action  string
		hdr     []string
		want    string
		wantXFH []string
	}{
		{"host_rewrite_literal", `host_rewrite_literal: reviews.prod`, nil, "reviews.prod", nil},
		{"append_x_forwarded_host", `{host_rewrite_literal: new, append_x_forwarded_host: true}`, []string{"Host", "old:80"}, "new", []string{"old:80"}},
		{"append_x_forwarded_host to an existing one", `{host_rewrite_literal: new, append_x_forwarded_host: true}`, []string{"Host", "old", "X-Forwarded-Host", "first"}, "new", []string{"first,old"}},
		{"host_rewrite_header", `host_rewrite_header: x-host`, []string{"X-Host", "from-header"}, "from-header", nil},
		{"host_rewrite_header absent keeps the host", `host_rewrite_header: x-host`, []string{"Host", "keep"}, "keep", nil},
		{"host_rewrite_path_regex", `host_rewrite_path_regex: {pattern: {regex: "^/([^/]+)/.*$"}, substitution: "\\1.internal"}`, nil, "tenant.internal", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			action := tt.action
			if action[0] != '{' {
				action = "{" + action + "}"
			}
			tab := oneVhost(t, "- match: {prefix: /}\n  route: "+action[:len(action)-1]+", cluster: c}")
			r := request("GET", "/tenant/x", tt.hdr...)
			mustMatch(t, tab, r).ApplyRequest(r)
			if r.Host != tt.want {
				t.Errorf("Host = %q, want %q", r.Host, tt.want)
			}
			if diff := cmp.Diff(tt.wantXFH, r.Header["X-Forwarded-Host"]); diff != "" {
				t.Errorf("X-Forwarded-Host (-want +got):\n%s", diff)
			}
		})
	}
}

// headerLevels is a configuration with header operations at every level, all
// on the same headers, so the order Envoy applies them in shows.
func headerLevels(mostSpecificWins bool) string {
	msw := "false"
	if mostSpecificWins {
		msw = "true"
	}
	return `
name: rc
most_specific_header_mutations_wins: ` + msw + `
request_headers_to_add:
- {header: {key: x-level, value: config}, append_action: OVERWRITE_IF_EXISTS_OR_ADD}
- {header: {key: x-trail, value: config}}
response_headers_to_add:
- {header: {key: x-level, value: config}, append_action: OVERWRITE_IF_EXISTS_OR_ADD}
virtual_hosts:
- name: vh
  domains: ["*"]
  request_headers_to_add:
  - {header: {key: x-level, value: vhost}, append_action: OVERWRITE_IF_EXISTS_OR_ADD}
  - {header: {key: x-trail, value: vhost}}
  response_headers_to_add:
  - {header: {key: x-level, value: vhost}, append_action: OVERWRITE_IF_EXISTS_OR_ADD}
  routes:
  - match: {prefix: /}
    request_headers_to_add:
    - {header: {key: x-level, value: route}, append_action: OVERWRITE_IF_EXISTS_OR_ADD}
    - {header: {key: x-trail, value: route}}
    response_headers_to_add:
    - {header: {key: x-level, value: route}, append_action: OVERWRITE_IF_EXISTS_OR_ADD}
    route:
      weighted_clusters:
        clusters:
        - name: a
          weight: 1
          host_rewrite_literal: a.internal
          request_headers_to_add:
          - {header: {key: x-level, value: cluster}, append_action: OVERWRITE_IF_EXISTS_OR_ADD}
          - {header: {key: x-trail, value: cluster}}
          response_headers_to_add:
          - {header: {key: x-cluster, value: a}}
        - {name: b, weight: 1}
`
}

func TestHeaderOpsLevels(t *testing.T) {
	tests := []struct {
		name             string
		mostSpecificWins bool
		cluster          string
		wantLevel        string
		wantTrail        []string
		wantRespLevel    string
	}{
		{"route, vhost, config: the configuration's overwrite lands last", false, "", "config", []string{"route", "vhost", "config"}, "config"},
		{"most_specific_header_mutations_wins reverses", true, "", "route", []string{"config", "vhost", "route"}, "route"},
		{"the weighted cluster's go first", false, "a", "config", []string{"cluster", "route", "vhost", "config"}, "config"},
		{"another cluster has none", false, "b", "config", []string{"route", "vhost", "config"}, "config"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tab := newTable(t, headerLevels(tt.mostSpecificWins))
			r := request("GET", "/", "X-Level", "client", "Host", "orig")
			rt := mustMatch(t, tab, r)
			if tt.cluster == "" {
				rt.ApplyRequest(r)
			} else {
				rt.ApplyRequestFor(r, tt.cluster)
			}
			if diff := cmp.Diff([]string{tt.wantLevel}, r.Header["X-Level"]); diff != "" {
				t.Errorf("X-Level (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.wantTrail, r.Header["X-Trail"]); diff != "" {
				t.Errorf("X-Trail, in application order (-want +got):\n%s", diff)
			}
			wantHost := "orig"
			if tt.cluster == "a" {
				wantHost = "a.internal"
			}
			if r.Host != wantHost {
				t.Errorf("Host = %q, want %q", r.Host, wantHost)
			}
			h := http.Header{}
			if tt.cluster == "" {
				rt.ApplyResponse(h)
			} else {
				rt.ApplyResponseFor(h, tt.cluster)
			}
			if got := h.Get("X-Level"); got != tt.wantRespLevel {
				t.Errorf("response X-Level = %q, want %q", got, tt.wantRespLevel)
			}
			if got, want := h.Get("X-Cluster"), map[string]string{"a": "a"}[tt.cluster]; got != want {
				t.Errorf("response X-Cluster = %q, want %q", got, want)
			}
		})
	}
}

func TestHeaderOpsActions(t *testing.T) {
	tests := []struct {
		name string
		ops  string // route-level request header fields, YAML
		hdr  []string
		want http.Header
	}{
		{"append adds a value", `request_headers_to_add: [{header: {key: x-a, value: "2"}}]`,
			[]string{"X-A", "1"}, http.Header{"X-A": {"1", "2"}}},
		{"append adds a header", `request_headers_to_add: [{header: {key: x-a, value: "2"}, append_action: APPEND_IF_EXISTS_OR_ADD}]`,
			nil, http.Header{"X-A": {"2"}}},
		{"add if absent, present", `request_headers_to_add: [{header: {key: x-a, value: "2"}, append_action: ADD_IF_ABSENT}]`,
			[]string{"X-A", "1"}, http.Header{"X-A": {"1"}}},
		{"add if absent, absent", `request_headers_to_add: [{header: {key: x-a, value: "2"}, append_action: ADD_IF_ABSENT}]`,
			nil, http.Header{"X-A": {"2"}}},
		{"overwrite or add replaces all values", `request_headers_to_add: [{header: {key: x-a, value: "2"}, append_action: OVERWRITE_IF_EXISTS_OR_ADD}]`,
			[]string{"X-A", "1", "X-A", "0"}, http.Header{"X-A": {"2"}}},
		{"overwrite if exists, absent", `request_headers_to_add: [{header: {key: x-a, value: "2"}, append_action: OVERWRITE_IF_EXISTS}]`,
			nil, http.Header{}},
		{"overwrite if exists, present", `request_headers_to_add: [{header: {key: x-a, value: "2"}, append_action: OVERWRITE_IF_EXISTS}]`,
			[]string{"X-A", "1"}, http.Header{"X-A": {"2"}}},
		{"deprecated append false overwrites", `request_headers_to_add: [{header: {key: x-a, value: "2"}, append: false}]`,
			[]string{"X-A", "1"}, http.Header{"X-A": {"2"}}},
		{"deprecated append true appends", `request_headers_to_add: [{header: {key: x-a, value: "2"}, append: true}]`,
			[]string{"X-A", "1"}, http.Header{"X-A": {"1", "2"}}},
		{"remove before add", "request_headers_to_remove: [x-a]\n  request_headers_to_add: [{header: {key: x-a, value: \"2\"}, append_action: ADD_IF_ABSENT}]",
			[]string{"X-A", "1"}, http.Header{"X-A": {"2"}}},
		{"additions of one level see the headers before it", `request_headers_to_add: [{header: {key: x-a, value: "1"}}, {header: {key: x-a, value: "2"}, append_action: ADD_IF_ABSENT}]`,
			nil, http.Header{"X-A": {"1", "2"}}},
		{"overwrites before appends", `request_headers_to_add: [{header: {key: x-a, value: "add"}}, {header: {key: x-a, value: "set"}, append_action: OVERWRITE_IF_EXISTS_OR_ADD}]`,
			[]string{"X-A", "old"}, http.Header{"X-A": {"set", "add"}}},
		{"empty value is not added", `request_headers_to_add: [{header: {key: x-a, value: ""}}]`,
			nil, http.Header{}},
		{"keep_empty_value", `request_headers_to_add: [{header: {key: x-a, value: ""}, keep_empty_value: true}]`,
			nil, http.Header{"X-A": {""}}},
		{"raw_value", `request_headers_to_add: [{header: {key: x-a, raw_value: "cmF3"}}]`,
			nil, http.Header{"X-A": {"raw"}}},
		{"escaped percent", `request_headers_to_add: [{header: {key: x-a, value: "100%%"}}]`,
			nil, http.Header{"X-A": {"100%"}}},
		{"remove is case-insensitive", `request_headers_to_remove: [X-SECRET]`,
			[]string{"X-Secret", "s", "X-Keep", "k"}, http.Header{"X-Keep": {"k"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tab := oneVhost(t, "- match: {prefix: /}\n  route: {cluster: c}\n  "+tt.ops)
			r := request("GET", "/", tt.hdr...)
			rt := mustMatch(t, tab, r)
			rt.ApplyRequest(r)
			if diff := cmp.Diff(tt.want, r.Header); diff != "" {
				t.Errorf("headers (-want +got):\n%s", diff)
			}
			// The route's values must not be shared with the request: a
			// caller appending to a header must not change the next request.
			for k := range r.Header {
				r.Header[k] = append(r.Header[k], "caller")
				if len(r.Header[k]) > 1 {
					r.Header[k][0] = "mutated"
				}
			}
			r2 := request("GET", "/", tt.hdr...)
			rt.ApplyRequest(r2)
			if diff := cmp.Diff(tt.want, r2.Header); diff != "" {
				t.Errorf("second request's headers (-want +got):\n%s", diff)
			}
		})
	}
}
