package route

import (
	"net/http"
	"net/http/httptest"
	"testing"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"sigs.k8s.io/yaml"
)

// parseRC decodes a RouteConfiguration written in YAML (proto field names;
// typed configs with "@type"), as an operator would read it in Envoy's docs.
func parseRC(t testing.TB, y string) *routev3.RouteConfiguration {
	t.Helper()
	j, err := yaml.YAMLToJSON([]byte(y))
	if err != nil {
		t.Fatalf("yaml: %v\n%s", err, y)
	}
	rc := &routev3.RouteConfiguration{}
	if err := protojson.Unmarshal(j, rc); err != nil {
		t.Fatalf("protojson: %v\n%s", err, y)
	}
	return rc
}

func newTable(t testing.TB, ys ...string) *Table {
	t.Helper()
	var rcs []*routev3.RouteConfiguration
	for _, y := range ys {
		rcs = append(rcs, parseRC(t, y))
	}
	tab, err := New(rcs)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return tab
}

// oneRoute builds a table "rc" with one virtual host for every domain and
// the given routes (YAML list items, already indented as list entries).
func oneVhost(t testing.TB, routes string) *Table {
	t.Helper()
	return newTable(t, `
name: rc
virtual_hosts:
- name: vh
  domains: ["*"]
  routes:
`+indent(routes, "  "))
}

func indent(s, by string) string {
	out := ""
	for _, line := range splitLines(s) {
		if line == "" {
			out += "\n"
			continue
		}
		out += by + line + "\n"
	}
	return out
}

func splitLines(s string) []string {
	var lines []string
	start := 0
	for i := 0; i < len(s); i++ {
		if s[i] == '\n' {
			lines = append(lines, s[start:i])
			start = i + 1
		}
	}
	return append(lines, s[start:])
}

// request builds a server-side request as the sidecar's listener sees it;
// hdr holds name/value pairs.
func request(method, target string, hdr ...string) *http.Request {
	r := httptest.NewRequest(method, target, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		if hdr[i] == "Host" {
			r.Host = hdr[i+1]
			continue
		}
		r.Header.Add(hdr[i], hdr[i+1])
	}
	return r
}

func mustMatch(t *testing.T, tab *Table, r *http.Request) *Route {
	t.Helper()
	rt := tab.Match("rc", r)
	if rt == nil {
		t.Fatalf("no route for %s %s (host %q)", r.Method, r.URL, r.Host)
	}
	return rt
}
