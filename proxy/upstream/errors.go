package upstream

import (
	"errors"
	"fmt"
)

// Envoy's response flags that RoundTrip and DialTCP report.
const (
	// FlagNoHealthyUpstream: the cluster has no endpoint to send to.
	FlagNoHealthyUpstream = "UH"
	// FlagConnectFailure: connecting (TCP or the TLS handshake) failed.
	FlagConnectFailure = "UF"
	// FlagOverflow: a circuit breaker refused the request before any dial.
	FlagOverflow = "UO"
	// FlagConnectionTermination: the connection failed after it was made
	// (reset, EOF before a response).
	FlagConnectionTermination = "UC"
	// FlagTimeout: the request's context deadline passed first.
	FlagTimeout = "UT"
	// FlagDownstreamTermination: the request's context was canceled first,
	// which for a proxy means the downstream went away.
	FlagDownstreamTermination = "DC"
)

// Sentinel errors inside an *Error; test with errors.Is.
var (
	ErrNoHealthyUpstream = errors.New("no healthy upstream")
	ErrOverflow          = errors.New("circuit breaker open")
	ErrNoOriginalDst     = errors.New("ORIGINAL_DST cluster: request carries no original destination")
	// ErrNoServerName: TLS origination that verifies the server's chain has
	// no name to verify its certificate against (no sni, no subject alt
	// names, no auto_sni Host), so the connection is refused.
	ErrNoServerName = errors.New("TLS origination has no server name to verify the certificate against")
)

// Error is a failed attempt. Flag is Envoy's response flag for it; Breaker
// names the circuit breaker when Flag is UO.
type Error struct {
	Flag     string
	Cluster  string
	Endpoint string // host:port when one was picked
	Breaker  string // "max_requests", "max_pending_requests", "max_connections", "max_retries"
	Err      error
}

func (e *Error) Error() string {
	switch {
	case e.Breaker != "":
		return fmt.Sprintf("upstream %s: %s: %s (%s): %v", e.Cluster, e.Flag, e.Breaker, e.Endpoint, e.Err)
	case e.Endpoint != "":
		return fmt.Sprintf("upstream %s: %s: %s: %v", e.Cluster, e.Flag, e.Endpoint, e.Err)
	default:
		return fmt.Sprintf("upstream %s: %s: %v", e.Cluster, e.Flag, e.Err)
	}
}

func (e *Error) Unwrap() error { return e.Err }

// Flag returns Envoy's response flag for an error from RoundTrip or DialTCP,
// or "" when err carries none.
func Flag(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Flag
	}
	return ""
}

// dialError marks a failure to connect (TCP or TLS handshake), so that what
// net/http hands back can be told apart from a failure on an open connection.
type dialError struct{ err error }

func (e *dialError) Error() string { return "connect: " + e.err.Error() }
func (e *dialError) Unwrap() error { return e.err }
