// Package compile turns configuration into what proxies run: Istio security
// policies into Rego for one workload, with validation findings that carry stable
// codes and field paths. Its functions are pure: no I/O.
//
// It is control plane: it must not import proxy/..., ca/agent or ca/workloadapi.
package compile
