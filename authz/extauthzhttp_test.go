package authz

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// sampleHTTPExtAuthz behaves like Istio's samples/extauthz HTTP server: it
// allows a request that carries "x-ext-authz: allow", answering with
// x-ext-authz-check-result; other requests get 403 and a body. It records
// what it was asked.
func sampleHTTPExtAuthz(t *testing.T, seen chan<- *http.Request) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		r.Body = io.NopCloser(strings.NewReader(string(b)))
		select {
		case seen <- r:
		default:
		}
		switch r.Header.Get("x-ext-authz") {
		case "allow":
			w.Header().Set("x-ext-authz-check-result", "allowed")
			w.Header().Set("x-not-forwarded", "1")
			w.WriteHeader(http.StatusOK)
		case "crash":
			w.WriteHeader(http.StatusServiceUnavailable)
		case "slow":
			time.Sleep(300 * time.Millisecond)
		default:
			w.Header().Set("x-ext-authz-check-result", "denied")
			w.Header().Set("content-type", "text/plain")
			w.Header().Set("x-internal", "secret")
			w.WriteHeader(http.StatusForbidden)
			io.WriteString(w, "denied by ext_authz for not found header `x-ext-authz: allow` in the request")
		}
	}))
	t.Cleanup(srv.Close)
	return srv
}

// Istio's envoyExtAuthzHttp, as the istio.io authz-custom task configures
// it: the check carries the method, the path behind pathPrefix, the host and
// only the headers named; 200 allows and hands the named headers on; any
// other answer denies with the server's status, body and (named) headers;
// 5xx, timeouts and an unreachable server fail closed with statusOnError
// unless failOpen.
func TestExtAuthzHTTPProvider(t *testing.T) {
	seen := make(chan *http.Request, 1)
	srv := sampleHTTPExtAuthz(t, seen)
	target := strings.TrimPrefix(srv.URL, "http://")
	p, err := NewExtAuthzHTTPProvider(ExtAuthzHTTPConfig{
		Target: target, PathPrefix: "/check",
		IncludeRequestHeadersInCheck:    []string{"x-ext-authz", "x-team-*"},
		IncludeAdditionalHeadersInCheck: map[string]string{"x-from-mesh": "rampart"},
		HeadersToUpstreamOnAllow:        []string{"x-ext-authz-check-*"},
		HeadersToDownstreamOnAllow:      []string{"x-ext-authz-check-result"},
		HeadersToDownstreamOnDeny:       []string{"x-ext-authz-check-result", "content-type"},
	})
	if err != nil {
		t.Fatal(err)
	}
	req := func(hs ...Header) *Request {
		return &Request{Protocol: ProtocolHTTP, Method: "DELETE", Host: "httpbin.foo:8000", Path: "/headers?a=1", providerPath: "/headers?a=1",
			Headers: append([]Header{{Name: "authorization", Value: "Bearer x"}, {Name: "x-team-id", Value: "blue"}, {Name: "x-from-mesh", Value: "client"}}, hs...)}
	}
	res := p.Check(context.Background(), req(Header{Name: "x-ext-authz", Value: "allow"}), nil)
	if !res.Allowed || res.Headers["x-ext-authz-check-result"] != "allowed" || res.Headers["x-not-forwarded"] != "" {
		t.Fatalf("allowed: %+v; want x-ext-authz-check-result (and only it) for the app", res)
	}
	if len(res.ResponseHeaders) != 1 || res.ResponseHeaders[0].Name != "x-ext-authz-check-result" {
		t.Errorf("response headers on allow: %+v", res.ResponseHeaders)
	}
	got := <-seen
	if got.Method != "DELETE" || got.RequestURI != "/check/headers?a=1" || got.Host != "httpbin.foo:8000" {
		t.Errorf("check request %s %s host %s; want DELETE /check/headers?a=1 host httpbin.foo:8000", got.Method, got.RequestURI, got.Host)
	}
	if got.Header.Get("authorization") != "" {
		t.Errorf("authorization was sent though includeRequestHeadersInCheck does not name it")
	}
	if got.Header.Get("x-team-id") != "blue" || got.Header.Get("x-from-mesh") != "rampart" {
		t.Errorf("check headers %v; want x-team-id (prefix match) and x-from-mesh from includeAdditionalHeadersInCheck", got.Header)
	}

	res = p.Check(context.Background(), req(), nil)
	if res.Allowed || res.Status != 403 || !strings.Contains(res.Body, "not found header") ||
		res.Headers["x-ext-authz-check-result"] != "denied" || res.Headers["content-type"] != "text/plain" || res.Headers["x-internal"] != "" {
		t.Fatalf("denied: %+v; want 403, the server's body and only the named headers", res)
	}

	for _, tc := range []struct {
		name string
		cfg  ExtAuthzHTTPConfig
		hdr  string
		ok   bool
		code int
	}{
		{"5xx fails closed", ExtAuthzHTTPConfig{Target: target}, "crash", false, 403},
		{"5xx with statusOnError", ExtAuthzHTTPConfig{Target: target, StatusOnError: 503}, "crash", false, 503},
		{"5xx with failOpen", ExtAuthzHTTPConfig{Target: target, FailOpen: true}, "crash", true, 0},
		{"timeout fails closed", ExtAuthzHTTPConfig{Target: target, Timeout: 50 * time.Millisecond, IncludeRequestHeadersInCheck: []string{"x-ext-authz"}}, "slow", false, 403},
		{"unreachable fails closed", ExtAuthzHTTPConfig{Target: "127.0.0.1:1"}, "allow", false, 403},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.IncludeRequestHeadersInCheck = []string{"x-ext-authz"}
			p, err := NewExtAuthzHTTPProvider(tc.cfg)
			if err != nil {
				t.Fatal(err)
			}
			res := p.Check(context.Background(), req(Header{Name: "x-ext-authz", Value: tc.hdr}), nil)
			if res.Allowed != tc.ok || (!tc.ok && res.Status != tc.code) {
				t.Fatalf("%+v; want allowed=%t status %d", res, tc.ok, tc.code)
			}
		})
	}
	if _, err := NewExtAuthzHTTPProvider(ExtAuthzHTTPConfig{Target: target, IncludeAdditionalHeadersInCheck: map[string]string{"x-a": "b\r\nx-b: c"}}); err == nil {
		t.Error("an additional header with CR LF was accepted")
	}
}
