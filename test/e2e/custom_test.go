package e2e

import (
	"context"
	"io"
	"net"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"net/http"
	"net/http/httptest"
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

allow if {
	input.attributes.request.http.method == "POST"
	input.parsed_body.user == "alice"
}
`)
	// The mesh config names its own trust domain and root namespace: up
	// starts rampartd's CA with them (rampartd refuses a mesh config that
	// disagrees with its CA).
	write(filepath.Join(dir, "meshconfig.yaml"), "trustDomain: example.org\nrootNamespace: mesh-root\nextensionProviders:\n- name: opa\n  rampartRego: {bundle: "+opa+", includeRequestBodyInCheck: {maxRequestBytes: 64}}\n")
	write(filepath.Join(cfg, "mesh.yaml"), customMesh("opa", "127.0.40"))
	// The details sidecar's decision log masks x-user; the client's sidecar,
	// which keeps no decision log, must not get the flag.
	write(filepath.Join(dir, "log.rego"), "package system.log\n\nmask contains \"/input/attributes/request/http/headers/x-user\"\n")
	up := procs.Start(t, dir, "up", "rampartctl", "up", cfg, "--state-dir", filepath.Join(dir, "state"), "--bin", procs.BinDir(t),
		"--mesh-config", filepath.Join(dir, "meshconfig.yaml"), "--control-plane", procs.FreeAddr(t), "--monitoring-listen", procs.FreeAddr(t),
		"--decision-log-arg=--decision-log-policy="+filepath.Join(dir, "log.rego"))
	up.WaitLog(t, "mesh is up", 90*time.Second)
	if st := procs.Run(t, "rampartctl", "proxy-status", "--state-dir", filepath.Join(dir, "state")); !strings.Contains(st, "spiffe://example.org/ns/default/sa/details") {
		t.Errorf("proxy-status shows no identity in the mesh config's trust domain:\n%s", st)
	}
	checkCustom(t, "127.0.40.1", "x-user", "alice")
	procs.Eventually(t, 10*time.Second, "mallory's denial in the details decision log, x-user masked", func() bool {
		data, _ := os.ReadFile(filepath.Join(dir, "state", "audit", "default.details-v1.log"))
		if strings.Contains(string(data), "mallory") {
			t.Fatalf("the decision log holds the masked x-user value:\n%s", data)
		}
		return strings.Contains(string(data), "/input/attributes/request/http/headers/x-user")
	})

	// The bundle reads the JSON body (includeRequestBodyInCheck): alice's
	// POST passes authorization (details answers GETs only: 405), mallory's
	// is denied, and a body over maxRequestBytes is a 413.
	proxyURL, _ := url.Parse("http://127.0.40.1:15001")
	client := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(proxyURL)}, Timeout: 5 * time.Second}
	for _, tc := range []struct {
		body string
		want int
	}{
		{`{"user": "alice"}`, 405},
		{`{"user": "mallory"}`, 403},
		{`{"user": "alice", "pad": "` + strings.Repeat("x", 64) + `"}`, 413},
	} {
		resp, err := client.Post("http://details:9080/details/0", "application/json", strings.NewReader(tc.body))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("POST %s: %d, want %d\n%s", tc.body, resp.StatusCode, tc.want, b)
		}
	}
}

// An Istio envoyExtAuthzGrpc provider: the sidecar asks a real ext_authz v3
// gRPC server (here a test one allowing x-user: carol).
func TestCustomExtAuthzGRPCInSidecar(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a mesh")
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	authv3.RegisterAuthorizationServer(gs, carolOnly{})
	go func() { _ = gs.Serve(lis) }()
	defer gs.Stop()
	host, port, _ := net.SplitHostPort(lis.Addr().String())
	dir := procs.ShortTempDir(t)
	cfg := filepath.Join(dir, "mesh")
	if err := os.MkdirAll(cfg, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "meshconfig.yaml"), []byte("extensionProviders:\n- name: ext\n  envoyExtAuthzGrpc: {service: \""+host+"\", port: "+port+", timeout: 2s}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(cfg, "mesh.yaml"), []byte(customMesh("ext", "127.0.41")), 0o644); err != nil {
		t.Fatal(err)
	}
	up := procs.Start(t, dir, "up", "rampartctl", "up", cfg, "--state-dir", filepath.Join(dir, "state"), "--bin", procs.BinDir(t),
		"--mesh-config", filepath.Join(dir, "meshconfig.yaml"), "--control-plane", procs.FreeAddr(t), "--monitoring-listen", procs.FreeAddr(t))
	up.WaitLog(t, "mesh is up", 90*time.Second)
	checkCustom(t, "127.0.41.1", "x-user", "carol")
}

// An Istio envoyExtAuthzHttp provider, configured as the istio.io
// authz-custom task does (pathPrefix, includeRequestHeadersInCheck,
// headersToUpstreamOnAllow, headersToDownstreamOnDeny): the sidecar asks a
// real HTTP ext_authz server, here one allowing x-user: dave on /details/0.
func TestCustomExtAuthzHTTPInSidecar(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a mesh")
	}
	authzSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("x-user") == "dave" && r.URL.Path == "/check/details/0" && r.Header.Get("x-api-key") == "" {
			w.Header().Set("x-ext-authz-check-result", "allowed")
			w.WriteHeader(http.StatusOK)
			return
		}
		w.Header().Set("x-ext-authz-check-result", "denied")
		w.WriteHeader(http.StatusForbidden)
		io.WriteString(w, "RBAC: access denied") // as checkCustom expects of a denial
	}))
	defer authzSrv.Close()
	host, port, _ := net.SplitHostPort(strings.TrimPrefix(authzSrv.URL, "http://"))
	dir := procs.ShortTempDir(t)
	cfg := filepath.Join(dir, "mesh")
	if err := os.MkdirAll(cfg, 0o755); err != nil {
		t.Fatal(err)
	}
	meshConfig := "extensionProviders:\n- name: ext\n  envoyExtAuthzHttp:\n    service: \"" + host + "\"\n    port: " + port + "\n    pathPrefix: /check\n" +
		"    includeRequestHeadersInCheck: [x-user]\n    headersToUpstreamOnAllow: [x-ext-authz-check-result]\n    headersToDownstreamOnDeny: [x-ext-authz-check-result]\n"
	if err := os.WriteFile(filepath.Join(dir, "meshconfig.yaml"), []byte(meshConfig), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(cfg, "mesh.yaml"), []byte(customMesh("ext", "127.0.42")), 0o644); err != nil {
		t.Fatal(err)
	}
	up := procs.Start(t, dir, "up", "rampartctl", "up", cfg, "--state-dir", filepath.Join(dir, "state"), "--bin", procs.BinDir(t),
		"--mesh-config", filepath.Join(dir, "meshconfig.yaml"), "--control-plane", procs.FreeAddr(t), "--monitoring-listen", procs.FreeAddr(t))
	up.WaitLog(t, "mesh is up", 90*time.Second)
	checkCustom(t, "127.0.42.1", "x-user", "dave")
	// Only the headers includeRequestHeadersInCheck names go to the server:
	// an x-api-key it would refuse never reaches it.
	proxyURL, _ := url.Parse("http://127.0.42.1:15001")
	client := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(proxyURL)}, Timeout: 5 * time.Second}
	req, _ := http.NewRequest(http.MethodGet, "http://details:9080/details/0", nil)
	req.Header.Set("x-user", "dave")
	req.Header.Set("x-api-key", "k")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("x-api-key, which the provider is not sent: %d, want 200", resp.StatusCode)
	}
	req.Header.Set("x-user", "mallory")
	if resp, err = client.Do(req); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 403 || resp.Header.Get("x-ext-authz-check-result") != "denied" {
		t.Errorf("mallory: %d, x-ext-authz-check-result %q; want 403 with the server's header (headersToDownstreamOnDeny)", resp.StatusCode, resp.Header.Get("x-ext-authz-check-result"))
	}
}

type carolOnly struct {
	authv3.UnimplementedAuthorizationServer
}

func (carolOnly) Check(_ context.Context, r *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	h := r.GetAttributes().GetRequest().GetHttp()
	if h.GetHeaders()["x-user"] == "carol" && h.GetPath() == "/details/0" {
		return &authv3.CheckResponse{Status: &rpcstatus.Status{Code: int32(codes.OK)}}, nil
	}
	return &authv3.CheckResponse{Status: &rpcstatus.Status{Code: int32(codes.PermissionDenied)}}, nil
}

// customMesh is a details workload under a CUSTOM policy for provider, and a
// client, on the loopback prefix net (net.2 and net.1).
func customMesh(provider, net string) string {
	return `apiVersion: networking.istio.io/v1
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
spec: {address: ` + net + `.2, labels: {app: details}, serviceAccount: details}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: client}
spec: {address: ` + net + `.1, labels: {app: client}, serviceAccount: client}
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
  provider: {name: ` + provider + `}
  rules: [{to: [{operation: {paths: ["/details/*"]}}]}]
`
}

// checkCustom asks details through the client's sidecar: only user on
// /details/0 is allowed by the provider; /health is outside the CUSTOM rule.
func checkCustom(t *testing.T, clientIP, header, user string) {
	t.Helper()
	proxyURL, _ := url.Parse("http://" + clientIP + ":15001")
	client := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(proxyURL)}, Timeout: 5 * time.Second}
	get := func(path, who string) (int, string) {
		req, _ := http.NewRequest(http.MethodGet, "http://details:9080"+path, nil)
		if who != "" {
			req.Header.Set(header, who)
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
		{"/details/0", user, 200},
		{"/details/0", "", 403},
		{"/details/0", "mallory", 403},
		{"/details/1", user, 403},
		{"/health", "", 200}, // the CUSTOM policy covers /details/* only
	} {
		if code, body := get(tc.path, tc.user); code != tc.want {
			t.Errorf("GET %s as %q: %d, want %d\n%s", tc.path, tc.user, code, tc.want, body)
		} else if code == 403 && !strings.Contains(body, "RBAC: access denied") {
			t.Errorf("GET %s as %q: a denial without Envoy's body: %q", tc.path, tc.user, body)
		}
	}
}
