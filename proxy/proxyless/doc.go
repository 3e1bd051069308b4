// Package proxyless is the sidecar's agent-only mode for proxyless gRPC apps
// (Istio's pilot-agent for gRPC): it keeps the workload's X.509-SVID, key and
// trust bundle in files (rewritten atomically on every rotation) and writes a
// gRPC xDS bootstrap that points grpc-go's xds resolver and xDS credentials at
// rampartd with the workload's node id and those files. The app then needs no
// proxy: grpc-go reads rampartd's listeners, routes, clusters and endpoints
// itself and does mTLS with the files.
//
// It is data plane: it must not import policies/... or ca/server.
package proxyless
