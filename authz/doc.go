// Package authz will own the authorization input schema, the decision type and the
// OPA engine that evaluates compiled policy in the sidecar (the authorization
// issue). It is shared by both planes and imports neither.
package authz
