package e2e

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rampart-mesh/rampart/test/internal/procs"
)

// Transparent capture, as in Kubernetes: two network namespaces joined by a
// veth pair; 'rampart-sidecar init' installs the iptables REDIRECT rules; the
// client app calls the service's own address and port with no proxy settings,
// and its sidecar (running as the excluded uid) finds the original destination,
// routes it and speaks mTLS to the server's sidecar, which the server's STRICT
// PeerAuthentication requires. A destination outside the mesh passes through.
// The same holds over IPv6: the namespaces have IPv6 addresses too, the apps
// listen on both families, and traffic that init's ip6tables rules did not
// capture would reach them without mTLS or authorization.
func TestTransparentCapture(t *testing.T) {
	if testing.Short() {
		t.Skip("needs network namespaces")
	}
	if os.Geteuid() != 0 {
		t.Skip("transparent capture needs root (network namespaces and iptables); run as root to test it")
	}
	for _, tool := range []string{"ip", "iptables", "ip6tables", "setpriv", "curl"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("transparent capture test needs %s (apt-get install iproute2 iptables util-linux curl): %v", tool, err)
		}
	}
	bin := procs.BinDir(t)
	suffix := fmt.Sprint(os.Getpid() % 100000)
	nsA, nsB := "rmpa"+suffix, "rmpb"+suffix
	subnet := fmt.Sprintf("10.%d.%d", 100+os.Getpid()%100, os.Getpid()%200)
	ipA, ipB := subnet+".1", subnet+".2"
	subnet6 := fmt.Sprintf("fd00:%x:%x::", 100+os.Getpid()%100, os.Getpid()%200)
	ipB6 := subnet6 + "2"
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	if out, err := exec.Command("ip", "netns", "add", nsA).CombinedOutput(); err != nil {
		t.Skipf("cannot create network namespaces here: %v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", nsA).Run() })
	run("ip", "netns", "add", nsB)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", nsB).Run() })
	run("ip", "link", "add", "va"+suffix, "type", "veth", "peer", "name", "vb"+suffix)
	run("ip", "link", "set", "va"+suffix, "netns", nsA)
	run("ip", "link", "set", "vb"+suffix, "netns", nsB)
	run("ip", "-n", nsA, "addr", "add", ipA+"/24", "dev", "va"+suffix)
	run("ip", "-n", nsB, "addr", "add", ipB+"/24", "dev", "vb"+suffix)
	run("ip", "-n", nsA, "addr", "add", subnet6+"1/64", "dev", "va"+suffix, "nodad")
	run("ip", "-n", nsB, "addr", "add", ipB6+"/64", "dev", "vb"+suffix, "nodad")
	// Link-local addresses of their own (the kernel's would be tentative for a while).
	run("ip", "-n", nsA, "addr", "add", "fe80::a/64", "dev", "va"+suffix, "nodad")
	run("ip", "-n", nsB, "addr", "add", "fe80::b/64", "dev", "vb"+suffix, "nodad")
	for _, ns := range []string{nsA, nsB} {
		run("ip", "-n", ns, "link", "set", "lo", "up")
	}
	run("ip", "-n", nsA, "link", "set", "va"+suffix, "up")
	run("ip", "-n", nsB, "link", "set", "vb"+suffix, "up")

	dir := procs.ShortTempDir(t)
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "cfg")
	if err := os.MkdirAll(cfg, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(cfg, "mesh.yaml"), []byte(`apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: b}
spec:
  hosts: [b.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - {number: 9080, name: http, protocol: HTTP}
  - {number: 9081, name: http-alt, protocol: HTTP}
  - {number: 9082, name: http-local, protocol: HTTP}
  - {number: 9083, name: http-denied, protocol: HTTP}
  - {number: 9084, name: http-strict, protocol: HTTP}
  - {number: 15006, name: http-inbound, protocol: HTTP}
  workloadSelector: {labels: {app: b}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: b}
spec: {address: `+ipB+`, labels: {app: b}, serviceAccount: b}
---
# b again, at its IPv6 address: the mesh's own traffic over IPv6.
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: b6}
spec:
  hosts: [b6.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9080, name: http, protocol: HTTP}]
  workloadSelector: {labels: {app: b6}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: b6}
spec: {address: "`+ipB6+`", labels: {app: b6}, serviceAccount: b}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: rampart-system}
spec: {mtls: {mode: STRICT}}
---
# The port a policy names is the one the client dialled (9080), not the
# inbound listener's 15006 that iptables redirected the connection to.
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-details-1, namespace: default}
spec:
  selector: {matchLabels: {app: b}}
  action: DENY
  rules: [{to: [{operation: {ports: ["9080"], paths: [/details/1]}}]}]
---
# b's other port 9081 takes plaintext (a migration): its passthrough meets
# its own mode, not the app's port's STRICT.
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: b-ports, namespace: default}
spec:
  selector: {matchLabels: {app: b}}
  mtls: {mode: STRICT}
  portLevelMtls: {9081: {mode: PERMISSIVE}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-9083, namespace: default}
spec:
  selector: {matchLabels: {app: b}}
  action: DENY
  rules: [{to: [{operation: {ports: ["9083"]}}]}]
`), 0o644); err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(dir, "state")
	start := func(name string, args ...string) {
		t.Helper()
		logf, err := os.Create(filepath.Join(dir, name+".log"))
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(args[0], args[1:]...)
		cmd.Stdout, cmd.Stderr = logf, logf
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
		if err := cmd.Start(); err != nil {
			t.Fatalf("start %s: %v", name, err)
		}
		t.Cleanup(func() {
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			_ = cmd.Wait()
			logf.Close()
			if t.Failed() {
				data, _ := os.ReadFile(logf.Name())
				t.Logf("---- %s ----\n%s", name, data)
			}
		})
	}
	cp := ipA + ":15012"
	start("rampartd", "ip", "netns", "exec", nsA, filepath.Join(bin, "rampartd"), "--state-dir", state, "--listen", cp, "--monitoring-listen", "", "--config-dir", cfg)
	procs.Eventually(t, 20*time.Second, "rampartd's CA", func() bool {
		_, err := os.Stat(filepath.Join(state, "rampartd.json"))
		return err == nil
	})
	root := filepath.Join(dir, "root.pem")
	if err := os.WriteFile(root, []byte(procs.Run(t, "rampartctl", "ca", "root", "--state-dir", state)), 0o644); err != nil {
		t.Fatal(err)
	}
	token := func(sa string) string {
		p := filepath.Join(dir, sa+".token")
		if err := os.WriteFile(p, []byte(procs.Run(t, "rampartctl", "token", "create", "--state-dir", state, "-n", "default", "--service-account", sa)), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	// Capture: every port of b inbound but the service outside the mesh; a's
	// outbound except the control plane.
	run("ip", "netns", "exec", nsB, filepath.Join(bin, "rampart-sidecar"), "init", "--inbound-ports", "*", "--exclude-inbound-ports", "7000")
	run("ip", "netns", "exec", nsA, filepath.Join(bin, "rampart-sidecar"), "init", "--exclude-outbound-ports", "15012")
	asProxy := []string{"setpriv", "--reuid=1337", "--regid=1337", "--clear-groups"}
	start("sidecar-b", append(append([]string{"ip", "netns", "exec", nsB}, asProxy...), filepath.Join(bin, "rampart-sidecar"),
		"--control-plane", cp, "--root-cert", root, "--token-file", token("b"), "--workload", "default/b", "--labels", "app=b",
		"--inbound-listen", ":15006", "--transparent", "--app", "127.0.0.1:9080", "--metrics-listen", "")...)
	start("sidecar-a", append(append([]string{"ip", "netns", "exec", nsA}, asProxy...), filepath.Join(bin, "rampart-sidecar"),
		"--control-plane", cp, "--root-cert", root, "--token-file", token("a"), "--workload", "default/a", "--labels", "app=a",
		"--outbound-listen", ":15001", "--transparent", "--access-log", "all", "--metrics-listen", "")...)
	// b's app listens on every address, as apps in pods do: only capture
	// keeps a client from reaching it around the sidecar.
	start("app-b", "ip", "netns", "exec", nsB, filepath.Join(bin, "bookinfo"), "details", "--listen", ":9080")
	start("outside", "ip", "netns", "exec", nsB, filepath.Join(bin, "bookinfo"), "ratings", "--listen", ":7000")
	// b's pod's other services: one on every address (9081), one denied to
	// everyone (9083), one on loopback only (an admin port, 9082).
	start("alt", "ip", "netns", "exec", nsB, filepath.Join(bin, "bookinfo"), "ratings", "--listen", ":9081")
	start("denied", "ip", "netns", "exec", nsB, filepath.Join(bin, "bookinfo"), "ratings", "--listen", ":9083")
	start("strict", "ip", "netns", "exec", nsB, filepath.Join(bin, "bookinfo"), "ratings", "--listen", ":9084")
	start("local-only", "ip", "netns", "exec", nsB, filepath.Join(bin, "bookinfo"), "ratings", "--listen", "127.0.0.1:9082")

	curl := func(args ...string) string {
		out, _ := exec.Command("ip", append([]string{"netns", "exec", nsA, "curl", "-s", "-m", "5"}, args...)...).CombinedOutput()
		return string(out)
	}
	// The app calls b at its own address, no proxy configured: captured, routed, mTLS.
	procs.Eventually(t, 30*time.Second, "a's app reaches b through both sidecars", func() bool {
		return strings.Contains(curl("--resolve", "b:9080:"+ipB, "http://b:9080/details/0"), "William Shakespeare")
	})
	if out := curl("-w", " %{http_code}", "--resolve", "b:9080:"+ipB, "http://b:9080/details/1"); !strings.HasSuffix(out, " 403") {
		t.Errorf("a DENY on port 9080 did not stop a request to b:9080 (authorization saw another port): %q", out)
	}
	// Without the sidecars' mTLS the STRICT port refuses: a plaintext client
	// from the proxy's own uid (not captured) is reset.
	for _, ip := range []string{ipB, ipB6} {
		direct, _ := exec.Command("ip", "netns", "exec", nsA, "setpriv", "--reuid=1337", "--regid=1337", "--clear-groups",
			"curl", "-s", "-m", "5", "http://"+net.JoinHostPort(ip, "9080")+"/details/0").CombinedOutput()
		if strings.Contains(string(direct), "Shakespeare") {
			t.Errorf("an uncaptured plaintext client reached b's STRICT port at %s: %s", ip, direct)
		}
	}
	// Over IPv6 the app's call is captured and authorized as well: the DENY
	// answers, where an uncaptured call would reach b's app.
	if out := curl("-w", " %{http_code}", "--resolve", "b:9080:["+ipB6+"]", "http://b:9080/details/1"); !strings.HasSuffix(out, " 403") {
		t.Errorf("a call to b at its IPv6 address was not captured and authorized: %q", out)
	}
	// The mesh's traffic to b's IPv6 address: mTLS and authorization at b's
	// inbound over IPv6.
	if out := curl("--resolve", "b6:9080:["+ipB6+"]", "http://b6:9080/details/0"); !strings.Contains(out, "William Shakespeare") {
		t.Errorf("a → b over IPv6 through both sidecars: %q", out)
	}
	if out := curl("-w", " %{http_code}", "--resolve", "b6:9080:["+ipB6+"]", "http://b6:9080/details/1"); !strings.HasSuffix(out, " 403") {
		t.Errorf("the DENY did not apply to a mesh request over IPv6: %q", out)
	}
	// With every port of b captured, a mesh request to another of b's ports
	// is authorized as a TCP connection to that port and passed to b's
	// address there (Istio's inbound passthrough): 9081 answers, 9083 is
	// denied by a DENY on its port, 9082 listens on loopback only and stays
	// out of reach, and a connection straight to the inbound listener
	// (15006: checked as 15006, it would dodge the DENY on 9080) is refused.
	if out := curl("--resolve", "b:9081:"+ipB, "http://b:9081/ratings/0"); !strings.Contains(out, "Reviewer1") {
		t.Errorf("b:9081 through the inbound passthrough: %q", out)
	}
	plain := func(url string) string {
		out, _ := exec.Command("ip", "netns", "exec", nsA, "setpriv", "--reuid=1337", "--regid=1337", "--clear-groups",
			"curl", "-s", "-m", "5", url).CombinedOutput()
		return string(out)
	}
	if out := plain("http://" + ipB + ":9081/ratings/0"); !strings.Contains(out, "Reviewer1") {
		t.Errorf("plaintext to b:9081, PERMISSIVE by portLevelMtls: %q", out)
	}
	// 9084 has no DENY: the mesh reaches it, plaintext does not (STRICT,
	// the workload's mode).
	if out := curl("--resolve", "b:9084:"+ipB, "http://b:9084/ratings/0"); !strings.Contains(out, "Reviewer1") {
		t.Errorf("b:9084 through the mesh: %q", out)
	}
	if out := plain("http://" + ipB + ":9084/ratings/0"); strings.Contains(out, "Reviewer") {
		t.Errorf("plaintext to b:9084 (STRICT, the workload's mode) was served: %q", out)
	}
	for _, port := range []string{"9082", "9083", "15006"} {
		out := curl("-w", " %{http_code}", "--resolve", "b:"+port+":"+ipB, "http://b:"+port+"/details/1")
		if strings.Contains(out, "Shakespeare") || strings.Contains(out, "Reviewer") || strings.Contains(out, "404") || !strings.HasSuffix(out, " 503") {
			t.Errorf("b:%s/details/1 = %q; want 503 (refused at b's inbound)", port, out)
		}
	}
	logB, _ := os.ReadFile(filepath.Join(dir, "sidecar-b.log"))
	if !strings.Contains(string(logB), "not redirected by iptables") || !strings.Contains(string(logB), "connection denied") {
		t.Errorf("sidecar b does not say why it refused the connections to 15006 and 9083:\n%s", logB)
	}
	// A connection straight to a's outbound listener at a link-local address
	// (a neighbour's, not redirected) is closed, not passed through to
	// itself over and over.
	exec.Command("ip", "netns", "exec", nsB, "setpriv", "--reuid=1337", "--regid=1337", "--clear-groups",
		"curl", "-s", "-m", "3", "http://[fe80::a%25vb"+suffix+"]:15001/").Run()
	// The app's calls to link-local addresses are not redirected: they
	// cannot be mesh services, and would fail at ::1.
	if out := curl("http://[fe80::b%25va" + suffix + "]:7000/ratings/0"); !strings.Contains(out, "Reviewer1") {
		t.Errorf("a link-local destination: %q", out)
	}
	// A destination outside the mesh passes through untouched, either family.
	for _, ip := range []string{ipB, ipB6} {
		if out := curl("http://" + net.JoinHostPort(ip, "7000") + "/ratings/0"); !strings.Contains(out, "Reviewer1") {
			t.Errorf("passthrough to a service outside the mesh at %s: %q", ip, out)
		}
	}
	logA, _ := os.ReadFile(filepath.Join(dir, "sidecar-a.log"))
	if !strings.Contains(string(logA), "cluster=outbound|9080||b.default.svc.cluster.local") || !strings.Contains(string(logA), "cluster=PassthroughCluster") {
		t.Errorf("sidecar a's access log lacks the mesh route or the passthrough:\n%s", logA)
	}
	if n := strings.Count(string(logA), "fe80::a"); n > 0 {
		t.Errorf("sidecar a forwarded a direct connection to its own link-local address (%d log lines): a loop", n)
	}
	if !strings.Contains(string(logA), "cluster=outbound|9080||b6.default.svc.cluster.local") {
		t.Errorf("sidecar a's access log lacks the IPv6 mesh route:\n%s", logA)
	}
	if !strings.Contains(string(logA), "upstream=["+ipB6+"]:7000") {
		t.Errorf("sidecar a's access log lacks the IPv6 passthrough to [%s]:7000:\n%s", ipB6, logA)
	}
}
