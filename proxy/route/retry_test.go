package route

import (
	"errors"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

func TestParseRetryOn(t *testing.T) {
	tests := []struct {
		in      string
		want    RetryOn
		wantErr string
	}{
		{"", 0, ""},
		{"5xx", RetryOn5xx, ""},
		{"connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
			RetryOnConnectFailure | RetryOnRefusedStream | RetryOnGRPCUnavailable | RetryOnGRPCCancelled | RetryOnRetriableStatusCodes, ""},
		{" gateway-error , reset ,", RetryOnGatewayError | RetryOnReset, ""},
		{"reset-before-request,envoy-ratelimited,retriable-4xx,retriable-headers,http3-post-connect-failure",
			RetryOnResetBeforeRequest | RetryOnEnvoyRateLimited | RetryOnRetriable4xx | RetryOnRetriableHeaders | RetryOnHTTP3PostConnectFailure, ""},
		{"deadline-exceeded,internal,resource-exhausted", RetryOnGRPCDeadlineExceeded | RetryOnGRPCInternal | RetryOnGRPCResourceExhausted, ""},
		{"5xx,5xxx", 0, `unknown retry_on condition "5xxx"`},
		{"503", 0, `unknown retry_on condition "503"`},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseRetryOn(tt.in)
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr {
					t.Fatalf("ParseRetryOn(%q) error = %v, want %q", tt.in, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ParseRetryOn(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
			}
			// String round-trips.
			again, err := ParseRetryOn(got.String())
			if err != nil || again != got {
				t.Errorf("ParseRetryOn(%q.String() = %q) = %v, %v", tt.in, got.String(), again, err)
			}
		})
	}
}

func TestShouldRetry(t *testing.T) {
	codes := []int{503, 429}
	type attempt struct {
		status int
		kind   AttemptError
	}
	attempts := []attempt{
		{500, AttemptOK}, {502, AttemptOK}, {503, AttemptOK}, {504, AttemptOK}, {409, AttemptOK}, {429, AttemptOK}, {404, AttemptOK}, {200, AttemptOK},
		{0, AttemptConnectFailure}, {0, AttemptResetBeforeRequest}, {0, AttemptRefusedStream}, {0, AttemptReset}, {0, AttemptTimeout}, {429, AttemptRateLimited},
	}
	names := []string{"500", "502", "503", "504", "409", "429", "404", "200", "connect", "reset-before", "refused", "reset", "timeout", "ratelimited"}
	tests := []struct {
		retryOn string
		want    string // for each attempt in order: y or n
	}{
		{"", "nnnnnnnnnnnnnn"},
		// 5xx: any 5xx and every way of getting no response.
		{"5xx", "yyyynnnnyyyyyn"},
		// gateway-error: 502/503/504, and no response.
		{"gateway-error", "nyyynnnnyyyyyn"},
		{"reset", "nnnnnnnnyyyyyn"},
		{"reset-before-request", "nnnnnnnnyynnnn"},
		{"connect-failure", "nnnnnnnnynnnnn"},
		{"refused-stream", "nnnnnnnnnnynnn"},
		{"retriable-4xx", "nnnnynnnnnnnnn"},
		{"retriable-status-codes", "nnynnynnnnnnnn"},
		{"envoy-ratelimited", "nnnnnnnnnnnnny"},
		// A rate-limited response is retried only under envoy-ratelimited, even if it is a 5xx.
		{"5xx,retriable-status-codes", "yyyynynnyyyyyn"},
		// gRPC conditions never retry by HTTP status.
		{"unavailable,cancelled,deadline-exceeded,internal,resource-exhausted", "nnnnnnnnnnnnnn"},
		// Istio's default.
		{"connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes", "nnynnynnynynnn"},
	}
	for _, tt := range tests {
		t.Run(tt.retryOn, func(t *testing.T) {
			on, err := ParseRetryOn(tt.retryOn)
			if err != nil {
				t.Fatal(err)
			}
			p := &RetryPolicy{RetryOn: on, RetriableStatusCodes: codes}
			got := ""
			for _, a := range attempts {
				if p.ShouldRetry(a.status, a.kind) {
					got += "y"
				} else {
					got += "n"
				}
			}
			if got != tt.want {
				for i := range got {
					if got[i] != tt.want[i] {
						t.Errorf("%s: got %c, want %c", names[i], got[i], tt.want[i])
					}
				}
			}
		})
	}
	var none *RetryPolicy
	if none.ShouldRetry(503, AttemptOK) || none.ShouldRetryGRPC(14) {
		t.Error("a nil policy retried")
	}
}

func TestShouldRetryGRPC(t *testing.T) {
	p := &RetryPolicy{RetryOn: RetryOnGRPCUnavailable | RetryOnGRPCCancelled | RetryOn5xx}
	for code, want := range map[int]bool{0: false, 1: true, 4: false, 8: false, 13: false, 14: true, 2: false} {
		if got := p.ShouldRetryGRPC(code); got != want {
			t.Errorf("ShouldRetryGRPC(%d) = %v, want %v", code, got, want)
		}
	}
	all := &RetryPolicy{RetryOn: RetryOnGRPCCancelled | RetryOnGRPCDeadlineExceeded | RetryOnGRPCInternal | RetryOnGRPCResourceExhausted | RetryOnGRPCUnavailable}
	for _, code := range []int{1, 4, 8, 13, 14} {
		if !all.ShouldRetryGRPC(code) {
			t.Errorf("ShouldRetryGRPC(%d) = false with every gRPC condition", code)
		}
	}
}

func TestRetryPolicyCompile(t *testing.T) {
	const cfg = `
name: rc
virtual_hosts:
- name: vh
  domains: ["*"]
  retry_policy: {retry_on: gateway-error, num_retries: 5}
  routes:
  - name: inherits
    match: {prefix: /inherit}
    route: {cluster: c}
  - name: defaults
    match: {prefix: /defaults}
    route: {cluster: c, retry_policy: {retry_on: 5xx}}
  - name: istio
    match: {prefix: /istio}
    route:
      cluster: c
      retry_policy:
        retry_on: connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes
        num_retries: 2
        per_try_timeout: 0.5s
        retriable_status_codes: [503]
        retry_host_predicate: [{name: envoy.retry_host_predicates.previous_hosts}]
        host_selection_retry_max_attempts: 5
        retry_back_off: {base_interval: 0.1s, max_interval: 0.3s}
  - name: zero
    match: {prefix: /zero}
    route: {cluster: c, retry_policy: {retry_on: 5xx, num_retries: 0}}
`
	tab := newTable(t, cfg)
	tests := []struct {
		path string
		want *RetryPolicy
	}{
		{"/inherit", &RetryPolicy{NumRetries: 5, RetryOn: RetryOnGatewayError, BackOffBase: 25 * time.Millisecond, BackOffMax: 250 * time.Millisecond, HostSelectionMaxAttempts: 1}},
		{"/defaults", &RetryPolicy{NumRetries: 1, RetryOn: RetryOn5xx, BackOffBase: 25 * time.Millisecond, BackOffMax: 250 * time.Millisecond, HostSelectionMaxAttempts: 1}},
		{"/istio", &RetryPolicy{NumRetries: 2, PerTryTimeout: 500 * time.Millisecond,
			RetryOn:              RetryOnConnectFailure | RetryOnRefusedStream | RetryOnGRPCUnavailable | RetryOnGRPCCancelled | RetryOnRetriableStatusCodes,
			RetriableStatusCodes: []int{503}, BackOffBase: 100 * time.Millisecond, BackOffMax: 300 * time.Millisecond,
			AvoidPreviousHosts: true, HostSelectionMaxAttempts: 5}},
		{"/zero", &RetryPolicy{NumRetries: 0, RetryOn: RetryOn5xx, BackOffBase: 25 * time.Millisecond, BackOffMax: 250 * time.Millisecond, HostSelectionMaxAttempts: 1}},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			rt := mustMatch(t, tab, request("GET", tt.path))
			if diff := cmp.Diff(tt.want, rt.Retry, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("Retry (-want +got):\n%s", diff)
			}
		})
	}
	noRetry := mustMatch(t, oneVhost(t, "- match: {prefix: /}\n  route: {cluster: c}"), request("GET", "/"))
	if noRetry.Retry != nil {
		t.Errorf("Retry = %+v, want nil without a retry policy", noRetry.Retry)
	}
	_, err := New([]*routev3.RouteConfiguration{parseRC(t, `
name: rc
virtual_hosts:
- name: vh
  domains: ["*"]
  routes: [{match: {prefix: /}, route: {cluster: c, retry_policy: {retry_on: "5xx,bogus"}}}]`)})
	if err == nil || !errors.As(err, new(*Error)) {
		t.Fatalf("New accepted an unknown retry_on token: %v", err)
	}
}
