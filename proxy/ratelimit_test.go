package proxy

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"slices"
	"testing"

	"github.com/rampart-mesh/rampart/authz"
	"github.com/rampart-mesh/rampart/ca"
	"github.com/rampart-mesh/rampart/ca/agent"
	"github.com/rampart-mesh/rampart/ca/catest"
)

// A root-namespace RateLimitPolicy applies to every workload, the ingress
// gateway's too: rampartd puts its limits in the gateway's bundle, and the
// gateway's guard enforces them, with or without an inbound path beside it.
func TestGatewayEnforcesRateLimits(t *testing.T) {
	const allowAll = `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-all, namespace: foo}
spec: {rules: [{}]}
`
	tests := []struct {
		name    string
		inbound bool
	}{
		{"gateway only", false},
		{"gateway and inbound", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := catest.Authority(t)
			cfg := Config{
				Agent:    agent.Config{ControlPlane: "127.0.0.1:1", RootCerts: a.Roots(), Identity: ca.Identity{Namespace: "foo", ServiceAccount: "httpbin"}},
				Outbound: &OutboundConfig{GatewayListen: []string{"127.0.0.1:0"}},
				Workload: testWorkload,
			}
			if tt.inbound {
				cfg.Inbound = &InboundConfig{Listen: "127.0.0.1:0", App: "127.0.0.1:8080", Workload: testWorkload}
			}
			p, err := New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(p.authn.stop)
			wb := authz.WireBundle{Revision: "v1", Modules: modules(t, allowAll), JWTRules: rulesJSON(t), Peer: json.RawMessage(`{"mode":"PERMISSIVE"}`),
				RateLimits: []authz.RateLimit{{ID: "rampart-system/rl/all", Key: "Shared", Requests: 2, Period: "1h0m0s", Burst: 2}}}
			if err := p.apply(t.Context(), wb, p.authn, p.peerMode); err != nil {
				t.Fatal(err)
			}
			var got []int
			for range 3 {
				w := httptest.NewRecorder()
				if p.guard.Guard(w, httptest.NewRequest("GET", "http://httpbin.foo/get", nil)) {
					got = append(got, http.StatusOK)
					continue
				}
				got = append(got, w.Code)
				if w.Code == http.StatusTooManyRequests && w.Header().Get("x-envoy-ratelimited") != "true" {
					t.Errorf("429 without x-envoy-ratelimited: %v", w.Header())
				}
			}
			if want := []int{200, 200, 429}; !slices.Equal(got, want) {
				t.Errorf("3 requests through the gateway under a limit of 2 per hour: %v; want %v", got, want)
			}
		})
	}
}
