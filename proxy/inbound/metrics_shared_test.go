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
