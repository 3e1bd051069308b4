// Package authz evaluates authorization in the sidecar: the input document
// (opa-envoy-plugin's, plus Rampart's mesh fields), the decision value, and the
// Engine that runs a compiled bundle with OPA, swapped atomically on update.
// CUSTOM providers (in-process Rego bundles, external ext_authz) plug in here.
//
// It is shared by both planes (rampartctl runs the same pipeline offline) and
// imports neither.
package authz
