package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/rampart-mesh/rampart/proxy/listener"
)

// listenIn opens TCP listeners inside network namespace ns (dual-stack for
// "[::]:PORT").
func listenIn(t *testing.T, ns string, addrs ...string) []net.Listener {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	target, err := os.Open("/var/run/netns/" + ns)
	if err != nil {
		t.Fatal(err)
	}
	defer target.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			panic(err) // never leave the thread in the test namespace
		}
	}()
	var out []net.Listener
	for _, a := range addrs {
		l, err := net.Listen("tcp", a)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, l)
	}
	return out
}

// Istio's istio-iptables sends the sidecar's own connections to its pod's IP
// over loopback to the inbound listener (ISTIO_OUTPUT:
// `! -d 127.0.0.1/32 -o lo -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT`):
// when the app calls a service whose endpoint is its own pod, the sidecar's
// (mTLS) upstream connection reaches the inbound listener, which terminates
// mTLS and applies authorization, rather than land on the app's port: being
// local, it never passes PREROUTING's RAMPART_INBOUND. The same holds for
// IPv6 (ip6tables), where an uncaptured family would bypass the sidecar
// altogether; each listener also reports the original destination the kernel
// kept for the connection (SO_ORIGINAL_DST, IP6T_SO_ORIGINAL_DST).
func TestInitCapturesBothFamilies(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	for _, tool := range []string{"ip", "iptables", "ip6tables", "setpriv", "curl"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skip(tool)
		}
	}
	ns := fmt.Sprintf("rvgw%d", os.Getpid()%100000)
	podIP, podIP6, excluded6 := "10.231.77.1", "fd00:231:77::1", "fd00:231:77::2"
	run := func(args ...string) string {
		t.Helper()
		out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	run("ip", "netns", "add", ns)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	run("ip", "-n", ns, "link", "set", "lo", "up")
	run("ip", "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1")
	run("ip", "-n", ns, "link", "set", "eth1", "up")
	run("ip", "-n", ns, "addr", "add", podIP+"/24", "dev", "eth0")
	run("ip", "-n", ns, "addr", "add", podIP6+"/64", "dev", "eth0", "nodad")
	run("ip", "-n", ns, "addr", "add", excluded6+"/64", "dev", "eth0", "nodad")
	run("ip", "-n", ns, "link", "set", "eth0", "up")

	c := initConfig{proxyUID: 1337, outboundPort: 15001, inboundPort: 15006, inboundPorts: "9080", excludeOutCIDRs: []string{excluded6 + "/128"}}
	for _, fam := range []family{ipv4, ipv6} {
		rules, err := captureRules(c, fam)
		if err != nil {
			t.Fatal(err)
		}
		// Twice: a second run replaces the first's rules.
		for range 2 {
			for i, r := range append(cleanupRules(), rules...) {
				out, err := exec.Command("ip", append([]string{"netns", "exec", ns, fam.tool}, r...)...).CombinedOutput()
				if err != nil && i >= len(cleanupRules()) {
					t.Fatalf("%s %v: %v\n%s", fam.tool, r, err, out)
				}
			}
		}
	}
	names := []string{"app", "outbound", "inbound"}
	ls := listenIn(t, ns, "[::]:9080", "[::]:15001", "[::]:15006")
	for i, l := range ls {
		name := names[i]
		srv := &http.Server{
			Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				dst, err := listener.OriginalDst(r.Context().Value(connKey{}).(net.Conn))
				if err != nil {
					http.Error(w, err.Error(), 500)
					return
				}
				fmt.Fprintf(w, "%s %s", name, dst)
			}),
			ConnContext: func(ctx context.Context, c net.Conn) context.Context { return context.WithValue(ctx, connKey{}, c) },
		}
		go srv.Serve(l)
		t.Cleanup(func() { srv.Close() })
	}
	curlAs := func(uid, host string) string {
		args := []string{"netns", "exec", ns}
		if uid != "" {
			args = append(args, "setpriv", "--reuid="+uid, "--regid="+uid, "--clear-groups")
		}
		args = append(args, "curl", "-s", "-m", "3", "http://"+net.JoinHostPort(host, "9080")+"/")
		out, _ := exec.Command("ip", args...).CombinedOutput()
		return strings.TrimSpace(string(out))
	}
	for _, tc := range []struct {
		uid, host, want, why string
	}{
		{"1000", podIP, "outbound", "the app's own call is captured"},
		{"1000", podIP6, "outbound", "the app's own call over IPv6 is captured"},
		{"1337", podIP, "inbound", "the sidecar's upstream connection to its own pod goes to the inbound listener (Istio's ISTIO_IN_REDIRECT rule)"},
		{"1337", podIP6, "inbound", "the same over IPv6"},
		{"1000", excluded6, "app", "--exclude-outbound-ip-ranges leaves the range alone"},
	} {
		want := tc.want + " " + net.JoinHostPort(tc.host, "9080")
		if got := curlAs(tc.uid, tc.host); got != want {
			t.Errorf("uid %s to [%s]:9080 got %q, want %q: %s", tc.uid, tc.host, got, want, tc.why)
		}
	}
}

type connKey struct{}

func TestCaptureRules(t *testing.T) {
	base := initConfig{proxyUID: 1337, outboundPort: 15001, inboundPort: 15006}
	text := func(c initConfig, fam family) string {
		t.Helper()
		rules, err := captureRules(c, fam)
		if err != nil {
			t.Fatal(err)
		}
		var b strings.Builder
		for _, r := range rules {
			b.WriteString(strings.TrimPrefix(strings.Join(r, " "), "-t nat ") + "\n")
		}
		return b.String()
	}
	all := base
	all.inboundPorts = "*"
	all.excludeInPort = []int{15090, 15021}
	all.excludeOutCIDRs = []string{"169.254.169.254/32", "fd00::5/128", "10.1.2.3/8"}
	v4, v6 := text(all, ipv4), text(all, ipv6)
	for _, fam := range []struct {
		name, rules string
		want, not   []string
	}{
		{"IPv4", v4, []string{
			"-A RAMPART_INBOUND -p tcp --dport 15090 -j RETURN\n-A RAMPART_INBOUND -p tcp --dport 15021 -j RETURN\n-A RAMPART_INBOUND -p tcp ! -d 127.0.0.0/8 -j REDIRECT --to-ports 15006",
			"-A RAMPART_OUTPUT -d 169.254.169.254/32 -j RETURN",
			"-A RAMPART_OUTPUT -d 10.0.0.0/8 -j RETURN",
			"-A RAMPART_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN\n-A RAMPART_OUTPUT ! -d 127.0.0.0/8 -o lo -p tcp -m owner --uid-owner 1337 -j RAMPART_INBOUND",
		}, []string{"fd00", "::1", "fe80"}},
		{"IPv6", v6, []string{
			"-A RAMPART_INBOUND -p tcp ! -d ::1/128 -j REDIRECT --to-ports 15006",
			"-A RAMPART_OUTPUT -d fd00::5/128 -j RETURN",
			"-A RAMPART_OUTPUT -d ::1/128 -j RETURN",
			"-A RAMPART_OUTPUT -d fe80::/10 -j RETURN",
			"-A RAMPART_OUTPUT ! -d ::1/128 -o lo -p tcp -m owner --uid-owner 1337 -j RAMPART_INBOUND",
		}, []string{"127.0.0.0/8", "127.0.0.6", "169.254"}},
	} {
		for _, w := range fam.want {
			if !strings.Contains(fam.rules, w) {
				t.Errorf("%s rules lack %q:\n%s", fam.name, w, fam.rules)
			}
		}
		for _, n := range fam.not {
			if strings.Contains(fam.rules, n) {
				t.Errorf("%s rules name %q, the other family's:\n%s", fam.name, n, fam.rules)
			}
		}
	}
	for _, bad := range []struct {
		c    initConfig
		want string
	}{
		{initConfig{proxyUID: 1337, outboundPort: 15001, inboundPort: 15006, excludeOutCIDRs: []string{"10.0.0.1"}}, `--exclude-outbound-ip-ranges: "10.0.0.1" is not a CIDR`},
		{initConfig{proxyUID: 1337, outboundPort: 15001, inboundPort: 15006, inboundPorts: "9080,15090", excludeInPort: []int{15090}}, "--inbound-ports: 15090 is also in --exclude-inbound-ports"},
		{initConfig{proxyUID: 1337, outboundPort: 15001, inboundPort: 15006, inboundPorts: "*", excludeInPort: []int{0}}, "--exclude-inbound-ports: 0 is not a port"},
		{initConfig{proxyUID: 1337, outboundPort: 15001, inboundPort: 15006, inboundPorts: "http"}, `--inbound-ports: "http" is not a port`},
	} {
		if _, err := captureRules(bad.c, ipv4); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("captureRules(%+v) = %v, want an error with %q", bad.c, err, bad.want)
		}
	}
	if _, err := families("maybe"); err == nil || !strings.Contains(err.Error(), `--ipv6: "maybe"`) {
		t.Errorf("families(maybe) = %v", err)
	}
	ipv6Sysctl = filepath.Join(t.TempDir(), "absent")
	if fams, _ := families("auto"); len(fams) != 1 || fams[0] != ipv4 {
		t.Errorf("auto without kernel IPv6 = %v, want IPv4 only", fams)
	}
	ipv6Sysctl = t.TempDir()
	if fams, _ := families("auto"); len(fams) != 2 {
		t.Errorf("auto with kernel IPv6 = %v, want both families", fams)
	}
	// --ipv6=off only where no global IPv6 address would be left uncaptured.
	ifInet6 = filepath.Join(t.TempDir(), "if_inet6")
	lines := "00000000000000000000000000000001 01 80 10 80       lo\nfe8000000000000000fc00fffe000001 04 40 20 80     eth0\n"
	if err := os.WriteFile(ifInet6, []byte(lines), 0o644); err != nil {
		t.Fatal(err)
	}
	ifInet6 = filepath.Join(t.TempDir(), "absent")
	if _, err := families("off"); err == nil || !strings.Contains(err.Error(), "cannot tell") {
		t.Errorf("off with kernel IPv6 and no address list = %v, want a refusal", err)
	}
	ifInet6 = filepath.Join(t.TempDir(), "if_inet6")
	if err := os.WriteFile(ifInet6, []byte(lines), 0o644); err != nil {
		t.Fatal(err)
	}
	if fams, err := families("off"); err != nil || len(fams) != 1 {
		t.Errorf("off with loopback and link-local IPv6 only = %v, %v; want IPv4 only", fams, err)
	}
	if err := os.WriteFile(ifInet6, []byte(lines+"fd000000000000000000000000000002 04 40 00 82     eth0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := families("off"); err == nil || !strings.Contains(err.Error(), "fd00::2 on eth0") {
		t.Errorf("off with a global IPv6 address = %v, want a refusal naming fd00::2 on eth0", err)
	}
}

// A captured sidecar forwards to its app on loopback only: init sends its
// connections to the pod's own addresses back to the inbound listener.
func TestLoopbackApp(t *testing.T) {
	for app, ok := range map[string]bool{
		"127.0.0.1:9080": true, "127.0.0.5:9080": true, "[::1]:9080": true, "localhost:http": true,
		"10.0.0.5:9080": false, "[fd00::1]:9080": false, "app:9080": false, "127.0.0.1": false, "127.0.0.1:nope": false,
	} {
		if err := loopbackApp(app); (err == nil) != ok {
			t.Errorf("loopbackApp(%q) = %v, want ok %v", app, err, ok)
		}
	}
}
