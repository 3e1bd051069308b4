package xds

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rampart-mesh/rampart/policies/compile"
	"os"
	"path/filepath"
	"testing"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/rampart-mesh/rampart/ca"
	"github.com/rampart-mesh/rampart/ca/catest"
	"github.com/rampart-mesh/rampart/ca/server"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
)

// serveADS serves x's ADS from a real CA server over mTLS, as rampartd does,
// and returns its address. Run x separately when the test wants polling.
func serveADS(t *testing.T, ctx context.Context, a *ca.Authority, x *Server) string {
	t.Helper()
	srv, err := server.New(server.Config{Authority: a, Authenticator: a2(), Listen: "127.0.0.1:0", Register: x.Register})
	if err != nil {
		t.Fatal(err)
	}
	catest.GoRun(t, "ca server", srv.Run)
	addr, err := srv.Addr(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return addr.String()
}

// adsStream opens an ADS stream to addr as a proxy presenting cert (no client
// certificate when cert has no key), verifying the server's SVID against a's
// bundle.
func adsStream(t *testing.T, ctx context.Context, a *ca.Authority, addr string, cert tls.Certificate) discovery.AggregatedDiscoveryService_StreamAggregatedResourcesClient {
	t.Helper()
	var certs []tls.Certificate
	if cert.PrivateKey != nil {
		certs = []tls.Certificate{cert}
	}
	cfg := &tls.Config{Certificates: certs, InsecureSkipVerify: true, VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
		var chain []*x509.Certificate
		for _, r := range raw {
			c, err := x509.ParseCertificate(r)
			if err != nil {
				return err
			}
			chain = append(chain, c)
		}
		_, _, err := x509svid.Verify(chain, a.Bundle())
		return err
	}}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	st, err := discovery.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// startServer runs an xDS server, with the default mesh, over a directory
// holding policies (as p.yaml) until the test ends.
func startServer(t *testing.T, a *ca.Authority, reg *prometheus.Registry, policies string) *Server {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "p.yaml"), []byte(policies), 0o644); err != nil {
		t.Fatal(err)
	}
	mesh, _ := compile.Mesh{}.WithDefaults()
	x, err := New(Config{Paths: []string{dir}, Mesh: mesh, Trust: a.Bundle(), Metrics: reg})
	if err != nil {
		t.Fatal(err)
	}
	catest.GoRun(t, "xds", x.Run)
	return x
}
