package route

import (
	"errors"
	"fmt"
	"strings"
	"time"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
)

// RetryOn is the set of conditions of Envoy's retry_on (x-envoy-retry-on and
// x-envoy-retry-grpc-on tokens).
type RetryOn uint32

// The retry_on conditions, with Envoy's token for each.
const (
	RetryOn5xx                     RetryOn = 1 << iota // "5xx": any 5xx, and no response at all (connect failure, reset, per-try timeout)
	RetryOnGatewayError                                // "gateway-error": 502, 503, 504, and no response at all
	RetryOnReset                                       // "reset": no response at all (disconnect, reset, per-try timeout)
	RetryOnResetBeforeRequest                          // "reset-before-request": a reset before the request was sent, including connect failures
	RetryOnConnectFailure                              // "connect-failure"
	RetryOnEnvoyRateLimited                            // "envoy-ratelimited": the response carries x-envoy-ratelimited
	RetryOnRetriable4xx                                // "retriable-4xx": 409
	RetryOnRefusedStream                               // "refused-stream": HTTP/2 REFUSED_STREAM
	RetryOnRetriableStatusCodes                        // "retriable-status-codes": the policy's RetriableStatusCodes
	RetryOnRetriableHeaders                            // "retriable-headers" (no response header matchers are accepted, so it never fires)
	RetryOnHTTP3PostConnectFailure                     // "http3-post-connect-failure" (the sidecar does not speak HTTP/3, so it never fires)
	RetryOnGRPCCancelled                               // "cancelled": grpc-status 1
	RetryOnGRPCDeadlineExceeded                        // "deadline-exceeded": grpc-status 4
	RetryOnGRPCInternal                                // "internal": grpc-status 13
	RetryOnGRPCResourceExhausted                       // "resource-exhausted": grpc-status 8
	RetryOnGRPCUnavailable                             // "unavailable": grpc-status 14
)

var retryOnTokens = []struct {
	token string
	on    RetryOn
}{
	{"5xx", RetryOn5xx},
	{"gateway-error", RetryOnGatewayError},
	{"reset", RetryOnReset},
	{"reset-before-request", RetryOnResetBeforeRequest},
	{"connect-failure", RetryOnConnectFailure},
	{"envoy-ratelimited", RetryOnEnvoyRateLimited},
	{"retriable-4xx", RetryOnRetriable4xx},
	{"refused-stream", RetryOnRefusedStream},
	{"retriable-status-codes", RetryOnRetriableStatusCodes},
	{"retriable-headers", RetryOnRetriableHeaders},
	{"http3-post-connect-failure", RetryOnHTTP3PostConnectFailure},
	{"cancelled", RetryOnGRPCCancelled},
	{"deadline-exceeded", RetryOnGRPCDeadlineExceeded},
	{"internal", RetryOnGRPCInternal},
	{"resource-exhausted", RetryOnGRPCResourceExhausted},
	{"unavailable", RetryOnGRPCUnavailable},
}

// ParseRetryOn parses Envoy's comma-separated retry_on. Unlike Envoy, which
// drops tokens it does not know, an unknown token is an error: a typo would
// otherwise silently disable retries.
func ParseRetryOn(s string) (RetryOn, error) {
	var on RetryOn
	for _, tok := range strings.Split(s, ",") {
		tok = strings.TrimSpace(tok)
		if tok == "" {
			continue
		}
		found := false
		for _, t := range retryOnTokens {
			if t.token == tok {
				on |= t.on
				found = true
				break
			}
		}
		if !found {
			return 0, fmt.Errorf("unknown retry_on condition %q", tok)
		}
	}
	return on, nil
}

// String returns the conditions as Envoy tokens, comma-separated.
func (o RetryOn) String() string {
	var toks []string
	for _, t := range retryOnTokens {
		if o&t.on != 0 {
			toks = append(toks, t.token)
		}
	}
	return strings.Join(toks, ",")
}

// AttemptError says how an upstream attempt ended.
type AttemptError uint8

const (
	// AttemptOK: a response arrived; its status decides.
	AttemptOK AttemptError = iota
	// AttemptConnectFailure: no connection (refused, unreachable, connect timeout).
	AttemptConnectFailure
	// AttemptResetBeforeRequest: the stream or connection failed before any of
	// the request was sent (for example a pooled connection found closed).
	AttemptResetBeforeRequest
	// AttemptRefusedStream: HTTP/2 REFUSED_STREAM; the peer did not process it.
	AttemptRefusedStream
	// AttemptReset: the stream or connection was reset, or closed, after the
	// request was sent and before a response.
	AttemptReset
	// AttemptTimeout: the per-try timeout fired before a response. Envoy
	// resets the stream, so it counts as a reset.
	AttemptTimeout
	// AttemptRateLimited: the response carried x-envoy-ratelimited; only
	// envoy-ratelimited retries it, whatever its status.
	AttemptRateLimited
)

// RetryPolicy is a compiled envoy.config.route.v3.RetryPolicy: the route's
// own, else its virtual host's (Envoy does not merge the two).
type RetryPolicy struct {
	NumRetries           int           // retries after the first attempt; Envoy's default is 1
	PerTryTimeout        time.Duration // 0: each attempt is bounded only by the route timeout
	PerTryIdleTimeout    time.Duration // 0: none
	RetryOn              RetryOn
	RetriableStatusCodes []int
	BackOffBase          time.Duration // retry_back_off.base_interval; Envoy's default 25ms
	BackOffMax           time.Duration // retry_back_off.max_interval; default 10 × BackOffBase
	// AvoidPreviousHosts is the envoy.retry_host_predicates.previous_hosts
	// predicate: a retry should pick a host not tried before, reselecting up to
	// HostSelectionMaxAttempts times (Envoy's default is 1).
	AvoidPreviousHosts       bool
	HostSelectionMaxAttempts int
}

// ShouldRetry reports whether an attempt that ended as kind, with HTTP
// status status when kind is AttemptOK (0 if none), may be retried under the
// policy. It does not count attempts: that is the caller's, against
// NumRetries. A nil policy retries nothing.
func (p *RetryPolicy) ShouldRetry(status int, kind AttemptError) bool {
	if p == nil {
		return false
	}
	const noResponse = RetryOn5xx | RetryOnGatewayError | RetryOnReset
	on := p.RetryOn
	switch kind {
	case AttemptConnectFailure:
		return on&(noResponse|RetryOnConnectFailure|RetryOnResetBeforeRequest) != 0
	case AttemptResetBeforeRequest:
		return on&(noResponse|RetryOnResetBeforeRequest) != 0
	case AttemptRefusedStream:
		return on&(noResponse|RetryOnRefusedStream) != 0
	case AttemptReset, AttemptTimeout:
		return on&noResponse != 0
	case AttemptRateLimited:
		return on&RetryOnEnvoyRateLimited != 0
	case AttemptOK:
		switch {
		case on&RetryOn5xx != 0 && status >= 500 && status <= 599:
			return true
		case on&RetryOnGatewayError != 0 && (status == 502 || status == 503 || status == 504):
			return true
		case on&RetryOnRetriable4xx != 0 && status == 409:
			return true
		case on&RetryOnRetriableStatusCodes != 0:
			for _, c := range p.RetriableStatusCodes {
				if c == status {
					return true
				}
			}
		}
	}
	return false
}

// ShouldRetryGRPC reports whether a response whose headers (a trailers-only
// gRPC response) carry grpc-status code may be retried under the policy's
// gRPC conditions.
func (p *RetryPolicy) ShouldRetryGRPC(code int) bool {
	if p == nil {
		return false
	}
	var need RetryOn
	switch code {
	case 1:
		need = RetryOnGRPCCancelled
	case 4:
		need = RetryOnGRPCDeadlineExceeded
	case 8:
		need = RetryOnGRPCResourceExhausted
	case 13:
		need = RetryOnGRPCInternal
	case 14:
		need = RetryOnGRPCUnavailable
	}
	return p.RetryOn&need != 0
}

const previousHosts = "envoy.retry_host_predicates.previous_hosts"

func compileRetryPolicy(at loc, field string, rp *routev3.RetryPolicy) (*RetryPolicy, error) {
	if rp == nil {
		return nil, nil
	}
	on, err := ParseRetryOn(rp.GetRetryOn())
	if err != nil {
		return nil, at.err(field+".retry_on", err)
	}
	p := &RetryPolicy{RetryOn: on, NumRetries: 1, BackOffBase: 25 * time.Millisecond, HostSelectionMaxAttempts: 1}
	if rp.GetNumRetries() != nil {
		p.NumRetries = int(rp.GetNumRetries().GetValue())
	}
	if p.PerTryTimeout, err = duration(rp.GetPerTryTimeout()); err != nil {
		return nil, at.err(field+".per_try_timeout", err)
	}
	if p.PerTryIdleTimeout, err = duration(rp.GetPerTryIdleTimeout()); err != nil {
		return nil, at.err(field+".per_try_idle_timeout", err)
	}
	for i, c := range rp.GetRetriableStatusCodes() {
		if c < 100 || c > 599 {
			return nil, at.errf(fmt.Sprintf("%s.retriable_status_codes[%d]", field, i), "%d is not an HTTP status", c)
		}
		p.RetriableStatusCodes = append(p.RetriableStatusCodes, int(c))
	}
	if bo := rp.GetRetryBackOff(); bo != nil {
		if p.BackOffBase, err = duration(bo.GetBaseInterval()); err != nil || p.BackOffBase <= 0 {
			return nil, at.err(field+".retry_back_off.base_interval", orErr(err, errors.New("must be greater than 0")))
		}
		if p.BackOffMax, err = duration(bo.GetMaxInterval()); err != nil {
			return nil, at.err(field+".retry_back_off.max_interval", err)
		}
		if bo.GetMaxInterval() != nil && p.BackOffMax < p.BackOffBase {
			return nil, at.errf(field+".retry_back_off.max_interval", "%v is less than base_interval %v", p.BackOffMax, p.BackOffBase)
		}
	}
	if p.BackOffMax == 0 {
		p.BackOffMax = 10 * p.BackOffBase
	}
	for i, hp := range rp.GetRetryHostPredicate() {
		if hp.GetName() != previousHosts {
			return nil, at.unsupported(fmt.Sprintf("%s.retry_host_predicate[%d]", field, i), fmt.Sprintf("retry host predicate %q (only %s is)", hp.GetName(), previousHosts))
		}
		p.AvoidPreviousHosts = true
	}
	if n := rp.GetHostSelectionRetryMaxAttempts(); n > 0 {
		p.HostSelectionMaxAttempts = int(min(n, 1<<20))
	}
	switch {
	case rp.GetRetryPriority() != nil:
		return nil, at.unsupported(field+".retry_priority", "retry priority plugins")
	case len(rp.GetRetryOptionsPredicates()) > 0:
		return nil, at.unsupported(field+".retry_options_predicates", "retry options predicates")
	case len(rp.GetRetriableHeaders()) > 0:
		return nil, at.unsupported(field+".retriable_headers", "retrying on response headers")
	case len(rp.GetRetriableRequestHeaders()) > 0:
		return nil, at.unsupported(field+".retriable_request_headers", "retrying by request headers")
	case rp.GetRateLimitedRetryBackOff() != nil:
		return nil, at.unsupported(field+".rate_limited_retry_back_off", "rate-limited retry back-off")
	}
	return p, nil
}

func orErr(err, otherwise error) error {
	if err != nil {
		return err
	}
	return otherwise
}
