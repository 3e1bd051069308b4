package e2e

import (
	"bufio"
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

// The sidecar takes its mTLS mode from PeerAuthentication in the bundle: a
// namespace-wide STRICT resets plaintext; switching the policy to PERMISSIVE
// lets plaintext through without a restart.
func TestSidecarPeerAuthenticationModes(t *testing.T) {
	m := startMesh(t)
	pa := filepath.Join(m.dir, "pa.yaml")
	bundle := filepath.Join(m.dir, "bundle")
	compile := func(mode string) {
		t.Helper()
		y := fmt.Sprintf("apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: foo}\nspec: {mtls: {mode: %s}}\n", mode)
		if err := os.WriteFile(pa, []byte(y), 0o644); err != nil {
			t.Fatal(err)
		}
		procs.Run(t, "rampartctl", "authz", "compile", "-f", pa, "--workload", "foo/httpbin", "--out", bundle)
	}
	compile("STRICT")
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "ok") }))
	defer app.Close()
	_, appPort, _ := net.SplitHostPort(strings.TrimPrefix(app.URL, "http://"))
	inboundAddr := procs.FreeAddr(t)
	procs.Start(t, m.dir, "sidecar-httpbin", "rampart-sidecar", "--control-plane", m.cp, "--root-cert", m.root,
		"--token-file", m.token(t, "foo", "httpbin"), "--inbound-listen", inboundAddr, "--app", "127.0.0.1:"+appPort, "--authz-bundle", bundle)
	procs.WaitTCP(t, inboundAddr, 20*time.Second)

	plaintext := func() error {
		c, err := net.Dial("tcp", inboundAddr)
		if err != nil {
			return err
		}
		defer c.Close()
		_, _ = io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			return err
		}
		if !strings.Contains(line, "200") {
			return fmt.Errorf("status line %q", line)
		}
		return nil
	}
	if err := plaintext(); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("plaintext under STRICT: %v, want a reset", err)
	}
	compile("PERMISSIVE")
	procs.Eventually(t, 15*time.Second, "plaintext accepted after the switch to PERMISSIVE", func() bool { return plaintext() == nil })
}
