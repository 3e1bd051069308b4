package upstream

import (
	"context"
	"errors"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

func withBreakers(c *clusterv3.Cluster, t *clusterv3.CircuitBreakers_Thresholds) *clusterv3.Cluster {
	c.CircuitBreakers = &clusterv3.CircuitBreakers{Thresholds: []*clusterv3.CircuitBreakers_Thresholds{t}}
	return c
}

func TestCircuitBreakerOverflow(t *testing.T) {
	tests := []struct {
		name        string
		h2          bool
		thresholds  *clusterv3.CircuitBreakers_Thresholds
		concurrent  int // requests sent while one is blocked upstream
		wantOK      int // of those, how many succeed once it is released
		wantBreaker string
		waitPending int64 // pending requests to see before releasing the first
	}{
		{
			name:       "max_connections 1, no pending: the rest overflow",
			thresholds: &clusterv3.CircuitBreakers_Thresholds{MaxConnections: wrapperspb.UInt32(1), MaxPendingRequests: wrapperspb.UInt32(0)},
			concurrent: 5, wantOK: 0, wantBreaker: breakerPending,
		},
		{
			name:       "max_connections 1, one pending: it waits and succeeds",
			thresholds: &clusterv3.CircuitBreakers_Thresholds{MaxConnections: wrapperspb.UInt32(1), MaxPendingRequests: wrapperspb.UInt32(1)},
			concurrent: 4, wantOK: 1, wantBreaker: breakerPending,
		},
		{
			// Envoy counts a request against max_requests once it has a
			// connection; waiting, it counts against max_pending_requests only.
			name: "pending requests do not count against max_requests",
			thresholds: &clusterv3.CircuitBreakers_Thresholds{MaxConnections: wrapperspb.UInt32(1), MaxPendingRequests: wrapperspb.UInt32(5),
				MaxRequests: wrapperspb.UInt32(2)},
			concurrent: 2, wantOK: 2, wantBreaker: breakerRequests, waitPending: 2,
		},
		{
			name:       "max_requests 1 over HTTP/2",
			h2:         true,
			thresholds: &clusterv3.CircuitBreakers_Thresholds{MaxRequests: wrapperspb.UInt32(1)},
			concurrent: 3, wantOK: 0, wantBreaker: breakerRequests,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			var opts []backendOpt
			if tt.h2 {
				opts = append(opts, withH2C())
			}
			b := newBackend(t, "b", opts...)
			c := withBreakers(staticCluster("cb", lbEndpoint(t, b.addr)), tt.thresholds)
			if tt.h2 {
				http2(t, c)
			}
			e.update(t, c)
			cl := e.cluster(t, "cb")

			first := make(chan error, 1)
			go func() {
				_, _, _, err := get(t, cl, Request{}, "X-Block", "1")
				first <- err
			}()
			<-b.entered
			results := make(chan error, tt.concurrent)
			for range tt.concurrent {
				go func() {
					_, _, _, err := get(t, cl, Request{})
					results <- err
				}()
			}
			// Every request that overflows says so at once; the pending
			// ones wait for the first to finish.
			overflowed := 0
			for range tt.concurrent - tt.wantOK {
				err := <-results
				var ue *Error
				if !errors.As(err, &ue) || ue.Flag != FlagOverflow || ue.Breaker != tt.wantBreaker || !errors.Is(err, ErrOverflow) {
					t.Fatalf("got %v, want UO from %s", err, tt.wantBreaker)
				}
				overflowed++
			}
			if got := b.opened.Load(); got != 1 {
				t.Errorf("the server saw %d connections, want 1: overflowing requests must not dial", got)
			}
			if tt.waitPending > 0 {
				waitFor(t, "pending requests", func() bool { return cl.pool.slots.pending() == tt.waitPending })
			}
			b.unblock()
			if err := <-first; err != nil {
				t.Fatal(err)
			}
			for range tt.wantOK {
				if err := <-results; err != nil {
					t.Errorf("pending request: %v", err)
				}
			}
			if got := counterValue(t, e.reg, "rampart_upstream_overflow_total", map[string]string{"cluster": "cb", "breaker": tt.wantBreaker}); got != float64(overflowed) {
				t.Errorf("overflow counter %v, want %d", got, overflowed)
			}
			if got := counterValue(t, e.reg, "rampart_upstream_requests_total", map[string]string{"cluster": "cb", "flag": "UO"}); got != float64(overflowed) {
				t.Errorf("requests{flag=UO} %v, want %d", got, overflowed)
			}
		})
	}
}

func TestPendingRequestGivesUpWithItsContext(t *testing.T) {
	e := newEnv(t)
	b := newBackend(t, "b")
	e.update(t, withBreakers(staticCluster("cb", lbEndpoint(t, b.addr)),
		&clusterv3.CircuitBreakers_Thresholds{MaxConnections: wrapperspb.UInt32(1), MaxPendingRequests: wrapperspb.UInt32(5)}))
	cl := e.cluster(t, "cb")
	first := make(chan error, 1)
	go func() {
		_, _, _, err := get(t, cl, Request{}, "X-Block", "1")
		first <- err
	}()
	<-b.entered
	ctx, cancel := context.WithCancel(context.Background())
	pending := make(chan error, 1)
	go func() {
		_, _, _, err := getCtx(ctx, cl, Request{})
		pending <- err
	}()
	waitFor(t, "the request to queue", func() bool { return cl.pool.slots.pending() == 1 })
	cancel()
	if err := <-pending; Flag(err) != FlagDownstreamTermination || !errors.Is(err, context.Canceled) {
		t.Fatalf("canceled pending request: %v, want DC", err)
	}
	b.unblock()
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	// The slot was not lost.
	if got := mustGet(t, cl, Request{}); got != "b" {
		t.Fatalf("got %q", got)
	}
}

// TestRetryBudgetCountsActiveAndPending: Envoy's retry budget is
// budget_percent of the active plus the pending requests, each counted once.
func TestRetryBudgetCountsActiveAndPending(t *testing.T) {
	e := newEnv(t)
	b := newBackend(t, "b")
	c := withBreakers(staticCluster("rb", lbEndpoint(t, b.addr)), &clusterv3.CircuitBreakers_Thresholds{
		MaxConnections:     wrapperspb.UInt32(1),
		MaxPendingRequests: wrapperspb.UInt32(50),
		RetryBudget:        &clusterv3.CircuitBreakers_Thresholds_RetryBudget{MinRetryConcurrency: wrapperspb.UInt32(0)},
	})
	e.update(t, c)
	cl := e.cluster(t, "rb")
	done := make(chan error, 10)
	go func() { _, _, _, err := get(t, cl, Request{}, "X-Block", "1"); done <- err }()
	<-b.entered
	for range 9 {
		go func() { _, _, _, err := get(t, cl, Request{}); done <- err }()
	}
	waitFor(t, "9 pending requests", func() bool { return cl.pool.slots.pending() == 9 })
	var releases []func()
	for range 10 {
		if release, ok := cl.TryRetry(); ok {
			releases = append(releases, release)
		}
	}
	b.unblock()
	for range 10 {
		if err := <-done; err != nil {
			t.Error(err)
		}
	}
	for _, r := range releases {
		r()
	}
	// 1 active + 9 pending = 10; the default budget_percent 20% of 10 = 2.
	if len(releases) != 2 {
		t.Fatalf("retry budget allowed %d retries at once with 1 active and 9 pending requests at 20%%; want 2", len(releases))
	}
}

func TestTryRetry(t *testing.T) {
	tests := []struct {
		name       string
		thresholds *clusterv3.CircuitBreakers_Thresholds
		want       int // retries allowed at once
	}{
		{name: "Envoy's default of 3", want: 3},
		{name: "max_retries 1", thresholds: &clusterv3.CircuitBreakers_Thresholds{MaxRetries: wrapperspb.UInt32(1)}, want: 1},
		{name: "retry budget floor", thresholds: &clusterv3.CircuitBreakers_Thresholds{RetryBudget: &clusterv3.CircuitBreakers_Thresholds_RetryBudget{
			BudgetPercent: &typev3.Percent{Value: 20}, MinRetryConcurrency: wrapperspb.UInt32(2),
		}}, want: 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			c := staticCluster("r")
			if tt.thresholds != nil {
				withBreakers(c, tt.thresholds)
			}
			e.update(t, c)
			cl := e.cluster(t, "r")
			var releases []func()
			for i := range tt.want {
				release, ok := cl.TryRetry()
				if !ok {
					t.Fatalf("retry %d refused, want %d allowed", i+1, tt.want)
				}
				releases = append(releases, release)
			}
			if _, ok := cl.TryRetry(); ok {
				t.Fatalf("retry %d allowed, want the breaker to refuse it", tt.want+1)
			}
			releases[0]()
			releases[0]() // a second release is harmless
			if _, ok := cl.TryRetry(); !ok {
				t.Fatal("a retry released its claim, but the next is still refused")
			}
			if got := counterValue(t, e.reg, "rampart_upstream_overflow_total", map[string]string{"cluster": "r", "breaker": breakerRetries}); got != 1 {
				t.Errorf("retry overflow counter %v, want 1", got)
			}
		})
	}
}
