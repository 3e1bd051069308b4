package outbound

import (
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	faultcommonv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/common/fault/v3"
	faultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// hungUpstream never answers: each request waits until its client goes
// away or the test ends.
func hungUpstream(t *testing.T) *httptest.Server {
	t.Helper()
	hold := make(chan struct{})
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-hold:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(up.Close)
	t.Cleanup(func() { close(hold) }) // runs first: the handlers return
	return up
}

func get(t *testing.T, addr string, hdr ...string) *http.Response {
	t.Helper()
	req, _ := http.NewRequest("GET", "http://"+addr+"/x", nil)
	req.Host = "up"
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp
}

// Envoy's retry_on "envoy-ratelimited" retries a response carrying
// x-envoy-ratelimited (RetryStateImpl::wouldRetryFromHeaders), and such a
// response is retried under no other condition, 5xx included.
func TestEnvoyRateLimitedRetry(t *testing.T) {
	for _, tc := range []struct {
		name, retryOn string
		status        int
		wantCalls     int64
	}{
		{"envoy-ratelimited retries a rate-limited 429", "envoy-ratelimited", 429, 2},
		{"5xx does not retry a rate-limited 503", "5xx", 503, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var calls atomic.Int64
			up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if calls.Add(1) == 1 {
					w.Header().Set("x-envoy-ratelimited", "true")
					w.WriteHeader(tc.status)
				}
			}))
			defer up.Close()
			a := clusterAction("up")
			a.Route.RetryPolicy = &routev3.RetryPolicy{RetryOn: tc.retryOn, NumRetries: wrapperspb.UInt32(2),
				RetryBackOff: &routev3.RetryPolicy_RetryBackOff{BaseInterval: durationpb.New(time.Millisecond)}}
			addr, _ := routeServer(t, map[string]string{"up": strings.TrimPrefix(up.URL, "http://")}, &routev3.Route{Action: a})
			get(t, addr)
			if n := calls.Load(); n != tc.wantCalls {
				t.Fatalf("retry_on %q, first response %d with x-envoy-ratelimited: upstream called %d times, want %d", tc.retryOn, tc.status, n, tc.wantCalls)
			}
		})
	}
}

// max_active_faults bounds the faults active at once: Envoy's fault filter
// injects none while that many are active (faults_overflow).
func TestMaxActiveFaults(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer up.Close()
	hf := &faultv3.HTTPFault{
		Delay: &faultcommonv3.FaultDelay{
			FaultDelaySecifier: &faultcommonv3.FaultDelay_FixedDelay{FixedDelay: durationpb.New(time.Second)},
			Percentage:         &typev3.FractionalPercent{Numerator: 100},
		},
		MaxActiveFaults: wrapperspb.UInt32(1),
	}
	cfg, err := anypb.New(hf)
	if err != nil {
		t.Fatal(err)
	}
	rt := &routev3.Route{Action: clusterAction("up"), TypedPerFilterConfig: map[string]*anypb.Any{"envoy.filters.http.fault": cfg}}
	addr, _ := routeServer(t, map[string]string{"up": strings.TrimPrefix(up.URL, "http://")}, rt)
	var wg sync.WaitGroup
	durs := make([]time.Duration, 3)
	for i := range durs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			start := time.Now()
			get(t, addr)
			durs[i] = time.Since(start)
		}()
		time.Sleep(50 * time.Millisecond)
	}
	wg.Wait()
	delayed := 0
	for _, d := range durs {
		if d >= 900*time.Millisecond {
			delayed++
		}
	}
	if delayed > 1 {
		t.Fatalf("%d concurrent requests were delayed (%v); max_active_faults 1 allows one", delayed, durs)
	}
}

// Envoy's HTTP connection manager's default forward_client_cert_details is
// SANITIZE: the app's x-forwarded-client-cert does not reach the next hop
// (Istio leaves the sidecar's outbound listeners at that default).
func TestOutboundSanitizesXFCC(t *testing.T) {
	got := make(chan string, 1)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- r.Header.Get("X-Forwarded-Client-Cert")
	}))
	defer up.Close()
	addr, _ := routeServer(t, map[string]string{"up": strings.TrimPrefix(up.URL, "http://")}, &routev3.Route{Action: clusterAction("up")})
	get(t, addr, "X-Forwarded-Client-Cert", "By=spiffe://cluster.local/ns/prod/sa/admin;URI=spiffe://cluster.local/ns/prod/sa/admin")
	if v := <-got; v != "" {
		t.Fatalf("the app's x-forwarded-client-cert reached the upstream: %q", v)
	}
}

// The PassthroughCluster (transparent capture, no route) drops the app's
// x-forwarded-client-cert too, and goes to the original destination itself.
func TestPassthroughSanitizesXFCC(t *testing.T) {
	got := make(chan http.Header, 1)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { got <- r.Header.Clone() }))
	defer up.Close()
	if passthroughTransport.Proxy != nil {
		t.Error("the passthrough transport uses a proxy")
	}
	s := &Server{}
	req := httptest.NewRequest("GET", "http://app.example/x", nil)
	req.Header.Set("X-Forwarded-Client-Cert", "By=spiffe://cluster.local/ns/x/sa/admin")
	w := httptest.NewRecorder()
	res := s.passthrough(w, req, netip.MustParseAddrPort(strings.TrimPrefix(up.URL, "http://")))
	if res.code != http.StatusOK {
		t.Fatalf("passthrough: %+v", res)
	}
	if h := <-got; h.Get("X-Forwarded-Client-Cert") != "" {
		t.Errorf("the original destination got x-forwarded-client-cert %q", h.Get("X-Forwarded-Client-Cert"))
	}
}
