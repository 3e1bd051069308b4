package inbound

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/rampart-mesh/rampart/authz"
	"github.com/rampart-mesh/rampart/policies/compile"
	"github.com/rampart-mesh/rampart/policies/offline"
	"github.com/rampart-mesh/rampart/policies/source"
)

// engineFor compiles policies for foo/httpbin into a loaded engine.
func engineFor(t *testing.T, policies string) *authz.Engine {
	t.Helper()
	mesh, err := compile.ParseMesh(nil)
	if err != nil {
		t.Fatal(err)
	}
	objs, err := source.Parse("p.yaml", []byte(policies))
	if err != nil {
		t.Fatal(err)
	}
	out, _ := offline.Compile(objs, mesh, compile.Workload{Namespace: "foo", Name: "httpbin", Labels: map[string]string{"app": "httpbin"}})
	provs, err := offline.Providers(context.Background(), mesh, "", false)
	if err != nil {
		t.Fatal(err)
	}
	eng := authz.New(authz.Config{})
	if err := eng.Load(context.Background(), offline.Bundle(out, mesh, provs)); err != nil {
		t.Fatal(err)
	}
	return eng
}

// On a PERMISSIVE port, TLS from a client outside the mesh (no Istio ALPN
// name in its ClientHello) is the app's own TLS: it passes through as TCP,
// authorized as TCP with no peer identity, as Istio's inbound filter chains
// do, so an app that serves TLS itself stays reachable during a migration.
// Mesh peers' mTLS still ends at the sidecar (the other tests).
func TestInboundPermissivePassesNonMeshTLSThrough(t *testing.T) {
	appTLS := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "the app's own TLS")
	}))
	appTLS.StartTLS()
	defer appTLS.Close()
	appCert := appTLS.TLS.Certificates[0].Leaf
	for _, tc := range []struct {
		name     string
		policies string
		alpn     []string
		reached  bool
	}{
		{"no ALPN and no policy", "", nil, true},
		{"a browser ALPN and no policy", "", []string{"h2", "http/1.1"}, true},
		{"an ALLOW that needs a peer identity", `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: only-sleep, namespace: foo}
spec:
  rules: [{from: [{source: {principals: [cluster.local/ns/bar/sa/sleep]}}]}]
`, []string{"http/1.1"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			eng := engineFor(t, tc.policies)
			e := start(t, ModePermissive, func(c *Config) { c.App = appTLS.Listener.Addr().String(); c.Engine = eng })
			c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", e.addr, &tls.Config{InsecureSkipVerify: true, NextProtos: tc.alpn})
			if !tc.reached {
				if err == nil {
					c.Close()
					t.Fatal("the TLS handshake with the app went through; want the connection denied")
				}
				return
			}
			if err != nil {
				t.Fatalf("non-mesh TLS client on a PERMISSIVE port: %v", err)
			}
			defer c.Close()
			if got := c.ConnectionState().PeerCertificates[0]; !got.Equal(appCert) {
				t.Fatalf("the TLS server was %v (URIs %v), not the app", got.Subject, got.URIs)
			}
			tr := &http.Transport{DialTLSContext: func(context.Context, string, string) (net.Conn, error) { return c, nil }}
			resp, err := (&http.Client{Transport: tr, Timeout: 5 * time.Second}).Get("https://app.example/")
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if string(body) != "the app's own TLS" {
				t.Fatalf("body %q", body)
			}
		})
	}
}

// Rampart's proxyless gRPC clients (grpc-go's xDS credentials) offer only
// "h2", never Istio's names: on a PERMISSIVE port their mTLS still ends at
// the sidecar and they are authorized by their identity.
func TestInboundPermissiveProxylessMTLS(t *testing.T) {
	e := start(t, ModePermissive)
	c := e.client.Clone()
	c.NextProtos = []string{"h2"}
	// Dialled here: http.Transport would add http/1.1 to the offer.
	tr := &http.Transport{ForceAttemptHTTP2: true, DisableKeepAlives: true, DialTLSContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
		return (&tls.Dialer{Config: c}).DialContext(ctx, "tcp", addr)
	}}
	req, _ := http.NewRequest("GET", "https://"+e.addr+"/get", nil)
	req.Host = "httpbin.foo"
	resp, err := (&http.Client{Transport: tr, Timeout: 5 * time.Second}).Do(req)
	if err != nil {
		t.Fatalf("mTLS with ALPN [h2] on a PERMISSIVE port: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.ProtoMajor != 2 {
		t.Fatalf("status %d over HTTP/%d, want 200 over HTTP/2 (the peer is the one the policy allows)", resp.StatusCode, resp.ProtoMajor)
	}
}
