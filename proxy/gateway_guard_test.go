package proxy

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/rampart-mesh/rampart/authz"
	"github.com/rampart-mesh/rampart/ca"
	"github.com/rampart-mesh/rampart/ca/agent"
	"github.com/rampart-mesh/rampart/ca/catest"
	"github.com/rampart-mesh/rampart/proxy/xds"
)

// An AuthorizationPolicy on the gateway workload that denies one port
// (to.operation.ports, destination.port) must deny requests arriving on that
// gateway port, as Envoy's RBAC filter on the gateway's listener does: the
// guard gets the gateway listener's address as the destination.
func TestGatewayGuardSeesDestinationPort(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	policies := fmt.Sprintf(`apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-all, namespace: foo}
spec: {rules: [{}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-gateway-port, namespace: foo}
spec:
  action: DENY
  rules: [{to: [{operation: {ports: ["%d"]}}]}]
`, port)
	a := catest.Authority(t)
	p, err := New(Config{
		Agent:    agent.Config{ControlPlane: "127.0.0.1:1", RootCerts: a.Roots(), Identity: ca.Identity{Namespace: "foo", ServiceAccount: "httpbin"}},
		Outbound: &OutboundConfig{GatewayListen: []string{fmt.Sprintf("127.0.0.1:%d", port)}},
		Workload: testWorkload,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.authn.stop)
	wb := authz.WireBundle{Revision: "v1", Modules: modules(t, policies), JWTRules: rulesJSON(t), Peer: json.RawMessage(`{"mode":"PERMISSIVE"}`)}
	if err := p.apply(t.Context(), wb, p.authn, p.peerMode); err != nil {
		t.Fatal(err)
	}
	if err := p.listenOutbound(); err != nil {
		t.Fatal(err)
	}
	install, err := p.outs[0].Prepare(&xds.Resources{})
	if err != nil {
		t.Fatal(err)
	}
	install()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = p.outs[0].Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	c := &http.Client{Timeout: 5 * time.Second}
	var resp *http.Response
	for range 50 {
		resp, err = c.Get(fmt.Sprintf("http://127.0.0.1:%d/anything", port))
		if err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("request on gateway port %d, which a DENY policy names: status %d (flags %q), want 403", port, resp.StatusCode, resp.Header.Get("x-rampart-response-flags"))
	}
}

// A DENY on the source's ipBlocks denies at the gateway: the guard decides
// on the connection's attributes.
func TestGatewayGuardSourceIPBlocks(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	policies := (`apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-all, namespace: foo}
spec: {rules: [{}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-gateway-port, namespace: foo}
spec:
  action: DENY
  rules: [{from: [{source: {ipBlocks: ["127.0.0.1"]}}]}]
`)
	a := catest.Authority(t)
	p, err := New(Config{
		Agent:    agent.Config{ControlPlane: "127.0.0.1:1", RootCerts: a.Roots(), Identity: ca.Identity{Namespace: "foo", ServiceAccount: "httpbin"}},
		Outbound: &OutboundConfig{GatewayListen: []string{fmt.Sprintf("127.0.0.1:%d", port)}},
		Workload: testWorkload,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.authn.stop)
	wb := authz.WireBundle{Revision: "v1", Modules: modules(t, policies), JWTRules: rulesJSON(t), Peer: json.RawMessage(`{"mode":"PERMISSIVE"}`)}
	if err := p.apply(t.Context(), wb, p.authn, p.peerMode); err != nil {
		t.Fatal(err)
	}
	if err := p.listenOutbound(); err != nil {
		t.Fatal(err)
	}
	install, err := p.outs[0].Prepare(&xds.Resources{})
	if err != nil {
		t.Fatal(err)
	}
	install()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = p.outs[0].Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	c := &http.Client{Timeout: 5 * time.Second}
	var resp *http.Response
	for range 50 {
		resp, err = c.Get(fmt.Sprintf("http://127.0.0.1:%d/anything", port))
		if err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("request on gateway port %d, which a DENY policy names: status %d (flags %q), want 403", port, resp.StatusCode, resp.Header.Get("x-rampart-response-flags"))
	}
}
