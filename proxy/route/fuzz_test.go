package route

import (
	"bufio"
	"errors"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// richConfig exercises every feature New accepts, for seeds and FuzzMatch.
const richConfig = `
name: rich
request_headers_to_add: [{header: {key: x-config, value: "1"}}]
typed_per_filter_config:
  envoy.filters.http.cors:
    "@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy
    allow_origin_string_match: [{suffix: .example.com, ignore_case: true}]
virtual_hosts:
- name: api
  domains: [api, "api:80", "*.api.internal", "api-*"]
  retry_policy: {retry_on: "5xx,reset", num_retries: 3}
  routes:
  - name: regex
    match: {safe_regex: {regex: "/users/([0-9]+)/(.*)"}, headers: [{name: x-v, string_match: {safe_regex: {regex: "v[0-9]"}}, invert_match: true}]}
    route:
      cluster: users
      regex_rewrite: {pattern: {regex: "^/users/([0-9]+)/(.*)$"}, substitution: "/u/\\2?id=\\1"}
      hash_policy: [{header: {header_name: x-v, regex_rewrite: {pattern: {regex: "[0-9]"}, substitution: "#"}}}, {cookie: {name: s}, terminal: true}, {query_parameter: {name: q}}, {connection_properties: {source_ip: true}}]
  - name: weighted
    match: {path_separated_prefix: /w, case_sensitive: false, query_parameters: [{name: q, present_match: true}]}
    route:
      weighted_clusters:
        clusters:
        - {name: a, weight: 3, host_rewrite_literal: a.internal, request_headers_to_add: [{header: {key: x-a, value: "1"}, append_action: OVERWRITE_IF_EXISTS}]}
        - {name: b, weight: 7, response_headers_to_remove: [x-b]}
      prefix_rewrite: /
      request_mirror_policies: [{cluster: shadow, runtime_fraction: {default_value: {numerator: 5}}}]
      host_rewrite_header: x-host
      append_x_forwarded_host: true
  - name: redirect
    match: {prefix: /old, headers: [{name: ":method", string_match: {exact: GET}}, {name: x-v, range_match: {start: 1, end: 9}, treat_missing_header_as_empty: true, invert_match: true}]}
    redirect: {prefix_rewrite: /new, https_redirect: true, port_redirect: 8443, strip_query: true}
  - name: redirect-regex
    match: {prefix: /r}
    redirect: {regex_rewrite: {pattern: {regex: "r"}, substitution: "R"}, response_code: FOUND}
  - name: direct
    match: {path: /teapot}
    direct_response: {status: 418, body: {inline_string: teapot}}
  - name: rest
    match: {prefix: /, grpc: {}}
    route: {cluster: grpc, timeout: 0s, host_rewrite_path_regex: {pattern: {regex: "^/([^/]*).*$"}, substitution: "\\1"}}
    typed_per_filter_config:
      envoy.filters.http.fault:
        "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault
        delay: {fixed_delay: 1s, percentage: {numerator: 10}}
        abort: {grpc_status: 14, percentage: {numerator: 1}}
  - name: last
    match: {prefix: ""}
    route: {cluster: last, path_rewrite: /p}
- name: default
  domains: ["*"]
  routes: [{match: {prefix: /}, route: {cluster: default}}]
`

func fuzzSeeds(f *testing.F) []*routev3.RouteConfiguration {
	var rcs []*routev3.RouteConfiguration
	for _, y := range []string{richConfig, benchConfig(2, 10), headerLevels(true), vhostWith("match: {prefix: /}\nroute: {cluster: c}")} {
		rcs = append(rcs, parseRC(f, y))
	}
	rcs[len(rcs)-1].Name = "simple"
	return rcs
}

// fuzzRequest turns fuzzed text into a request, as the listener would parse
// it, or builds one by hand when it does not parse.
func fuzzRequest(method, host, target, value string) *http.Request {
	raw := method + " " + target + " HTTP/1.1\r\nHost: " + host + "\r\nX-V: " + value + "\r\nCookie: " + value + "\r\nContent-Type: application/grpc\r\n\r\n"
	if r, err := http.ReadRequest(bufio.NewReader(strings.NewReader(raw))); err == nil {
		return r
	}
	return &http.Request{Method: method, Host: host, URL: &url.URL{Path: target, RawQuery: value}, Header: http.Header{"X-V": {value, value}}}
}

// exercise calls everything a caller may call on what Match returns, and
// checks the invariants that hold for any configuration.
func exercise(t *testing.T, tab *Table, config string, r *http.Request, value string, rnd uint64) {
	rt := tab.Match(config, r)
	if _, ok := tab.VirtualHost(config, r); !ok && rt != nil {
		t.Fatalf("Match found route %q without a virtual host", rt.Name)
	}
	if rt == nil {
		return
	}
	actions := 0
	for _, set := range []bool{rt.Cluster != "", len(rt.Weighted) > 0, rt.Redirect != nil, rt.Direct != nil} {
		if set {
			actions++
		}
	}
	if actions != 1 {
		t.Fatalf("route %q has %d actions, want 1: %+v", rt.Name, actions, rt)
	}
	if len(rt.Weighted) > 0 {
		c := rt.PickCluster(rnd)
		if !slices.ContainsFunc(rt.Weighted, func(w WeightedCluster) bool { return w.Name == c }) {
			t.Fatalf("PickCluster = %q, not one of the route's clusters", c)
		}
		rt.ApplyRequestFor(r.Clone(r.Context()), c)
		rt.ApplyResponseFor(http.Header{"X-B": {"1"}}, c)
	}
	if rt.Redirect != nil {
		if loc := rt.Redirect.Location(r); !strings.Contains(loc, "://") {
			t.Fatalf("Location = %q", loc)
		}
	}
	rt.ApplyRequest(r.Clone(r.Context()))
	rt.ApplyResponse(http.Header{"X-V": {value}})
	k1, ok1 := rt.HashKey(r, value)
	if k2, ok2 := rt.HashKey(r, value); k1 != k2 || ok1 != ok2 {
		t.Fatalf("HashKey is not deterministic: %#x/%v then %#x/%v", k1, ok1, k2, ok2)
	}
	if rt.Retry == nil && (rt.Retry.ShouldRetry(int(rnd%600), AttemptError(rnd%8)) || rt.Retry.ShouldRetryGRPC(int(rnd%17))) {
		t.Fatal("no retry policy, yet a retry")
	}
	if rt.Fault != nil && rt.Fault.Delay == 0 && rt.Fault.ShouldDelay(rnd) {
		t.Fatal("a delay without a duration")
	}
	rt.Fault.ShouldAbort(rnd)
	rt.Cors.AllowsOrigin(value)
	for _, m := range rt.Mirrors {
		if m.Denominator > 0 && m.Numerator >= m.Denominator && !m.ShouldMirror(rnd) {
			t.Fatalf("mirror %+v at 100%% skipped rnd %d", m, rnd)
		}
	}
}

// fuzzSeed is FuzzNew's seed that builds (TestFuzzSeedBuilds).
var fuzzSeed = struct {
	domain, prefix, re, sub, hname, hvalue string
	w1, w2                                 uint32
	retryOn                                string
	num                                    uint32
	target                                 string
}{"api", "/p", "/u/([0-9]+)", `\1`, "x-v", "v1", 1, 3, "5xx", 10, "/u/12?q=1"}

func TestFuzzSeedBuilds(t *testing.T) {
	s := fuzzSeed
	tab, err := New([]*routev3.RouteConfiguration{fuzzConfig(s.domain, s.prefix, s.re, s.sub, s.hname, s.hvalue, s.w1, s.w2, s.retryOn, s.num)})
	if err != nil {
		t.Fatalf("the seed does not build, so FuzzNew would only fuzz errors: %v", err)
	}
	if rt := tab.Match("rc", request("GET", "/u/12?x-v", "X-V", "other")); rt == nil || rt.Name != "regex" {
		t.Fatalf("Match = %v, want the regex route", rt)
	}
}

// fuzzConfig places fuzzed values in every field New parses; num is also
// turned into a valid status code, so that the configuration can build.
func fuzzConfig(domain, prefix, re, sub, hname, hvalue string, w1, w2 uint32, retryOn string, num uint32) *routev3.RouteConfiguration {
	code := 200 + num%400
	return &routev3.RouteConfiguration{
		Name:                "rc",
		RequestHeadersToAdd: []*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: hname, Value: hvalue}}},
		VirtualHosts: []*routev3.VirtualHost{{
			Name:        "vh",
			Domains:     []string{domain, "*"},
			RetryPolicy: &routev3.RetryPolicy{RetryOn: retryOn, RetriableStatusCodes: []uint32{code}},
			Routes: []*routev3.Route{
				{
					Name: "regex",
					Match: &routev3.RouteMatch{
						PathSpecifier: &routev3.RouteMatch_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: re}},
						Headers: []*routev3.HeaderMatcher{{Name: hname, InvertMatch: num%2 == 0,
							HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: &matcherv3.StringMatcher{
								MatchPattern: &matcherv3.StringMatcher_Contains{Contains: hvalue}, IgnoreCase: num%3 == 0}}}},
						QueryParameters: []*routev3.QueryParameterMatcher{{Name: hname,
							QueryParameterMatchSpecifier: &routev3.QueryParameterMatcher_PresentMatch{PresentMatch: num%5 == 0}}},
					},
					Action: &routev3.Route_Route{Route: &routev3.RouteAction{
						ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: "c"},
						RegexRewrite:     &matcherv3.RegexMatchAndSubstitute{Pattern: &matcherv3.RegexMatcher{Regex: re}, Substitution: sub},
						HashPolicy: []*routev3.RouteAction_HashPolicy{
							{PolicySpecifier: &routev3.RouteAction_HashPolicy_Header_{Header: &routev3.RouteAction_HashPolicy_Header{HeaderName: hname,
								RegexRewrite: &matcherv3.RegexMatchAndSubstitute{Pattern: &matcherv3.RegexMatcher{Regex: re}, Substitution: sub}}}},
							{PolicySpecifier: &routev3.RouteAction_HashPolicy_Cookie_{Cookie: &routev3.RouteAction_HashPolicy_Cookie{Name: hvalue}}}},
					}},
				},
				{
					Name: "weighted",
					Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: prefix},
						CaseSensitive: wrapperspb.Bool(num%2 == 1)},
					Action: &routev3.Route_Route{Route: &routev3.RouteAction{
						ClusterSpecifier: &routev3.RouteAction_WeightedClusters{WeightedClusters: &routev3.WeightedCluster{
							Clusters: []*routev3.WeightedCluster_ClusterWeight{
								{Name: "a", Weight: wrapperspb.UInt32(w1), HostRewriteSpecifier: &routev3.WeightedCluster_ClusterWeight_HostRewriteLiteral{HostRewriteLiteral: hvalue}},
								{Name: "b", Weight: wrapperspb.UInt32(w2), RequestHeadersToRemove: []string{hname}},
							}}},
						PrefixRewrite:        sub,
						HostRewriteSpecifier: &routev3.RouteAction_HostRewriteHeader{HostRewriteHeader: hname},
						RequestMirrorPolicies: []*routev3.RouteAction_RequestMirrorPolicy{{Cluster: "m",
							RuntimeFraction: &corev3.RuntimeFractionalPercent{DefaultValue: &typev3.FractionalPercent{Numerator: num, Denominator: typev3.FractionalPercent_DenominatorType(w1 % 4)}}}},
					}},
					ResponseHeadersToAdd: []*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: hvalue, Value: hname},
						AppendAction: corev3.HeaderValueOption_HeaderAppendAction(w2 % 5)}},
				},
				{
					Name:  "separated",
					Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_PathSeparatedPrefix{PathSeparatedPrefix: prefix}},
					Action: &routev3.Route_Redirect{Redirect: &routev3.RedirectAction{
						HostRedirect: domain, PortRedirect: num, PathRewriteSpecifier: &routev3.RedirectAction_PrefixRewrite{PrefixRewrite: sub},
						ResponseCode: routev3.RedirectAction_RedirectResponseCode(w1 % 6)}},
				},
				{
					Name:   "direct",
					Match:  &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Path{Path: prefix}},
					Action: &routev3.Route_DirectResponse{DirectResponse: &routev3.DirectResponseAction{Status: code, Body: &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: hvalue}}}},
				},
			},
		}},
	}
}

// FuzzNew builds tables from fuzzed strings and numbers placed in every
// field New parses (domains, paths, regexes and their substitutions, header
// names and values, weights, retry_on, fault and mirror fractions): New must
// refuse with an *Error or build a table whose routes are safe to use.
func FuzzNew(f *testing.F) {
	s := fuzzSeed
	f.Add(s.domain, s.prefix, s.re, s.sub, s.hname, s.hvalue, s.w1, s.w2, s.retryOn, s.num, s.target)
	f.Add("*.svc", "/p", "(?i)a|b", "$1", ":authority", "%%", uint32(0), uint32(0), "reset,,", uint32(200), "/P/x")
	f.Add("api-*", "", "\\Q/x", "", "Host", "a\nb", uint32(1<<31), uint32(1<<31), "bogus", uint32(1), "http://h/x")
	f.Fuzz(func(t *testing.T, domain, prefix, re, sub, hname, hvalue string, w1, w2 uint32, retryOn string, num uint32, target string) {
		rc := fuzzConfig(domain, prefix, re, sub, hname, hvalue, w1, w2, retryOn, num)
		tab, err := New([]*routev3.RouteConfiguration{rc})
		if err != nil {
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("New error is not an *Error: %v", err)
			}
			return
		}
		exercise(t, tab, "rc", fuzzRequest("GET", domain, target, hvalue), hvalue, uint64(w1)<<32|uint64(w2))
	})
}

// FuzzNewProto builds tables from arbitrary RouteConfiguration protos, which
// reach the fields FuzzNew does not set. Its seeds are small: Go minimises
// each new input in time quadratic in its size, and does not fuzz meanwhile.
func FuzzNewProto(f *testing.F) {
	var seeds []*routev3.RouteConfiguration
	for _, y := range []string{
		vhostWith("match: {prefix: /, headers: [{name: x, present_match: true}]}\nroute: {cluster: c, timeout: 1s}"),
		vhostWith("match: {safe_regex: {regex: a.}}\nredirect: {prefix_rewrite: /b}"),
		vhostWith("match: {path: /}\nroute: {weighted_clusters: {clusters: [{name: a, weight: 1}, {name: b, weight: 2}]}, retry_policy: {retry_on: 5xx}}"),
	} {
		seeds = append(seeds, parseRC(f, y))
	}
	for _, rc := range seeds {
		b, err := proto.Marshal(rc)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	reqs := [][4]string{
		{"GET", "api", "/users/1/x?q=1", "v1"},
		{"POST", "x.api.internal:80", "/W/a%2Fb?q", "s=1"},
		{"GET", "", "/", ""},
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		rc := &routev3.RouteConfiguration{}
		if err := proto.Unmarshal(data, rc); err != nil {
			return
		}
		tab, err := New([]*routev3.RouteConfiguration{rc})
		if err != nil {
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("New error is not an *Error: %v", err)
			}
			return
		}
		for i, q := range reqs {
			exercise(t, tab, rc.GetName(), fuzzRequest(q[0], q[1], q[2], q[3]), q[3], uint64(i)*7919)
		}
	})
}

// FuzzMatch matches arbitrary requests against a configuration that uses
// every feature.
func FuzzMatch(f *testing.F) {
	tab, err := New(fuzzSeeds(f))
	if err != nil {
		f.Fatal(err)
	}
	for _, s := range [][4]string{
		{"GET", "api", "/users/12/x?q=1", "v1"},
		{"GET", "x.api.internal", "/W/a?q", "7"},
		{"GET", "api-1", "/old/x?y", ""},
		{"POST", "api:80", "/r/r", "s=1; x"},
		{"GET", "API", "/teapot", "%"},
		{"PRI", "svc1:8080", "/svc1/items/3?debug=0", "v3"},
		{"GET", "[::1]:80", "http://h/a%2Fb", "\x00"},
	} {
		f.Add(s[0], s[1], s[2], s[3], uint64(3))
	}
	f.Fuzz(func(t *testing.T, method, host, target, value string, rnd uint64) {
		r := fuzzRequest(method, host, target, value)
		for _, name := range tab.Names() {
			exercise(t, tab, name, r, value, rnd)
		}
	})
}
