package inbound

import (
	"net/http"

	"github.com/rampart-mesh/rampart/authz"
	"github.com/rampart-mesh/rampart/proxy/grpcreply"
)

// localReply answers a request the sidecar itself refuses (authentication,
// authorization, rate limit). An HTTP client gets status and body, as text
// unless a content type is already set; a
// gRPC client gets what Envoy turns a local reply into for gRPC: a
// trailers-only response, HTTP 200 with grpc-status mapped from the HTTP
// status and the body as grpc-message, so the client sees a gRPC status
// (PERMISSION_DENIED for a 403) instead of a transport error.
func localReply(w http.ResponseWriter, ar *authz.Request, status int, body string) {
	if ar.Protocol == authz.ProtocolGRPC {
		grpcreply.Write(w, grpcreply.StatusFor(status), body)
		return
	}
	// A CUSTOM provider's denial may carry its own content type.
	if w.Header().Get("content-type") == "" {
		w.Header().Set("content-type", "text/plain")
	}
	// WriteHeader panics outside 100-999, and the client would get no answer
	// at all: a status the sidecar cannot send denies with 403.
	if status < 100 || status > 599 {
		status, body = http.StatusForbidden, authz.DeniedBody
	}
	w.WriteHeader(status)
	_, _ = w.Write([]byte(body))
}
