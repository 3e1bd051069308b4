// Package api holds the Go types of Rampart's own kinds, group
// policy.rampart.dev, and their strict decoding: an unknown or mistyped field
// is an error that names the field path, so config sources can point at it.
//
// The CRD manifests under deploy/crds are generated from these types and their
// doc comments (go test ./policies/api -update); a test keeps them in sync.
//
// It is shared by the control plane's sources and compiler and imports only
// apimachinery; it must not import proxy/..., ca/... or other policies/...
// packages.
package api
