package outbound

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// Envoy's max_retries breaker bounds the retries *outstanding* in the
// cluster: a retry holds the retries resource from when it is scheduled until
// the retried attempt ends (RetryStateImpl::resetRetry). With max_retries 1,
// while request A's retry is in flight, request B's retry must overflow (UO).
func TestMaxRetriesHeldDuringRetry(t *testing.T) {
	var mu sync.Mutex
	seen := map[string]int{}
	aRetrying := make(chan struct{})
	release := make(chan struct{})
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := r.Header.Get("X-Id")
		mu.Lock()
		seen[id]++
		n := seen[id]
		mu.Unlock()
		if n == 1 {
			w.WriteHeader(503)
			return
		}
		if id == "A" {
			close(aRetrying)
			<-release // A's retry stays in flight
		}
		_, _ = io.WriteString(w, "ok")
	}))
	defer up.Close()
	defer close(release)
	a := clusterAction("up")
	a.Route.RetryPolicy = &routev3.RetryPolicy{RetryOn: "5xx", NumRetries: wrapperspb.UInt32(1),
		RetryBackOff: &routev3.RetryPolicy_RetryBackOff{BaseInterval: durationpb.New(time.Millisecond)}}
	addr, _ := routeServerWith(t, map[string]string{"up": strings.TrimPrefix(up.URL, "http://")}, func(c *clusterv3.Cluster) {
		c.CircuitBreakers = &clusterv3.CircuitBreakers{Thresholds: []*clusterv3.CircuitBreakers_Thresholds{{MaxRetries: wrapperspb.UInt32(1)}}}
	}, &routev3.Route{Action: a})
	do := func(id string) (int, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+addr+"/x", nil)
		req.Host = "up"
		req.Header.Set("X-Id", id)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0, err
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode, nil
	}
	go do("A")
	select {
	case <-aRetrying:
	case <-time.After(5 * time.Second):
		t.Fatal("A's retry never reached the upstream")
	}
	codeB, err := do("B")
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	nB := seen["B"]
	mu.Unlock()
	if nB != 1 || codeB != 503 {
		t.Fatalf("B: upstream called %d times, status %d; want 1 call and the 503 (retry overflow: A's retry holds the only max_retries slot)", nB, codeB)
	}
}

// Envoy sets URX (UpstreamRetryLimitExceeded) only when the final response
// would have been retried but no retries were left; a request that
// succeeded on its retry has no response flag.
func TestNoURXAfterSuccessfulRetry(t *testing.T) {
	var mu sync.Mutex
	calls := 0
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		calls++
		n := calls
		mu.Unlock()
		if n == 1 {
			w.WriteHeader(503)
			return
		}
		_, _ = io.WriteString(w, "ok")
	}))
	defer up.Close()
	a := clusterAction("up")
	a.Route.RetryPolicy = &routev3.RetryPolicy{RetryOn: "5xx", NumRetries: wrapperspb.UInt32(2),
		RetryBackOff: &routev3.RetryPolicy_RetryBackOff{BaseInterval: durationpb.New(time.Millisecond)}}
	addr, log := routeServer(t, map[string]string{"up": strings.TrimPrefix(up.URL, "http://")}, &routev3.Route{Action: a})
	req, _ := http.NewRequest("GET", "http://"+addr+"/x", nil)
	req.Host = "up"
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("status %d, want 200", resp.StatusCode)
	}
	waitLog(t, log, "msg=access")
	if strings.Contains(log.String(), "flags=URX") || !strings.Contains(log.String(), "attempts=2") {
		t.Fatalf("a request that succeeded on its retry was logged with URX:\n%s", log.String())
	}
}

// A client that goes away while the upstream has not answered is Envoy's DC
// (downstream connection termination), not a 504 upstream timeout (UT).
func TestClientCancelIsDC(t *testing.T) {
	up := hungUpstream(t)
	addr, log := routeServer(t, map[string]string{"up": strings.TrimPrefix(up.URL, "http://")}, &routev3.Route{Action: clusterAction("up")})
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+addr+"/x", nil)
	req.Host = "up"
	if resp, err := http.DefaultClient.Do(req); err == nil {
		resp.Body.Close()
	}
	waitLog(t, log, "msg=access")
	l := log.String()
	if strings.Contains(l, "flags=UT") || strings.Contains(l, "status=504") || !strings.Contains(l, "flags=DC") {
		t.Fatalf("a client that went away was logged as an upstream timeout:\n%s", l)
	}
}

// With no endpoint to try, Envoy answers 503 UH at once: there is nothing
// a retry could reach, so connect-failure retries do not wait out backoffs.
func TestNoHealthyUpstreamIsNotRetried(t *testing.T) {
	a := clusterAction("up")
	a.Route.RetryPolicy = &routev3.RetryPolicy{RetryOn: "connect-failure,5xx", NumRetries: wrapperspb.UInt32(3),
		RetryBackOff: &routev3.RetryPolicy_RetryBackOff{BaseInterval: durationpb.New(time.Second)}}
	addr, log := routeServerWith(t, map[string]string{"up": "127.0.0.1:1"}, func(c *clusterv3.Cluster) {
		c.LoadAssignment.Endpoints = nil
	}, &routev3.Route{Action: a})
	req, _ := http.NewRequest("GET", "http://"+addr+"/x", nil)
	req.Host = "up"
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("x-rampart-response-flags") != "UH" {
		t.Fatalf("got %d flags %q; want 503 UH", resp.StatusCode, resp.Header.Get("x-rampart-response-flags"))
	}
	waitLog(t, log, "msg=access")
	if l := log.String(); !strings.Contains(l, "attempts=1") {
		t.Errorf("want one attempt (no retry after UH):\n%s", l)
	}
}
