// Package peer builds the TLS configurations for mTLS between sidecars from
// go-spiffe's tlsconfig, and reads the peer's identity off a connection. Which
// peer may do what is authorization's business, so the handshake accepts any
// member of the trust domain.
package peer

import (
	"crypto/tls"
	"errors"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// ServerConfig is the inbound side: it presents the current SVID, requires a
// client SVID from td, TLS 1.3 only. Both sources are read on every handshake, so
// a rotation takes effect for the next connection without touching open ones.
func ServerConfig(svid x509svid.Source, bundle x509bundle.Source, td spiffeid.TrustDomain, alpn ...string) *tls.Config {
	c := tlsconfig.MTLSServerConfig(svid, bundle, tlsconfig.AuthorizeMemberOf(td))
	c.MinVersion = tls.VersionTLS13
	c.NextProtos = alpn
	return c
}

// ClientConfig is the outbound side: it presents the current SVID and accepts a
// server SVID from td, TLS 1.3 only.
func ClientConfig(svid x509svid.Source, bundle x509bundle.Source, td spiffeid.TrustDomain, alpn ...string) *tls.Config {
	c := tlsconfig.MTLSClientConfig(svid, bundle, tlsconfig.AuthorizeMemberOf(td))
	c.MinVersion = tls.VersionTLS13
	c.NextProtos = alpn
	return c
}

// ErrNoPeerCertificate means the connection carries no client certificate.
var ErrNoPeerCertificate = errors.New("no peer certificate")

// ID returns the SPIFFE ID of the verified peer of a completed handshake.
func ID(cs tls.ConnectionState) (spiffeid.ID, error) {
	if len(cs.PeerCertificates) == 0 {
		return spiffeid.ID{}, ErrNoPeerCertificate
	}
	return x509svid.IDFromCert(cs.PeerCertificates[0])
}
