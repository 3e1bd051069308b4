package upstream

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/rampart-mesh/rampart/ca/catest"
)

// sniRecorder is a TLS server configuration that records the SNI of every
// handshake.
type sniRecorder struct {
	mu    sync.Mutex
	names []string
}

func (r *sniRecorder) config(cert tls.Certificate) *tls.Config {
	return &tls.Config{GetCertificate: func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
		r.mu.Lock()
		r.names = append(r.names, hello.ServerName)
		r.mu.Unlock()
		return &cert, nil
	}}
}

func (r *sniRecorder) seen() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.names...)
}

// originationSocket is DestinationRule SIMPLE TLS as rampartd compiles it for
// a wildcard host: a CA, no SNI, no SAN matchers.
func originationSocket(t *testing.T, utc *tlsv3.UpstreamTlsContext) *corev3.TransportSocket {
	return &corev3.TransportSocket{Name: "envoy.transport_sockets.tls", ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: mustAny(t, utc)}}
}

func caContext(caFile string) *tlsv3.UpstreamTlsContext {
	return &tlsv3.UpstreamTlsContext{CommonTlsContext: &tlsv3.CommonTlsContext{
		ValidationContextType: &tlsv3.CommonTlsContext_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
			TrustedCa: &corev3.DataSource{Specifier: &corev3.DataSource_Filename{Filename: caFile}}}}}}
}

func withAutoSNI(t *testing.T, c *clusterv3.Cluster, autoSAN bool) *clusterv3.Cluster {
	c.TypedExtensionProtocolOptions = map[string]*anypb.Any{httpProtocolOptionsKey: mustAny(t, &httpv3.HttpProtocolOptions{
		UpstreamHttpProtocolOptions: &corev3.UpstreamHttpProtocolOptions{AutoSni: true, AutoSanValidation: autoSAN},
		UpstreamProtocolOptions: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_{ExplicitHttpConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig{
			ProtocolConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_HttpProtocolOptions{HttpProtocolOptions: &corev3.Http1ProtocolOptions{}},
		}},
	})}
	return c
}

// getHost sends GET / with Host host through c.
func getHost(t *testing.T, c *Cluster, host string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), catest.WaitFor)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+host+"/", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, _, err := c.RoundTrip(req, Request{})
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// TestAutoSNI covers TLS origination with no sni and no subject alt names
// (a DestinationRule for a wildcard host): the SNI and the name verified come
// from each request's Host, connections are pooled per name, and with no name
// at all the connection is refused rather than accepting any certificate a
// trusted CA signed.
func TestAutoSNI(t *testing.T) {
	e := newEnv(t)
	caPEM, cert := webPKI(t, "*.example.com")
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, caPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	var rec sniRecorder
	srv := newBackend(t, "wild", withTLS(rec.config(cert)))
	auto := withAutoSNI(t, staticCluster("auto", lbEndpoint(t, srv.addr)), true)
	auto.TransportSocket = originationSocket(t, caContext(caFile))
	sniOnly := withAutoSNI(t, staticCluster("sni-only", lbEndpoint(t, srv.addr)), false)
	sniOnly.TransportSocket = originationSocket(t, caContext(caFile))
	plain := staticCluster("no-name", lbEndpoint(t, srv.addr))
	plain.TransportSocket = originationSocket(t, caContext(caFile))
	e.update(t, auto, sniOnly, plain)

	tests := []struct {
		name       string
		cluster    string
		host       string
		wantErr    error // nil: the request succeeds
		wantSNI    string
		wantOpened int64 // connections the server has accepted after it
	}{
		{name: "SNI and name from the Host", cluster: "auto", host: "a.example.com", wantSNI: "a.example.com", wantOpened: 1},
		{name: "another name gets its own connection", cluster: "auto", host: "b.example.com:443", wantSNI: "b.example.com", wantOpened: 2},
		{name: "a name reuses its connection", cluster: "auto", host: "a.example.com", wantOpened: 2},
		{name: "a name the certificate lacks is refused", cluster: "auto", host: "login.bank.test", wantErr: errBadCert, wantSNI: "login.bank.test", wantOpened: 3},
		{name: "auto_sni alone still checks the name", cluster: "sni-only", host: "login.bank.test", wantErr: errBadCert, wantSNI: "login.bank.test", wantOpened: 4},
		{name: "auto_sni alone", cluster: "sni-only", host: "c.example.com", wantSNI: "c.example.com", wantOpened: 5},
		{name: "no sni, no SANs, no auto_sni fails closed", cluster: "no-name", host: "a.example.com", wantErr: ErrNoServerName, wantOpened: 5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := len(rec.seen())
			body, err := getHost(t, e.cluster(t, tt.cluster), tt.host)
			switch {
			case tt.wantErr == nil && (err != nil || body != "wild"):
				t.Fatalf("got %q, %v; want the answer of the server", body, err)
			case tt.wantErr == ErrNoServerName && !errors.Is(err, ErrNoServerName):
				t.Fatalf("got %q, %v; want ErrNoServerName", body, err)
			case tt.wantErr == errBadCert && (Flag(err) != FlagConnectFailure || !strings.Contains(err.Error(), "login.bank.test")):
				t.Fatalf("got %q, %v; want UF for a certificate not valid for login.bank.test", body, err)
			}
			if err != nil && !strings.Contains(err.Error(), tt.cluster) {
				t.Errorf("error %q does not name cluster %q", err, tt.cluster)
			}
			if seen := rec.seen(); tt.wantSNI != "" && (len(seen) != before+1 || seen[len(seen)-1] != tt.wantSNI) {
				t.Errorf("handshakes %q after %d; want one more with SNI %q", seen, before, tt.wantSNI)
			}
			if got := srv.opened.Load(); got != tt.wantOpened {
				t.Errorf("server accepted %d connections, want %d", got, tt.wantOpened)
			}
		})
	}

	// TCP has no Host: with no sni and no SANs the dial is refused.
	for _, name := range []string{"auto", "no-name"} {
		conn, _, err := e.cluster(t, name).DialTCP(context.Background(), Request{})
		if err == nil {
			conn.Close()
		}
		if !errors.Is(err, ErrNoServerName) || !strings.Contains(err.Error(), name) {
			t.Errorf("DialTCP %s: %v; want ErrNoServerName naming the cluster", name, err)
		}
	}
}

var errBadCert = errors.New("certificate not valid for the name")

// TestAcceptUntrusted covers trust_chain_verification ACCEPT_UNTRUSTED
// (Istio's insecureSkipVerify): TLS origination to a server whose
// certificate no configured root signed, for no name in particular. Mesh
// mTLS must never be left unverified.
func TestAcceptUntrusted(t *testing.T) {
	e := newEnv(t)
	_, cert := webPKI(t, "legacy.internal.corp")
	srv := newBackend(t, "legacy", withTLS(&tls.Config{Certificates: []tls.Certificate{cert}}))
	untrusted := &tlsv3.CertificateValidationContext{TrustChainVerification: tlsv3.CertificateValidationContext_ACCEPT_UNTRUSTED}
	c := staticCluster("skip", lbEndpoint(t, srv.addr))
	c.TransportSocket = originationSocket(t, &tlsv3.UpstreamTlsContext{CommonTlsContext: &tlsv3.CommonTlsContext{
		ValidationContextType: &tlsv3.CommonTlsContext_ValidationContext{ValidationContext: untrusted}}})
	e.update(t, c)
	if body, err := getHost(t, e.cluster(t, "skip"), "other.name"); err != nil || body != "legacy" {
		t.Fatalf("ACCEPT_UNTRUSTED to a self-signed server: %q, %v", body, err)
	}

	for _, tt := range []struct {
		name string
		ctc  *tlsv3.CommonTlsContext
	}{
		{name: "with the mesh roots", ctc: &tlsv3.CommonTlsContext{
			ValidationContextType: &tlsv3.CommonTlsContext_CombinedValidationContext{CombinedValidationContext: &tlsv3.CommonTlsContext_CombinedCertificateValidationContext{
				DefaultValidationContext:         untrusted,
				ValidationContextSdsSecretConfig: &tlsv3.SdsSecretConfig{Name: sdsRootCA, SdsConfig: ads},
			}}}},
		{name: "with the SVID", ctc: &tlsv3.CommonTlsContext{
			TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{{Name: sdsDefault, SdsConfig: ads}},
			ValidationContextType:          &tlsv3.CommonTlsContext_ValidationContext{ValidationContext: untrusted}}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			bad := staticCluster("mesh-skip")
			bad.TransportSocket = originationSocket(t, &tlsv3.UpstreamTlsContext{CommonTlsContext: tt.ctc})
			err := e.m.Update([]*clusterv3.Cluster{bad}, nil)
			if err == nil || !strings.Contains(err.Error(), "trust_chain_verification") || !strings.Contains(err.Error(), `cluster "mesh-skip"`) {
				t.Fatalf("Update: %v; want ACCEPT_UNTRUSTED refused for mesh mTLS, naming the cluster and field", err)
			}
		})
	}
}

// TestDataSourceFiles covers certificate, key and CA files named by
// configuration (and so by DestinationRule authors): only regular files of
// at most 1 MiB are read, and Update never blocks on one.
func TestDataSourceFiles(t *testing.T) {
	e := newEnv(t)
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Skip(err)
	}
	big := filepath.Join(dir, "big.pem")
	if err := os.WriteFile(big, make([]byte, maxDataSourceSize+1), 0o600); err != nil {
		t.Fatal(err)
	}
	caPEM, _ := webPKI(t, "x.example.com")
	okCA := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(okCA, caPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	file := func(p string) *corev3.DataSource {
		return &corev3.DataSource{Specifier: &corev3.DataSource_Filename{Filename: p}}
	}
	withCA := func(ca *corev3.DataSource) *tlsv3.CommonTlsContext {
		return &tlsv3.CommonTlsContext{ValidationContextType: &tlsv3.CommonTlsContext_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{TrustedCa: ca}}}
	}
	sdsRoot := func(name string) *tlsv3.CommonTlsContext {
		return &tlsv3.CommonTlsContext{ValidationContextType: &tlsv3.CommonTlsContext_ValidationContextSdsSecretConfig{
			ValidationContextSdsSecretConfig: &tlsv3.SdsSecretConfig{Name: name, SdsConfig: ads}}}
	}
	tests := []struct {
		name string
		ctc  *tlsv3.CommonTlsContext
		want string // in the error; "" for success
	}{
		{name: "trusted_ca FIFO", ctc: withCA(file(fifo)), want: "trusted_ca: " + fifo + " is not a regular file"},
		{name: "trusted_ca device", ctc: withCA(file("/dev/null")), want: "trusted_ca: /dev/null is not a regular file"},
		{name: "trusted_ca directory", ctc: withCA(file(dir)), want: "is not a regular file"},
		{name: "trusted_ca too large", ctc: withCA(file(big)), want: "trusted_ca: " + big + " is larger than 1048576 bytes"},
		{name: "file-root FIFO", ctc: sdsRoot(sdsFileRoot + fifo), want: "validation_context_sds_secret_config: " + fifo + " is not a regular file"},
		{name: "certificate chain FIFO", ctc: &tlsv3.CommonTlsContext{TlsCertificates: []*tlsv3.TlsCertificate{{CertificateChain: file(fifo), PrivateKey: file(okCA)}}},
			want: "tls_certificates[0]: certificate_chain: " + fifo + " is not a regular file"},
		{name: "private key device", ctc: &tlsv3.CommonTlsContext{TlsCertificates: []*tlsv3.TlsCertificate{{CertificateChain: file(okCA), PrivateKey: file("/dev/null")}}},
			want: "tls_certificates[0]: private_key: /dev/null is not a regular file"},
		{name: "file-cert FIFO", ctc: &tlsv3.CommonTlsContext{TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{{Name: sdsFileCert + fifo + "~" + okCA, SdsConfig: ads}}},
			want: "tls_certificate_sds_secret_configs[0]: certificate: " + fifo + " is not a regular file"},
		{name: "regular CA file", ctc: withCA(file(okCA))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := staticCluster("files", lbEndpoint(t, "127.0.0.1:1"))
			c.TransportSocket = originationSocket(t, &tlsv3.UpstreamTlsContext{Sni: "x.example.com", CommonTlsContext: tt.ctc})
			done := make(chan error, 1)
			go func() { done <- e.m.Update([]*clusterv3.Cluster{c}, nil) }()
			var err error
			select {
			case err = <-done:
			case <-time.After(catest.WaitFor):
				// Old code blocks opening the FIFO: a writer lets it go.
				if f, oerr := os.OpenFile(fifo, os.O_WRONLY, 0); oerr == nil {
					f.Close()
				}
				<-done
				t.Fatal("Update blocked on a data source file")
			}
			if tt.want == "" {
				if err != nil {
					t.Fatalf("Update: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), `cluster "files"`) {
				t.Fatalf("Update: %v; want an error naming the cluster and %q", err, tt.want)
			}
		})
	}
}
