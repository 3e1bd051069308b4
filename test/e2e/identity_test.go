package e2e

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rampart-mesh/rampart/ca"
	"github.com/rampart-mesh/rampart/test/internal/procs"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

var td = spiffeid.RequireTrustDomainFromString("cluster.local")

// Two apps, each with go-spiffe's X509Source on its own sidecar's socket, talk
// mTLS to each other across three rotations of a short-lived SVID; the SVID
// verifies with openssl and go-spiffe.
func TestTwoAppsMTLSAcrossRotations(t *testing.T) {
	m := startMesh(t, "--svid-ttl", "5s", "--bundle-refresh-hint", "2s")
	sockA, _ := m.sidecar(t, "default", "web")
	sockB, _ := m.sidecar(t, "default", "api")
	web, api := source(t, sockA), source(t, sockB)

	svid, err := web.GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}
	if got := svid.ID.String(); got != "spiffe://cluster.local/ns/default/sa/web" {
		t.Fatalf("web's SPIFFE ID = %s", got)
	}
	checkWithOpenSSL(t, m, svid)
	bundle, err := spiffebundle.Parse(td, []byte(procs.Run(t, "rampartctl", "ca", "bundle", "--state-dir", m.state)))
	if err != nil {
		t.Fatalf("rampartctl ca bundle: %v", err)
	}
	if _, _, err := x509svid.Verify(svid.Certificates, bundle); err != nil {
		t.Fatalf("x509svid.Verify against 'rampartctl ca bundle': %v", err)
	}

	tr := newTraffic(t, api, web, td)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { tr.run(ctx, 50*time.Millisecond, "spiffe://cluster.local/ns/default/sa/web"); close(done) }()

	seen := map[string]map[string]bool{"web": {}, "api": {}}
	procs.Eventually(t, 40*time.Second, "three rotations on both sides", func() bool {
		seen["web"][serialOf(t, web)] = true
		seen["api"][serialOf(t, api)] = true
		return len(seen["web"]) >= 4 && len(seen["api"]) >= 4
	})
	cancel()
	<-done
	tr.check(t, 50)
}

// checkWithOpenSSL writes the SVID chain and root to files and runs the openssl
// commands an operator would.
func checkWithOpenSSL(t *testing.T, m *mesh, svid *x509svid.SVID) {
	t.Helper()
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Log("openssl not installed; skipping the openssl checks")
		return
	}
	leaf := filepath.Join(m.dir, "leaf.pem")
	if err := os.WriteFile(leaf, ca.EncodeCertsPEM(svid.Certificates[:1]), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("openssl", "verify", "-CAfile", m.root, leaf).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "OK") {
		t.Fatalf("openssl verify: %v\n%s", err, out)
	}
	text, err := exec.Command("openssl", "x509", "-in", leaf, "-noout", "-text").CombinedOutput()
	if err != nil {
		t.Fatalf("openssl x509: %v\n%s", err, text)
	}
	for _, want := range []string{
		"URI:spiffe://cluster.local/ns/default/sa/web",
		"CA:FALSE",
		"X509v3 Key Usage: critical",
		"Digital Signature",
		"TLS Web Server Authentication, TLS Web Client Authentication",
	} {
		if !strings.Contains(string(text), want) {
			t.Errorf("openssl x509 -text lacks %q:\n%s", want, text)
		}
	}
	if strings.Contains(string(text), "Key Encipherment") {
		t.Errorf("an ECDSA SVID must not have keyEncipherment:\n%s", text)
	}
}

// The CA goes away for longer than a renewal interval: sidecars keep serving
// their SVID and mTLS keeps working; when it comes back (restarted on the same
// state), they renew by themselves, the root is the same, and SVIDs issued before
// the restart still verify.
func TestCAOutageAndRestart(t *testing.T) {
	m := startMesh(t, "--svid-ttl", "16s", "--bundle-refresh-hint", "2s")
	sockA, sideA := m.sidecar(t, "default", "web")
	sockB, _ := m.sidecar(t, "default", "api")
	web, api := source(t, sockA), source(t, sockB)
	rootBefore := procs.Run(t, "rampartctl", "ca", "root", "--state-dir", m.state)
	before, _ := web.GetX509SVID()
	beforeSerial := serialOf(t, web)

	tr := newTraffic(t, api, web, td)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan struct{})
	go func() { tr.run(ctx, 100*time.Millisecond, "spiffe://cluster.local/ns/default/sa/web"); close(done) }()

	m.rampartd.Stop(t)
	// Renewal is due at about 8 s; stay down past it.
	sideA.WaitLog(t, "X.509-SVID renewal failed; keeping the last good SVID", 15*time.Second)
	if got := serialOf(t, web); got != beforeSerial {
		// A renewal that raced the stop is fine only if it happened before the stop.
		t.Logf("web renewed just before the CA stopped (serial %s → %s)", beforeSerial, got)
	}
	served := serialOf(t, web)
	time.Sleep(time.Second)
	if serialOf(t, web) != served {
		t.Fatal("the SVID changed while the CA was down")
	}

	m.startCP(t)
	procs.Eventually(t, 15*time.Second, "web renews after the CA returns", func() bool { return serialOf(t, web) != served })
	cancel()
	<-done
	tr.check(t, 20)

	if after := procs.Run(t, "rampartctl", "ca", "root", "--state-dir", m.state); after != rootBefore {
		t.Fatalf("the root changed across a restart:\nbefore %s\nafter %s", rootBefore, after)
	}
	bundle, err := spiffebundle.Parse(td, []byte(procs.Run(t, "rampartctl", "ca", "bundle", "--state-dir", m.state)))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := x509svid.Verify(before.Certificates, bundle, x509svid.WithTime(before.Certificates[0].NotAfter.Add(-time.Second))); err != nil {
		t.Fatalf("an SVID issued before the restart does not verify after it: %v", err)
	}
}

// A root rotation runs through all its phases while two apps exchange requests,
// each on a fresh connection (a handshake per request) and on a kept one: not one
// fails, and at the end both SVIDs chain to the new root, the only one left.
func TestRootRotationUnderTraffic(t *testing.T) {
	m := startMesh(t, "--svid-ttl", "6s", "--bundle-refresh-hint", "1s", "--rotation-propagation", "3s",
		"--jwt-svid-ttl", "2s", "--rotation-retire-margin", "2s")
	sockA, _ := m.sidecar(t, "default", "web")
	sockB, _ := m.sidecar(t, "default", "api")
	web, api := source(t, sockA), source(t, sockB)

	tr := newTraffic(t, api, web, td)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan struct{})
	go func() { tr.run(ctx, 20*time.Millisecond, "spiffe://cluster.local/ns/default/sa/web"); close(done) }()
	time.Sleep(500 * time.Millisecond)

	out := procs.Run(t, "rampartctl", "ca", "rotate", "--state-dir", m.state)
	if !strings.Contains(out, "Prepared") {
		t.Fatalf("ca rotate output lacks the Prepared phase:\n%s", out)
	}
	if _, err := procs.RunErr(t, "rampartctl", "ca", "rotate", "--state-dir", m.state); err == nil || !strings.Contains(err.Error(), "already in progress") {
		t.Fatalf("a second rotate during a rotation: err = %v, want 'already in progress'", err)
	}
	phases := map[string]bool{}
	var st ca.Status
	procs.Eventually(t, 40*time.Second, "the rotation completes (phase Idle, generation 2 active)", func() bool {
		if err := json.Unmarshal([]byte(procs.Run(t, "rampartctl", "ca", "status", "--state-dir", m.state, "-o", "json")), &st); err != nil {
			t.Fatal(err)
		}
		phases[st.Phase] = true
		return st.Phase == ca.PhaseIdle && len(st.Roots) == 1 && st.Roots[0].Generation == 2
	})
	if !phases[ca.PhaseSwitched] {
		t.Errorf("never saw the Switched phase; saw %v", phases)
	}
	newRoot := rootPEM(t, m)
	procs.Eventually(t, 20*time.Second, "both apps hold SVIDs from the new root", func() bool {
		return chainsTo(t, web, newRoot) && chainsTo(t, api, newRoot)
	})
	time.Sleep(time.Second) // traffic after the old root is gone
	cancel()
	<-done
	tr.check(t, 200)
}

func rootPEM(t *testing.T, m *mesh) *x509.Certificate {
	t.Helper()
	roots, err := ca.ParseCertsPEM([]byte(procs.Run(t, "rampartctl", "ca", "root", "--state-dir", m.state)))
	if err != nil || len(roots) != 1 {
		t.Fatalf("ca root: %d roots, %v", len(roots), err)
	}
	return roots[0]
}

func chainsTo(t *testing.T, src x509svid.Source, root *x509.Certificate) bool {
	s, err := src.GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}
	return s.Certificates[len(s.Certificates)-1].CheckSignatureFrom(root) == nil
}

// Credentials that must not work, seen the way an operator sees them: the
// sidecar's log says why and no Workload API socket appears.
func TestRejectedTokens(t *testing.T) {
	m := startMesh(t)
	used := m.token(t, "default", "web")
	expired := m.token(t, "default", "web", "--ttl", "1s")
	unknown := filepath.Join(m.dir, "unknown.token")
	if err := os.WriteFile(unknown, []byte("rampart-join.ZGVmYXVsdC93ZWI.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// Consume the first token.
	okSock := filepath.Join(m.dir, "ok.sock")
	procs.Start(t, m.dir, "sidecar-ok", "rampart-sidecar", "--control-plane", m.cp, "--root-cert", m.root, "--token-file", used, "--workload-api-socket", okSock)
	procs.Eventually(t, 20*time.Second, "first sidecar ready", func() bool { _, err := os.Stat(okSock); return err == nil })
	time.Sleep(1100 * time.Millisecond) // let the short token expire

	for _, tc := range []struct{ name, token, want string }{
		{"reused", used, "join token already used"},
		{"expired", expired, "join token expired"},
		{"unknown", unknown, "unknown join token"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sock := filepath.Join(m.dir, tc.name+".sock")
			p := procs.Start(t, m.dir, "sidecar-"+tc.name, "rampart-sidecar", "--control-plane", m.cp, "--root-cert", m.root, "--token-file", tc.token, "--workload-api-socket", sock)
			p.WaitLog(t, tc.want, 15*time.Second)
			m.rampartd.WaitLog(t, tc.want, 5*time.Second)
			if _, err := os.Stat(sock); err == nil {
				t.Fatal("a sidecar with a rejected token opened its Workload API socket")
			}
		})
	}
}

// A sidecar that joined with a single-use token is killed (a crash: no clean
// shutdown) and started again with the same token file and --data-dir: it
// serves an SVID for its identity again, renewed with the one it kept. Without
// a data dir the same token is refused as used.
func TestSidecarRestartRejoinsWithDataDir(t *testing.T) {
	m := startMesh(t)
	tok := m.token(t, "default", "web") // single use, the default
	dataDir := filepath.Join(m.dir, "web-data")
	sock := filepath.Join(m.dir, "web.sock")
	args := []string{"--control-plane", m.cp, "--root-cert", m.root, "--token-file", tok, "--data-dir", dataDir, "--workload-api-socket", sock}

	first := procs.Start(t, m.dir, "sidecar-web", "rampart-sidecar", args...)
	first.WaitLog(t, "workload API serving", 20*time.Second)
	before := fetchSVID(t, sock)
	if err := first.Cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	procs.Eventually(t, 10*time.Second, "the killed sidecar exits", first.Exited)
	for _, name := range []string{"svid.pem", "bundle.json"} {
		fi, err := os.Stat(filepath.Join(dataDir, name))
		if err != nil {
			t.Fatalf("the data dir after the kill: %v", err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %04o, want 0600", name, fi.Mode().Perm())
		}
	}

	// Control: the token is spent, so a sidecar without the data dir cannot join.
	noData := procs.Start(t, m.dir, "sidecar-web-no-data", "rampart-sidecar",
		"--control-plane", m.cp, "--root-cert", m.root, "--token-file", tok, "--workload-api-socket", filepath.Join(m.dir, "nodata.sock"))
	noData.WaitLog(t, "join token already used", 15*time.Second)
	noData.Stop(t)

	restarted := procs.Start(t, m.dir, "sidecar-web-restarted", "rampart-sidecar", args...)
	restarted.WaitLog(t, "X.509-SVID restored", 20*time.Second)
	restarted.WaitLog(t, "X.509-SVID rotated", 20*time.Second) // renewed with the kept SVID
	restarted.WaitLog(t, "workload API serving", 20*time.Second)
	after := fetchSVID(t, sock)
	if after.ID.String() != "spiffe://cluster.local/ns/default/sa/web" {
		t.Errorf("after the restart the sidecar serves %s", after.ID)
	}
	bundle, err := spiffebundle.Parse(td, []byte(procs.Run(t, "rampartctl", "ca", "bundle", "--state-dir", m.state)))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := x509svid.Verify(after.Certificates, bundle); err != nil {
		t.Errorf("the SVID served after the restart does not verify against 'rampartctl ca bundle': %v", err)
	}
	if after.Certificates[0].SerialNumber.Cmp(before.Certificates[0].SerialNumber) == 0 {
		t.Error("the restarted sidecar serves the SVID from before the kill, not a renewed one")
	}
	if out := restarted.Output(); strings.Contains(out, "already used") {
		t.Errorf("the restarted sidecar presented its spent token:\n%s", out)
	}
}

// fetchSVID is what an app does once: read its X.509-SVID from the Workload API.
func fetchSVID(t *testing.T, sock string) *x509svid.SVID {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	svid, err := workloadapi.FetchX509SVID(ctx, workloadapi.WithAddr("unix://"+sock))
	if err != nil {
		t.Fatalf("FetchX509SVID(%s): %v", sock, err)
	}
	return svid
}
