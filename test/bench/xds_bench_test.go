package bench

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/rampart-mesh/rampart/authz"
	"github.com/rampart-mesh/rampart/ca"
	"github.com/rampart-mesh/rampart/ca/catest"
	"github.com/rampart-mesh/rampart/test/internal/procs"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/types/known/structpb"
)

const convergencePolicy = `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: web, namespace: bench}
spec:
  selector: {matchLabels: {app: web}}
  rules:
  - from: [{source: {namespaces: [bench]}}]
    to: [{operation: {paths: ["%s"]}}]
`

// BenchmarkXDSConvergence measures, for n proxies with real ADS streams over
// mTLS (all in this process) to a real rampartd process watching a config
// directory, the time from one policy edit to each proxy's receipt of the
// configuration it produced (rampartd's 100 ms poll included), and rampartd's
// RSS with the proxies connected. Ten workloads share the proxies, as replicas
// do.
func BenchmarkXDSConvergence(b *testing.B) {
	for _, n := range []int{100, 1000, 5000} {
		b.Run(fmt.Sprintf("proxies=%d", n), func(b *testing.B) { benchConvergence(b, n) })
	}
}

func benchConvergence(b *testing.B, n int) {
	if os.Getenv("RAMPART_BIN") == "" {
		b.Skip("needs RAMPART_BIN, the directory holding rampartd (make bench sets it)")
	}
	work := procs.ShortTempDir(b)
	state, dir := filepath.Join(work, "state"), filepath.Join(work, "config")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		b.Fatal(err)
	}
	// The CA is made here first, to issue the proxies' certificates; rampartd
	// then takes the same state directory over (one process holds it at a time).
	a, err := ca.New(ca.Config{StateDir: state})
	if err != nil {
		b.Fatal(err)
	}
	if err := a.Load(); err != nil {
		b.Fatal(err)
	}
	// Ten workloads; proxies of one workload share its SVID.
	certs := make([]tls.Certificate, 10)
	for i := range certs {
		certs[i] = catest.TLSCertificate(catest.IssueSVID(b, a, "bench", fmt.Sprintf("web-%d", i)))
	}
	a.Close()
	policy := filepath.Join(dir, "p.yaml")
	write := func(path string) {
		if err := os.WriteFile(policy, []byte(fmt.Sprintf(convergencePolicy, path)), 0o644); err != nil {
			b.Fatal(err)
		}
	}
	write("/v0")
	cp := procs.FreeAddr(b)
	rampartd := procs.Start(b, work, "rampartd", "rampartd", "--state-dir", state, "--listen", cp, "--monitoring-listen", "", "--config-dir", dir)
	procs.WaitTCP(b, cp, 20*time.Second)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	addr := cp

	type proxy struct {
		mu      sync.Mutex
		version string
		at      time.Time
	}
	proxies := make([]*proxy, n)
	var ready sync.WaitGroup
	for i := range proxies {
		p := &proxy{}
		proxies[i] = p
		cert := certs[i%10]
		ready.Add(1)
		go func() {
			cfg := &tls.Config{Certificates: []tls.Certificate{cert}, InsecureSkipVerify: true,
				VerifyPeerCertificate: func([][]byte, [][]*x509.Certificate) error { return nil }}
			conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
			if err != nil {
				b.Error(err)
				ready.Done()
				return
			}
			defer conn.Close()
			st, err := discovery.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
			if err != nil {
				b.Error(err)
				ready.Done()
				return
			}
			md, _ := structpb.NewStruct(map[string]any{"NAME": "web", "LABELS": map[string]any{"app": "web"}})
			id := cert.Leaf.URIs[0].String()
			_ = st.Send(&discovery.DiscoveryRequest{Node: &corev3.Node{Id: id, Metadata: md}, TypeUrl: xdsType, ResourceNames: []string{authz.ExtensionName}})
			first := true
			for {
				resp, err := st.Recv()
				if err != nil {
					return
				}
				p.mu.Lock()
				p.version, p.at = resp.GetVersionInfo(), time.Now()
				p.mu.Unlock()
				_ = st.Send(&discovery.DiscoveryRequest{TypeUrl: xdsType, VersionInfo: resp.GetVersionInfo(), ResponseNonce: resp.GetNonce(), ResourceNames: []string{authz.ExtensionName}})
				if first {
					first = false
					ready.Done()
				}
			}
		}()
	}
	ready.Wait()
	rss, err := procs.RSS(rampartd.Cmd.Process.Pid)
	if err != nil {
		b.Fatal(err)
	}

	var all []time.Duration
	b.ResetTimer()
	for i := range b.N {
		before := make([]string, n)
		for j, p := range proxies {
			p.mu.Lock()
			before[j] = p.version
			p.mu.Unlock()
		}
		t0 := time.Now()
		write(fmt.Sprintf("/v%d", i+1))
		deadline := t0.Add(30 * time.Second)
		for {
			done := 0
			for j, p := range proxies {
				p.mu.Lock()
				if p.version != before[j] {
					done++
				}
				p.mu.Unlock()
			}
			if done == n {
				break
			}
			if time.Now().After(deadline) {
				b.Fatalf("only %d of %d proxies converged in 30 s", done, n)
			}
			time.Sleep(5 * time.Millisecond)
		}
		for _, p := range proxies {
			p.mu.Lock()
			all = append(all, p.at.Sub(t0))
			p.mu.Unlock()
		}
	}
	b.StopTimer()
	slices.Sort(all)
	within := 0
	for _, d := range all {
		if d <= time.Second {
			within++
		}
	}
	b.ReportMetric(float64(all[len(all)/2].Milliseconds()), "p50-ms")
	b.ReportMetric(float64(all[len(all)*99/100].Milliseconds()), "p99-ms")
	b.ReportMetric(100*float64(within)/float64(len(all)), "%≤1s")
	b.ReportMetric(float64(rss)/(1<<20), "MB-rss-rampartd")
}

const xdsType = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig"
