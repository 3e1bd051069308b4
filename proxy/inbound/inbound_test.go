package inbound

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rampart-mesh/rampart/authn/peer"
	"github.com/rampart-mesh/rampart/authz"
	"github.com/rampart-mesh/rampart/ca/catest"
	"github.com/rampart-mesh/rampart/policies/compile"
	"github.com/rampart-mesh/rampart/policies/offline"
	"github.com/rampart-mesh/rampart/policies/source"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

type staticSVID struct{ s *x509svid.SVID }

func (s staticSVID) GetX509SVID() (*x509svid.SVID, error) { return s.s, nil }

const policies = `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: foo}
spec:
  action: DENY
  rules:
  - to: [{operation: {paths: ["/admin*"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-sleep, namespace: foo}
spec:
  selector: {matchLabels: {app: httpbin}}
  rules:
  - from: [{source: {principals: ["cluster.local/ns/bar/sa/sleep"]}}]
  - to: [{operation: {paths: ["/public*"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: opa, namespace: foo}
spec:
  action: CUSTOM
  provider: {name: opa}
  rules:
  - to: [{operation: {paths: ["/opa/*"]}}]
`

// An opa-envoy-plugin policy, unchanged: the request shape its docs show.
const opaEnvoy = `package envoy.authz

import rego.v1

default allow := false

allow if {
	input.attributes.request.http.method == "GET"
	input.parsed_path == ["opa", "ok"]
	input.attributes.request.http.headers["x-team"] == "blue"
}
`

type env struct {
	addr   string
	client *tls.Config // a mesh client: bar/sleep
	other  *tls.Config // a mesh client the ALLOW policy does not name: baz/x
	reg    *prometheus.Registry
	seen   chan http.Header
	paths  chan string // the raw path of every request the app received
}

// drainPaths returns the paths the app received since the last call.
func (e *env) drainPaths() []string {
	var out []string
	for {
		select {
		case p := <-e.paths:
			out = append(out, p)
		default:
			return out
		}
	}
}

func start(t *testing.T, mode string, tweak ...func(*Config)) *env {
	t.Helper()
	a := catest.Authority(t)
	td := a.TrustDomain()

	bundleDir := t.TempDir()
	if err := os.WriteFile(filepath.Join(bundleDir, ".manifest"), []byte(`{"revision": "opa-1", "roots": ["envoy"]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(bundleDir, "policy.rego"), []byte(opaEnvoy), 0o644); err != nil {
		t.Fatal(err)
	}
	mesh, err := compile.ParseMesh([]byte("extensionProviders:\n- name: opa\n  rampartRego: {bundle: " + bundleDir + "}\n"))
	if err != nil {
		t.Fatal(err)
	}
	objs, err := source.Parse("policies.yaml", []byte(policies))
	if err != nil {
		t.Fatal(err)
	}
	wl := compile.Workload{Namespace: "foo", Name: "httpbin", Labels: map[string]string{"app": "httpbin"}}
	out, _ := offline.Compile(objs, mesh, wl)
	provs, err := offline.Providers(context.Background(), mesh, "", false)
	if err != nil {
		t.Fatal(err)
	}
	eng := authz.New(authz.Config{})
	if err := eng.Load(context.Background(), offline.Bundle(out, mesh, provs)); err != nil {
		t.Fatal(err)
	}

	seen := make(chan http.Header, 16)
	paths := make(chan string, 64)
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case seen <- r.Header.Clone():
		default:
		}
		select {
		case paths <- r.URL.EscapedPath():
		default:
		}
		if r.URL.Path == "/opa/app-headers" {
			w.Header().Set("x-served-by", "app")
			w.Header().Set("x-tag", "app")
		}
		if r.URL.Path == "/public/broken" {
			// A response that breaks off: 10 of the 100 bytes it announced.
			c, bw, _ := w.(http.Hijacker).Hijack()
			_, _ = bw.WriteString("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
			_ = bw.Flush()
			c.Close()
			return
		}
		fmt.Fprint(w, "app says hi")
	}))
	t.Cleanup(app.Close)

	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	cfg := Config{
		Listener: lis, App: strings.TrimPrefix(app.URL, "http://"), Mode: mode,
		SVID: staticSVID{catest.IssueSVID(t, a, "foo", "httpbin")}, Bundle: a.Bundle(), TrustDomain: td,
		Engine: eng, Workload: authz.Workload{Namespace: "foo", Name: "httpbin", Labels: wl.Labels}, Metrics: reg,
	}
	for _, f := range tweak {
		f(&cfg)
	}
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return &env{
		addr: lis.Addr().String(),
		// Mesh peers offer Istio's ALPN names with the protocol, as every
		// sidecar's upstream TLS does (a PERMISSIVE port passes other TLS
		// through to the app).
		client: peer.ClientConfig(staticSVID{catest.IssueSVID(t, a, "bar", "sleep")}, a.Bundle(), td, "http/1.1", "istio-peer-exchange", "istio"),
		other:  peer.ClientConfig(staticSVID{catest.IssueSVID(t, a, "baz", "x")}, a.Bundle(), td, "http/1.1", "istio-peer-exchange", "istio"),
		reg:    reg, seen: seen, paths: paths,
	}
}

func (e *env) get(t *testing.T, tlsCfg *tls.Config, path string, hdr map[string]string) (*http.Response, string, error) {
	t.Helper()
	tr := &http.Transport{TLSClientConfig: tlsCfg, DisableKeepAlives: true}
	scheme := "http"
	if tlsCfg != nil {
		scheme = "https"
	}
	req, _ := http.NewRequest("GET", scheme+"://"+e.addr+path, nil)
	req.Host = "httpbin.foo"
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := (&http.Client{Transport: tr, Timeout: 5 * time.Second}).Do(req)
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp, string(body), nil
}

func TestInboundPermissive(t *testing.T) {
	e := start(t, ModePermissive)
	for _, tc := range []struct {
		name   string
		tls    *tls.Config
		path   string
		hdr    map[string]string
		status int
		body   string
	}{
		{"mTLS caller the policy allows", e.client, "/get", nil, 200, "app says hi"},
		{"mTLS caller the policy does not name", e.other, "/get", nil, 403, authz.DeniedBody},
		{"plaintext caller has no identity", nil, "/get", nil, 403, authz.DeniedBody},
		{"plaintext caller on a public path", nil, "/public/x", nil, 200, "app says hi"},
		{"DENY on /admin wins over ALLOW", e.client, "/admin", nil, 403, authz.DeniedBody},
		{"encoded traversal to /admin is normalized and denied", e.client, "/public/%2e%2e/admin", nil, 403, authz.DeniedBody},
		{"opa-envoy bundle allows through CUSTOM", e.client, "/opa/ok", map[string]string{"x-team": "blue"}, 200, "app says hi"},
		{"opa-envoy bundle denies through CUSTOM", e.client, "/opa/ok", map[string]string{"x-team": "red"}, 403, authz.DeniedBody},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, body, err := e.get(t, tc.tls, tc.path, tc.hdr)
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != tc.status || body != tc.body {
				t.Fatalf("got %d %q, want %d %q", resp.StatusCode, body, tc.status, tc.body)
			}
			if resp.Header.Get("x-rampart-decision-id") == "" {
				t.Fatal("no decision id header")
			}
		})
	}
	// Metrics say which requests came over mTLS.
	mtls := requestsWith(t, e.reg, "mutual_tls", "200")
	plain := requestsWith(t, e.reg, "none", "403")
	if mtls < 2 || plain != 1 {
		t.Fatalf("istio_requests_total: mutual_tls/200 = %v (want ≥ 2), none/403 = %v (want 1)", mtls, plain)
	}
}

// requestsWith sums istio_requests_total over the series with these labels.
func requestsWith(t *testing.T, reg *prometheus.Registry, security, code string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	total := 0.0
	for _, mf := range mfs {
		if mf.GetName() != "istio_requests_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["connection_security_policy"] == security && labels["response_code"] == code {
				total += m.GetCounter().GetValue()
			}
		}
	}
	return total
}

// The app sees the sidecar's X-Forwarded-Client-Cert, never the client's.
func TestInboundXFCC(t *testing.T) {
	e := start(t, ModePermissive)
	resp, _, err := e.get(t, e.client, "/get", map[string]string{"x-forwarded-client-cert": "URI=spiffe://cluster.local/ns/admin/sa/root", "x-forwarded-for": "6.6.6.6"})
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("%v %v", resp, err)
	}
	h := <-e.seen
	if got := h.Get("x-forwarded-client-cert"); !strings.Contains(got, "URI=spiffe://cluster.local/ns/bar/sa/sleep") || strings.Contains(got, "admin") {
		t.Fatalf("the app saw x-forwarded-client-cert %q", got)
	}
	if h.Get("x-request-id") == "" {
		t.Fatal("no x-request-id generated")
	}
	if got := h.Get("x-forwarded-for"); got != "127.0.0.1" {
		t.Fatalf("x-forwarded-for %q, want the peer address only", got)
	}
	if got := h.Get("x-forwarded-proto"); got != "https" {
		t.Fatalf("x-forwarded-proto %q, want https (the caller used mTLS)", got)
	}
}

// STRICT: a plaintext client is reset, an mTLS client is served.
func TestInboundStrict(t *testing.T) {
	e := start(t, ModeStrict)
	if resp, _, err := e.get(t, e.client, "/get", nil); err != nil || resp.StatusCode != 200 {
		t.Fatalf("mTLS client on a STRICT port: %v %v", resp, err)
	}
	c, err := net.Dial("tcp", e.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, _ = io.WriteString(c, "GET /get HTTP/1.1\r\nHost: httpbin.foo\r\n\r\n")
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err = bufio.NewReader(c).ReadString('\n')
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("plaintext client on a STRICT port: read err = %v, want connection reset", err)
	}
}

// On a port of unknown protocol ("auto") each connection is detected, as Istio
// does: HTTP (by ALPN or by its first bytes) gets the HTTP path with L7
// policy and the peer's identity; anything else, and a client that waits for
// the server to speak first, is authorized as TCP and spliced to the app.
func TestInboundAutoProtocol(t *testing.T) {
	auto := func(c *Config) { c.Protocol = ProtocolAuto }
	e := start(t, ModePermissive, auto)
	istio := func(c *tls.Config) *tls.Config { c = c.Clone(); c.NextProtos = []string{"istio"}; return c }
	for _, tc := range []struct {
		name   string
		tls    *tls.Config
		path   string
		status int
	}{
		{"HTTP over mTLS with ALPN istio, allowed peer", istio(e.client), "/get", 200},
		{"HTTP over mTLS with ALPN istio, peer the policy does not name", istio(e.other), "/get", 403},
		{"HTTP over mTLS, L7 DENY on /admin", istio(e.client), "/admin", 403},
		{"HTTP over mTLS with ALPN http/1.1", e.client, "/get", 200},
		{"plaintext HTTP on a public path", nil, "/public/x", 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, _, err := e.get(t, tc.tls, tc.path, nil)
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d", resp.StatusCode, tc.status)
			}
		})
	}
	// The app saw the caller's identity from a sniffed TLS connection.
	var xfcc string
	for len(e.seen) > 0 {
		xfcc += (<-e.seen).Get("X-Forwarded-Client-Cert")
	}
	if !strings.Contains(xfcc, "/ns/bar/sa/sleep") {
		t.Fatalf("x-forwarded-client-cert %q does not name the peer: the TLS state was lost in detection", xfcc)
	}

	// TCP: an app that greets first, then echoes; a policy that allows only
	// bar/sleep, and only on TCP.
	app, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { app.Close() })
	go func() {
		for {
			c, err := app.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); _, _ = io.WriteString(c, "220 hello\n"); _, _ = io.Copy(c, c) }()
		}
	}()
	tcpOnly := authz.New(authz.Config{})
	if err := tcpOnly.Load(context.Background(), authz.Bundle{Revision: "tcp", Modules: map[string]string{"p.rego": `package rampart.policy

import rego.v1

hits contains {"action": "allow", "policy": "foo/tcp", "rule": 0, "dry_run": false} if {
	input.rampart.l7 == false
	endswith(input.rampart.source.principal, "/ns/bar/sa/sleep")
}

allow_policies := {"foo/tcp"}

dry_run_allow_policies := set()
`}}); err != nil {
		t.Fatal(err)
	}
	e2 := start(t, ModePermissive, auto, func(c *Config) {
		c.App, c.Engine, c.SniffTimeout = app.Addr().String(), tcpOnly, 300*time.Millisecond
	})
	dial := func(cfg *tls.Config) *tls.Conn {
		c, err := tls.Dial("tcp", e2.addr, istio(cfg))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		return c
	}
	// A client that sends first: its bytes are not HTTP, so TCP; echoed back
	// after the app's greeting.
	c := dial(e2.client)
	if _, err := io.WriteString(c, "\x00\x01binary hello\n"); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(c)
	for _, want := range []string{"220 hello\n", "\x00\x01binary hello\n"} {
		if got, err := r.ReadString('\n'); got != want {
			t.Fatalf("read %q (%v), want %q: not spliced to the app as TCP", got, err, want)
		}
	}
	// A client that waits for the server to speak: TCP once the detection
	// times out.
	c = dial(e2.client)
	if got, err := bufio.NewReader(c).ReadString('\n'); got != "220 hello\n" {
		t.Fatalf("server-first: read %q (%v), want the app's greeting", got, err)
	}
	// TCP authorization still applies: another identity is cut off.
	c = dial(e2.other)
	_, _ = io.WriteString(c, "\x00hi\n")
	if got, err := bufio.NewReader(c).ReadString('\n'); err == nil {
		t.Fatalf("a peer the TCP policy does not name read %q", got)
	}
}

// A gRPC call the sidecar refuses gets a gRPC status, as Envoy's local replies
// do for gRPC: HTTP 200, trailers-only, grpc-status 7 (PERMISSION_DENIED).
func TestInboundGRPCDenialIsAGRPCStatus(t *testing.T) {
	e := start(t, ModePermissive)
	h2 := e.other.Clone()
	h2.NextProtos = []string{"h2", "istio"}
	tr := &http.Transport{TLSClientConfig: h2, ForceAttemptHTTP2: true}
	defer tr.CloseIdleConnections()
	req, _ := http.NewRequest("POST", "https://"+e.addr+"/echo.Echo/Who", strings.NewReader("\x00\x00\x00\x00\x00"))
	req.Header.Set("content-type", "application/grpc")
	req.Header.Set("te", "trailers")
	resp, err := (&http.Client{Transport: tr, Timeout: 5 * time.Second}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	_, _ = io.ReadAll(resp.Body)
	if resp.ProtoMajor != 2 {
		t.Fatalf("answered over HTTP/%d, want HTTP/2", resp.ProtoMajor)
	}
	status := resp.Header.Get("grpc-status") + resp.Trailer.Get("grpc-status")
	if resp.StatusCode != 200 || status != "7" || resp.Header.Get("grpc-message") != authz.DeniedBody ||
		resp.Header.Get("content-type") != "application/grpc" {
		t.Fatalf("got %d grpc-status %q grpc-message %q content-type %q; want 200, 7, %q, application/grpc",
			resp.StatusCode, status, resp.Header.Get("grpc-message"), resp.Header.Get("content-type"), authz.DeniedBody)
	}
}

// The app sees what a reverse proxy hands on: hop-by-hop fields (and those
// Connection names) dropped, "Te: trailers" kept, X-Forwarded-Host from the
// request, and a request body delivered whole.
func TestInboundForwardsHeadersAndBodies(t *testing.T) {
	e := start(t, ModePermissive)
	for len(e.seen) > 0 {
		<-e.seen
	}
	resp, _, err := e.get(t, e.client, "/get", map[string]string{
		"Connection": "X-Secret", "X-Secret": "1", "Keep-Alive": "timeout=5", "Te": "trailers",
		"Proxy-Authorization": "Basic Zm9vOmJhcg==", "X-Forwarded-Host": "evil.example", "X-Kept": "yes",
	})
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("%v %v", resp, err)
	}
	h := <-e.seen
	for _, k := range []string{"X-Secret", "Keep-Alive", "Proxy-Authorization"} {
		if v := h.Get(k); v != "" {
			t.Errorf("the app saw hop-by-hop %s: %q", k, v)
		}
	}
	if h.Get("Te") != "trailers" || h.Get("X-Kept") != "yes" || h.Get("X-Forwarded-Host") != "httpbin.foo" {
		t.Errorf("the app saw Te %q, X-Kept %q, X-Forwarded-Host %q; want trailers, yes, httpbin.foo", h.Get("Te"), h.Get("X-Kept"), h.Get("X-Forwarded-Host"))
	}
	// A body goes the other way through the transport (net/http's).
	tr := &http.Transport{TLSClientConfig: e.client, DisableKeepAlives: true}
	req, _ := http.NewRequest("POST", "https://"+e.addr+"/post", strings.NewReader(strings.Repeat("x", 100000)))
	req.Host = "httpbin.foo"
	presp, err := (&http.Client{Transport: tr, Timeout: 5 * time.Second}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(presp.Body)
	presp.Body.Close()
	if presp.StatusCode != 200 || string(body) != "app says hi" {
		t.Fatalf("POST: %d %q", presp.StatusCode, body)
	}
}

// A response the app breaks off is cut short for the client and still
// counted in istio_requests_total, with the status that went out.
func TestInboundCountsBrokenResponse(t *testing.T) {
	e := start(t, "PERMISSIVE")
	resp, body, err := e.get(t, nil, "/public/broken", nil)
	if err == nil && resp.StatusCode == 200 && len(body) == 100 {
		t.Fatalf("the client got a whole body %q", body)
	}
	deadline := time.Now().Add(2 * time.Second)
	for requestsWith(t, e.reg, "none", "200") != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("istio_requests_total{none,200} = %v; want 1", requestsWith(t, e.reg, "none", "200"))
		}
		time.Sleep(10 * time.Millisecond)
	}
}
