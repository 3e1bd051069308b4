// Package route owns the sidecar's HTTP route table: it compiles Envoy RDS
// RouteConfigurations (envoy.config.route.v3) into an immutable Table once,
// when they arrive, and answers for every outbound request which route
// applies, with that route's action (a cluster, weighted clusters, a
// redirect or a direct response) and policies (timeout, retries, mirrors,
// fault injection, CORS, consistent-hash key, header and path rewrites), with
// Envoy's semantics for the subset it accepts.
//
// New refuses, with an *Error that names the route configuration, virtual
// host, route and field, both what Envoy would refuse and what this package
// does not implement (errors.Is(err, ErrUnsupported)). Nothing that changes
// where or how a request is sent is silently ignored, so a Table never
// behaves differently from what the control plane meant: the xDS client
// keeps the last good Table and NACKs with the reason.
//
// Fields accepted but not acted on here, because they belong to another part
// of the sidecar or only feed Envoy's statistics: rate_limits and
// include_vh_rate_limits (proxy/ratelimit), upgrade_configs, idle_timeout,
// max_stream_duration and the gRPC timeout fields, hedge_policy, priority,
// cluster_not_found_response_code, internal_only_headers, virtual_clusters,
// decorator, tracing, metadata, stat_prefix, buffer limits,
// validate_clusters, runtime keys, and typed_per_filter_config of filters
// other than envoy.filters.http.fault and envoy.filters.http.cors. Route.Fault
// is the per-route override only; the fault filter's listener-level
// configuration is not part of RDS.
//
// Deliberate differences from Envoy: an unknown retry_on token is an error
// (Envoy drops it); header values may not use formatter commands such as
// %REQ(x)% (only "%%", a literal "%"); regexes are Go's regexp (RE2 syntax)
// and, instead of Envoy's limit of 100 on the RE2 program size, are limited to
// 1 KiB and 10,000 compiled instructions.
//
// Paths are matched as r.URL.EscapedPath(): the path as sent, percent-encoding
// intact, without the query, as Envoy matches :path.
//
// This is data plane code: it must not import policies/... or ca/server
// (test/arch enforces it), and it does no I/O.
package route
