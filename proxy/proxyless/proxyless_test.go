package proxyless

import (
	"crypto/tls"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/rampart-mesh/rampart/authz"
	"github.com/rampart-mesh/rampart/ca"
	"github.com/rampart-mesh/rampart/ca/catest"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

func TestMain(m *testing.M) { catest.MainWithLeakCheck(m) }

// source is an agent stand-in that publishes SVIDs a real CA issued.
type source struct {
	mu      sync.Mutex
	svid    *x509svid.SVID
	bundle  *x509bundle.Bundle
	ready   chan struct{}
	changed chan struct{}
}

func (s *source) publish(svid *x509svid.SVID, b *x509bundle.Bundle) {
	s.mu.Lock()
	defer s.mu.Unlock()
	first := s.svid == nil
	s.svid, s.bundle = svid, b
	close(s.changed)
	s.changed = make(chan struct{})
	if first {
		close(s.ready)
	}
}

func (s *source) GetX509SVID() (*x509svid.SVID, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.svid, nil
}

func (s *source) GetX509BundleForTrustDomain(spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.bundle, nil
}
func (s *source) Ready() <-chan struct{} { return s.ready }
func (s *source) Updated() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.changed
}
func (s *source) TrustDomain() spiffeid.TrustDomain {
	return spiffeid.RequireTrustDomainFromString("cluster.local")
}

func TestWriterFilesAndBootstrap(t *testing.T) {
	a := catest.Authority(t)
	src := &source{ready: make(chan struct{}), changed: make(chan struct{})}
	dir := t.TempDir()
	certs, boot := filepath.Join(dir, "certs"), filepath.Join(dir, "grpc", "bootstrap.json")
	w, err := New(Config{Source: src, CertDir: certs, Bootstrap: boot, ControlPlane: "127.0.0.1:15012",
		Workload: authz.Workload{Namespace: "default", Name: "client-v1", Labels: map[string]string{"app": "client"}}})
	if err != nil {
		t.Fatal(err)
	}
	stop := catest.GoRun(t, "writer", w.Run)
	defer stop()
	if w.Ready() {
		t.Fatal("ready before the first SVID")
	}

	first := catest.IssueSVID(t, a, "default", "client")
	src.publish(first, a.Bundle().X509Bundle())
	waitFor(t, "the first files", func() bool { return w.Ready() })
	checkPair(t, certs, first)
	if fi, err := os.Stat(filepath.Join(certs, KeyFile)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v %v, want mode 0600", fi, err)
	}
	roots, err := ca.ParseCertsPEM(mustRead(t, filepath.Join(certs, RootCertFile)))
	if err != nil || len(roots) != len(a.Bundle().X509Authorities()) || !roots[0].Equal(a.Bundle().X509Authorities()[0]) {
		t.Fatalf("root-cert.pem: %d roots, %v; want the bundle's", len(roots), err)
	}

	var doc struct {
		XDSServers []struct {
			ServerURI    string `json:"server_uri"`
			ChannelCreds []struct {
				Type   string            `json:"type"`
				Config map[string]string `json:"config"`
			} `json:"channel_creds"`
		} `json:"xds_servers"`
		Node struct {
			ID       string         `json:"id"`
			Metadata map[string]any `json:"metadata"`
		} `json:"node"`
		CertificateProviders map[string]struct {
			PluginName string            `json:"plugin_name"`
			Config     map[string]string `json:"config"`
		} `json:"certificate_providers"`
	}
	if err := json.Unmarshal(mustRead(t, boot), &doc); err != nil {
		t.Fatal(err)
	}
	files := map[string]string{
		"certificate_file": filepath.Join(certs, CertChainFile), "private_key_file": filepath.Join(certs, KeyFile),
		"ca_certificate_file": filepath.Join(certs, RootCertFile), "refresh_interval": "60s",
	}
	if len(doc.XDSServers) != 1 || doc.XDSServers[0].ServerURI != "127.0.0.1:15012" || len(doc.XDSServers[0].ChannelCreds) != 1 ||
		doc.XDSServers[0].ChannelCreds[0].Type != "tls" {
		t.Fatalf("xds_servers: %+v", doc.XDSServers)
	}
	if diff := cmp.Diff(files, doc.XDSServers[0].ChannelCreds[0].Config); diff != "" {
		t.Errorf("channel creds files (-want +got):\n%s", diff)
	}
	if p := doc.CertificateProviders[CertProviderInstance]; p.PluginName != "file_watcher" || !cmp.Equal(files, p.Config) {
		t.Errorf("certificate provider %q: %+v", CertProviderInstance, p)
	}
	if doc.Node.ID != "spiffe://cluster.local/ns/default/sa/client~client-v1" {
		t.Errorf("node id %q", doc.Node.ID)
	}
	wantMD := map[string]any{"GENERATOR": "grpc", "NAME": "client-v1", "NAMESPACE": "default", "LABELS": map[string]any{"app": "client"}}
	if diff := cmp.Diff(wantMD, doc.Node.Metadata); diff != "" {
		t.Errorf("node metadata (-want +got):\n%s", diff)
	}

	// A rotation rewrites the pair.
	second := catest.IssueSVID(t, a, "default", "client")
	src.publish(second, a.Bundle().X509Bundle())
	waitFor(t, "the rotated files", func() bool {
		c, err := ca.ParseCertsPEM(mustRead(t, filepath.Join(certs, CertChainFile)))
		return err == nil && c[0].SerialNumber.Cmp(second.Certificates[0].SerialNumber) == 0
	})
	waitFor(t, "the rotated key", func() bool { return pairMatches(certs, second) == nil })
}

func TestNewRefusesIncompleteConfig(t *testing.T) {
	src := &source{ready: make(chan struct{}), changed: make(chan struct{})}
	wl := authz.Workload{Namespace: "default", Name: "c"}
	for _, c := range []Config{
		{CertDir: "d", Bootstrap: "b", ControlPlane: "x:1", Workload: wl},
		{Source: src, Bootstrap: "b", ControlPlane: "x:1", Workload: wl},
		{Source: src, CertDir: "d", ControlPlane: "x:1", Workload: wl},
		{Source: src, CertDir: "d", Bootstrap: "b", Workload: wl},
		{Source: src, CertDir: "d", Bootstrap: "b", ControlPlane: "x:1"},
	} {
		if _, err := New(c); err == nil {
			t.Errorf("New(%+v) accepted", c)
		}
	}
}

func checkPair(t *testing.T, dir string, svid *x509svid.SVID) {
	t.Helper()
	if err := pairMatches(dir, svid); err != nil {
		t.Fatal(err)
	}
}

// pairMatches loads the files as grpc-go's file watcher does and compares
// them with the SVID.
func pairMatches(dir string, svid *x509svid.SVID) error {
	pair, err := tls.LoadX509KeyPair(filepath.Join(dir, CertChainFile), filepath.Join(dir, KeyFile))
	if err != nil {
		return err
	}
	if len(pair.Certificate) != len(svid.Certificates) {
		return fmt.Errorf("chain of %d, want %d", len(pair.Certificate), len(svid.Certificates))
	}
	for i, c := range svid.Certificates {
		if string(pair.Certificate[i]) != string(c.Raw) {
			return fmt.Errorf("certificate %d differs", i)
		}
	}
	return nil
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
