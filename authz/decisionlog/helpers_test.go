package decisionlog

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
	testingclock "k8s.io/utils/clock/testing"

	"github.com/rampart-mesh/rampart/authz"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// t0 is deliberately not UTC: records must be.
var t0 = time.Date(2026, 3, 14, 15, 9, 26, 535897932, time.FixedZone("CET", 3600))

// testJWT is a real-shaped signed JWT: its header decodes to {"alg":"RS256",...}.
var testJWT = func() string {
	enc := base64.RawURLEncoding
	h := enc.EncodeToString([]byte(`{"alg":"RS256","typ":"JWT","kid":"k1"}`))
	p := enc.EncodeToString([]byte(`{"sub":"alice","iss":"https://issuer.example"}`))
	return h + "." + p + "." + testJWTSig
}()

const testJWTSig = "c2lnbmF0dXJlLWJ5dGVzLXRoYXQtbXVzdC1uZXZlci1iZS1sb2dnZWQ"

// testDecision is a decision as the sidecar makes it: denied except for
// /public, a dry-run policy matching /dry, and the input document in the shape
// authz builds (opa-envoy-plugin's input plus Rampart's "rampart" object), with
// credentials in the headers.
func testDecision(i int, path string) authz.Decision {
	id := fmt.Sprintf("req-%d", i)
	rawPath, query, _ := strings.Cut(path, "?")
	parsedQuery := map[string]any{}
	vals, _ := url.ParseQuery(query)
	for k, vs := range vals {
		arr := make([]any, len(vs))
		for j, v := range vs {
			arr[j] = v
		}
		parsedQuery[k] = arr
	}
	var parsedPath []any
	for _, seg := range strings.Split(strings.TrimPrefix(rawPath, "/"), "/") {
		parsedPath = append(parsedPath, seg)
	}
	const src = "spiffe://cluster.local/ns/shop/sa/frontend"
	input := map[string]any{
		"attributes": map[string]any{
			"source":      map[string]any{"address": map[string]any{"socketAddress": map[string]any{"address": "10.0.0.7", "portValue": 41000}}, "principal": src},
			"destination": map[string]any{"address": map[string]any{"socketAddress": map[string]any{"address": "10.0.0.9", "portValue": 8080}}},
			"request": map[string]any{"http": map[string]any{
				"id": id, "method": "GET", "host": "orders.shop.svc", "path": path, "scheme": "http", "protocol": "HTTP/1.1",
				"headers": map[string]any{
					"authorization":       "Bearer " + testJWT,
					"proxy-authorization": "Basic YWxpY2U6c2VjcmV0",
					"x-secret":            "s3cr3t",
					"x-forwarded-token":   testJWT,
					"user-agent":          "curl/8.0",
				},
			}},
		},
		"parsed_path":    parsedPath,
		"parsed_query":   parsedQuery,
		"truncated_body": false,
		"version":        map[string]any{"encoding": "protojson", "ext_authz": "v3"},
		"rampart": map[string]any{
			"protocol": "http", "l7": true, "mtls": true,
			"source":      map[string]any{"principal": src, "namespace": "shop", "identity": "shop/frontend", "trust_domain": "cluster.local", "ip": "10.0.0.7"},
			"remote_ip":   "10.0.0.7",
			"destination": map[string]any{"ip": "10.0.0.9", "port": 8080},
			"sni":         "",
			"workload":    map[string]any{"namespace": "shop", "name": "orders", "labels": map[string]any{"app": "orders"}},
			"request":     map[string]any{"method": "GET", "host": "orders.shop.svc", "path": rawPath},
		},
	}
	d := authz.Decision{
		Allowed:        rawPath == "/public",
		Status:         403,
		Policy:         "ns/deny-all",
		Rule:           0,
		Reason:         "denied by DENY policy ns/deny-all rules[0]",
		DecisionID:     fmt.Sprintf("00000000-0000-4000-8000-%012d", i),
		Revision:       "rev-7",
		DryRun:         authz.DryRun{Allowed: true, Matches: []authz.Match{}},
		NormalizedPath: rawPath,
		Input:          ast.MustInterfaceToValue(input),
	}
	if d.Allowed {
		d.Status, d.Policy, d.Rule, d.Reason = 200, "", -1, "no ALLOW policy applies to the workload"
	}
	if rawPath == "/dry" {
		d.DryRun = authz.DryRun{Allowed: false, Matches: []authz.Match{{Policy: "ns/dry", Rule: 1, DryRun: true}}}
	}
	return d
}

// testEvent builds the event for testDecision(i, path).
func testEvent(t testing.TB, i int, path string) Event {
	t.Helper()
	r := &authz.Request{ID: fmt.Sprintf("req-%d", i), SourcePrincipal: "spiffe://cluster.local/ns/shop/sa/frontend",
		Workload: authz.Workload{Namespace: "shop", Name: "orders"}}
	m := RequestMeta(r)
	m.SourceWorkload = "shop/frontend"
	m.DestinationPrincipal = "spiffe://cluster.local/ns/shop/sa/orders"
	return FromDecision(testDecision(i, path), m)
}

type harness struct {
	l     *Logger
	clk   *testingclock.FakeClock
	reg   *prometheus.Registry
	path  string
	stop  func()
	ended chan error
}

// newHarness builds a Logger on a fake clock and a fresh registry, with Path in
// a temporary directory unless cfg sets it.
func newHarness(t *testing.T, cfg Config) *harness {
	t.Helper()
	h := &harness{clk: testingclock.NewFakeClock(t0), reg: prometheus.NewRegistry()}
	if cfg.Path == "" {
		cfg.Path = t.TempDir() + "/decisions.log"
	}
	cfg.Clock, cfg.Metrics = h.clk, h.reg
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.NewTextHandler(tLogWriter{t}, nil))
	}
	l, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	h.l, h.path = l, cfg.Path
	return h
}

// start runs the Logger; stopAndWait cancels it and waits for Run to return.
func (h *harness) start(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	h.ended = make(chan error, 1)
	go func() { h.ended <- h.l.Run(ctx) }()
	h.stop = cancel
	t.Cleanup(func() {
		cancel()
		<-h.ended
	})
}

func (h *harness) stopAndWait(t *testing.T) {
	t.Helper()
	h.stop()
	err := <-h.ended
	h.ended <- err // for the cleanup
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
}

func (h *harness) logAll(t *testing.T, events ...Event) {
	t.Helper()
	for _, e := range events {
		if err := h.l.Log(t.Context(), e); err != nil {
			t.Fatalf("Log %s: %v", e.DecisionID, err)
		}
	}
}

func readLines(t testing.TB, path string) [][]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	ls := bytes.SplitAfter(b, []byte("\n"))
	if len(ls[len(ls)-1]) == 0 {
		ls = ls[:len(ls)-1]
	}
	return ls
}

func writeLines(t testing.TB, path string, lines [][]byte) {
	t.Helper()
	var b []byte
	for _, l := range lines {
		b = append(b, l...)
		if len(l) > 0 && l[len(l)-1] != '\n' {
			b = append(b, '\n')
		}
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func decodeRecord(t testing.TB, line []byte) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(line, &m); err != nil {
		t.Fatalf("record %q: %v", line, err)
	}
	return m
}

// reseal recomputes a line's hash the way the package documentation says, as a
// forger would.
func reseal(line []byte) []byte {
	line = bytes.TrimSuffix(line, []byte("\n"))
	c := append(bytes.Clone(line[:len(line)-66]), `"}`...)
	sum := sha256.Sum256(c)
	out := append(bytes.Clone(line[:len(line)-66]), hex.EncodeToString(sum[:])...)
	return append(out, "\"}\n"...)
}

func mustBreak(t *testing.T, err error) *Break {
	t.Helper()
	var b *Break
	if !errors.As(err, &b) || !errors.Is(err, ErrChainBroken) {
		t.Fatalf("Verify error = %v, want a *Break", err)
	}
	return b
}

// tLogWriter sends the Logger's slog output to the test log.
type tLogWriter struct{ t *testing.T }

func (w tLogWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}
