// Package agent is the sidecar's identity agent: it generates the workload's key in
// process, sends a CSR with its credential to rampartd, holds the resulting
// X.509-SVID and trust bundle, and renews both before they go stale. The last good
// SVID is served through any control-plane outage until it expires. With
// Config.DataDir it keeps SVID, key and bundle on disk, so that it rejoins
// after a restart without a new join token.
//
// It is data plane: it must not import policies/... or ca/server.
package agent
