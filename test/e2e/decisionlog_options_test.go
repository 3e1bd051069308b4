package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rampart-mesh/rampart/test/internal/procs"
)

// The decision log's options on a real sidecar: an OPA "package system.log"
// policy masks a header and drops one kind of event, the file rotates at the
// size given, and `rampartctl audit verify` follows the chain across the
// rotated files. A policy file the sidecar cannot use stops it with an error
// that names the file.
func TestSidecarDecisionLogOptions(t *testing.T) {
	m := startMesh(t)
	policyFile := filepath.Join(m.dir, "policies.yaml")
	if err := os.WriteFile(policyFile, []byte(fmt.Sprintf(inboundPolicies, "/get*")), 0o644); err != nil {
		t.Fatal(err)
	}
	bundle := filepath.Join(m.dir, "bundle")
	procs.Run(t, "rampartctl", "authz", "compile", "-f", policyFile, "--workload", "foo/httpbin", "--labels", "app=httpbin", "--out", bundle)
	logPolicy := filepath.Join(m.dir, "log.rego")
	if err := os.WriteFile(logPolicy, []byte(`package system.log

mask contains "/input/attributes/request/http/headers/x-secret"

drop if input.input.attributes.request.http.path == "/admin/quiet"
`), 0o644); err != nil {
		t.Fatal(err)
	}
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	defer app.Close()
	args := func(inbound, logPath, policy string) []string {
		return []string{"--control-plane", m.cp, "--root-cert", m.root,
			"--token-file", m.token(t, "foo", "httpbin"), "--inbound-listen", inbound, "--app", strings.TrimPrefix(app.URL, "http://"),
			"--mtls-mode", "STRICT", "--authz-bundle", bundle, "--labels", "app=httpbin", "--decision-log", logPath,
			"--decision-log-policy", policy, "--decision-log-max-size", "4Ki", "--decision-log-max-files", "20", "--decision-log-lossless",
			"--metrics-listen", ""}
	}

	// A policy in the wrong package is refused at start, naming its file.
	bad := filepath.Join(m.dir, "bad.rego")
	if err := os.WriteFile(bad, []byte("package envoy.authz\n\nmask contains \"/input\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := procs.RunErr(t, "rampart-sidecar", args(procs.FreeAddr(t), filepath.Join(m.dir, "bad.log"), bad)...)
	if err == nil || !strings.Contains(out+err.Error(), bad+": package is data.envoy.authz, want system.log") {
		t.Fatalf("a decision-log policy in package envoy.authz: err %v, output:\n%s", err, out)
	}

	inboundAddr := procs.FreeAddr(t)
	logPath := filepath.Join(m.dir, "decisions.log")
	side := procs.Start(t, m.dir, "sidecar-httpbin", "rampart-sidecar", args(inboundAddr, logPath, logPolicy)...)
	procs.WaitTCP(t, inboundAddr, 20*time.Second)
	sock, _ := m.sidecar(t, "bar", "sleep")
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: meshPeerTLS(source(t, sock), td)}}
	get := func(path string) string {
		t.Helper()
		req, _ := http.NewRequest("GET", "https://"+inboundAddr+path, nil)
		req.Header.Set("x-secret", "hunter2")
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		defer resp.Body.Close()
		io.Copy(io.Discard, resp.Body)
		if resp.StatusCode != 403 {
			t.Fatalf("GET %s: %d, want 403", path, resp.StatusCode)
		}
		return resp.Header.Get("x-rampart-decision-id")
	}
	quiet := get("/admin/quiet")
	var loud []string
	for i := range 12 {
		loud = append(loud, get(fmt.Sprintf("/admin/users/%d", i)))
	}
	side.Stop(t)

	// Every file, oldest first: LOG.N ... LOG.1, LOG.
	files := []string{logPath}
	for i := 1; ; i++ {
		p := fmt.Sprintf("%s.%d", logPath, i)
		if _, err := os.Stat(p); err != nil {
			break
		}
		files = append([]string{p}, files...)
	}
	if len(files) < 3 {
		t.Fatalf("%d files after 12 logged denials with --decision-log-max-size 4Ki; want the log rotated", len(files))
	}
	seen := map[string]bool{}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if info, _ := os.Stat(f); f != logPath && info.Size() > 4096 && strings.Count(string(data), "\n") > 1 {
			t.Errorf("%s: %d bytes in %d records, past --decision-log-max-size 4Ki", f, info.Size(), strings.Count(string(data), "\n"))
		}
		if strings.Contains(string(data), "hunter2") {
			t.Errorf("%s holds the masked header's value", f)
		}
		for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
			var ev struct {
				DecisionID string   `json:"decision_id"`
				Erased     []string `json:"erased"`
			}
			if err := json.Unmarshal([]byte(line), &ev); err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			seen[ev.DecisionID] = true
			if !strings.Contains(strings.Join(ev.Erased, " "), "/input/attributes/request/http/headers/x-secret") {
				t.Errorf("event %s: erased %v, want the x-secret header listed", ev.DecisionID, ev.Erased)
			}
		}
	}
	if seen[quiet] {
		t.Errorf("the /admin/quiet denial %s was logged; the policy drops it", quiet)
	}
	for _, id := range loud {
		if !seen[id] {
			t.Errorf("denial %s is not in any of %v", id, files)
		}
	}
	out = procs.Run(t, "rampartctl", "audit", "verify", logPath)
	if !strings.Contains(out, "chain:   intact") || !strings.Contains(out, "records: 12 verified") {
		t.Fatalf("audit verify across %d files:\n%s", len(files), out)
	}
}
