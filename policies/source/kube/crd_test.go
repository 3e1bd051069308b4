package kube

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime"
	clienttesting "k8s.io/client-go/testing"
)

// A cluster with Istio's CRDs but without Rampart's own RateLimitPolicy CRD
// (deploy/crds; an optional feature, not named as a requirement of
// --kubeconfig) must still give rampartd its Istio config: the
// RateLimitPolicy informer's 404 must not hold every other cache hostage.
func TestMissingCRDDoesNotHoldTheSync(t *testing.T) {
	f := newFixture(t, "bookinfo.yaml", "istio.yaml")
	f.dyn.PrependReactor("list", "ratelimitpolicies", func(clienttesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewNotFound(RateLimitPolicies.GroupResource(), "")
	})
	var logs lockedBuffer
	s, err := New(Config{Kube: f.kube, Dynamic: f.dyn, Log: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	go s.Run(ctx)
	deadline := time.Now().Add(5 * time.Second)
	for !s.HasSynced() && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if s.HasSynced() && !strings.Contains(logs.String(), "CRD is not installed") {
		t.Errorf("no warning that the RateLimitPolicy CRD is missing; log:\n%s", logs.String())
	}
	if !s.HasSynced() {
		var warn string
		for _, l := range strings.Split(logs.String(), "\n") {
			if strings.Contains(l, "RateLimitPolicy") {
				warn = l
				break
			}
		}
		t.Errorf("HasSynced() = false after 5s: rampartd waits forever and serves no proxy (%d Istio objects are cached);\nlog: %s",
			len(s.Objects()), warn)
	}
}

// --kube-namespace narrows the watch to one namespace; the mesh's root
// namespace (mesh-wide AuthorizationPolicies, PeerAuthentication STRICT,
// Sidecar defaults) is read too, and no other namespace is.
func TestKubeNamespaceReadsRootNamespace(t *testing.T) {
	f := newFixture(t, "bookinfo.yaml", "istio.yaml")
	r := f.start(t, Config{Namespace: "default", RootNamespace: "istio-system"})
	defer r.stop(t)
	found := false
	var got []string
	for _, o := range r.Objects() {
		got = append(got, o.Kind+" "+o.Namespace+"/"+o.Name)
		found = found || (o.Kind == "PeerAuthentication" && o.Namespace == "istio-system")
		if o.Namespace != "default" && o.Namespace != "istio-system" {
			t.Errorf("%s %s/%s read, outside default and the root namespace", o.Kind, o.Namespace, o.Name)
		}
	}
	if !found {
		t.Errorf("the mesh-wide PeerAuthentication istio-system/default is not read with Namespace=default; Objects() = %v", got)
	}
}
