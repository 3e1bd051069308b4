package offline

import (
	"context"
	"strings"
	"testing"

	"github.com/rampart-mesh/rampart/policies/compile"
)

// REQ.yaml is read strictly: a duplicate key, a second document, a value the
// request could not carry, an extAuthz answer other than allow or deny and
// an address that is not one are errors (rampartctl exits 1), never a
// decision about a request the file did not mean.
func TestRequestSpecIsStrict(t *testing.T) {
	mesh, _ := compile.Mesh{}.WithDefaults()
	check := func(y string) (Result, error) {
		var req RequestSpec
		if err := DecodeStrict([]byte(y), &req); err != nil {
			return Result{}, err
		}
		return Check(context.Background(), nil, mesh, "", req)
	}
	for _, tc := range []struct{ name, yaml, wantErr string }{
		{"duplicate key", "path: /admin\npath: /public\n", `key "path" already set`},
		{"second document", "path: /admin\n---\npath: /public\n", "2 YAML documents"},
		{"header without a value", "headers: {x-token: }\n", `headers.x-token: no value`},
		{"header map", "headers: {x-a: {b: c}}\n", "headers.x-a: a map"},
		{"header float", "headers: {x-v: 1.10}\n", "quote the value"},
		{"extAuthz case", "extAuthz: DENY\n", `extAuthz "DENY" is not allow or deny`},
		{"source ip", "source: {ip: not-an-ip}\n", `source.ip "not-an-ip" is not an IP address`},
	} {
		if _, err := check(tc.yaml); err == nil || !strings.Contains(err.Error(), tc.wantErr) {
			t.Errorf("%s: %v; want an error with %q", tc.name, err, tc.wantErr)
		}
	}
	for _, y := range []string{"headers: {x-n: 5, x-b: true, x-list: [a, b], x-empty: \"\"}\n", "extAuthz: deny\n", "source: {ip: 10.0.0.1}\n"} {
		if _, err := check(y); err != nil {
			t.Errorf("%q: %v", y, err)
		}
	}
}
