package outbound

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// A per-try timeout on a hung host is an upstream timeout (UT) and a local
// origin failure for outlier detection: forward's timer causes wrap
// DeadlineExceeded, so the upstream package does not read them as DC.
func TestPerTryTimeoutCountsForOutlier(t *testing.T) {
	up := hungUpstream(t)
	a := clusterAction("up")
	a.Route.RetryPolicy = &routev3.RetryPolicy{RetryOn: "5xx", NumRetries: wrapperspb.UInt32(0),
		PerTryTimeout: durationpb.New(100 * time.Millisecond)}
	addr, reg, log := routeServerOpts(t, serverOpts{addrs: map[string]string{"up": strings.TrimPrefix(up.URL, "http://")}, mod: func(c *clusterv3.Cluster) {
		c.OutlierDetection = &clusterv3.OutlierDetection{Consecutive_5Xx: wrapperspb.UInt32(1), ConsecutiveGatewayFailure: wrapperspb.UInt32(1),
			EnforcingConsecutiveGatewayFailure: wrapperspb.UInt32(100), MaxEjectionPercent: wrapperspb.UInt32(100)}
	}}, &routev3.Route{Action: a})
	resp := get(t, addr)
	if resp.StatusCode != 504 {
		t.Fatalf("status %d, want 504", resp.StatusCode)
	}
	time.Sleep(100 * time.Millisecond)
	mfs, _ := reg.Gather()
	var dump strings.Builder
	ut, dc, ej := 0.0, 0.0, 0.0
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			switch mf.GetName() {
			case "rampart_upstream_requests_total":
				if labels["flag"] == "UT" {
					ut = m.GetCounter().GetValue()
				}
				if labels["flag"] == "DC" {
					dc = m.GetCounter().GetValue()
				}
			case "rampart_upstream_ejections_total":
				ej = m.GetCounter().GetValue()
			}
		}
	}
	_ = testutil.ToFloat64
	dump.WriteString(log.String())
	if ut != 1 || dc != 0 || ej != 1 {
		t.Fatalf("after one per-try timeout: upstream requests UT=%v DC=%v, ejections=%v; want UT=1 DC=0 ejections=1 (the timeout of a hung host is a local-origin failure)\n%s", ut, dc, ej, dump.String())
	}
}

// Envoy's RetryStateImpl::shouldRetry calls resetRetry (releasing the retry
// resource the previous retry held) before it asks the breaker for the next
// one. With max_retries 1 and num_retries 2, one request alone may retry
// twice: after 503s (the response path) and after resets (the error path).
func TestSecondRetryNotBlockedByOwnSlot(t *testing.T) {
	for _, tc := range []struct {
		retryOn string
		fail    func(w http.ResponseWriter)
	}{
		{"5xx", func(w http.ResponseWriter) { w.WriteHeader(503) }},
		{"reset", func(w http.ResponseWriter) {
			c, _, _ := w.(http.Hijacker).Hijack()
			c.Close() // reset before a response
		}},
	} {
		t.Run(tc.retryOn, func(t *testing.T) {
			var calls atomic.Int32
			up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if calls.Add(1) < 3 {
					tc.fail(w)
					return
				}
				_, _ = w.Write([]byte("ok"))
			}))
			defer up.Close()
			a := clusterAction("up")
			a.Route.RetryPolicy = &routev3.RetryPolicy{RetryOn: tc.retryOn, NumRetries: wrapperspb.UInt32(2),
				RetryBackOff: &routev3.RetryPolicy_RetryBackOff{BaseInterval: durationpb.New(time.Millisecond)}}
			addr, _, log := routeServerOpts(t, serverOpts{addrs: map[string]string{"up": strings.TrimPrefix(up.URL, "http://")}, mod: func(c *clusterv3.Cluster) {
				c.CircuitBreakers = &clusterv3.CircuitBreakers{Thresholds: []*clusterv3.CircuitBreakers_Thresholds{{MaxRetries: wrapperspb.UInt32(1)}}}
			}}, &routev3.Route{Action: a})
			resp := get(t, addr)
			if n := calls.Load(); resp.StatusCode != 200 || n != 3 {
				t.Fatalf("max_retries 1, num_retries 2, two failures then 200: status %d after %d calls (flags %q); want 200 after 3\n%s",
					resp.StatusCode, n, resp.Header.Get("x-rampart-response-flags"), log.String())
			}
		})
	}
}

// An upgraded connection (WebSocket) is a tunnel: per_try_idle_timeout, whose
// timer forward starts at once for an upgrade and never resets (the idle
// reader is not installed on an upgrade), must not end a tunnel that is in use.
func TestPerTryIdleDoesNotCutActiveTunnel(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hj := w.(http.Hijacker)
		c, brw, err := hj.Hijack()
		if err != nil {
			return
		}
		defer c.Close()
		brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
		brw.Flush()
		buf := make([]byte, 1)
		for {
			n, err := brw.Read(buf)
			if err != nil {
				return
			}
			c.Write(buf[:n])
		}
	}))
	defer up.Close()
	a := clusterAction("up")
	a.Route.RetryPolicy = &routev3.RetryPolicy{RetryOn: "connect-failure", NumRetries: wrapperspb.UInt32(1),
		PerTryIdleTimeout: durationpb.New(300 * time.Millisecond)}
	a.Route.UpgradeConfigs = []*routev3.RouteAction_UpgradeConfig{{UpgradeType: "echo"}}
	addr, _, log := routeServerOpts(t, serverOpts{addrs: map[string]string{"up": strings.TrimPrefix(up.URL, "http://")}}, &routev3.Route{Action: a})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "GET /ws HTTP/1.1\r\nHost: up\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 101 {
		t.Fatalf("upgrade: %v %v\n%s", resp, err, log.String())
	}
	// Keep the tunnel busy: a byte every 100ms for 1s, each echoed.
	for i := 0; i < 10; i++ {
		c.SetDeadline(time.Now().Add(2 * time.Second))
		if _, err := c.Write([]byte{'a' + byte(i)}); err != nil {
			t.Fatalf("write %d after %dms: %v\n%s", i, i*100, err, log.String())
		}
		b, err := br.ReadByte()
		if err != nil || b != 'a'+byte(i) {
			t.Fatalf("echo %d after %dms: %q %v: the tunnel, in use every 100ms, was cut (per_try_idle_timeout 300ms)\n%s", i, i*100, b, err, log.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// A gateway is the mesh's edge (Istio sets use_remote_address on it, and
// Envoy then overwrites x-forwarded-proto with the downstream connection's
// scheme unless xff_num_trusted_hops says the client is a trusted proxy). An
// external client on the plaintext gateway must not be able to tell the
// upstream its request came over https.
func TestGatewayOverwritesForwardedProto(t *testing.T) {
	got := make(chan string, 1)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- r.Header.Get("X-Forwarded-Proto")
	}))
	defer up.Close()
	addr, _, log := routeServerOpts(t, serverOpts{addrs: map[string]string{"up": strings.TrimPrefix(up.URL, "http://")}, gateway: true}, &routev3.Route{Action: clusterAction("up")})
	resp := get(t, addr, "X-Forwarded-Proto", "https")
	if resp.StatusCode != 200 {
		t.Fatalf("status %d\n%s", resp.StatusCode, log.String())
	}
	if v := <-got; v != "http" {
		t.Fatalf("plaintext request to the gateway with x-forwarded-proto: https reached the upstream with %q; want http (the edge overwrites it)", v)
	}
}
