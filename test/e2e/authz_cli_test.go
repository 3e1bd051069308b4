package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rampart-mesh/rampart/test/internal/procs"
)

const cliPolicies = `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: foo}
spec:
  action: DENY
  rules:
  - to: [{operation: {paths: ["/admin*"], ports: ["8000"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-sleep}
spec:
  selector: {matchLabels: {app: httpbin}}
  rules:
  - from: [{source: {principals: ["cluster.local/ns/bar/sa/sleep"]}}]
    to: [{operation: {methods: ["GET"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: typo, namespace: foo}
spec:
  rules:
  - when: [{key: "request.header[x]", values: ["a"]}]
`

// The authz commands as an operator runs them: check's JSON contract, compile,
// a decision log and its verification, which notices tampering.
func TestAuthzCLI(t *testing.T) {
	dir := t.TempDir()
	pol := filepath.Join(dir, "policies.yaml")
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	write("policies.yaml", cliPolicies)
	logPath := filepath.Join(dir, "decisions.log")
	for _, tc := range []struct {
		name, req string
		allowed   bool
		status    int
		policy    string
	}{
		{"allowed caller", "workload: {namespace: foo, labels: {app: httpbin}}\nsource: {principal: cluster.local/ns/bar/sa/sleep}\npath: /get\n", true, 200, "foo/allow-sleep"},
		{"other caller", "workload: {namespace: foo, labels: {app: httpbin}}\nsource: {principal: cluster.local/ns/baz/sa/x}\npath: /get\n", false, 403, ""},
		{"admin path", "workload: {namespace: foo, labels: {app: httpbin}}\nsource: {principal: cluster.local/ns/bar/sa/sleep}\nport: 8000\npath: /admin/users\n", false, 403, "foo/deny-admin"},
		{"tcp", "workload: {namespace: foo, labels: {app: httpbin}}\nprotocol: tcp\nsource: {principal: cluster.local/ns/bar/sa/sleep}\n", false, 0, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := write(strings.ReplaceAll(tc.name, " ", "-")+".yaml", tc.req)
			out := procs.Run(t, "rampartctl", "authz", "check", "-f", pol, "--request", req, "-o", "json", "--decision-log", logPath)
			var res struct {
				Allowed  bool   `json:"allowed"`
				Status   int    `json:"status"`
				Policy   string `json:"policy"`
				Rule     int    `json:"rule"`
				Reason   string `json:"reason"`
				Findings []struct {
					Code, Path string
				} `json:"findings"`
			}
			if err := json.Unmarshal([]byte(out), &res); err != nil {
				t.Fatalf("check -o json is not JSON: %v\n%s", err, out)
			}
			if res.Allowed != tc.allowed || res.Status != tc.status || res.Policy != tc.policy || res.Reason == "" {
				t.Fatalf("got %+v; want allowed=%t status=%d policy=%q", res, tc.allowed, tc.status, tc.policy)
			}
			found := false
			for _, f := range res.Findings {
				found = found || (f.Code == "AP-UNKNOWN-KEY" && f.Path == "spec.rules[0].when[0].key")
			}
			if !found {
				t.Fatalf("the unknown condition key was not reported with its path: %+v", res.Findings)
			}
		})
	}
	rego := procs.Run(t, "rampartctl", "authz", "compile", "-f", pol, "--workload", "foo/httpbin", "--labels", "app=httpbin")
	for _, want := range []string{"# AuthorizationPolicy foo/allow-sleep (ALLOW)", `input.rampart.source.principal == "spiffe://cluster.local/ns/bar/sa/sleep"`, "skipped: condition key"} {
		if !strings.Contains(rego, want) {
			t.Errorf("compile output lacks %q:\n%s", want, rego)
		}
	}
	// Three denials were logged (allows are not, by default); the chain verifies.
	out := procs.Run(t, "rampartctl", "audit", "verify", logPath)
	if !strings.Contains(out, "records: 3 verified") || !strings.Contains(out, "chain:   intact") {
		t.Fatalf("audit verify:\n%s", out)
	}
	data, _ := os.ReadFile(logPath)
	tampered := strings.Replace(string(data), `"allowed":false`, `"allowed":true`, 1)
	if err := os.WriteFile(logPath, []byte(tampered), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := procs.RunErr(t, "rampartctl", "audit", "verify", logPath); err == nil || !strings.Contains(err.Error(), "modified") {
		t.Fatalf("audit verify after tampering: err = %v, want a 'modified' break", err)
	}
	// analyze: the unknown key is an error with its code and path; an unreachable
	// JWKS is a warning when asked to check.
	write("ra.yaml", "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: jwt, namespace: foo}\nspec:\n  jwtRules: [{issuer: https://issuer.invalid, jwksUri: \"http://127.0.0.1:1/jwks\"}]\n")
	out, err := procs.RunErr(t, "rampartctl", "analyze", "-f", pol, "-f", filepath.Join(dir, "ra.yaml"), "--check-jwks", "-o", "json")
	if err == nil {
		t.Fatal("analyze exited 0 with an error-level finding")
	}
	var findings []struct{ Code, Severity, Path, File string }
	if err := json.Unmarshal([]byte(out), &findings); err != nil {
		t.Fatalf("analyze -o json: %v\n%s", err, out)
	}
	codes := map[string]string{}
	for _, f := range findings {
		codes[f.Code] = f.Severity + " " + f.Path
	}
	if codes["AP-UNKNOWN-KEY"] != "error spec.rules[0].when[0].key" || codes["RA-JWKS-UNREACHABLE"] != "warning spec.jwtRules[0]" {
		t.Fatalf("analyze findings %v", codes)
	}
	// The conformance corpus runs through authz test.
	cases, _ := filepath.Glob("../conformance/authz/cases/actions.yaml")
	if len(cases) == 1 {
		if out := procs.Run(t, "rampartctl", "authz", "test", cases[0]); !strings.Contains(out, " 0 failed") {
			t.Fatalf("authz test:\n%s", out)
		}
	}
}
