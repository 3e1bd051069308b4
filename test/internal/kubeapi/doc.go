// Package kubeapi runs a real Kubernetes control plane for the kube test tier:
// etcd and kube-apiserver, built once from the Go module proxy by
// hack/kube-tools.sh (make kube-tools) and cached outside the repo, started on
// loopback ports in a test's temp dir and stopped when the test ends.
//
// There is no kubelet, scheduler or controller manager: objects are stored and
// watched exactly as in a cluster, but nothing acts on them (a Pod stays
// where its creator put it; its status is whatever the test writes).
//
// It is test support: only tests import it.
//
// It must not import Rampart's own packages beyond internal/freeport: it stands
// for a cluster, not for any part of the mesh.
package kubeapi
