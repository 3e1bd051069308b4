// Package inbound is the sidecar's inbound path for HTTP: accept a connection
// (mTLS by PeerAuthentication mode, sniffing TLS from plaintext on PERMISSIVE
// ports, resetting plaintext on STRICT ones), authenticate the request's JWT,
// decide it with the authz engine, and forward what is allowed to the app.
//
// It is data plane: it must not import policies/... or ca/server.
package inbound
