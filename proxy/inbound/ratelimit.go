package inbound

import (
	"net/http"

	"github.com/rampart-mesh/rampart/authz"
	"github.com/rampart-mesh/rampart/proxy/grpcreply"
	"github.com/rampart-mesh/rampart/proxy/ratelimit"
)

// RateLimiter checks an authorized request against local rate limits
// (proxy/ratelimit implements it).
type RateLimiter interface {
	Check(r *authz.Request, normalizedPath string) ratelimit.Result
}

var _ RateLimiter = (*ratelimit.Limiter)(nil)

// What a rate-limited request is answered with, as Envoy's local rate limit
// filter answers it.
const (
	rateLimitedBody    = "local_rate_limited"
	rateLimitedDetails = "local_rate_limited"
	rateLimitedFlag    = "RL"
	// grpcResourceExhausted is the gRPC status a 429 becomes (Envoy with
	// rate_limited_as_resource_exhausted; its default would be UNAVAILABLE,
	// which clients retry).
	grpcResourceExhausted = 8
)

// rateLimited answers a request that an enforced limit refused: 429 for HTTP,
// a trailers-only RESOURCE_EXHAUSTED for gRPC, with x-envoy-ratelimited and
// the RL response flag. It returns the status for metrics.
func (s *Server) rateLimited(w http.ResponseWriter, ar *authz.Request, res ratelimit.Result) int {
	h := w.Header()
	h.Set("x-envoy-ratelimited", "true")
	h.Set("x-rampart-response-flags", rateLimitedFlag)
	s.log.Info("request rate limited", "request_id", ar.ID, "limit", res.Limit, "response_flags", rateLimitedFlag,
		"response_code_details", rateLimitedDetails, "source_principal", ar.SourcePrincipal, "method", ar.Method, "path", ar.Path)
	if ar.Protocol == authz.ProtocolGRPC {
		grpcreply.Write(w, grpcResourceExhausted, rateLimitedBody)
		return http.StatusTooManyRequests
	}
	localReply(w, ar, http.StatusTooManyRequests, rateLimitedBody)
	return http.StatusTooManyRequests
}
