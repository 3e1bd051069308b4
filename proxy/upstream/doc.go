// Package upstream owns the sidecar's clusters and their endpoints, as CDS and
// EDS describe them: load balancing (round robin, least request, random and a
// consistent-hash ring for RING_HASH and MAGLEV), locality priorities, one
// connection pool per cluster and transport socket, mTLS to peers with the
// sidecar's SVID (Istio's auto-mTLS through transport_socket_matches), TLS to
// services outside the mesh, circuit breakers, and outlier detection.
//
// Manager holds the whole set of clusters as one immutable value behind an
// atomic pointer: Update validates every cluster and load assignment and swaps
// the set, or changes nothing and says which cluster and field was wrong so the
// xDS client can NACK. A cluster whose configuration did not change keeps its
// connections, breaker counters and outlier state across updates.
//
// Cluster.RoundTrip sends one attempt of an already routed request; retries,
// timeouts and the choice of cluster are the caller's. Failures come back as
// *Error carrying Envoy's response flag (UH, UF, UO, UC, UT, DC), and
// Cluster.TryRetry enforces the max_retries breaker (or retry budget).
//
// It is data plane: it must not import policies/... or ca/server.
package upstream
