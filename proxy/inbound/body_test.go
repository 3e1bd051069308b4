package inbound

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/rampart-mesh/rampart/authz"
)

// jsonUserApp answers with the user of the JSON body it got (the content type it
// reads is the first, as r.Header.Get has it).
func jsonUserApp(t *testing.T) func(*Config) {
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		var v struct{ User string }
		if r.Header.Get("Content-Type") == "application/json" {
			_ = json.Unmarshal(b, &v)
		}
		fmt.Fprintf(w, "app got %q user=%q", b, v.User)
	}))
	t.Cleanup(app.Close)
	return func(c *Config) { c.App = strings.TrimPrefix(app.URL, "http://") }
}

func postBody(t *testing.T, e *env, path, body string, hdr http.Header) (int, string) {
	t.Helper()
	tr := &http.Transport{TLSClientConfig: e.client, DisableKeepAlives: true}
	req, _ := http.NewRequest("POST", "https://"+e.addr+path, strings.NewReader(body))
	req.Host = "httpbin.foo"
	for k, vs := range hdr {
		req.Header[k] = vs
	}
	resp, err := (&http.Client{Transport: tr, Timeout: 5 * time.Second}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// A provider that denies JSON bodies naming user admin (an opa-envoy-plugin
// policy on parsed_body) still denies when the client sends a second
// Content-Type: the app parses the JSON, so the provider must too.
func TestBodyRepeatedContentType(t *testing.T) {
	rp := regoBundle(t, `package envoy.authz
import rego.v1
default allow := true
allow := false if input.parsed_body.user == "admin"
`)
	e := start(t, ModePermissive, withCustom(t, authz.WithBody(rp, authz.BodyConfig{MaxRequestBytes: 1024})), jsonUserApp(t))
	body := `{"user": "admin"}`
	if code, resp := postBody(t, e, "/opa/x", body, http.Header{"Content-Type": {"application/json"}}); code != 403 {
		t.Fatalf("control: %d %q, want 403", code, resp)
	}
	if code, resp := postBody(t, e, "/opa/x", body, http.Header{"Content-Type": {"application/json", "text/plain"}}); code != 403 {
		t.Errorf("two content types: %d %q, want 403 (opa-envoy-plugin behind Envoy parses the body: the joined content-type contains application/json)", code, resp)
	}
}

// swapAuthn loads a new bundle when asked to authenticate: an xDS push that
// lands while a request is in the sidecar, before its decision (JWT
// authentication, with its JWKS fetches, runs first).
type swapAuthn struct {
	eng *authz.Engine
	b   authz.Bundle
}

func (s swapAuthn) Authenticate(ctx context.Context, _ *http.Request) AuthnResult {
	if err := s.eng.Load(ctx, s.b); err != nil {
		panic(err)
	}
	return AuthnResult{}
}

// A request that arrives as includeRequestBodyInCheck is turned on is judged
// with its body by the new provider: the body is read for the bundle the
// decision is made with, never taken as empty because the old bundle had no
// body provider.
func TestBodyProviderTurnedOnMidRequest(t *testing.T) {
	policy := `package envoy.authz
import rego.v1
default allow := true
allow := false if contains(input.attributes.request.http.body, "evil")
`
	rp := regoBundle(t, policy)
	newBundle := customBundle(t, policies, authz.WithBody(rp, authz.BodyConfig{MaxRequestBytes: 1024}))
	e := start(t, ModePermissive, withCustom(t, rp), jsonUserApp(t), func(c *Config) {
		c.Authn = swapAuthn{eng: c.Engine, b: newBundle}
	})
	if code, resp := postBody(t, e, "/opa/x", "evil", nil); code != 403 {
		t.Errorf("first request under the new bundle: %d %q; want 403 (the provider that reads the body denies \"evil\")", code, resp)
	}
	if code, resp := postBody(t, e, "/opa/x", "evil", nil); code != 403 {
		t.Errorf("second request: %d %q; want 403", code, resp)
	}
}

// A CUSTOM provider with includeRequestBodyInCheck (xds.Compile puts every
// mesh provider in every workload's bundle) must not make the sidecar hold
// the body of requests no CUSTOM rule covers: a streaming client that waits
// for the app's answer before it sends more would stall. Envoy buffers only
// where the ext_authz filter runs for the request.
func TestBodyStreamingOutsideCustomNotHeld(t *testing.T) {
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = http.NewResponseController(w).EnableFullDuplex()
		buf := make([]byte, 6)
		if _, err := io.ReadFull(r.Body, buf); err != nil {
			return
		}
		w.WriteHeader(200)
		fmt.Fprintf(w, "got %q\n", buf)
		w.(http.Flusher).Flush()
		io.Copy(io.Discard, r.Body)
	}))
	t.Cleanup(app.Close)
	useApp := func(c *Config) { c.App = strings.TrimPrefix(app.URL, "http://") }
	stream := func(e *env) error {
		pr, pw := io.Pipe()
		defer pw.Close()
		go pw.Write([]byte("hello\n"))
		stop := time.AfterFunc(4*time.Second, func() { pw.CloseWithError(fmt.Errorf("client gave up waiting for the answer")) })
		defer stop.Stop()
		tr := &http.Transport{TLSClientConfig: e.client, DisableKeepAlives: true}
		req, _ := http.NewRequest("POST", "https://"+e.addr+"/public/stream", pr)
		req.Host = "httpbin.foo"
		resp, err := (&http.Client{Transport: tr, Timeout: 3 * time.Second}).Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		return nil
	}
	rp := regoBundle(t, "package envoy.authz\nimport rego.v1\nallow := true\n")
	if err := stream(start(t, ModePermissive, withCustom(t, rp), useApp)); err != nil {
		t.Fatalf("control, provider without the body: %v", err)
	}
	if err := stream(start(t, ModePermissive, withCustom(t, authz.WithBody(rp, authz.BodyConfig{MaxRequestBytes: 1024})), useApp)); err != nil {
		t.Errorf("provider with includeRequestBodyInCheck, request on a path no CUSTOM rule covers: %v", err)
	}
}
