package e2e

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rampart-mesh/rampart/test/internal/procs"
)

const inboundPolicies = `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: foo}
spec:
  action: DENY
  rules:
  - to: [{operation: {paths: ["/admin*"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-sleep, namespace: foo}
spec:
  selector: {matchLabels: {app: httpbin}}
  rules:
  - from: [{source: {principals: ["cluster.local/ns/bar/sa/sleep"]}}]
    to: [{operation: {methods: ["GET"], paths: ["%s"]}}]
`

// A real sidecar process in front of an app: mTLS from another workload's
// identity (go-spiffe via its own sidecar), authorization from compiled Istio
// policy, 403s in the decision log, plaintext reset on a STRICT port, and a
// policy edit taking effect without a restart.
func TestSidecarInbound(t *testing.T) {
	m := startMesh(t)
	policyFile := filepath.Join(m.dir, "policies.yaml")
	bundle := filepath.Join(m.dir, "bundle")
	compileTo := func(path string) {
		t.Helper()
		if err := os.WriteFile(policyFile, []byte(fmt.Sprintf(inboundPolicies, path)), 0o644); err != nil {
			t.Fatal(err)
		}
		procs.Run(t, "rampartctl", "authz", "compile", "-f", policyFile, "--workload", "foo/httpbin", "--labels", "app=httpbin", "--out", bundle)
	}
	compileTo("/get*")

	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "app: %s xfcc=%s", r.URL.Path, r.Header.Get("x-forwarded-client-cert"))
	}))
	defer app.Close()
	inboundAddr := procs.FreeAddr(t)
	logPath := filepath.Join(m.dir, "decisions.log")
	side := procs.Start(t, m.dir, "sidecar-httpbin", "rampart-sidecar", "--control-plane", m.cp, "--root-cert", m.root,
		"--token-file", m.token(t, "foo", "httpbin"), "--inbound-listen", inboundAddr, "--app", strings.TrimPrefix(app.URL, "http://"),
		"--mtls-mode", "STRICT", "--authz-bundle", bundle, "--labels", "app=httpbin", "--decision-log", logPath)
	procs.WaitTCP(t, inboundAddr, 20*time.Second)

	sock, _ := m.sidecar(t, "bar", "sleep")
	src := source(t, sock)
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: meshPeerTLS(src, td), DisableKeepAlives: true}}
	get := func(path string) (int, string, string) {
		t.Helper()
		resp, err := client.Get("https://" + inboundAddr + path)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body), resp.Header.Get("x-rampart-decision-id")
	}

	if code, body, _ := get("/get"); code != 200 || !strings.Contains(body, "app: /get") || !strings.Contains(body, "URI=spiffe://cluster.local/ns/bar/sa/sleep") {
		t.Fatalf("allowed request: %d %q", code, body)
	}
	code, body, id := get("/admin/users")
	if code != 403 || body != "RBAC: access denied" || id == "" {
		t.Fatalf("denied request: %d %q decision id %q", code, body, id)
	}

	// Plaintext to a STRICT port is reset.
	c, err := net.Dial("tcp", inboundAddr)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.WriteString(c, "GET /get HTTP/1.1\r\nHost: x\r\n\r\n")
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := bufio.NewReader(c).ReadString('\n'); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("plaintext to STRICT: %v, want a reset", err)
	}
	c.Close()

	// A policy edit (allow only /status now) is picked up without a restart.
	compileTo("/status*")
	procs.Eventually(t, 15*time.Second, "the new bundle denies /get", func() bool {
		code, _, _ := get("/get")
		return code == 403
	})
	if code, _, _ := get("/status/200"); code != 200 {
		t.Fatalf("/status/200 after the edit: %d", code)
	}

	// The denial is in the decision log under its id, and the chain verifies.
	side.Stop(t)
	data, err := os.ReadFile(logPath)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		var ev struct {
			DecisionID string `json:"decision_id"`
			Rampart    struct {
				Policy  string `json:"policy"`
				Allowed bool   `json:"allowed"`
			} `json:"rampart"`
		}
		if err := json.Unmarshal([]byte(line), &ev); err != nil {
			t.Fatalf("decision log line: %v", err)
		}
		if ev.DecisionID == id {
			found = !ev.Rampart.Allowed && ev.Rampart.Policy == "foo/deny-admin"
		}
	}
	if !found {
		t.Fatalf("decision %s (DENY foo/deny-admin) is not in the decision log:\n%s", id, data)
	}
	if out := procs.Run(t, "rampartctl", "audit", "verify", logPath); !strings.Contains(out, "chain:   intact") {
		t.Fatalf("audit verify:\n%s", out)
	}
}
