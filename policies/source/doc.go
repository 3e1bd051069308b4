// Package source reads configuration: Kubernetes-style objects (Istio kinds and
// Rampart's own) from multi-document YAML files and directories, keeping where each
// came from (file and line) so every error can point at it. The watched directory
// source and the Kubernetes informers join it with the control-plane issue.
//
// It is control plane: it must not import proxy/..., ca/agent or ca/workloadapi.
package source
