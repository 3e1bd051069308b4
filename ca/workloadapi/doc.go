// Package workloadapi serves the SPIFFE Workload API on a Unix socket for the
// workload's application: X.509-SVIDs and bundles (streamed, pushed on rotation),
// JWT-SVIDs, JWT bundles and JWT-SVID validation. go-spiffe's workloadapi client
// works against it unchanged.
//
// It is data plane: it must not import policies/... or ca/server.
package workloadapi
