// Package listener owns the sidecar's listeners: accepting connections,
// protocol sniffing (TLS or plaintext on one PERMISSIVE port), and original
// destinations. It imports no control-plane package.
package listener
