// Package bench holds the benchmarks `make bench` runs against real processes.
package bench

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rampart-mesh/rampart/ca"
	"github.com/rampart-mesh/rampart/test/internal/procs"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	istioca "istio.io/api/security/v1alpha1"
)

func startRampartd(b *testing.B) (dir, state, cp string) {
	b.Helper()
	dir = procs.ShortTempDir(b)
	state = filepath.Join(dir, "state")
	cp = procs.FreeAddr(b)
	procs.Start(b, dir, "rampartd", "rampartd", "--state-dir", state, "--listen", cp, "--monitoring-listen", "", "--log-level", "warn")
	procs.WaitTCP(b, cp, 20*time.Second)
	return dir, state, cp
}

// BenchmarkCreateCertificate measures rampartd's signing throughput end to end:
// CSRs over gRPC and TLS to a running rampartd, from parallel clients.
func BenchmarkCreateCertificate(b *testing.B) {
	_, state, cp := startRampartd(b)
	token := strings.TrimSpace(procs.Run(b, "rampartctl", "token", "create", "--state-dir", state, "--namespace", "bench", "--service-account", "load", "--reusable", "--ttl", "1h"))
	key, err := ca.GenerateKey(ca.KeyECDSAP256)
	if err != nil {
		b.Fatal(err)
	}
	u, _ := url.Parse("spiffe://cluster.local/ns/bench/sa/load")
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{u}}, key)
	if err != nil {
		b.Fatal(err)
	}
	csr := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
	// The benchmark measures the CA, so the client skips verifying the server.
	conn, err := grpc.NewClient(cp, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{InsecureSkipVerify: true})))
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	client := istioca.NewIstioCertificateServiceClient(conn)
	ctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+token)
	if _, err := client.CreateCertificate(ctx, &istioca.IstioCertificateRequest{Csr: csr}); err != nil {
		b.Fatal(err)
	}
	b.SetParallelism(8)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := client.CreateCertificate(ctx, &istioca.IstioCertificateRequest{Csr: csr}); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "svids/s")
}

// BenchmarkSidecarIdentityRSS reports the resident memory of a sidecar running
// the identity agent and the Workload API alone, after it holds its SVID.
func BenchmarkSidecarIdentityRSS(b *testing.B) {
	dir, state, cp := startRampartd(b)
	root := filepath.Join(dir, "root.pem")
	tok := filepath.Join(dir, "web.token")
	if err := os.WriteFile(root, []byte(procs.Run(b, "rampartctl", "ca", "root", "--state-dir", state)), 0o644); err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(tok, []byte(procs.Run(b, "rampartctl", "token", "create", "--state-dir", state, "--namespace", "default", "--service-account", "web")), 0o600); err != nil {
		b.Fatal(err)
	}
	sock := filepath.Join(dir, "web.sock")
	p := procs.Start(b, dir, "sidecar", "rampart-sidecar", "--control-plane", cp, "--root-cert", root, "--token-file", tok, "--workload-api-socket", sock)
	procs.Eventually(b, 20*time.Second, "sidecar ready", func() bool { _, err := os.Stat(sock); return err == nil })
	time.Sleep(2 * time.Second) // settle after start-up allocations
	for i := 0; i < b.N; i++ {
		if r, err := procs.RSS(p.Cmd.Process.Pid); err != nil || r == 0 {
			b.Fatalf("RSS: %d, %v", r, err)
		}
	}
	rss, err := procs.RSS(p.Cmd.Process.Pid)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(rss)/(1<<20), "MB-rss")
}
