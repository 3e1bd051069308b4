package e2e

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rampart-mesh/rampart/test/internal/procs"
)

// tlsClient is the workload whose sidecar serves the TLS port 8443 on its address.
const tlsClient = "127.0.33.1"

// tlsRouteConfig: two external TLS services on port 8443 (backends in the
// test process on loopback; %[1]d and %[2]d are their ports) and a
// VirtualService routing by SNI; %[3]s is where a.example.com goes.
const tlsRouteConfig = `
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext-a}
spec:
  hosts: [a.example.com]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{number: 8443, name: tls, protocol: TLS}]
  endpoints: [{address: 127.0.0.1, ports: {tls: %[1]d}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext-b}
spec:
  hosts: [b.example.com]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{number: 8443, name: tls, protocol: TLS}]
  endpoints: [{address: 127.0.0.1, ports: {tls: %[2]d}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: by-sni}
spec:
  hosts: [a.example.com, b.example.com, w.example.com]
  tls:
  - match: [{sniHosts: [a.example.com]}]
    route: [{destination: {host: %[3]s}}]
  - match: [{sniHosts: [b.example.com]}]
    route: [{destination: {host: b.example.com}}]
  - match: [{sniHosts: [w.example.com]}]
    route:
    - {destination: {host: a.example.com}, weight: 50}
    - {destination: {host: b.example.com}, weight: 50}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: client}
spec: {address: 127.0.33.1, labels: {app: client}, serviceAccount: client}
---
apiVersion: local.rampart.dev/v1alpha1
kind: Process
metadata: {name: client}
spec: {command: [sleep, infinity]}
`

// tlsBackend serves TLS with a certificate for name and greets with the name.
func tlsBackend(t *testing.T, name string) int {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name}, DNSNames: []string{name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { lis.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(10 * time.Second))
				_, _ = io.WriteString(c, name+"\n")
				_, _ = io.Copy(io.Discard, c)
			})
		}
	})
	return lis.Addr().(*net.TCPAddr).Port
}

// viaSidecar opens TLS with server name sni to the client's sidecar's TLS
// port and returns who answered: the greeting, checked against the certificate.
func viaSidecar(t *testing.T, sni string) (string, error) {
	t.Helper()
	d := &net.Dialer{Timeout: 5 * time.Second}
	c, err := tls.DialWithDialer(d, "tcp", net.JoinHostPort(tlsClient, "8443"),
		&tls.Config{ServerName: sni, InsecureSkipVerify: true}) //nolint:gosec // the test checks the certificate's name itself
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	g, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "", err
	}
	name := strings.TrimSpace(g)
	if cn := c.ConnectionState().PeerCertificates[0].Subject.CommonName; cn != name {
		return "", fmt.Errorf("greeting %q from a server whose certificate is for %q", name, cn)
	}
	return name, nil
}

// TestTLSRoutesBySNI runs rampartd and a client's sidecar as real processes:
// TLS connections to the sidecar's port 8443 reach the backend their SNI
// names through the VirtualService's tls routes, unknown names are refused,
// a weighted route spreads, and an edit of the VirtualService is live.
func TestTLSRoutesBySNI(t *testing.T) {
	if testing.Short() {
		t.Skip("e2e")
	}
	portA, portB := tlsBackend(t, "a.example.com"), tlsBackend(t, "b.example.com")
	dir := procs.ShortTempDir(t)
	cfg := filepath.Join(dir, "mesh")
	if err := os.MkdirAll(cfg, 0o755); err != nil {
		t.Fatal(err)
	}
	write := func(aTo string) {
		t.Helper()
		yaml := fmt.Sprintf(tlsRouteConfig, portA, portB, aTo)
		// Write and rename, so the watcher never reads half a file.
		tmp := filepath.Join(dir, "mesh.yaml.tmp")
		if err := os.WriteFile(tmp, []byte(yaml), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(cfg, "mesh.yaml")); err != nil {
			t.Fatal(err)
		}
	}
	write("a.example.com")
	up := procs.Start(t, dir, "up", "rampartctl", "up", cfg, "--state-dir", filepath.Join(dir, "state"), "--bin", procs.BinDir(t),
		"--control-plane", procs.FreeAddr(t), "--monitoring-listen", procs.FreeAddr(t))
	up.WaitLog(t, "mesh is up", 90*time.Second)
	procs.Eventually(t, 30*time.Second, "a.example.com answering through the sidecar", func() bool {
		got, _ := viaSidecar(t, "a.example.com")
		return got == "a.example.com"
	})

	for _, tc := range []struct{ sni, want string }{
		{"a.example.com", "a.example.com"},
		{"b.example.com", "b.example.com"},
		{"B.EXAMPLE.COM", "b.example.com"},
	} {
		if got, err := viaSidecar(t, tc.sni); err != nil || got != tc.want {
			t.Errorf("SNI %q reached %q (%v), want %q", tc.sni, got, err, tc.want)
		}
	}
	if got, err := viaSidecar(t, "c.example.com"); err == nil {
		t.Errorf("unknown SNI c.example.com reached %q, want the connection refused", got)
	}
	if got, err := viaSidecar(t, ""); err == nil {
		t.Errorf("a ClientHello without SNI reached %q, want the connection refused", got)
	}
	seen := map[string]int{}
	for range 20 {
		got, err := viaSidecar(t, "w.example.com")
		if err != nil {
			t.Fatalf("weighted route: %v", err)
		}
		seen[got]++
	}
	if seen["a.example.com"] == 0 || seen["b.example.com"] == 0 {
		t.Errorf("50/50 route over 20 connections: %v, want both backends", seen)
	}
	procs.Eventually(t, 10*time.Second, "an NR access line for the refused connections", func() bool {
		return strings.Contains(up.Output(), "sni=c.example.com flags=NR")
	})

	// Live edit: a.example.com now goes to b's backend; b is unchanged.
	write("b.example.com")
	procs.Eventually(t, 30*time.Second, "a.example.com rerouted to b's backend", func() bool {
		got, _ := viaSidecar(t, "a.example.com")
		return got == "b.example.com"
	})
	if got, err := viaSidecar(t, "b.example.com"); err != nil || got != "b.example.com" {
		t.Errorf("after the edit b.example.com reached %q (%v)", got, err)
	}
}
