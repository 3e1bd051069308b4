package route

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

// count is how many rnd in [0, n) make hit true.
func count(n uint64, hit func(uint64) bool) uint64 {
	var c uint64
	for rnd := uint64(0); rnd < n; rnd++ {
		if hit(rnd) {
			c++
		}
	}
	return c
}

const faultAny = `"@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault`

func TestFault(t *testing.T) {
	const cfg = `
name: rc
typed_per_filter_config:
  envoy.filters.http.fault:
    ` + faultAny + `
    abort: {http_status: 500, percentage: {numerator: 1}}
virtual_hosts:
- name: vh
  domains: ["*"]
  typed_per_filter_config:
    envoy.filters.http.fault:
      ` + faultAny + `
      delay: {fixed_delay: 2s, percentage: {numerator: 25}}
      abort: {http_status: 503, percentage: {numerator: 50, denominator: TEN_THOUSAND}}
  routes:
  - name: inherits
    match: {prefix: /inherit}
    route: {cluster: c}
  - name: own
    match: {prefix: /own}
    route: {cluster: c}
    typed_per_filter_config:
      envoy.filters.http.fault:
        ` + faultAny + `
        abort: {grpc_status: 14, percentage: {numerator: 3, denominator: MILLION}}
        max_active_faults: 10
  - name: unset-percent
    match: {prefix: /unset}
    route: {cluster: c}
    typed_per_filter_config:
      envoy.filters.http.fault:
        ` + faultAny + `
        delay: {fixed_delay: 1s}
  - name: disabled
    match: {prefix: /disabled}
    route: {cluster: c}
    typed_per_filter_config:
      envoy.filters.http.fault:
        "@type": type.googleapis.com/envoy.config.route.v3.FilterConfig
        disabled: true
  - name: wrapped
    match: {prefix: /wrapped}
    route: {cluster: c}
    typed_per_filter_config:
      envoy.filters.http.fault:
        "@type": type.googleapis.com/envoy.config.route.v3.FilterConfig
        config:
          ` + faultAny + `
          abort: {http_status: 418, percentage: {numerator: 100}}
`
	tab := newTable(t, cfg)
	tests := []struct {
		path                  string
		want                  *Fault
		delays, aborts, outOf uint64
	}{
		{"/inherit", &Fault{Delay: 2 * time.Second, DelayPercent: Fraction{25, 100}, AbortStatus: 503, AbortPercent: Fraction{50, 10000}, AbortBody: "fault filter abort"}, 2500, 50, 10000},
		{"/own", &Fault{AbortGRPC: true, AbortGRPCStatus: 14, AbortPercent: Fraction{3, 1000000}, AbortBody: "fault filter abort", MaxActive: 10}, 0, 3, 1000000},
		{"/unset", &Fault{Delay: time.Second, DelayPercent: Fraction{0, 100}, AbortBody: "fault filter abort"}, 0, 0, 100},
		{"/disabled", nil, 0, 0, 100},
		{"/wrapped", &Fault{AbortStatus: 418, AbortPercent: Fraction{100, 100}, AbortBody: "fault filter abort"}, 0, 100, 100},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			f := mustMatch(t, tab, request("GET", tt.path)).Fault
			if diff := cmp.Diff(tt.want, f, cmpopts.IgnoreUnexported(Fault{})); diff != "" {
				t.Errorf("Fault (-want +got):\n%s", diff)
			}
			if got := count(tt.outOf, f.ShouldDelay); got != tt.delays {
				t.Errorf("ShouldDelay over [0, %d): %d hits, want %d", tt.outOf, got, tt.delays)
			}
			if got := count(tt.outOf, f.ShouldAbort); got != tt.aborts {
				t.Errorf("ShouldAbort over [0, %d): %d hits, want %d", tt.outOf, got, tt.aborts)
			}
		})
	}
	// The configuration level applies where nothing more specific does.
	top := newTable(t, `
name: rc
typed_per_filter_config:
  envoy.filters.http.fault:
    `+faultAny+`
    abort: {http_status: 500, percentage: {numerator: 1}}
virtual_hosts: [{name: vh, domains: ["*"], routes: [{match: {prefix: /}, route: {cluster: c}}]}]`)
	if f := mustMatch(t, top, request("GET", "/")).Fault; f == nil || f.AbortStatus != 500 {
		t.Errorf("Fault = %+v, want the configuration's abort 500", f)
	}
}

func TestFraction(t *testing.T) {
	tests := []struct {
		f    Fraction
		want uint64 // hits over [0, f.Denominator)
	}{
		{Fraction{0, 100}, 0},
		{Fraction{1, 100}, 1},
		{Fraction{100, 100}, 100},
		{Fraction{150, 100}, 100},
		{Fraction{7, 10000}, 7},
		{Fraction{}, 0},
	}
	for _, tt := range tests {
		n := uint64(tt.f.Denominator)
		if n == 0 {
			n = 100
		}
		if got := count(n, tt.f.Hit); got != tt.want {
			t.Errorf("%+v: %d hits over [0, %d), want %d", tt.f, got, n, tt.want)
		}
	}
}

func TestMirrors(t *testing.T) {
	const cfg = `
name: rc
request_mirror_policies: [{cluster: config-shadow}]
virtual_hosts:
- name: vh
  domains: [vh]
  request_mirror_policies:
  - {cluster: vh-shadow, runtime_fraction: {default_value: {numerator: 50, denominator: TEN_THOUSAND}}}
  routes:
  - name: inherits
    match: {prefix: /inherit}
    route: {cluster: c}
  - name: own
    match: {prefix: /own}
    route:
      cluster: c
      request_mirror_policies:
      - {cluster: a}
      - {cluster: b, runtime_fraction: {default_value: {numerator: 10}}, host_rewrite_literal: b.mirror, disable_shadow_host_suffix_append: true}
- name: other
  domains: ["*"]
  routes: [{match: {prefix: /}, route: {cluster: c}}]
`
	tab := newTable(t, cfg)
	tests := []struct {
		name string
		host string
		path string
		want []Mirror
	}{
		{"virtual host's", "vh", "/inherit", []Mirror{{Cluster: "vh-shadow", Numerator: 50, Denominator: 10000}}},
		{"route's replace, not merge", "vh", "/own", []Mirror{
			{Cluster: "a", Numerator: 100, Denominator: 100},
			{Cluster: "b", Numerator: 10, Denominator: 100, HostRewrite: "b.mirror", NoShadowSuffix: true}}},
		{"configuration's", "x", "/", []Mirror{{Cluster: "config-shadow", Numerator: 100, Denominator: 100}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rt := mustMatch(t, tab, request("GET", tt.path, "Host", tt.host))
			if diff := cmp.Diff(tt.want, rt.Mirrors); diff != "" {
				t.Errorf("Mirrors (-want +got):\n%s", diff)
			}
		})
	}
	m := Mirror{Numerator: 50, Denominator: 10000}
	if got := count(10000, m.ShouldMirror); got != 50 {
		t.Errorf("ShouldMirror: %d of 10000, want 50", got)
	}
	all := Mirror{Numerator: 100, Denominator: 100}
	if got := count(1000, all.ShouldMirror); got != 1000 {
		t.Errorf("ShouldMirror at 100%%: %d of 1000", got)
	}
}

const corsAny = `"@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy`

func TestCors(t *testing.T) {
	const cfg = `
name: rc
virtual_hosts:
- name: vh
  domains: [vh]
  typed_per_filter_config:
    envoy.filters.http.cors:
      ` + corsAny + `
      allow_origin_string_match: [{exact: "https://vh.example"}]
      allow_methods: GET
      max_age: "60"
      allow_credentials: true
  routes:
  - name: merged
    match: {prefix: /merged}
    route: {cluster: c}
    typed_per_filter_config:
      envoy.filters.http.cors:
        ` + corsAny + `
        allow_origin_string_match: [{prefix: "https://", ignore_case: true}, {safe_regex: {regex: "http://localhost:[0-9]+"}}]
        allow_methods: GET,POST
        allow_credentials: false
        forward_not_matching_preflights: false
        filter_enabled: {default_value: {numerator: 50}}
  - name: inherits
    match: {prefix: /inherit}
    route: {cluster: c}
  - name: disabled
    match: {prefix: /disabled}
    route: {cluster: c}
    typed_per_filter_config:
      envoy.filters.http.cors: {"@type": type.googleapis.com/envoy.config.route.v3.FilterConfig, disabled: true}
- name: legacy
  domains: ["*"]
  cors: {allow_methods: PUT, expose_headers: x-vhost}
  routes:
  - match: {prefix: /}
    route: {cluster: c, cors: {allow_origin_string_match: [{exact: "https://a"}], allow_headers: x-a}}
`
	tab := newTable(t, cfg)
	tests := []struct {
		name  string
		host  string
		path  string
		want  *Cors
		allow map[string]bool
	}{
		{"route fields win, the rest from the virtual host", "vh", "/merged", &Cors{
			AllowMethods: "GET,POST", MaxAge: "60", AllowCredentials: false, ForwardNotMatchingPreflights: false,
			Enabled: Fraction{50, 100}, Shadow: Fraction{0, 100}},
			map[string]bool{"HTTPS://x": true, "http://localhost:8080": true, "http://x": false, "https://vh.example": true}},
		{"virtual host's", "vh", "/inherit", &Cors{
			AllowMethods: "GET", MaxAge: "60", AllowCredentials: true, ForwardNotMatchingPreflights: true,
			Enabled: Fraction{100, 100}, Shadow: Fraction{0, 100}},
			map[string]bool{"https://vh.example": true, "https://other": false}},
		{"disabled", "vh", "/disabled", nil, map[string]bool{"https://vh.example": false}},
		{"deprecated cors fields, route then virtual host", "x", "/", &Cors{
			AllowMethods: "PUT", AllowHeaders: "x-a", ExposeHeaders: "x-vhost", ForwardNotMatchingPreflights: true,
			Enabled: Fraction{100, 100}, Shadow: Fraction{0, 100}},
			map[string]bool{"https://a": true, "https://b": false}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := mustMatch(t, tab, request("GET", tt.path, "Host", tt.host)).Cors
			if diff := cmp.Diff(tt.want, c, cmpopts.IgnoreFields(Cors{}, "AllowOrigins")); diff != "" {
				t.Errorf("Cors (-want +got):\n%s", diff)
			}
			for origin, want := range tt.allow {
				if got := c.AllowsOrigin(origin); got != want {
					t.Errorf("AllowsOrigin(%q) = %v, want %v", origin, got, want)
				}
			}
		})
	}
}

func TestXXHash64(t *testing.T) {
	// Reference values of XXH64 with seed 0.
	for in, want := range map[string]uint64{
		"":    0xef46db3751d8e999,
		"abc": 0x44bc2cf5ad770999,
	} {
		if got := xxHash64(in, 0); got != want {
			t.Errorf("xxHash64(%q) = %#x, want %#x", in, got, want)
		}
	}
}

func TestHashKey(t *testing.T) {
	h := func(s string) uint64 { return xxHash64(s, 0) }
	rotl := func(x uint64) uint64 { return x<<1 | x>>63 }
	tests := []struct {
		name     string
		policies string // the route's hash_policy, YAML
		target   string
		hdr      []string
		sourceIP string
		want     uint64
		ok       bool
	}{
		{"header", `[{header: {header_name: x-user}}]`, "/", []string{"X-User", "alice"}, "", h("alice"), true},
		{"header absent", `[{header: {header_name: x-user}}]`, "/", nil, "", 0, false},
		{"repeated header is order-independent", `[{header: {header_name: x-user}}]`, "/", []string{"X-User", "b", "X-User", "a"}, "", xxHash64("b", xxHash64("a", 0)), true},
		{"header regex_rewrite", `[{header: {header_name: x-user, regex_rewrite: {pattern: {regex: "-.*"}, substitution: ""}}}]`, "/", []string{"X-User", "alice-123"}, "", h("alice"), true},
		{":authority", `[{header: {header_name: ":authority"}}]`, "/", []string{"Host", "svc:80"}, "", h("svc:80"), true},
		{"cookie", `[{cookie: {name: session, ttl: 3600s}}]`, "/", []string{"Cookie", "a=1; session=xyz; b=2"}, "", h("xyz"), true},
		{"quoted cookie", `[{cookie: {name: session}}]`, "/", []string{"Cookie", `session="xyz"`}, "", h("xyz"), true},
		{"cookie in a second header", `[{cookie: {name: session}}]`, "/", []string{"Cookie", "a=1", "Cookie", "session=q"}, "", h("q"), true},
		{"cookie absent is not generated", `[{cookie: {name: session, ttl: 3600s}}]`, "/", []string{"Cookie", "sessionx=1"}, "", 0, false},
		{"source ip", `[{connection_properties: {source_ip: true}}]`, "/", nil, "10.0.0.7", h("10.0.0.7"), true},
		{"source ip unknown", `[{connection_properties: {source_ip: true}}]`, "/", nil, "", 0, false},
		{"query parameter", `[{query_parameter: {name: user}}]`, "/?a=1&user=bob&user=eve", nil, "", h("bob"), true},
		{"query parameter absent", `[{query_parameter: {name: user}}]`, "/?a=1", nil, "", 0, false},
		{"combined", `[{header: {header_name: x-a}}, {header: {header_name: x-b}}]`, "/", []string{"X-A", "1", "X-B", "2"}, "", rotl(h("1")) ^ h("2"), true},
		{"combined, first missing", `[{header: {header_name: x-a}}, {header: {header_name: x-b}}]`, "/", []string{"X-B", "2"}, "", h("2"), true},
		{"terminal stops once there is a key", `[{header: {header_name: x-a}, terminal: true}, {header: {header_name: x-b}}]`, "/", []string{"X-A", "1", "X-B", "2"}, "", h("1"), true},
		{"terminal without a key goes on", `[{header: {header_name: x-a}, terminal: true}, {header: {header_name: x-b}}]`, "/", []string{"X-B", "2"}, "", h("2"), true},
		{"no policy", `[]`, "/", []string{"X-A", "1"}, "10.0.0.1", 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tab := oneVhost(t, "- match: {prefix: /}\n  route: {cluster: c, hash_policy: "+tt.policies+"}")
			r := request("GET", tt.target, tt.hdr...)
			got, ok := mustMatch(t, tab, r).HashKey(r, tt.sourceIP)
			if got != tt.want || ok != tt.ok {
				t.Errorf("HashKey = %#x, %v; want %#x, %v", got, ok, tt.want, tt.ok)
			}
		})
	}
}

func TestCookieValue(t *testing.T) {
	tests := []struct {
		headers []string
		name    string
		want    string
		ok      bool
	}{
		{[]string{"a=1;b=2"}, "b", "2", true},
		{[]string{" a = 1 "}, "a", "", false},
		{[]string{"a=; b=2"}, "a", "", true},
		{[]string{`a=""`}, "a", "", true},
		{[]string{"ab=1"}, "a", "", false},
		{nil, "a", "", false},
	}
	for _, tt := range tests {
		got, ok := cookieValue(tt.headers, tt.name)
		if got != tt.want || ok != tt.ok {
			t.Errorf("cookieValue(%q, %q) = %q, %v; want %q, %v", tt.headers, tt.name, got, ok, tt.want, tt.ok)
		}
	}
}
