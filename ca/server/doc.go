// Package server is rampartd's identity endpoint: Istio's IstioCertificateService
// (CSR in, X.509-SVID chain out) plus the bundle and JWT-SVID methods, over gRPC and
// TLS, with pluggable credential checks. It also serves the CA's admin handlers.
//
// It belongs to the control plane: the data plane (proxy/..., ca/agent,
// ca/workloadapi) must not import it, and it must not import them.
package server
