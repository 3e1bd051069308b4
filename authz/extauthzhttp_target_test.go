package authz

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

type seenReq struct{ uri, host, path string }

func recordingServer(t *testing.T, seen chan<- seenReq, h func(w http.ResponseWriter, r *http.Request)) string {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case seen <- seenReq{r.RequestURI, r.Host, r.URL.Path}:
		default:
		}
		h(w, r)
	}))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

// A normalized path that starts with "//" (BASE normalization keeps it; '\'
// becomes '/' too) must go in origin form: as an absolute-form request target
// "http://<seg>/..." the check server would see the client's first path
// segment as the Host and the path without it. Envoy sends path_prefix +
// :path verbatim with the real Host.
func TestExtAuthzHTTPOriginForm(t *testing.T) {
	for _, tc := range []struct{ prefix, path, wantURI string }{
		{"", "//admin/secret", "//admin/secret"},
		{"/", "/admin/secret", "//admin/secret"},
	} {
		seen := make(chan seenReq, 1)
		target := recordingServer(t, seen, func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(403) })
		p, err := NewExtAuthzHTTPProvider(ExtAuthzHTTPConfig{Target: target, PathPrefix: tc.prefix})
		if err != nil {
			t.Fatal(err)
		}
		p.Check(context.Background(), &Request{Protocol: ProtocolHTTP, Method: "GET", Host: "httpbin.foo:8000", Path: tc.path, providerPath: tc.path}, nil)
		got := <-seen
		if got.uri != tc.wantURI || got.host != "httpbin.foo:8000" {
			t.Errorf("pathPrefix %q, path %q: check server got request-target %q, Host %q, path %q; want %q with Host httpbin.foo:8000",
				tc.prefix, tc.path, got.uri, got.host, got.path, tc.wantURI)
		}
	}
}

// Several Set-Cookie headers from the server (oauth2-proxy's CSRF/session
// cookies on its 302/401, or on allow with headersToDownstreamOnAllow:
// [set-cookie]) must each reach the client: joined into one comma-separated
// Set-Cookie, browsers parse one cookie with mangled attributes. Envoy
// forwards each.
func TestExtAuthzHTTPSetCookies(t *testing.T) {
	target := recordingServer(t, make(chan seenReq, 1), func(w http.ResponseWriter, r *http.Request) {
		w.Header().Add("Set-Cookie", "a=1; Path=/; HttpOnly")
		w.Header().Add("Set-Cookie", "b=2; Path=/; HttpOnly")
		if r.Header.Get("x-allow") != "" {
			w.WriteHeader(200)
			return
		}
		w.Header().Set("Location", "https://login.example/")
		w.WriteHeader(302)
	})
	p, err := NewExtAuthzHTTPProvider(ExtAuthzHTTPConfig{Target: target, IncludeRequestHeadersInCheck: []string{"x-allow"}, HeadersToDownstreamOnAllow: []string{"set-cookie"}})
	if err != nil {
		t.Fatal(err)
	}
	deny := p.Check(context.Background(), &Request{Protocol: ProtocolHTTP, Method: "GET", Host: "h", Path: "/", providerPath: "/"}, nil)
	if v := deny.Headers["set-cookie"]; strings.Contains(v, ",") {
		t.Errorf("deny: one Set-Cookie %q; want two headers a=1 and b=2", v)
	}
	allow := p.Check(context.Background(), &Request{Protocol: ProtocolHTTP, Method: "GET", Host: "h", Path: "/", providerPath: "/", Headers: []Header{{Name: "x-allow", Value: "1"}}}, nil)
	if !allow.Allowed {
		t.Fatalf("allow: %+v", allow)
	}
	if len(allow.ResponseHeaders) != 2 {
		t.Errorf("allow: response headers %+v; want two Set-Cookie headers", allow.ResponseHeaders)
	}
}
