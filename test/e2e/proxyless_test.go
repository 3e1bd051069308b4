package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rampart-mesh/rampart/test/internal/procs"
)

// The proxyless mesh: two versions of a gRPC echo, each behind a sidecar
// (inbound only; v1 STRICT mTLS, v2 PERMISSIVE), on their own loopback
// addresses.
const (
	proxylessV1 = "127.0.43.2"
	proxylessV2 = "127.0.43.3"
)

// proxylessConfig routes by header (x-version: v2), splits by weight
// (x-split: yes) and sends the rest to v1; only the proxyless client's
// identity may call the echo.
const proxylessConfig = `
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: echo}
spec:
  hosts: [echo.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9090, name: grpc, protocol: GRPC}]
  workloadSelector: {labels: {app: echo}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: echo-v1}
spec: {address: 127.0.43.2, labels: {app: echo, version: v1}, serviceAccount: echo, locality: us-east/zone-a}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: echo-v2}
spec: {address: 127.0.43.3, labels: {app: echo, version: v2}, serviceAccount: echo, locality: us-east/zone-b}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: rampart-system}
spec: {mtls: {mode: STRICT}}
---
# v2 is PERMISSIVE: grpc-go's xDS credentials offer only ALPN h2 (no Istio
# names), and the sidecar must still end their mTLS and see the caller.
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: echo-v2, namespace: default}
spec:
  selector: {matchLabels: {app: echo, version: v2}}
  mtls: {mode: PERMISSIVE}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: echo}
spec:
  host: echo
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: echo}
spec:
  hosts: [echo]
  http:
  - match: [{headers: {x-version: {exact: v2}}}]
    route: [{destination: {host: echo, subset: v2}}]
  - match: [{headers: {x-split: {exact: "yes"}}}]
    timeout: 5s
    route:
    - {destination: {host: echo, subset: v1}, weight: 50}
    - {destination: {host: echo, subset: v2}, weight: 50}
  - route: [{destination: {host: echo, subset: v1}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: echo-callers}
spec:
  selector: {matchLabels: {app: echo}}
  action: ALLOW
  rules: [{from: [{source: {principals: [cluster.local/ns/default/sa/grpc-client]}}]}]
`

// xdsResult is one call of the xds-client binary.
type xdsResult struct {
	Name string `json:"name"`
	XFCC string `json:"xfcc"`
	Code string `json:"code"`
	Err  string `json:"err"`
}

// TestProxylessGRPC: a gRPC app with no sidecar, only the agent-only mode
// writing its certificates and gRPC bootstrap, resolves the echo service
// through rampartd's LDS, RDS, CDS and EDS with grpc-go's own xds resolver
// and calls it over mTLS (grpc-go's xDS credentials) through the echo's
// sidecars: VirtualService routing holds, the server sees the client's
// SPIFFE ID, another identity is denied, and proxy-status shows the client
// SYNCED.
func TestProxylessGRPC(t *testing.T) {
	if testing.Short() {
		t.Skip("e2e")
	}
	cfgDir := procs.ShortTempDir(t)
	if err := os.WriteFile(filepath.Join(cfgDir, "mesh.yaml"), []byte(proxylessConfig), 0o644); err != nil {
		t.Fatal(err)
	}
	m := startMesh(t, "--config-dir", cfgDir)
	echoBin := buildTestBin(t, m.dir, "echo", "github.com/rampart-mesh/rampart/test/internal/echo/cmd/echo")
	clientBin := buildTestBin(t, m.dir, "xds-client", "github.com/rampart-mesh/rampart/test/internal/echo/cmd/xds-client")

	// The echo versions, each app behind its sidecar's inbound path.
	for _, v := range []struct{ name, addr, version string }{{"echo-v1", proxylessV1, "v1"}, {"echo-v2", proxylessV2, "v2"}} {
		app := procs.FreeAddr(t)
		startTestBin(t, m.dir, v.name, echoBin, "--name", v.name, "--listen", app)
		procs.WaitTCP(t, app, 10*time.Second)
		procs.Start(t, m.dir, "sidecar-"+v.name, "rampart-sidecar", "--control-plane", m.cp, "--root-cert", m.root,
			"--token-file", m.token(t, "default", "echo"), "--inbound-listen", v.addr+":9090", "--app", app,
			"--workload", "default/"+v.name, "--labels", "app=echo,version="+v.version)
	}

	// The proxyless apps' agents: no listeners, just files.
	agent := func(sa string) string {
		t.Helper()
		dir := filepath.Join(m.dir, sa)
		boot := filepath.Join(dir, "bootstrap.json")
		procs.Start(t, m.dir, "agent-"+sa, "rampart-sidecar", "--control-plane", m.cp, "--root-cert", m.root,
			"--token-file", m.token(t, "default", sa), "--workload", "default/"+sa, "--labels", "app="+sa,
			"--proxyless", "--cert-dir", filepath.Join(dir, "certs"), "--grpc-bootstrap", boot)
		procs.Eventually(t, 20*time.Second, "bootstrap "+boot, func() bool { _, err := os.Stat(boot); return err == nil })
		return boot
	}
	client, intruder := agent("grpc-client"), agent("intruder")
	for _, f := range []string{"cert-chain.pem", "root-cert.pem"} {
		if _, err := os.Stat(filepath.Join(m.dir, "grpc-client", "certs", f)); err != nil {
			t.Fatal(err)
		}
	}
	if fi, err := os.Stat(filepath.Join(m.dir, "grpc-client", "certs", "key.pem")); err != nil {
		t.Fatal(err)
	} else if fi.Mode().Perm() != 0o600 {
		t.Fatalf("key.pem mode %v, want 0600", fi.Mode().Perm())
	}

	const target = "xds:///echo.default.svc.cluster.local:9090"
	call := func(boot, target string, n int, hdr ...string) []xdsResult {
		t.Helper()
		return runXDSClient(t, clientBin, boot, target, n, 10*time.Second, hdr...)
	}
	// Sidecars deny everything until their first policy bundle: wait for a call to pass.
	procs.Eventually(t, 45*time.Second, "a proxyless call answered", func() bool {
		rs := call(client, target, 1)
		if rs[0].Code != "OK" {
			t.Logf("not yet: %s %s", rs[0].Code, rs[0].Err)
			time.Sleep(500 * time.Millisecond)
		}
		return rs[0].Code == "OK"
	})

	// Default route: v1 only (EDS alone would spread calls over both versions).
	want := "By=spiffe://cluster.local/ns/default/sa/echo;URI=spiffe://cluster.local/ns/default/sa/grpc-client"
	for i, r := range call(client, target, 20) {
		if r.Code != "OK" || r.Name != "echo-v1" || r.XFCC != want {
			t.Fatalf("default route, call %d: %+v; want OK from echo-v1 with xfcc %q", i, r, want)
		}
	}
	// Header route: v2 only.
	for i, r := range call(client, target, 10, "x-version=v2") {
		if r.Code != "OK" || r.Name != "echo-v2" {
			t.Fatalf("x-version: v2, call %d: %+v; want OK from echo-v2", i, r)
		}
	}
	// Weighted split 50/50: both versions answer (all 40 on one side: p = 2^-39).
	got := map[string]int{}
	for i, r := range call(client, target, 40, "x-split=yes") {
		if r.Code != "OK" {
			t.Fatalf("x-split, call %d: %+v", i, r)
		}
		got[r.Name]++
	}
	if got["echo-v1"] == 0 || got["echo-v2"] == 0 || got["echo-v1"]+got["echo-v2"] != 40 {
		t.Fatalf("x-split: %v; want both versions, 40 calls", got)
	}
	t.Logf("weighted split over 40 calls: %v", got)
	// A short name from the client's namespace resolves too.
	if r := call(client, "xds:///echo:9090", 1)[0]; r.Code != "OK" || r.Name != "echo-v1" {
		t.Fatalf("xds:///echo:9090: %+v", r)
	}
	// An unknown service fails, it does not hang: rampartd answers without
	// the listener, and grpc-go gives up on it when its resource timer (15 s)
	// fires.
	if r := runXDSClient(t, clientBin, client, "xds:///nope.default.svc.cluster.local:9090", 1, 30*time.Second)[0]; r.Code != "Unavailable" {
		t.Fatalf("unknown service: %+v; want Unavailable", r)
	}

	// Another mesh identity reaches the echo (mTLS works for it too) and is denied.
	for i, r := range call(intruder, target, 3) {
		if r.Code != "PermissionDenied" {
			t.Fatalf("intruder call %d: %+v; want PermissionDenied", i, r)
		}
	}

	// While a client is connected, proxy-status shows it SYNCED.
	out, stop := startXDSClient(t, clientBin, client, target, 1, 10*time.Second, time.Minute)
	if r := <-out; r.Code != "OK" {
		t.Fatalf("lingering client: %+v", r)
	}
	node := "spiffe://cluster.local/ns/default/sa/grpc-client~grpc-client"
	procs.Eventually(t, 10*time.Second, "proxy-status lists the proxyless client SYNCED", func() bool {
		for _, line := range strings.Split(procs.Run(t, "rampartctl", "proxy-status", "--state-dir", m.state), "\n") {
			if strings.HasPrefix(line, node+" ") && strings.Contains(line, " SYNCED ") {
				return true
			}
		}
		return false
	})
	listeners := procs.Run(t, "rampartctl", "proxy-config", "default/grpc-client", "listeners", "--state-dir", m.state)
	if !strings.Contains(listeners, "echo.default.svc.cluster.local:9090") {
		t.Fatalf("proxy-config listeners for the proxyless client:\n%s", listeners)
	}
	stop()
	procs.Eventually(t, 10*time.Second, "proxy-status shows the client DISCONNECTED once it exits", func() bool {
		for _, line := range strings.Split(procs.Run(t, "rampartctl", "proxy-status", "--state-dir", m.state), "\n") {
			if strings.HasPrefix(line, node+" ") && strings.Contains(line, " DISCONNECTED ") {
				return true
			}
		}
		return false
	})
}

// buildTestBin builds a test program into dir.
func buildTestBin(t *testing.T, dir, name, pkg string) string {
	t.Helper()
	bin := filepath.Join(dir, name)
	if out, err := exec.Command("go", "build", "-o", bin, pkg).CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, out)
	}
	return bin
}

// startTestBin runs a test program until the test ends, its output in dir/name.log.
func startTestBin(t *testing.T, dir, name, bin string, args ...string) {
	t.Helper()
	f, err := os.Create(filepath.Join(dir, name+".log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		f.Close()
	})
}

// runXDSClient makes n calls, each with the timeout, from a fresh proxyless
// client process.
func runXDSClient(t *testing.T, bin, boot, target string, n int, timeout time.Duration, hdr ...string) []xdsResult {
	t.Helper()
	out, stop := startXDSClient(t, bin, boot, target, n, timeout, 0, hdr...)
	defer stop()
	var rs []xdsResult
	for r := range out {
		rs = append(rs, r)
	}
	if len(rs) != n {
		t.Fatalf("xds-client %s: %d results, want %d: %+v", target, len(rs), n, rs)
	}
	return rs
}

// startXDSClient starts a proxyless client (GRPC_XDS_BOOTSTRAP=boot) making n
// calls (each bounded by timeout), then staying connected for linger; results arrive on the channel,
// closed when the process ends. stop ends it.
func startXDSClient(t *testing.T, bin, boot, target string, n int, timeout, linger time.Duration, hdr ...string) (<-chan xdsResult, func()) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	args := []string{"--target", target, "--n", fmt.Sprint(n), "--linger", linger.String(), "--timeout", timeout.String()}
	for _, h := range hdr {
		args = append(args, "--header", h)
	}
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(os.Environ(), "GRPC_XDS_BOOTSTRAP="+boot)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	pipe, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	out := make(chan xdsResult, n+1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer close(out)
		sc := bufio.NewScanner(pipe)
		for sc.Scan() {
			var r xdsResult
			if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
				r = xdsResult{Code: "BadOutput", Err: sc.Text()}
			}
			out <- r
		}
		if err := cmd.Wait(); err != nil && ctx.Err() == nil {
			out <- xdsResult{Code: "Exited", Err: fmt.Sprintf("%v: %s", err, stderr.String())}
		}
	}()
	return out, func() {
		cancel()
		<-done
	}
}
