package proxy

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"

	"github.com/rampart-mesh/rampart/ca"
	"github.com/rampart-mesh/rampart/ca/agent"
	"github.com/rampart-mesh/rampart/ca/catest"
)

// With both the inbound path and gateway listeners, the gateway's decisions go
// to the one decision log too, with the sidecar's labels.
func TestGatewayDecisionsLoggedWithInbound(t *testing.T) {
	path := filepath.Join(t.TempDir(), "decisions.log")
	a := catest.Authority(t)
	p, err := New(Config{
		Agent:    agent.Config{ControlPlane: "127.0.0.1:1", RootCerts: a.Roots(), Identity: ca.Identity{Namespace: "foo", ServiceAccount: "httpbin"}},
		Inbound:  &InboundConfig{Listen: "127.0.0.1:0", App: "127.0.0.1:8080", Workload: testWorkload, DecisionLog: path},
		Outbound: &OutboundConfig{GatewayListen: []string{"127.0.0.1:0"}, DecisionLog: path},
		Version:  "v9.9.9",
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.authn.stop)
	if p.dlog == nil || p.guard == nil {
		t.Fatalf("dlog %v, guard %v: want both", p.dlog, p.guard)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- p.dlog.Run(ctx) }()
	// No bundle yet: the gateway denies, and the denial is logged.
	r := httptest.NewRequest("GET", "http://httpbin.foo/admin", nil)
	r.Header.Set("x-request-id", "gw-1")
	if p.guard.Guard(httptest.NewRecorder(), r) {
		t.Fatal("the gateway allowed a request without a policy bundle")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := bytes.Split(bytes.TrimSpace(raw), []byte("\n"))
	if len(lines) != 1 || len(lines[0]) == 0 {
		t.Fatalf("%d records, want the gateway's denial:\n%s", len(lines), raw)
	}
	var rec struct {
		Labels  map[string]string `json:"labels"`
		Rampart struct {
			RequestID           string `json:"request_id"`
			Allowed             bool   `json:"allowed"`
			DestinationWorkload string `json:"destination_workload"`
		} `json:"rampart"`
	}
	if err := json.Unmarshal(lines[0], &rec); err != nil {
		t.Fatal(err)
	}
	if rec.Rampart.RequestID != "gw-1" || rec.Rampart.Allowed || rec.Rampart.DestinationWorkload != "foo/httpbin" {
		t.Errorf("record rampart = %+v, want gw-1 denied for foo/httpbin", rec.Rampart)
	}
	if rec.Labels["version"] != "v9.9.9" {
		t.Errorf("labels = %v, want version v9.9.9", rec.Labels)
	}
}

func TestDecisionLogPathsMustAgree(t *testing.T) {
	a := catest.Authority(t)
	dir := t.TempDir()
	_, err := New(Config{
		Agent:    agent.Config{ControlPlane: "127.0.0.1:1", RootCerts: a.Roots(), Identity: ca.Identity{Namespace: "foo", ServiceAccount: "httpbin"}},
		Inbound:  &InboundConfig{Listen: "127.0.0.1:0", App: "127.0.0.1:8080", Workload: testWorkload, DecisionLog: dir + "/a.log"},
		Outbound: &OutboundConfig{GatewayListen: []string{"127.0.0.1:0"}, DecisionLog: dir + "/b.log"},
	})
	if err == nil {
		t.Error("New with two decision log files succeeded, want an error")
	}
}
