package proxy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rampart-mesh/rampart/authz/decisionlog"
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

// The sidecar's decision-log options reach the log: lossless makes a request
// wait for room in a full buffer (and count a timeout when it gives up),
// where the default drops at once; options without a log are refused; a bad
// policy is refused naming its file.
func TestDecisionLogOptions(t *testing.T) {
	a := catest.Authority(t)
	newProxy := func(t *testing.T, o DecisionLogOptions, logged bool) (*Proxy, *prometheus.Registry, error) {
		reg := prometheus.NewRegistry()
		in := &InboundConfig{Listen: "127.0.0.1:0", App: "127.0.0.1:8080", Workload: testWorkload}
		if logged {
			in.DecisionLog = filepath.Join(t.TempDir(), "decisions.log")
		}
		p, err := New(Config{
			Agent:   agent.Config{ControlPlane: "127.0.0.1:1", RootCerts: a.Roots(), Identity: ca.Identity{Namespace: "foo", ServiceAccount: "httpbin"}},
			Inbound: in, Registry: reg, DecisionLogOptions: o,
		})
		if err == nil {
			t.Cleanup(p.authn.stop)
		}
		return p, reg, err
	}
	dropped := func(reg *prometheus.Registry, reason string) float64 {
		mfs, _ := reg.Gather()
		for _, mf := range mfs {
			if mf.GetName() != "decision_logs_dropped_total" {
				continue
			}
			for _, m := range mf.GetMetric() {
				for _, l := range m.GetLabel() {
					if l.GetName() == "reason" && l.GetValue() == reason {
						return m.GetCounter().GetValue()
					}
				}
			}
		}
		return 0
	}
	// The writer is not running, so the buffer (10,000 events) fills up.
	fill := func(t *testing.T, p *Proxy) error {
		for i := range 10_000 {
			if err := p.dlog.Log(t.Context(), decisionlog.Event{DecisionID: fmt.Sprint(i)}); err != nil {
				t.Fatalf("event %d: %v", i, err)
			}
		}
		ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
		defer cancel()
		return p.dlog.Log(ctx, decisionlog.Event{DecisionID: "one too many"})
	}
	t.Run("lossless", func(t *testing.T) {
		p, reg, err := newProxy(t, DecisionLogOptions{Lossless: true}, true)
		if err != nil {
			t.Fatal(err)
		}
		if err := fill(t, p); !errors.Is(err, context.DeadlineExceeded) || dropped(reg, decisionlog.DropTimeout) != 1 || dropped(reg, decisionlog.DropBufferFull) != 0 {
			t.Fatalf("full buffer, lossless: %v; dropped timeout %v, buffer_full %v; want a wait that times out", err, dropped(reg, decisionlog.DropTimeout), dropped(reg, decisionlog.DropBufferFull))
		}
	})
	t.Run("default", func(t *testing.T) {
		p, reg, err := newProxy(t, DecisionLogOptions{}, true)
		if err != nil {
			t.Fatal(err)
		}
		if err := fill(t, p); !errors.Is(err, decisionlog.ErrBufferFull) || dropped(reg, decisionlog.DropBufferFull) != 1 {
			t.Fatalf("full buffer: %v, dropped buffer_full %v; want an immediate drop", err, dropped(reg, decisionlog.DropBufferFull))
		}
	})
	t.Run("options without a log", func(t *testing.T) {
		if _, _, err := newProxy(t, DecisionLogOptions{Lossless: true}, false); err == nil {
			t.Fatal("New accepted decision-log options without a decision log")
		}
	})
	t.Run("bad policy", func(t *testing.T) {
		_, _, err := newProxy(t, DecisionLogOptions{Policy: "package system.log\nmask contains", PolicyFile: "/etc/rampart/log.rego"}, true)
		if err == nil || !strings.Contains(err.Error(), "/etc/rampart/log.rego:") {
			t.Fatalf("New with a policy that does not parse: %v; want an error naming the file and line", err)
		}
	})
}
