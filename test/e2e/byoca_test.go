package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rampart-mesh/rampart/ca"
	"github.com/rampart-mesh/rampart/test/internal/procs"
)

// An operator brings an intermediate CA made with openssl: rampartd signs with it,
// sidecars trust the operator's root, and SVIDs carry the intermediate.
func TestBringYourOwnIntermediate(t *testing.T) {
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Skip("openssl is not installed")
	}
	pki := t.TempDir()
	run := func(args ...string) {
		t.Helper()
		cmd := exec.Command("openssl", args...)
		cmd.Dir = pki
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("openssl %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	ext := "[v3_ca]\nbasicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\n"
	if err := os.WriteFile(filepath.Join(pki, "ext.cnf"), []byte(ext), 0o644); err != nil {
		t.Fatal(err)
	}
	run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", "root.key", "-out", "root.pem",
		"-days", "30", "-subj", "/O=Example Corp/CN=Example Root", "-extensions", "v3_ca", "-config", "ext.cnf")
	run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", "inter.key", "-out", "inter.csr",
		"-subj", "/O=Example Corp/CN=Mesh Intermediate", "-config", "ext.cnf")
	run("x509", "-req", "-in", "inter.csr", "-CA", "root.pem", "-CAkey", "root.key", "-CAcreateserial", "-out", "inter.pem",
		"-days", "20", "-extfile", "ext.cnf", "-extensions", "v3_ca")

	m := startMesh(t, "--ca-cert", filepath.Join(pki, "inter.pem"), "--ca-key", filepath.Join(pki, "inter.key"), "--ca-chain", filepath.Join(pki, "root.pem"))
	rootPEM, err := os.ReadFile(filepath.Join(pki, "root.pem"))
	if err != nil {
		t.Fatal(err)
	}
	got, _ := ca.ParseCertsPEM([]byte(procs.Run(t, "rampartctl", "ca", "root", "--state-dir", m.state)))
	want, _ := ca.ParseCertsPEM(rootPEM)
	if len(got) != 1 || !got[0].Equal(want[0]) {
		t.Fatalf("rampartctl ca root does not print the operator's root")
	}
	sock, _ := m.sidecar(t, "default", "web")
	svid, err := source(t, sock).GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}
	if len(svid.Certificates) != 2 || svid.Certificates[1].Subject.CommonName != "Mesh Intermediate" {
		t.Fatalf("SVID chain has %d certificates; want the leaf and the operator's intermediate", len(svid.Certificates))
	}
	leaf := filepath.Join(pki, "leaf.pem")
	if err := os.WriteFile(leaf, ca.EncodeCertsPEM(svid.Certificates[:1]), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("openssl", "verify", "-CAfile", filepath.Join(pki, "root.pem"), "-untrusted", filepath.Join(pki, "inter.pem"), leaf).CombinedOutput()
	if err != nil || !strings.Contains(string(out), ": OK") {
		t.Fatalf("openssl verify: %v\n%s", err, out)
	}
	status := procs.Run(t, "rampartctl", "ca", "status", "--state-dir", m.state)
	if !strings.Contains(status, "operator-supplied") || !strings.Contains(status, "Example Root") {
		t.Errorf("ca status does not show the operator's CA:\n%s", status)
	}
	if _, err := procs.RunErr(t, "rampartctl", "ca", "rotate", "--state-dir", m.state); err == nil || !strings.Contains(err.Error(), "operator-supplied") {
		t.Errorf("ca rotate with an operator CA: err = %v", err)
	}
}
