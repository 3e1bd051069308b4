package outbound

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	corsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/cors/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rampart-mesh/rampart/ca/catest"
	"github.com/rampart-mesh/rampart/proxy/xds"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// routeServer runs an outbound server whose port 80 serves one virtual host
// ("*") with the given route, and a plaintext cluster per name → address.
func routeServer(t *testing.T, addrs map[string]string, rt *routev3.Route) (string, *catest.SyncBuffer) {
	t.Helper()
	return routeServerWith(t, addrs, nil, rt)
}

// routeServerWith is routeServer with every cluster changed by mod (if set).
func routeServerWith(t *testing.T, addrs map[string]string, mod func(*clusterv3.Cluster), rt *routev3.Route) (string, *catest.SyncBuffer) {
	t.Helper()
	addr, _, log := routeServerOpts(t, serverOpts{addrs: addrs, mod: mod}, rt)
	return addr, log
}

// serverOpts are routeServerOpts's choices.
type serverOpts struct {
	addrs   map[string]string
	mod     func(*clusterv3.Cluster) // changes every cluster, if set
	gateway bool                     // a gateway listener on the server's own port
}

// routeServerOpts is routeServer with options; it also returns the
// upstreams' metrics registry.
func routeServerOpts(t *testing.T, o serverOpts, rt *routev3.Route) (string, *prometheus.Registry, *catest.SyncBuffer) {
	t.Helper()
	reg := prometheus.NewRegistry()
	ups := newUpstreamsReg(t, o.addrs, o.mod, reg)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	log := &catest.SyncBuffer{}
	s, err := New(Config{Listener: lis, Upstreams: ups, Log: slog.New(slog.NewTextHandler(log, nil)), AccessLogAll: true, Gateway: o.gateway})
	if err != nil {
		t.Fatal(err)
	}
	port, dir := uint32(80), corev3.TrafficDirection_UNSPECIFIED
	if o.gateway {
		port, dir = uint32(lis.Addr().(*net.TCPAddr).Port), corev3.TrafficDirection_INBOUND
	}
	name := strconv.Itoa(int(port))
	hcm := &hcmv3.HttpConnectionManager{RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{RouteConfigName: name}}}
	l := &listenerv3.Listener{
		Name: "0.0.0.0_" + name, TrafficDirection: dir,
		Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
			Address: "0.0.0.0", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port}}}},
		FilterChains: []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{{Name: "envoy.filters.network.http_connection_manager",
			ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(t, hcm)}}}}},
	}
	if rt.Match == nil {
		rt.Match = &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}}
	}
	rc := &routev3.RouteConfiguration{Name: name, VirtualHosts: []*routev3.VirtualHost{{Name: "up", Domains: []string{"*"}, Routes: []*routev3.Route{rt}}}}
	apply, err := s.Prepare(&xds.Resources{
		Listeners: map[string]*listenerv3.Listener{l.Name: l},
		Routes:    map[string]*routev3.RouteConfiguration{rc.Name: rc},
	})
	if err != nil {
		t.Fatal(err)
	}
	apply()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- s.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-errc })
	return lis.Addr().String(), reg, log
}

func clusterAction(name string) *routev3.Route_Route {
	return &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: name}}}
}

// Envoy's CORS filter: an allowed origin's preflight is answered by the
// sidecar; an unmatched one is forwarded or answered empty, as configured;
// actual requests from an allowed origin get the allow headers.
// Envoy's CORS filter is bypassed on a route that redirects: an allowed
// origin's preflight gets the redirect, not the filter's answer.
func TestCorsBypassedOnRedirect(t *testing.T) {
	cp := &corsv3.CorsPolicy{AllowOriginStringMatch: []*matcherv3.StringMatcher{{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: "https://ok.example"}}},
		AllowMethods: "GET,POST"}
	addr, _ := routeServer(t, map[string]string{}, &routev3.Route{
		Action:               &routev3.Route_Redirect{Redirect: &routev3.RedirectAction{PathRewriteSpecifier: &routev3.RedirectAction_PathRedirect{PathRedirect: "/moved"}}},
		TypedPerFilterConfig: map[string]*anypb.Any{"envoy.filters.http.cors": mustAny(t, cp)}})
	req, _ := http.NewRequest("OPTIONS", "http://"+addr+"/x", nil)
	req.Host = "up"
	req.Header.Set("Origin", "https://ok.example")
	req.Header.Set("Access-Control-Request-Method", "POST")
	resp, err := (&http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMovedPermanently || resp.Header.Get("Access-Control-Allow-Origin") != "" {
		t.Errorf("preflight to a redirect route: %d, allow-origin %q; want the 301 and no CORS headers", resp.StatusCode, resp.Header.Get("Access-Control-Allow-Origin"))
	}
}

func TestCorsPolicy(t *testing.T) {
	for _, tc := range []struct {
		name, method, origin string
		preflight, forward   bool
		wantCalls            int64
		want                 map[string]string
	}{
		{"allowed preflight", "OPTIONS", "https://ok.example", true, true, 0, map[string]string{
			"Access-Control-Allow-Origin": "https://ok.example", "Access-Control-Allow-Methods": "GET,POST",
			"Access-Control-Allow-Headers": "x-a", "Access-Control-Max-Age": "60", "Access-Control-Allow-Credentials": "true"}},
		{"unmatched preflight forwarded", "OPTIONS", "https://evil.example", true, true, 1, map[string]string{"Access-Control-Allow-Origin": ""}},
		{"unmatched preflight ignored", "OPTIONS", "https://evil.example", true, false, 0, map[string]string{"Access-Control-Allow-Origin": ""}},
		{"actual request", "GET", "https://sub.ok.example", false, true, 1, map[string]string{
			"Access-Control-Allow-Origin": "https://sub.ok.example", "Access-Control-Expose-Headers": "x-e",
			"Access-Control-Allow-Credentials": "true", "Access-Control-Allow-Methods": ""}},
		{"actual request, other origin", "GET", "https://evil.example", false, true, 1, map[string]string{"Access-Control-Allow-Origin": "upstream"}},
		{"no origin", "OPTIONS", "", true, true, 1, map[string]string{"Access-Control-Allow-Origin": "upstream"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var calls atomic.Int64
			up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				calls.Add(1)
				if r.Header.Get("Origin") != "https://evil.example" || r.Method != "OPTIONS" {
					w.Header().Set("Access-Control-Allow-Origin", "upstream")
				}
			}))
			defer up.Close()
			cp := &corsv3.CorsPolicy{AllowOriginStringMatch: []*matcherv3.StringMatcher{
				{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: "https://ok.example"}},
				{MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: `https://[a-z]+\.ok\.example`}}}},
				AllowMethods: "GET,POST", AllowHeaders: "x-a", ExposeHeaders: "x-e", MaxAge: "60",
				AllowCredentials: wrapperspb.Bool(true), ForwardNotMatchingPreflights: wrapperspb.Bool(tc.forward)}
			addr, _ := routeServer(t, map[string]string{"up": strings.TrimPrefix(up.URL, "http://")}, &routev3.Route{
				Action: clusterAction("up"), TypedPerFilterConfig: map[string]*anypb.Any{"envoy.filters.http.cors": mustAny(t, cp)}})
			req, _ := http.NewRequest(tc.method, "http://"+addr+"/x", nil)
			req.Host = "up"
			if tc.origin != "" {
				req.Header.Set("Origin", tc.origin)
			}
			if tc.preflight {
				req.Header.Set("Access-Control-Request-Method", "POST")
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != 200 || calls.Load() != tc.wantCalls {
				t.Errorf("status %d, upstream called %d times; want 200, %d", resp.StatusCode, calls.Load(), tc.wantCalls)
			}
			for k, v := range tc.want {
				if got := resp.Header.Get(k); got != v {
					t.Errorf("%s: %q, want %q", k, got, v)
				}
			}
		})
	}
}

// The policy's gRPC conditions retry a trailers-only response with that
// grpc-status; other statuses are not retried.
func TestGRPCRetryOn(t *testing.T) {
	for _, tc := range []struct {
		name, retryOn, first string
		wantCalls            int64
	}{
		{"unavailable", "unavailable", "14", 2},
		{"cancelled", "cancelled", "1", 2},
		{"deadline-exceeded", "deadline-exceeded", "4", 2},
		{"resource-exhausted", "resource-exhausted", "8", 2},
		{"internal", "internal", "13", 2},
		{"not named", "cancelled", "14", 1},
		{"not retriable status", "unavailable,internal", "3", 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var calls atomic.Int64
			up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "application/grpc")
				if calls.Add(1) == 1 {
					w.Header().Set("Grpc-Status", tc.first)
				} else {
					w.Header().Set("Grpc-Status", "0")
				}
			}))
			defer up.Close()
			a := clusterAction("up")
			a.Route.RetryPolicy = &routev3.RetryPolicy{RetryOn: tc.retryOn, NumRetries: wrapperspb.UInt32(2),
				RetryBackOff: &routev3.RetryPolicy_RetryBackOff{BaseInterval: durationpb.New(time.Millisecond)}}
			addr, _ := routeServer(t, map[string]string{"up": strings.TrimPrefix(up.URL, "http://")}, &routev3.Route{Action: a})
			req, _ := http.NewRequest("POST", "http://"+addr+"/pkg.Svc/M", strings.NewReader("\x00\x00\x00\x00\x00"))
			req.Host = "up"
			req.Header.Set("Content-Type", "application/grpc")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if calls.Load() != tc.wantCalls {
				t.Errorf("grpc-status %s with retryOn %q: upstream called %d times, want %d", tc.first, tc.retryOn, calls.Load(), tc.wantCalls)
			}
		})
	}
}

// A route's response header operations apply to its direct responses and
// redirects too.
func TestResponseHeadersOnLocalAnswers(t *testing.T) {
	for name, act := range map[string]*routev3.Route{
		"direct":   {Action: &routev3.Route_DirectResponse{DirectResponse: &routev3.DirectResponseAction{Status: 200}}},
		"redirect": {Action: &routev3.Route_Redirect{Redirect: &routev3.RedirectAction{HostRedirect: "elsewhere.example"}}},
	} {
		t.Run(name, func(t *testing.T) {
			act.ResponseHeadersToAdd = []*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: "x-added", Value: "yes"}}}
			act.ResponseHeadersToRemove = []string{"location"}
			addr, _ := routeServer(t, map[string]string{"up": "127.0.0.1:1"}, act)
			req, _ := http.NewRequest("GET", "http://"+addr+"/x", nil)
			req.Host = "up"
			resp, err := http.DefaultTransport.RoundTrip(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.Header.Get("x-added") != "yes" || resp.Header.Get("Location") != "" {
				t.Errorf("%s response %d: x-added %q, location %q; want yes and removed", name, resp.StatusCode, resp.Header.Get("x-added"), resp.Header.Get("Location"))
			}
		})
	}
}

// The mirror gets the request's body whether or not the route retries, of
// known or unknown length; a body over the buffer limit is not mirrored.
// A mirrored copy has the route's timeout, as Envoy's shadow requests do: a
// shadow that hangs is given up on then, not after the fallback bound.
func TestMirrorHasRouteTimeout(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer up.Close()
	gaveUp := make(chan struct{}, 1)
	shadow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
			gaveUp <- struct{}{}
		case <-time.After(mirrorTimeout):
		}
	}))
	defer shadow.Close()
	a := clusterAction("up")
	a.Route.Timeout = durationpb.New(200 * time.Millisecond)
	a.Route.RequestMirrorPolicies = []*routev3.RouteAction_RequestMirrorPolicy{{Cluster: "shadow"}}
	addr, _ := routeServer(t, map[string]string{"up": strings.TrimPrefix(up.URL, "http://"), "shadow": strings.TrimPrefix(shadow.URL, "http://")}, &routev3.Route{Action: a})
	req, _ := http.NewRequest("GET", "http://"+addr+"/x", nil)
	req.Host = "up"
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	select {
	case <-gaveUp:
	case <-time.After(mirrorTimeout / 2):
		t.Fatal("the mirrored copy outlived the route's 200ms timeout")
	}
}

func TestMirrorCarriesBody(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.Copy(io.Discard, r.Body) }))
	defer up.Close()
	got := make(chan string, 4)
	shadow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		got <- string(b)
	}))
	defer shadow.Close()
	big := strings.Repeat("x", 70<<10)
	for _, tc := range []struct {
		name    string
		retry   *routev3.RetryPolicy
		body    string
		chunked bool
		want    string // "": no mirror
	}{
		{"no retry policy", nil, "hello", false, "hello"},
		{"retries attempts 0", &routev3.RetryPolicy{RetryOn: "5xx", NumRetries: wrapperspb.UInt32(0)}, "hello", false, "hello"},
		{"chunked", nil, "hello", true, "hello"},
		{"over the limit", nil, big, false, ""},
		{"chunked over the limit", nil, big, true, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := clusterAction("up")
			a.Route.RetryPolicy = tc.retry
			a.Route.RequestMirrorPolicies = []*routev3.RouteAction_RequestMirrorPolicy{{Cluster: "shadow"}}
			addr, _ := routeServer(t, map[string]string{"up": strings.TrimPrefix(up.URL, "http://"), "shadow": strings.TrimPrefix(shadow.URL, "http://")}, &routev3.Route{Action: a})
			var rd io.Reader = strings.NewReader(tc.body)
			if tc.chunked {
				rd = io.MultiReader(rd) // hides the length: chunked
			}
			req, _ := http.NewRequest("POST", "http://"+addr+"/x", rd)
			req.Host = "up"
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if tc.want == "" {
				select {
				case g := <-got:
					t.Errorf("mirrored a body of %d bytes over the limit", len(g))
				case <-time.After(300 * time.Millisecond):
				}
				return
			}
			select {
			case g := <-got:
				if g != tc.want {
					t.Errorf("the mirror received %q, want %q", g, tc.want)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("no mirrored request")
			}
		})
	}
}

// A body of unknown length within the limit is replayed on retry; one over
// the limit streams through whole, not retried.
func TestChunkedBodyRetried(t *testing.T) {
	for _, tc := range []struct {
		name      string
		body      string
		wantCode  int
		wantCalls int64
	}{
		{"small", "hello", 200, 2},
		{"over the limit", strings.Repeat("y", 70<<10), 503, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var calls atomic.Int64
			bodies := make(chan string, 4)
			up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				b, _ := io.ReadAll(r.Body)
				bodies <- string(b)
				if calls.Add(1) == 1 {
					w.WriteHeader(503)
				}
			}))
			defer up.Close()
			a := clusterAction("up")
			a.Route.RetryPolicy = &routev3.RetryPolicy{RetryOn: "5xx", NumRetries: wrapperspb.UInt32(2), RetryBackOff: &routev3.RetryPolicy_RetryBackOff{BaseInterval: durationpb.New(time.Millisecond)}}
			addr, _ := routeServer(t, map[string]string{"up": strings.TrimPrefix(up.URL, "http://")}, &routev3.Route{Action: a})
			pr, pw := io.Pipe()
			go func() { _, _ = io.WriteString(pw, tc.body); pw.Close() }()
			req, _ := http.NewRequest("POST", "http://"+addr+"/x", pr)
			req.Host = "up"
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tc.wantCode || calls.Load() != tc.wantCalls {
				t.Fatalf("got %d after %d calls, want %d after %d", resp.StatusCode, calls.Load(), tc.wantCode, tc.wantCalls)
			}
			for range tc.wantCalls {
				if b := <-bodies; b != tc.body {
					t.Errorf("an attempt carried %d bytes, want %d", len(b), len(tc.body))
				}
			}
		})
	}
}

// A hash cookie with a ttl is generated when absent (Set-Cookie on the
// response) and not when the request has it.
func TestHashCookieGenerated(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Set-Cookie", "app=1")
	}))
	defer up.Close()
	a := clusterAction("up")
	a.Route.HashPolicy = []*routev3.RouteAction_HashPolicy{{PolicySpecifier: &routev3.RouteAction_HashPolicy_Cookie_{Cookie: &routev3.RouteAction_HashPolicy_Cookie{
		Name: "session", Ttl: durationpb.New(time.Hour), Path: "/api"}}}}
	addr, _ := routeServer(t, map[string]string{"up": strings.TrimPrefix(up.URL, "http://")}, &routev3.Route{Action: a})
	for _, cookie := range []string{"", "session=abc"} {
		req, _ := http.NewRequest("GET", "http://"+addr+"/x", nil)
		req.Host = "up"
		if cookie != "" {
			req.Header.Set("Cookie", cookie)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		var session string
		for _, c := range resp.Header.Values("Set-Cookie") {
			if strings.HasPrefix(c, "session=") {
				session = c
			}
		}
		if cookie != "" {
			if session != "" {
				t.Errorf("request with the cookie got Set-Cookie %q", session)
			}
			continue
		}
		if !strings.Contains(session, "; Max-Age=3600") || !strings.Contains(session, "; Path=/api") || !slices.Contains(resp.Header.Values("Set-Cookie"), "app=1") {
			t.Errorf("Set-Cookie %q; want session=...; Max-Age=3600; Path=/api, and the upstream's app=1 kept", resp.Header.Values("Set-Cookie"))
		}
	}
}

// Errors the sidecar makes for a gRPC request are trailers-only gRPC
// responses, as Envoy's local replies.
func TestGRPCLocalReply(t *testing.T) {
	addr, _ := routeServer(t, map[string]string{}, &routev3.Route{Action: clusterAction("missing")})
	for _, tc := range []struct {
		name, host, ctype string
		wantCode          int
		wantGRPC          string
	}{
		{"no cluster, gRPC", "up", "application/grpc", 200, "14"},
		{"no cluster, gRPC+proto", "up", "application/grpc+proto", 200, "14"},
		{"no cluster, HTTP", "up", "application/json", 503, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest("POST", "http://"+addr+"/pkg.Svc/M", strings.NewReader("x"))
			req.Host = tc.host
			req.Header.Set("Content-Type", tc.ctype)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tc.wantCode || resp.Header.Get("Grpc-Status") != tc.wantGRPC {
				t.Errorf("status %d grpc-status %q, want %d %q", resp.StatusCode, resp.Header.Get("Grpc-Status"), tc.wantCode, tc.wantGRPC)
			}
			if tc.wantGRPC != "" && (resp.Header.Get("Content-Type") != "application/grpc" || !strings.Contains(resp.Header.Get("Grpc-Message"), "cluster_not_found")) {
				t.Errorf("content-type %q, grpc-message %q", resp.Header.Get("Content-Type"), resp.Header.Get("Grpc-Message"))
			}
		})
	}
}
