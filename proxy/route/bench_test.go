package route

import (
	"fmt"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"net/http"
	"strings"
	"testing"
)

// benchConfig is a route configuration "8080" shaped like Istio's outbound
// ones: vhosts services, each with four domains and routes routes mixing
// every match kind, the catch-all last.
func benchConfig(vhosts, routes int) string {
	var b strings.Builder
	b.WriteString("name: \"8080\"\nvirtual_hosts:\n")
	kinds := []string{
		`{path: /svc%[1]d/health}`,
		`{prefix: /svc%[1]d/admin, headers: [{name: x-admin, present_match: true}]}`,
		`{safe_regex: {regex: "/svc%[1]d/users/[0-9]+"}}`,
		`{prefix: /svc%[1]d/api, headers: [{name: ":method", string_match: {exact: GET}}]}`,
		`{prefix: /svc%[1]d/static, case_sensitive: false}`,
		`{prefix: /svc%[1]d/items, query_parameters: [{name: debug, string_match: {exact: "0"}}]}`,
		`{prefix: /svc%[1]d/items, headers: [{name: x-version, string_match: {exact: v3}}]}`,
		`{path_separated_prefix: /svc%[1]d/orders}`,
		`{prefix: /svc%[1]d/items, headers: [{name: x-version, string_match: {exact: v2}}, {name: ":method", string_match: {exact: POST}}]}`,
	}
	for i := 0; i < vhosts; i++ {
		h := fmt.Sprintf("svc%d.ns.svc.cluster.local", i)
		fmt.Fprintf(&b, "- name: %s:8080\n  domains: [%s, \"%s:8080\", svc%d, \"svc%d:8080\"]\n  routes:\n", h, h, h, i, i)
		for j := 0; j < routes-1; j++ {
			fmt.Fprintf(&b, "  - name: svc%d-r%d\n    match: %s\n    route: {cluster: \"outbound|8080|v%d|%s\", timeout: 3s}\n",
				i, j, fmt.Sprintf(kinds[j%len(kinds)], i), j, h)
		}
		fmt.Fprintf(&b, "  - name: svc%d-default\n    match: {prefix: /}\n    route: {weighted_clusters: {clusters: [{name: \"outbound|8080|v1|%s\", weight: 90}, {name: \"outbound|8080|v2|%s\", weight: 10}]}}\n", i, h, h)
	}
	return b.String()
}

// BenchmarkMatch: 50 virtual hosts × 10 routes; requests for the first,
// a middle and the last virtual host, hitting early, late and catch-all routes.
func BenchmarkMatch(b *testing.B) {
	tab := newTable(b, benchConfig(50, 10))
	reqs := []*http.Request{
		request("GET", "/svc0/health", "Host", "svc0.ns.svc.cluster.local:8080"),
		request("POST", "/svc25/items/42?debug=1", "Host", "svc25:8080", "X-Version", "v2"),
		request("GET", "/svc49/users/1234", "Host", "SVC49.ns.svc.cluster.local"),
		request("GET", "/svc49/unknown/path", "Host", "svc49.ns.svc.cluster.local"),
		request("GET", "/svc12/orders/7", "Host", "svc12"),
	}
	for _, r := range reqs {
		if tab.Match("8080", r) == nil {
			b.Fatalf("no route for %s %s", r.Host, r.URL)
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		tab.Match("8080", reqs[i%len(reqs)])
	}
}

// BenchmarkMatchMiss: the whole virtual host is scanned and nothing matches.
func BenchmarkMatchMiss(b *testing.B) {
	tab := newTable(b, benchConfig(50, 10))
	r := request("GET", "/x", "Host", "nowhere.example.com")
	b.ReportAllocs()
	for b.Loop() {
		tab.Match("8080", r)
	}
}

// BenchmarkNew: compiling the 50 × 10 configuration, as on every RDS update.
func BenchmarkNew(b *testing.B) {
	rc := parseRC(b, benchConfig(50, 10))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := New([]*routev3.RouteConfiguration{rc}); err != nil {
			b.Fatal(err)
		}
	}
}
