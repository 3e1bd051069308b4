package e2e

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rampart-mesh/rampart/test/internal/procs"
)

// rampartd compiles each sidecar's policy from a watched directory and serves it
// over xDS: an edit takes effect live, a broken edit is refused with the old
// behaviour kept, and the sidecar keeps enforcing while rampartd is down.
func TestPolicyOverXDS(t *testing.T) {
	cfgDir := procs.ShortTempDir(t)
	policy := filepath.Join(cfgDir, "policies.yaml")
	write := func(path string) {
		t.Helper()
		if err := os.WriteFile(policy, []byte(fmt.Sprintf(inboundPolicies, path)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("/get*")
	m := startMesh(t, "--config-dir", cfgDir)

	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprintf(w, "app: %s", r.URL.Path) }))
	defer app.Close()
	inboundAddr := procs.FreeAddr(t)
	side := procs.Start(t, m.dir, "sidecar-httpbin", "rampart-sidecar", "--control-plane", m.cp, "--root-cert", m.root,
		"--token-file", m.token(t, "foo", "httpbin"), "--inbound-listen", inboundAddr, "--app", strings.TrimPrefix(app.URL, "http://"),
		"--labels", "app=httpbin")
	procs.WaitTCP(t, inboundAddr, 20*time.Second)

	sock, _ := m.sidecar(t, "bar", "sleep")
	status := statusVia(t, sock, inboundAddr)
	procs.Eventually(t, 10*time.Second, "the xDS bundle allows /get", func() bool { return status("/get") == 200 })
	if got := status("/admin"); got != 403 {
		t.Fatalf("/admin: %d, want 403", got)
	}
	m.rampartd.WaitLog(t, "proxy connected", 5*time.Second)
	synced := func() string {
		out := procs.Run(t, "rampartctl", "proxy-status", "--state-dir", m.state)
		for _, line := range strings.Split(out, "\n") {
			if strings.Contains(line, "spiffe://cluster.local/ns/foo/sa/httpbin") && strings.Contains(line, " SYNCED ") {
				return strings.Fields(line)[3] // the version sent and ACKed
			}
		}
		return ""
	}
	var v1 string
	procs.Eventually(t, 5*time.Second, "proxy-status shows the sidecar SYNCED", func() bool { v1 = synced(); return v1 != "" })
	if out := procs.Run(t, "rampartctl", "proxy-config", "foo/httpbin", "policy", "--state-dir", m.state); !strings.Contains(out, "acked true") || !strings.Contains(out, "# AuthorizationPolicy foo/allow-sleep (ALLOW)") {
		t.Fatalf("proxy-config policy:\n%s", out)
	}

	// A live edit: only /status is allowed now.
	edited := time.Now()
	write("/status*")
	procs.Eventually(t, 10*time.Second, "the edit denies /get", func() bool { return status("/get") == 403 })
	t.Logf("edit → enforced in %s", time.Since(edited).Round(10*time.Millisecond))
	if got := status("/status/200"); got != 200 {
		t.Fatalf("/status/200 after the edit: %d", got)
	}
	procs.Eventually(t, 5*time.Second, "proxy-status shows the sidecar SYNCED at a new version", func() bool {
		v := synced()
		return v != "" && v != v1
	})

	// A broken edit is refused; the last good policy stays.
	if err := os.WriteFile(policy, []byte("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: x, namespace: foo}\nspec: {rules: [{to: [{operation: {pathz: [\"/\"]}}]}]}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	m.rampartd.WaitLog(t, "configuration change refused", 10*time.Second)
	if got := status("/status/200"); got != 200 {
		t.Fatalf("after a refused edit: %d, want the old policy (200)", got)
	}

	// rampartd goes away: the sidecar keeps its last good policy.
	m.rampartd.Stop(t)
	time.Sleep(time.Second)
	if got, got2 := status("/status/200"), status("/get"); got != 200 || got2 != 403 {
		t.Fatalf("with rampartd down: /status/200 %d, /get %d; want 200 and 403", got, got2)
	}
	side.WaitLog(t, "xDS stream ended; keeping the last good configuration", 10*time.Second)

	// rampartd comes back and the sidecar reconnects and converges on its own.
	// (rampartd refuses to start on configuration that does not load, rather than
	// serve none, so the file is fixed first.)
	write("/status*")
	m.startCP(t)
	procs.Eventually(t, 20*time.Second, "the sidecar reconnects and is SYNCED again", func() bool { return synced() != "" })
	if got := status("/status/200"); got != 200 {
		t.Fatalf("after rampartd came back: %d", got)
	}
}
