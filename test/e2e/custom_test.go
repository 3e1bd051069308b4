package e2e

import (
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rampart-mesh/rampart/test/internal/procs"
)

// A bundle written for opa-envoy-plugin (its input shape, its default query
// envoy/authz/allow) runs unchanged as a CUSTOM provider in a sidecar:
// rampartd ships it with the workload's bundle, the sidecar evaluates it.
func TestCustomRegoProviderInSidecar(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a mesh")
	}
	dir := procs.ShortTempDir(t)
	cfg, opa := filepath.Join(dir, "mesh"), filepath.Join(dir, "opa")
	for _, d := range []string{cfg, opa} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	write := func(path, text string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(filepath.Join(opa, "policy.rego"), `package envoy.authz

import rego.v1

default allow := false

allow if {
	input.attributes.request.http.method == "GET"
	input.parsed_path == ["details", "0"]
	input.attributes.request.http.headers["x-user"] == "alice"
}
`)
	write(filepath.Join(dir, "meshconfig.yaml"), "extensionProviders:\n- name: opa\n  rampartRego: {bundle: "+opa+"}\n")
	write(filepath.Join(cfg, "mesh.yaml"), `apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: details}
spec:
  hosts: [details.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9080, name: http, protocol: HTTP}]
  workloadSelector: {labels: {app: details}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: details-v1}
spec: {address: 127.0.40.2, labels: {app: details}, serviceAccount: details}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: client}
spec: {address: 127.0.40.1, labels: {app: client}, serviceAccount: client}
---
apiVersion: local.rampart.dev/v1alpha1
kind: Process
metadata: {name: details-v1}
spec: {command: [bookinfo, details]}
---
apiVersion: local.rampart.dev/v1alpha1
kind: Process
metadata: {name: client}
spec: {command: [sleep, infinity]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ext-authz}
spec:
  selector: {matchLabels: {app: details}}
  action: CUSTOM
  provider: {name: opa}
  rules: [{to: [{operation: {paths: ["/details/*"]}}]}]
`)
	up := procs.Start(t, dir, "up", "rampartctl", "up", cfg, "--state-dir", filepath.Join(dir, "state"), "--bin", procs.BinDir(t),
		"--mesh-config", filepath.Join(dir, "meshconfig.yaml"), "--control-plane", procs.FreeAddr(t), "--monitoring-listen", procs.FreeAddr(t))
	up.WaitLog(t, "mesh is up", 90*time.Second)

	proxyURL, _ := url.Parse("http://127.0.40.1:15001")
	client := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(proxyURL)}, Timeout: 5 * time.Second}
	get := func(path, user string) (int, string) {
		req, _ := http.NewRequest(http.MethodGet, "http://details:9080"+path, nil)
		if user != "" {
			req.Header.Set("x-user", user)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	for _, tc := range []struct {
		path, user string
		want       int
	}{
		{"/details/0", "alice", 200},
		{"/details/0", "", 403},
		{"/details/0", "mallory", 403},
		{"/details/1", "alice", 403},
		{"/health", "", 200}, // the CUSTOM policy covers /details/* only
	} {
		if code, body := get(tc.path, tc.user); code != tc.want {
			t.Errorf("GET %s as %q: %d, want %d\n%s", tc.path, tc.user, code, tc.want, body)
		} else if code == 403 && !strings.Contains(body, "RBAC: access denied") {
			t.Errorf("GET %s as %q: a denial without Envoy's body: %q", tc.path, tc.user, body)
		}
	}
}
