package inbound

import (
	"net/http"
	"slices"
	"testing"

	"github.com/rampart-mesh/rampart/authz"
	"github.com/rampart-mesh/rampart/proxy/ratelimit"
)

// After authorization, the rate limiter decides: the limited request gets
// Envoy's local rate limit answer and never reaches the app; a denied request
// is answered 403 without taking a token.
func TestInboundRateLimit(t *testing.T) {
	lim, err := ratelimit.New(ratelimit.Config{})
	if err != nil {
		t.Fatal(err)
	}
	s, err := lim.Build([]authz.RateLimit{{ID: "foo/p/get", Key: "SourcePrincipal", Match: authz.RateLimitMatch{Paths: []string{"/get"}},
		Requests: 1, Period: "1h0m0s", Burst: 1}})
	if err != nil {
		t.Fatal(err)
	}
	lim.Swap(s)
	e := start(t, ModePermissive, func(c *Config) { c.RateLimit = lim })

	if resp, _, err := e.get(t, e.other, "/get", nil); err != nil || resp.StatusCode != 403 {
		t.Fatalf("denied caller: %v %v; want 403", resp, err)
	}
	e.drainPaths()
	resp, body, err := e.get(t, e.client, "/get", nil)
	if err != nil || resp.StatusCode != 200 || body != "app says hi" {
		t.Fatalf("first request: %v %q %v; want 200 from the app (the denied request took no token)", resp, body, err)
	}
	resp, body, err = e.get(t, e.client, "/get", nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusTooManyRequests || body != "local_rate_limited" ||
		resp.Header.Get("x-envoy-ratelimited") != "true" || resp.Header.Get("x-rampart-response-flags") != "RL" {
		t.Fatalf("second request: %d %q %v; want 429 local_rate_limited with x-envoy-ratelimited and RL", resp.StatusCode, body, resp.Header)
	}
	if got := e.drainPaths(); len(got) != 1 {
		t.Fatalf("the app received %v; want only the first request", got)
	}
	if got := requestsWith(t, e.reg, "mutual_tls", "429"); got != 1 {
		t.Errorf("istio_requests_total{response_code=429} = %v; want 1", got)
	}
}

// A limit on the host header sees the request's Host, which net/http keeps
// out of the header map, as authorization's request.headers[host] does: a
// match on it applies, and notValues on it excludes.
func TestInboundRateLimitOnHostHeader(t *testing.T) {
	tests := []struct {
		name   string
		header authz.RateLimitHeader
		want   []int
	}{
		{"values", authz.RateLimitHeader{Name: "host", Values: []string{"httpbin.foo"}}, []int{200, 429, 429}},
		{":authority values", authz.RateLimitHeader{Name: ":authority", Values: []string{"httpbin.*"}}, []int{200, 429, 429}},
		{"notValues", authz.RateLimitHeader{Name: "host", NotValues: []string{"httpbin.foo"}}, []int{200, 200, 200}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lim, err := ratelimit.New(ratelimit.Config{})
			if err != nil {
				t.Fatal(err)
			}
			s, err := lim.Build([]authz.RateLimit{{ID: "foo/p/host", Key: "Shared",
				Match:    authz.RateLimitMatch{Headers: []authz.RateLimitHeader{tt.header}},
				Requests: 1, Period: "1h0m0s", Burst: 1}})
			if err != nil {
				t.Fatal(err)
			}
			lim.Swap(s)
			e := start(t, ModePermissive, func(c *Config) { c.RateLimit = lim })
			var got []int
			for range len(tt.want) {
				resp, _, err := e.get(t, e.client, "/get", nil)
				if err != nil {
					t.Fatal(err)
				}
				got = append(got, resp.StatusCode)
			}
			if !slices.Equal(got, tt.want) {
				t.Fatalf("requests with Host: httpbin.foo under a 1/h limit on %+v: %v; want %v", tt.header, got, tt.want)
			}
		})
	}
}
