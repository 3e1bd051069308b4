package outbound

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// Envoy's route timeout "spans between the point at which the entire
// downstream request (i.e. end-of-stream) has been processed and when the
// upstream response has been completely processed": a client still uploading
// its body is not timed out.
func TestRouteTimeoutStartsAfterRequestBody(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		_, _ = io.WriteString(w, "got "+string(rune('0'+len(b)%10)))
	}))
	defer up.Close()
	a := clusterAction("up")
	a.Route.Timeout = durationpb.New(500 * time.Millisecond)
	addr, log := routeServer(t, map[string]string{"up": strings.TrimPrefix(up.URL, "http://")}, &routev3.Route{Action: a})
	pr, pw := io.Pipe()
	go func() {
		for range 8 { // 8 × 150ms = 1.2s of upload, then the upstream answers at once
			_, _ = io.WriteString(pw, "x")
			time.Sleep(150 * time.Millisecond)
		}
		pw.Close()
	}()
	req, _ := http.NewRequest("POST", "http://"+addr+"/upload", pr)
	req.Host = "up"
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("a request whose upload took 1.2s, answered at once after it, got %d %q under a 500ms route timeout; want 200\n%s", resp.StatusCode, body, log.String())
	}
}

// Envoy's per_try_idle_timeout ends an attempt whose upstream sends nothing
// for that long (like the per-try timeout: 504 UT, or a retry).
func TestPerTryIdleTimeout(t *testing.T) {
	up := hungUpstream(t)
	a := clusterAction("up")
	a.Route.Timeout = durationpb.New(4 * time.Second)
	a.Route.RetryPolicy = &routev3.RetryPolicy{RetryOn: "connect-failure", NumRetries: wrapperspb.UInt32(0),
		PerTryIdleTimeout: durationpb.New(200 * time.Millisecond)}
	addr, _ := routeServer(t, map[string]string{"up": strings.TrimPrefix(up.URL, "http://")}, &routev3.Route{Action: a})
	start := time.Now()
	resp := get(t, addr)
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("an upstream silent for %v answered %d only at the route timeout; per_try_idle_timeout 200ms was not enforced", d.Round(time.Millisecond), resp.StatusCode)
	}
}
