// Package source reads configuration: Kubernetes-style objects (Istio kinds and
// Rampart's own) from multi-document YAML files and directories, keeping where each
// came from (file and line) so every error can point at it. policies/xds watches
// the files; policies/source/kube reads the same kinds from a Kubernetes cluster.
//
// It is control plane: it must not import proxy/..., ca/agent or ca/workloadapi.
package source
