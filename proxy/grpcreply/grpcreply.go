// Package grpcreply writes the sidecar's own answers to gRPC requests as
// Envoy's local replies do: a trailers-only response (HTTP 200,
// content-type application/grpc, grpc-status and grpc-message in the
// headers, no body), so the client sees a gRPC status rather than a
// transport error. Both the inbound and the outbound paths use it.
package grpcreply

import (
	"net/http"
	"strconv"
	"strings"
)

// Is reports whether r is a gRPC request (content-type application/grpc...).
func Is(r *http.Request) bool {
	return strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc")
}

// StatusFor maps an HTTP status to the gRPC status a local reply carries:
// Envoy's Grpc::Utility::httpToGrpcStatus.
func StatusFor(httpStatus int) int {
	switch httpStatus {
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

// Write sends a trailers-only gRPC response with status and message
// (percent-encoded, as gRPC's HTTP/2 protocol requires; left out when empty).
func Write(w http.ResponseWriter, status int, message string) {
	h := w.Header()
	h.Del("Content-Length")
	h.Set("Content-Type", "application/grpc")
	h.Set("Grpc-Status", strconv.Itoa(status))
	if message != "" {
		h.Set("Grpc-Message", Encode(message))
	}
	w.WriteHeader(http.StatusOK)
}

// Encode percent-encodes a grpc-message: bytes outside printable ASCII, and
// '%'.
func Encode(s string) string {
	const hex = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 0x20 && c <= 0x7e && c != '%' {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('%')
		b.WriteByte(hex[c>>4])
		b.WriteByte(hex[c&0xf])
	}
	return b.String()
}
