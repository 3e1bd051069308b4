package inbound

import (
	"net/http"
	"net/http/httptest"
	"path"
	"strings"
	"testing"

	"github.com/rampart-mesh/rampart/authz"
)

const customAllPolicies = `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ext, namespace: foo}
spec:
  action: CUSTOM
  provider: {name: opa}
  rules:
  - to: [{operation: {notPaths: ["/healthz"]}}]
`

// An ext_authz HTTP server that cleans the path it is asked about (as a
// careful server does) and denies /admin: a client that asks for
// "//admin/x" must not get through. Sent in absolute form "http://admin/x",
// the server would see Host "admin" and path "/x". Envoy asks "//admin/x"
// with the real Host, which path.Clean makes "/admin/x" (denied).
func TestCustomHTTPDoubleSlashChecked(t *testing.T) {
	type seen struct{ uri, host, path string }
	got := make(chan seen, 4)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- seen{r.RequestURI, r.Host, r.URL.Path}
		if strings.HasPrefix(path.Clean(r.URL.Path), "/admin") {
			w.WriteHeader(403)
			return
		}
		w.WriteHeader(200)
	}))
	defer srv.Close()
	p, err := authz.NewExtAuthzHTTPProvider(authz.ExtAuthzHTTPConfig{Target: strings.TrimPrefix(srv.URL, "http://")})
	if err != nil {
		t.Fatal(err)
	}
	e := start(t, ModePermissive, withCustomPolicies(t, customAllPolicies, p))
	resp, _, err := e.get(t, e.client, "/admin/x", nil)
	if err != nil || resp.StatusCode != 403 {
		t.Fatalf("setup: /admin/x: %v %v; want 403", resp, err)
	}
	<-got
	resp, _, err = e.get(t, e.client, "//admin/x", nil)
	if err != nil {
		t.Fatal(err)
	}
	s := <-got
	if resp.StatusCode != 403 {
		t.Errorf("//admin/x: status %d, app got %q; the check server was asked request-target %q, Host %q, path %q",
			resp.StatusCode, e.drainPaths(), s.uri, s.host, s.path)
	}
}

// includeRequestHeadersInCheck: [x-forwarded-client-cert]: the check must
// carry the sidecar's XFCC (the verified peer), never the client's own.
// Envoy's sidecar rewrites XFCC before ext_authz runs (its HCM
// forward_client_cert_details), so the check server sees the peer's real URI.
func TestCustomHTTPCheckGetsSidecarXFCC(t *testing.T) {
	xfcc := make(chan string, 4)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		xfcc <- r.Header.Get("x-forwarded-client-cert")
		w.WriteHeader(200)
	}))
	defer srv.Close()
	p, err := authz.NewExtAuthzHTTPProvider(authz.ExtAuthzHTTPConfig{Target: strings.TrimPrefix(srv.URL, "http://"), IncludeRequestHeadersInCheck: []string{"x-forwarded-client-cert"}})
	if err != nil {
		t.Fatal(err)
	}
	e := start(t, ModePermissive, withCustomPolicies(t, customAllPolicies, p))
	forged := "By=spiffe://cluster.local/ns/foo/sa/httpbin;URI=spiffe://cluster.local/ns/prod/sa/admin"
	resp, _, err := e.get(t, e.client, "/x", map[string]string{"x-forwarded-client-cert": forged})
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("%v %v", resp, err)
	}
	check, app := <-xfcc, (<-e.seen).Get("x-forwarded-client-cert")
	if !strings.Contains(check, "ns/bar/sa/sleep") {
		t.Errorf("the check server saw XFCC %q (the client's, forged); the app got %q", check, app)
	}
}
