package proxy

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/rampart-mesh/rampart/authz"
	"github.com/rampart-mesh/rampart/ca"
	"github.com/rampart-mesh/rampart/ca/agent"
	"github.com/rampart-mesh/rampart/ca/catest"
	"github.com/rampart-mesh/rampart/proxy/xds"
)

// A gateway's guard decides on the request's connection as Envoy's RBAC
// filter on the gateway listener does: a DENY on the gateway's port
// (to.operation.ports, destination.port: the guard gets the listener's
// address) or on the source's ipBlocks denies; without it, the allow-all
// policy lets the request through.
func TestGatewayGuardConnectionAttributes(t *testing.T) {
	for _, tc := range []struct {
		name string
		deny string // the DENY rule, PORT the gateway's port; "" none
		want int
	}{
		{"destination port", `[{to: [{operation: {ports: ["PORT"]}}]}]`, http.StatusForbidden},
		{"source ipBlocks", `[{from: [{source: {ipBlocks: ["127.0.0.1"]}}]}]`, http.StatusForbidden},
		{"another port", `[{to: [{operation: {ports: ["1"]}}]}]`, http.StatusNotFound}, // allowed; no route: NR
	} {
		t.Run(tc.name, func(t *testing.T) {
			port := freePort(t)
			policies := "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: allow-all, namespace: foo}\nspec: {rules: [{}]}\n"
			if tc.deny != "" {
				policies += "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny, namespace: foo}\nspec:\n  action: DENY\n  rules: " +
					strings.ReplaceAll(tc.deny, "PORT", fmt.Sprint(port)) + "\n"
			}
			startGateway(t, port, policies)
			if got := getGateway(t, port); got != tc.want {
				t.Errorf("status %d, want %d", got, tc.want)
			}
		})
	}
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startGateway runs a proxy whose only listener is a gateway on port, with
// the policies compiled for it and no routes.
func startGateway(t *testing.T, port int, policies string) {
	t.Helper()
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
}

// getGateway asks the gateway on port once it listens, and returns the status.
func getGateway(t *testing.T, port int) int {
	t.Helper()
	c := &http.Client{Timeout: 5 * time.Second}
	var resp *http.Response
	var err error
	for range 50 {
		if resp, err = c.Get(fmt.Sprintf("http://127.0.0.1:%d/anything", port)); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}
