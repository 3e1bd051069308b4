package e2e

import (
	"crypto/tls"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

// meshPeerTLS is the TLS client configuration of a test client that stands
// in for a mesh peer's sidecar: mTLS with src's SVID, and Istio's ALPN names
// offered beside HTTP/1.1 as every sidecar's upstream TLS offers them (a
// PERMISSIVE port passes TLS without them through to the app, as TLS from
// a client outside the mesh).
func meshPeerTLS(src *workloadapi.X509Source, td spiffeid.TrustDomain) *tls.Config {
	c := tlsconfig.MTLSClientConfig(src, src, tlsconfig.AuthorizeMemberOf(td))
	c.NextProtos = []string{"http/1.1", "istio-peer-exchange", "istio"}
	return c
}
