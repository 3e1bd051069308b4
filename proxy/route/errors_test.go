package route

import (
	"errors"
	"strings"
	"testing"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
)

// vhostWith is a configuration "rc" whose virtual host "vh" has one route
// "r" with the given fields (YAML, indented for the route's mapping).
func vhostWith(route string) string {
	return `
name: rc
virtual_hosts:
- name: vh
  domains: ["*"]
  routes:
  - name: r
` + indent(route, "    ")
}

func TestNewErrors(t *testing.T) {
	tests := []struct {
		name        string
		configs     []string
		want        string
		unsupported bool
	}{
		{"bad path regex", []string{vhostWith("match: {safe_regex: {regex: \"/a(\"}}\nroute: {cluster: c}")},
			"route configuration \"rc\": virtual host \"vh\": route \"r\" (#0): match.safe_regex.regex: invalid regex \"/a(\": error parsing regexp: missing closing ): `/a(`", false},
		{"regex cannot escape the full match", []string{vhostWith("match: {safe_regex: {regex: \"a)|(b\"}}\nroute: {cluster: c}")},
			"route configuration \"rc\": virtual host \"vh\": route \"r\" (#0): match.safe_regex.regex: invalid regex \"a)|(b\": error parsing regexp: unexpected ): `a)|(b`", false},
		{"bad header regex", []string{vhostWith("match: {prefix: /, headers: [{name: x, string_match: {safe_regex: {regex: \"[\"}}}]}\nroute: {cluster: c}")},
			"route configuration \"rc\": virtual host \"vh\": route \"r\" (#0): match.headers[0]: string_match: invalid regex \"[\": error parsing regexp: missing closing ]: `[`", false},
		{"ignore_case with a regex", []string{vhostWith("match: {prefix: /, query_parameters: [{name: q, string_match: {safe_regex: {regex: a}, ignore_case: true}}]}\nroute: {cluster: c}")},
			`route configuration "rc": virtual host "vh": route "r" (#0): match.query_parameters[0]: string_match: ignore_case has no effect for safe_regex; use (?i) in the pattern`, false},
		{"bad rewrite group", []string{vhostWith("match: {prefix: /}\nroute: {cluster: c, regex_rewrite: {pattern: {regex: \"/(a)\"}, substitution: \"\\\\2\"}}")},
			`route configuration "rc": virtual host "vh": route "r" (#0): route.regex_rewrite: substitution "\\2" refers to group \2 but the pattern has 1`, false},
		{"weights sum to zero", []string{vhostWith("match: {prefix: /}\nroute: {weighted_clusters: {clusters: [{name: a, weight: 0}, {name: b}]}}")},
			`route configuration "rc": virtual host "vh": route "r" (#0): route.weighted_clusters: weights sum to 0; the sum must be greater than 0`, false},
		{"weights do not sum to total_weight", []string{vhostWith("match: {prefix: /}\nroute: {weighted_clusters: {total_weight: 100, clusters: [{name: a, weight: 30}, {name: b, weight: 60}]}}")},
			`route configuration "rc": virtual host "vh": route "r" (#0): route.weighted_clusters.total_weight: is 100 but the weights sum to 90`, false},
		{"weights overflow", []string{vhostWith("match: {prefix: /}\nroute: {weighted_clusters: {clusters: [{name: a, weight: 4294967295}, {name: b, weight: 1}]}}")},
			`route configuration "rc": virtual host "vh": route "r" (#0): route.weighted_clusters: weights sum to 4294967296, more than 4294967295`, false},
		{"weighted cluster without a name", []string{vhostWith("match: {prefix: /}\nroute: {weighted_clusters: {clusters: [{name: a, weight: 1}, {weight: 1}]}}")},
			`route configuration "rc": virtual host "vh": route "r" (#0): route.weighted_clusters.clusters[1].name: is empty`, false},
		{"cluster_header", []string{vhostWith("match: {prefix: /}\nroute: {cluster_header: x-cluster}")},
			`route configuration "rc": virtual host "vh": route "r" (#0): route.cluster_header: choosing the cluster from a request header: not supported by the rampart sidecar`, true},
		{"no action", []string{vhostWith("match: {prefix: /}")},
			`route configuration "rc": virtual host "vh": route "r" (#0): action: missing: set one of route, redirect or direct_response`, false},
		{"no match", []string{vhostWith("route: {cluster: c}")},
			`route configuration "rc": virtual host "vh": route "r" (#0): match: missing; every route needs a match`, false},
		{"no path specifier", []string{vhostWith("match: {headers: [{name: x}]}\nroute: {cluster: c}")},
			`route configuration "rc": virtual host "vh": route "r" (#0): match: no path specifier: set one of prefix, path, safe_regex or path_separated_prefix`, false},
		{"runtime fraction match", []string{vhostWith("match: {prefix: /, runtime_fraction: {default_value: {numerator: 1}}}\nroute: {cluster: c}")},
			`route configuration "rc": virtual host "vh": route "r" (#0): match.runtime_fraction: runtime-fraction matching: not supported by the rampart sidecar`, true},
		{"unknown fault type", []string{vhostWith("match: {prefix: /}\nroute: {cluster: c}\ntyped_per_filter_config:\n  envoy.filters.http.fault: {" + corsAny + "}")},
			`route configuration "rc": virtual host "vh": route "r" (#0): typed_per_filter_config["envoy.filters.http.fault"]: type "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy": want envoy.extensions.filters.http.fault.v3.HTTPFault`, false},
		{"header-controlled abort", []string{vhostWith("match: {prefix: /}\nroute: {cluster: c}\ntyped_per_filter_config:\n  envoy.filters.http.fault: {" + faultAny + ", abort: {header_abort: {}}}")},
			`route configuration "rc": virtual host "vh": route "r" (#0): typed_per_filter_config["envoy.filters.http.fault"].abort.header_abort: header-controlled aborts: not supported by the rampart sidecar`, true},
		{"bad fault on the virtual host", []string{`
name: rc
virtual_hosts:
- name: vh
  domains: ["*"]
  typed_per_filter_config:
    envoy.filters.http.fault: {` + faultAny + `, delay: {header_delay: {}}}`},
			`route configuration "rc": virtual host "vh": (virtual host) typed_per_filter_config["envoy.filters.http.fault"].delay.header_delay: header-controlled delays: not supported by the rampart sidecar`, true},
		{"unknown retry_on", []string{vhostWith("match: {prefix: /}\nroute: {cluster: c, retry_policy: {retry_on: \"5xx,retriable-5xx\"}}")},
			`route configuration "rc": virtual host "vh": route "r" (#0): route.retry_policy.retry_on: unknown retry_on condition "retriable-5xx"`, false},
		{"modify :authority", []string{vhostWith("match: {prefix: /}\nroute: {cluster: c}\nrequest_headers_to_add: [{header: {key: \":authority\", value: x}}]")},
			`route configuration "rc": virtual host "vh": route "r" (#0): request_headers_to_add[0]: header.key ":authority": :-prefixed and host headers may not be modified (use the route's host_rewrite or path rewrite)`, false},
		{"remove host", []string{vhostWith("match: {prefix: /}\nroute: {cluster: c}\nrequest_headers_to_remove: [Host]")},
			`route configuration "rc": virtual host "vh": route "r" (#0): request_headers_to_remove[0]: "Host": :-prefixed and host headers may not be removed`, false},
		{"formatter command", []string{vhostWith("match: {prefix: /}\nroute: {cluster: c}\nresponse_headers_to_add: [{header: {key: x-up, value: \"%UPSTREAM_HOST%\"}}]")},
			`route configuration "rc": virtual host "vh": route "r" (#0): response_headers_to_add[0]: header.value: "%UPSTREAM_HOST%": formatter command %UPSTREAM_HOST%: not supported by the rampart sidecar (write a literal % as %%)`, true},
		{"append and append_action", []string{vhostWith("match: {prefix: /}\nroute: {cluster: c}\nrequest_headers_to_add: [{header: {key: x, value: val}, append: true, append_action: ADD_IF_ABSENT}]")},
			`route configuration "rc": virtual host "vh": route "r" (#0): request_headers_to_add[0]: both append and append_action are set; use only append_action`, false},
		{"direct response body too large", []string{"name: rc\nmax_direct_response_body_size_bytes: 4\nvirtual_hosts: [{name: vh, domains: ['*'], routes: [{name: r, match: {prefix: /}, direct_response: {status: 200, body: {inline_string: hello}}}]}]"},
			`route configuration "rc": virtual host "vh": route "r" (#0): direct_response.body: is 5 bytes, more than max_direct_response_body_size_bytes (4)`, false},
		{"duplicate domain", []string{`
name: rc
virtual_hosts:
- {name: a, domains: [foo.com, "*.bar.com"], routes: []}
- {name: b, domains: ["*.BAR.com"], routes: []}`},
			`route configuration "rc": virtual host "b": domains[0]: "*.BAR.com" is also a domain of virtual host "a"; domains must be unique in a route configuration`, false},
		{"two defaults", []string{`
name: rc
virtual_hosts:
- {name: a, domains: ["*"]}
- {name: b, domains: ["*"]}`},
			`route configuration "rc": virtual host "b": domains[0]: "*": only one virtual host may have the domain "*" ("a" has it)`, false},
		{"duplicate configuration", []string{"name: rc", "name: x", "name: rc"},
			`route configuration "rc": duplicate route configuration name (also #0)`, false},
		{"unnamed route and virtual host", []string{`
name: rc
virtual_hosts:
- domains: ["*"]
  routes: [{match: {prefix: /}, route: {cluster: ""}}]`},
			`route configuration "rc": virtual host #0: route #0: route.cluster: is empty`, false},
		{"Envoy's proto constraints", []string{`
name: rc
virtual_hosts:
- domains: ["*"]
  routes: [{match: {prefix: /}, route: {cluster: c}}]`},
			`route configuration "rc": invalid RouteConfiguration.VirtualHosts[0]: embedded message failed validation | caused by: invalid VirtualHost.Name: value length must be at least 1 runes`, false},
		{"vhds", []string{"name: rc\nvhds: {config_source: {ads: {}}}"},
			`route configuration "rc": vhds: on-demand virtual hosts (VHDS): not supported by the rampart sidecar`, true},
		{"require_tls", []string{"name: rc\nvirtual_hosts: [{name: vh, domains: ['*'], require_tls: ALL}]"},
			`route configuration "rc": virtual host "vh": require_tls: TLS requirements (ALL): not supported by the rampart sidecar`, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var rcs []*routev3.RouteConfiguration
			for _, c := range tt.configs {
				rcs = append(rcs, parseRC(t, c))
			}
			tab, err := New(rcs)
			if err == nil {
				t.Fatalf("New accepted the configuration: %v", tab.Names())
			}
			if err.Error() != tt.want {
				t.Errorf("error:\n got %s\nwant %s", err, tt.want)
			}
			var e *Error
			if !errors.As(err, &e) || e.Config != "rc" {
				t.Errorf("error %v is not an *Error for configuration rc", err)
			}
			if got := errors.Is(err, ErrUnsupported); got != tt.unsupported {
				t.Errorf("errors.Is(err, ErrUnsupported) = %v, want %v", got, tt.unsupported)
			}
		})
	}
	t.Run("nil configuration", func(t *testing.T) {
		if _, err := New([]*routev3.RouteConfiguration{nil}); err == nil || err.Error() != `route configuration "#0": is null` {
			t.Errorf("New(nil) error = %v", err)
		}
	})
	t.Run("empty", func(t *testing.T) {
		tab, err := New(nil)
		if err != nil || len(tab.Names()) != 0 || tab.Match("x", request("GET", "/")) != nil {
			t.Errorf("New(nil) = %v, %v; want an empty table", tab, err)
		}
	})
}

func TestRegexLimits(t *testing.T) {
	tests := []struct {
		name, regex, want string
	}{
		{"too long", strings.Repeat("a", 1025), "regex of 1025 bytes is longer than the limit of 1024"},
		{"too large a program", strings.Repeat("[a-z]{1000}", 11), "instructions, more than the limit of 10000"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New([]*routev3.RouteConfiguration{parseRC(t, vhostWith("match: {safe_regex: {regex: \""+tt.regex+"\"}}\nroute: {cluster: c}"))})
			if err == nil || !strings.Contains(err.Error(), "match.safe_regex.regex: ") || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("New error = %v, want one about match.safe_regex.regex containing %q", err, tt.want)
			}
		})
	}
	// Typical route regexes are far below the limits.
	oneVhost(t, `- match: {safe_regex: {regex: "/api/v[0-9]+/users/[a-z0-9-]+/(orders|items)/\\pL+"}}
  route: {cluster: c}`)
}
