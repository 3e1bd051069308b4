package upstream

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
)

func TestTransportSocketMatches(t *testing.T) {
	e := newEnv(t)
	sidecar := newBackend(t, "with-sidecar", withTLS(e.mesh.serverTLS("foo", "httpbin")))
	plain := newBackend(t, "plain")
	c := autoMTLS(t, staticCluster("auto", istioMTLS(lbEndpoint(t, sidecar.addr)), lbEndpoint(t, plain.addr)),
		"spiffe://cluster.local/ns/foo/sa/httpbin")
	e.update(t, c)
	cl := e.cluster(t, "auto")

	tests := []struct {
		name     string
		exclude  string
		want     *backend
		wantMTLS bool
		wantPeer string
	}{
		{name: "tlsMode istio gets mTLS", exclude: plain.addr, want: sidecar, wantMTLS: true, wantPeer: "spiffe://cluster.local/ns/foo/sa/sleep"},
		{name: "no tlsMode gets plaintext", exclude: sidecar.addr, want: plain},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ep, status, body, err := get(t, cl, Request{Exclude: []string{tt.exclude}})
			if err != nil {
				t.Fatal(err)
			}
			if status != 200 || body != tt.want.name {
				t.Fatalf("got %d %q, want 200 from %s", status, body, tt.want.name)
			}
			if ep.MTLS != tt.wantMTLS || ep.TLS != tt.wantMTLS || ep.Address != tt.want.addr {
				t.Errorf("endpoint %+v, want %s with MTLS %v", ep, tt.want.addr, tt.wantMTLS)
			}
			if got := tt.want.peer.Load(); got != tt.wantPeer {
				t.Errorf("server saw client %q, want %q", got, tt.wantPeer)
			}
			// The mesh server prefers h2; an HTTP/1.1 cluster must not offer it.
			if got := tt.want.proto.Load(); got != 1 {
				t.Errorf("request went as HTTP/%d, want HTTP/1.1", got)
			}
		})
	}
}

func TestMeshPeerVerification(t *testing.T) {
	e := newEnv(t)
	other := newMesh(t, "other.example")
	tests := []struct {
		name     string
		server   *backend
		sans     []string
		wantFail bool
	}{
		{name: "listed SAN", server: newBackend(t, "httpbin", withTLS(e.mesh.serverTLS("foo", "httpbin"))), sans: []string{"spiffe://cluster.local/ns/foo/sa/httpbin"}},
		{name: "any of several SANs", server: newBackend(t, "httpbin2", withTLS(e.mesh.serverTLS("foo", "httpbin"))), sans: []string{"spiffe://cluster.local/ns/foo/sa/v1", "spiffe://cluster.local/ns/foo/sa/httpbin"}},
		{name: "wrong SAN is refused", server: newBackend(t, "impostor", withTLS(e.mesh.serverTLS("foo", "impostor"))), sans: []string{"spiffe://cluster.local/ns/foo/sa/httpbin"}, wantFail: true},
		{name: "no SANs: any member of the trust domain", server: newBackend(t, "anyone", withTLS(e.mesh.serverTLS("bar", "anyone")))},
		{name: "another trust domain is refused", server: newBackend(t, "foreign", withTLS(other.serverTLS("foo", "httpbin"))), wantFail: true},
		{name: "plaintext server is refused", server: newBackend(t, "plaintext"), wantFail: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := staticCluster("mesh", lbEndpoint(t, tt.server.addr))
			c.TransportSocket = meshSocket(t, tt.sans...)
			e.update(t, c)
			_, status, body, err := get(t, e.cluster(t, "mesh"), Request{})
			if tt.wantFail {
				if Flag(err) != FlagConnectFailure {
					t.Fatalf("got %d %q, err %v; want a UF failure", status, body, err)
				}
				if tt.server.hits.Load() != 0 {
					t.Errorf("the refused server got a request")
				}
				return
			}
			if err != nil || body != tt.server.name {
				t.Fatalf("got %q, err %v; want an answer from %s", body, err, tt.server.name)
			}
		})
	}
}

// TestSimpleTLS covers DestinationRule SIMPLE toward a service outside the
// mesh: a CA file, SNI, SAN matchers.
func TestSimpleTLS(t *testing.T) {
	e := newEnv(t)
	caPEM, serverCert := webPKI(t, "api.example.com")
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, caPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	srv := newBackend(t, "api", withTLS(&tls.Config{Certificates: []tls.Certificate{serverCert}}))
	dns := func(s string) *tlsv3.SubjectAltNameMatcher {
		return &tlsv3.SubjectAltNameMatcher{SanType: tlsv3.SubjectAltNameMatcher_DNS, Matcher: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: s}}}
	}
	tests := []struct {
		name     string
		sni      string
		ca       string
		sans     []*tlsv3.SubjectAltNameMatcher
		wantFail bool
	}{
		{name: "CA file and SNI", sni: "api.example.com", ca: caFile},
		{name: "SAN matcher", sni: "other.example.com", ca: caFile, sans: []*tlsv3.SubjectAltNameMatcher{dns("api.example.com")}},
		{name: "SNI not in the certificate", sni: "evil.example.com", ca: caFile, wantFail: true},
		{name: "SAN not in the certificate", sni: "api.example.com", ca: caFile, sans: []*tlsv3.SubjectAltNameMatcher{dns("evil.example.com")}, wantFail: true},
		{name: "system roots do not know the CA", sni: "api.example.com", wantFail: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			vc := &tlsv3.CertificateValidationContext{MatchTypedSubjectAltNames: tt.sans}
			if tt.ca != "" {
				vc.TrustedCa = &corev3.DataSource{Specifier: &corev3.DataSource_Filename{Filename: tt.ca}}
			}
			utc := &tlsv3.UpstreamTlsContext{Sni: tt.sni, CommonTlsContext: &tlsv3.CommonTlsContext{
				ValidationContextType: &tlsv3.CommonTlsContext_ValidationContext{ValidationContext: vc},
			}}
			c := staticCluster("external", lbEndpoint(t, srv.addr))
			c.TransportSocket = &corev3.TransportSocket{Name: "envoy.transport_sockets.tls", ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: mustAny(t, utc)}}
			e.update(t, c)
			ep, _, body, err := get(t, e.cluster(t, "external"), Request{})
			if tt.wantFail {
				if Flag(err) != FlagConnectFailure {
					t.Fatalf("got %q, err %v; want UF", body, err)
				}
				return
			}
			if err != nil || body != "api" {
				t.Fatalf("got %q, err %v", body, err)
			}
			if !ep.TLS || ep.MTLS {
				t.Errorf("endpoint says TLS %v mTLS %v, want TLS without mesh mTLS", ep.TLS, ep.MTLS)
			}
		})
	}
}

func TestTransportSocketErrors(t *testing.T) {
	e := newEnv(t)
	sds := func(cert, root string) *corev3.TransportSocket {
		utc := &tlsv3.UpstreamTlsContext{CommonTlsContext: &tlsv3.CommonTlsContext{
			TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{{Name: cert, SdsConfig: ads}},
			ValidationContextType:          &tlsv3.CommonTlsContext_ValidationContextSdsSecretConfig{ValidationContextSdsSecretConfig: &tlsv3.SdsSecretConfig{Name: root, SdsConfig: ads}},
		}}
		return &corev3.TransportSocket{Name: "envoy.transport_sockets.tls", ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: mustAny(t, utc)}}
	}
	tests := []struct {
		name string
		ts   *corev3.TransportSocket
		want string
	}{
		{name: "credentialName secret", ts: sds("kubernetes://my-cert", "ROOTCA"), want: `tls_certificate_sds_secret_configs[0]: secret "kubernetes://my-cert"`},
		{name: "unknown root secret", ts: sds("default", "kubernetes://ca"), want: `validation_context_sds_secret_config: secret "kubernetes://ca"`},
		{name: "missing file-root", ts: sds("default", "file-root:/nonexistent/ca.pem"), want: "/nonexistent/ca.pem"},
		{name: "unknown socket", ts: &corev3.TransportSocket{Name: "envoy.transport_sockets.alts", ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: mustAny(t, &clusterv3.Filter{})}}, want: `transport_socket: "envoy.transport_sockets.alts"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := staticCluster("bad")
			c.TransportSocket = tt.ts
			err := e.m.Update([]*clusterv3.Cluster{c}, nil)
			if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), `cluster "bad"`) {
				t.Fatalf("Update: %v; want an error naming the cluster and %q", err, tt.want)
			}
		})
	}
}

func TestALPNAgreesWithProtocol(t *testing.T) {
	istio := []string{"istio-peer-exchange", "istio", "h2", "http/1.1"}
	tests := []struct {
		p    protocol
		in   []string
		want string
	}{
		{protoHTTP1, istio, "istio-peer-exchange istio http/1.1"},
		{protoHTTP2, istio, "istio-peer-exchange istio h2"},
		{protoAuto, istio, "istio-peer-exchange istio h2 http/1.1"},
		{protoHTTP1, nil, "http/1.1"},
		{protoHTTP2, []string{"istio"}, "istio h2"},
	}
	for _, tt := range tests {
		if got := strings.Join(alpnFor(tt.in, tt.p), " "); got != tt.want {
			t.Errorf("alpnFor(%v, %d) = %q, want %q", tt.in, tt.p, got, tt.want)
		}
	}
}

// webPKI makes a CA and a server certificate for names under it.
func webPKI(t *testing.T, names ...string) (caPEM []byte, cert tls.Certificate) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: names[0]}, DNSNames: names,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}
