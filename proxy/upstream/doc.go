// Package upstream owns the sidecar's clusters and their endpoints, as CDS and
// EDS describe them: load balancing, locality priorities, one connection pool
// per cluster and transport socket, mTLS to peers with the sidecar's SVID
// (Istio's auto-mTLS through transport_socket_matches), TLS to services outside
// the mesh, circuit breakers and outlier detection.
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
// Cluster.DialTCP is the same for TCP proxying.
//
// What of Envoy's cluster it implements, and how:
//
//   - Types STATIC, EDS (over ADS), STRICT_DNS and LOGICAL_DNS (names resolved
//     at dial time by the Go resolver, honouring dns_lookup_family), and
//     ORIGINAL_DST (the destination from Request.OriginalDst or the configured
//     header).
//   - lb_policy or load_balancing_policy: ROUND_ROBIN (smooth weighted when
//     weights differ), LEAST_REQUEST (choice_count random hosts, fewest
//     requests in flight per unit of weight), RANDOM (weighted), and RING_HASH
//     and MAGLEV, both served by one consistent-hash ring with a fixed number of
//     points per unit of weight, so that removing a host moves only its keys.
//   - Priorities: the lowest priority with a usable host serves; panic mode
//     (healthy_panic_threshold, default 50%) over all hosts sends traffic to
//     every host of the lowest priority. Locality weights and the
//     overprovisioning factor are not modelled. EDS health UNHEALTHY, DRAINING
//     and TIMEOUT take a host out.
//   - Transport sockets: raw_buffer, and tls with UpstreamTlsContext. Istio's
//     SDS names "default" and "ROOTCA" are the sidecar's SVID and bundle,
//     verified with go-spiffe against match_typed_subject_alt_names (any of
//     them) or, with none, the trust domain; "file-cert:" and "file-root:" and
//     inline or file data sources are loaded when Update runs. Without SAN
//     matchers a non-mesh certificate must match the SNI (Envoy skips that
//     check; this is the safer reading). The offered ALPN is the configured
//     list made to agree with the HTTP version the pool speaks.
//   - HTTP/1.1 by default; HTTP/2 (h2 over TLS, h2c over plaintext) when
//     HttpProtocolOptions says explicit http2 or the deprecated
//     http2_protocol_options is set; auto_config negotiates by ALPN over TLS.
//     idle_timeout and max_requests_per_connection are honoured.
//   - Circuit breakers (default priority; Envoy's defaults 1024, and 3 for
//     max_retries): max_requests always; for HTTP/1.1 max_connections bounds
//     requests holding a connection and max_pending_requests those waiting for
//     one; for HTTP/2 and TCP max_connections bounds dialing. An overflow is UO
//     at once, without dialing.
//   - Outlier detection: consecutive_5xx, consecutive_gateway_failure and, with
//     split_external_local_origin_errors, consecutive_local_origin_failure;
//     connect failures, resets and timeouts count as 503/504 otherwise. The
//     ejection time is base_ejection_time × times ejected (capped by
//     max_ejection_time); max_ejection_percent is strict unless
//     always_eject_one_host, as in Envoy 1.31 on. Hosts return when their time
//     is up, checked when picking (no timer runs). Success-rate and
//     failure-percentage ejection are not implemented.
//
// Metrics (rampart_upstream_*) are labelled by cluster name and at most one
// label of fixed values; a removed cluster's series are deleted.
//
// It is data plane: it must not import policies/... or ca/server.
package upstream
