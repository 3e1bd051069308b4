package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// listenIn opens TCP listeners inside network namespace ns.
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
		l, err := net.Listen("tcp4", a)
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
// local, it never passes PREROUTING's RAMPART_INBOUND.
func TestInitSendsSidecarToOwnPodToInbound(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	for _, tool := range []string{"ip", "iptables", "setpriv", "curl"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skip(tool)
		}
	}
	ns := fmt.Sprintf("rvgw%d", os.Getpid()%100000)
	podIP := "10.231.77.1"
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
	run("ip", "-n", ns, "link", "set", "eth0", "up")

	rules, err := captureRules(initConfig{proxyUID: 1337, outboundPort: 15001, inboundPort: 15006, inboundPorts: "9080"})
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range rules {
		out, err := exec.Command("ip", append([]string{"netns", "exec", ns, "iptables"}, r...)...).CombinedOutput()
		if err != nil && i >= 6 {
			t.Fatalf("iptables %v: %v\n%s", r, err, out)
		}
	}
	names := []string{"app", "outbound", "inbound"}
	ls := listenIn(t, ns, "0.0.0.0:9080", "0.0.0.0:15001", "0.0.0.0:15006")
	for i, l := range ls {
		name := names[i]
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, name) })}
		go srv.Serve(l)
		t.Cleanup(func() { srv.Close() })
	}
	curlAs := func(uid string) string {
		args := []string{"netns", "exec", ns}
		if uid != "" {
			args = append(args, "setpriv", "--reuid="+uid, "--regid="+uid, "--clear-groups")
		}
		args = append(args, "curl", "-s", "-m", "3", "http://"+podIP+":9080/")
		out, _ := exec.Command("ip", args...).CombinedOutput()
		return strings.TrimSpace(string(out))
	}
	// The app's own call is captured (sanity).
	if got := curlAs("1000"); got != "outbound" {
		t.Fatalf("app (uid 1000) to %s:9080 reached %q, want the outbound listener", podIP, got)
	}
	// The sidecar's upstream connection to its own pod's endpoint.
	if got := curlAs("1337"); got != "inbound" {
		t.Errorf("sidecar (uid 1337) to its own pod %s:9080 reached %q, want the inbound listener (Istio's ISTIO_IN_REDIRECT rule)", podIP, got)
	}
}
