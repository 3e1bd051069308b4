package inbound

import (
	"net/http"
	"strconv"
	"strings"

	"github.com/rampart-mesh/rampart/authz"
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
		grpcReply(w, strconv.Itoa(grpcStatusFor(status)), body)
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

// grpcReply writes a trailers-only gRPC response.
func grpcReply(w http.ResponseWriter, code, msg string) {
	h := w.Header()
	h.Set("content-type", "application/grpc")
	h.Set("grpc-status", code)
	h.Set("grpc-message", grpcEncode(msg))
	w.WriteHeader(http.StatusOK)
}

// grpcStatusFor maps an HTTP status to a gRPC status code the way gRPC's
// HTTP-to-gRPC status mapping (and Envoy's local replies) do.
func grpcStatusFor(status int) int {
	switch status {
	case http.StatusBadRequest:
		return 13 // INTERNAL
	case http.StatusUnauthorized:
		return 16 // UNAUTHENTICATED
	case http.StatusForbidden:
		return 7 // PERMISSION_DENIED
	case http.StatusNotFound:
		return 12 // UNIMPLEMENTED
	case http.StatusTooManyRequests, http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return 14 // UNAVAILABLE
	}
	return 2 // UNKNOWN
}

// grpcEncode percent-encodes a grpc-message: bytes outside printable ASCII,
// and '%', as the gRPC HTTP/2 protocol requires.
func grpcEncode(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c > 0x7e || c == '%' {
			b.WriteByte('%')
			b.WriteString(strings.ToUpper(strconv.FormatUint(uint64(c)>>4, 16)))
			b.WriteString(strings.ToUpper(strconv.FormatUint(uint64(c)&0xf, 16)))
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}
