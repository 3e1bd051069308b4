package kube

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/rampart-mesh/rampart/authz"
	"github.com/rampart-mesh/rampart/policies/compile"
	"go.uber.org/goleak"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// RateLimitPolicy objects from the dynamic informer become source.Objects
// that compile into the same limits as the file they were applied from, and a
// new one created in the cluster is seen live.
func TestRateLimitPolicyFromKubernetes(t *testing.T) {
	defer goleak.VerifyNone(t)
	f := newFixture(t, "rampart.yaml")
	r := f.start(t, Config{})

	objs := r.Objects()
	if len(objs) != 1 || objs[0].Kind != "RateLimitPolicy" || objs[0].APIVersion != "policy.rampart.dev/v1alpha1" ||
		objs[0].Where() != "RateLimitPolicy default/reviews-per-user (kubernetes)" {
		t.Fatalf("Objects() = %+v; want the one RateLimitPolicy", objs)
	}
	pols, fs := compile.DecodeRateLimitPolicies(objs, "default")
	if len(fs) != 0 || len(pols) != 1 {
		t.Fatalf("decode: %d policies, findings %v", len(pols), fs)
	}
	mesh := compile.Mesh{RootNamespace: "istio-system"}
	got := compile.RateLimits(pols, mesh, compile.Workload{Namespace: "default", Labels: map[string]string{"app": "reviews"}})
	want := []authz.RateLimit{{
		ID: "default/reviews-per-user/per-user", Key: "Header", KeyHeader: "x-user",
		Match:    authz.RateLimitMatch{Paths: []string{"/reviews/*"}, Methods: []string{"GET"}},
		Requests: 100, Period: "1m0s", Burst: 20, DryRun: true,
	}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("limits (-want +got):\n%s", diff)
	}

	// A policy created in the cluster: OnChange fires and Objects has it.
	before := r.changes.Load()
	u := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "policy.rampart.dev/v1alpha1", "kind": "RateLimitPolicy",
		"metadata": map[string]any{"name": "new", "namespace": "default"},
		"spec":     map[string]any{"limits": []any{map[string]any{"name": "all", "rate": map[string]any{"requests": int64(5)}}}},
	}}
	if _, err := f.dyn.Resource(RateLimitPolicies).Namespace("default").Create(t.Context(), u, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the new policy is seen", func() bool { return r.changes.Load() > before && len(r.Objects()) == 2 })
	r.stop(t)
}
