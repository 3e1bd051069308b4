package inbound

import (
	"net"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/rampart-mesh/rampart/authz"
)

// A sidecar with a gateway listener and an inbound listener has a guard and
// an inbound server on one registry; the second used to fail to start on a
// duplicate registration. They share the collectors, and a captured
// listener's app port is parsed as the dialer would (09080 is 9080).
func TestGuardAndInboundShareOneRegistry(t *testing.T) {
	reg := prometheus.NewRegistry()
	eng := authz.New(authz.Config{})
	guard, err := New(Config{GuardOnly: true, Engine: eng, Metrics: reg})
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	in, err := New(Config{Listener: lis, App: "127.0.0.1:09080", Captured: true, Mode: ModeDisable, Engine: eng, Metrics: reg})
	if err != nil {
		t.Fatalf("an inbound server beside a guard on one registry: %v", err)
	}
	if in.refused != guard.refused || in.requests != guard.requests {
		t.Error("the second server did not reuse the registered collectors")
	}
	if in.appPort != 9080 {
		t.Errorf("app port %d, want 9080", in.appPort)
	}
	if _, err := New(Config{Listener: lis, App: "127.0.0.1", Captured: true, Engine: eng, Metrics: prometheus.NewRegistry()}); err == nil {
		t.Error("a captured listener without the app's port started")
	}
}

// addrConn is a connection with the given local and remote addresses.
type addrConn struct {
	net.Conn
	local net.Addr
}

func (c addrConn) LocalAddr() net.Addr  { return c.local }
func (c addrConn) RemoteAddr() net.Addr { return &net.TCPAddr{IP: net.IPv4(10, 9, 9, 9), Port: 40000} }

// A captured listener's decision for each redirected connection: the app's
// port is served; another port is passed to the address the kernel
// redirected to (never the original destination a client wrote: a loopback
// or IPv4-mapped one would reach services bound to loopback only); IPv6 and
// not-redirected connections are refused.
func TestOutsideCapture(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	s, err := New(Config{Listener: lis, App: "127.0.0.1:9080", Captured: true, Mode: ModeDisable, Engine: authz.New(authz.Config{}), Metrics: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	tcp := func(ip string, port int) *net.TCPAddr { return &net.TCPAddr{IP: net.ParseIP(ip), Port: port} }
	for _, tc := range []struct {
		name       string
		own, dst   *net.TCPAddr
		wantPass   string
		wantRefuse bool
	}{
		{name: "the app's port", own: tcp("10.0.0.5", 15006), dst: tcp("10.0.0.5", 9080)},
		{name: "another port", own: tcp("10.0.0.5", 15006), dst: tcp("10.0.0.5", 9081), wantPass: "10.0.0.5:9081"},
		{name: "another port, a loopback destination written by the client", own: tcp("10.0.0.5", 15006), dst: tcp("127.0.0.1", 9082), wantPass: "10.0.0.5:9082"},
		{name: "IPv6, an IPv4-mapped loopback destination", own: tcp("fd00::5", 15006), dst: tcp("127.0.0.1", 9082), wantRefuse: true},
		{name: "IPv6", own: tcp("fd00::5", 15006), dst: tcp("fd00::5", 9081), wantRefuse: true},
		{name: "the sidecar's own connection to its pod", own: tcp("127.0.0.1", 15006), dst: tcp("10.0.0.5", 9081), wantPass: "10.0.0.5:9081"},
		{name: "redirected to loopback with a loopback destination", own: tcp("127.0.0.1", 15006), dst: tcp("127.0.0.1", 9082), wantRefuse: true},
		{name: "not redirected", own: tcp("10.0.0.5", 15006), wantRefuse: true},
	} {
		var local net.Addr
		if tc.dst != nil {
			local = tc.dst
		}
		pass, refuse := s.outsideCapture(addrConn{local: tc.own}, local)
		got := ""
		if pass != nil {
			got = pass.String()
		}
		if refuse != tc.wantRefuse || got != tc.wantPass {
			t.Errorf("%s: passTo %q, refused %v; want %q, %v", tc.name, got, refuse, tc.wantPass, tc.wantRefuse)
		}
	}
}
