package xds

import (
	"maps"
	"strings"
	"testing"

	"github.com/rampart-mesh/rampart/proxy/ratelimit"
)

func rlYAML(ns, name string) string {
	return "apiVersion: policy.rampart.dev/v1alpha1\nkind: RateLimitPolicy\nmetadata: {name: " + name + ", namespace: " + ns + "}\n" +
		"spec:\n  limits: [{name: all, rate: {requests: 5, per: 1s}}]\n"
}

// A RateLimitPolicy defined twice (two files, or a file and Kubernetes) would
// send its limit IDs twice, and every sidecar it reaches would NACK the whole
// bundle: the change is refused here, and the last good bundles stay, ones a
// sidecar accepts.
func TestRateLimitPolicyRepeatedIsRefused(t *testing.T) {
	files := maps.Clone(baseConfig)
	files["rl-1.yaml"] = rlYAML("b", "rl")
	f := newFixture(t, files, nil)
	f.write("rl-2.yaml", rlYAML("b", "rl"))
	_, _, err := f.change()
	if err == nil || !strings.Contains(err.Error(), "RL-DUPLICATE") || !strings.Contains(err.Error(), "rl-1.yaml:1") {
		t.Fatalf("reload with b/rl in two files: err = %v; want RL-DUPLICATE naming rl-1.yaml:1", err)
	}
	wb, _, ok := f.x.Config("spiffe://cluster.local/ns/b/sa/app")
	if !ok || len(wb.RateLimits) != 1 {
		t.Fatalf("b/app after the refused change: %d limits (ok %v); want the last good one", len(wb.RateLimits), ok)
	}
	lim, err := ratelimit.New(ratelimit.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := lim.Build(wb.RateLimits); err != nil {
		t.Fatalf("b/app's limits %+v are ones a sidecar refuses: %v", wb.RateLimits, err)
	}
	// Removing the copy is accepted again.
	f.remove("rl-2.yaml")
	if _, _, err := f.change(); err != nil {
		t.Fatalf("reload after removing the copy: %v", err)
	}
}

// A RateLimitPolicy's targetRefs follow a ServiceEntry's workloadSelector in
// the policy's namespace; a ServiceEntry not exported there (exportTo ["~"])
// still retargets it, so its namespace is compiled again.
func TestTargetRefServiceEntryChangeIsRescoped(t *testing.T) {
	se := func(app, exportTo string) string {
		return `apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: hidden, namespace: a}
spec:
  hosts: [hidden.a.svc.cluster.local]
  ports: [{number: 8080, name: http}]
  workloadSelector: {labels: {app: ` + app + `}}
  exportTo: ` + exportTo + "\n"
	}
	for _, exportTo := range []string{`["~"]`, `["b"]`} {
		t.Run(exportTo, func(t *testing.T) {
			files := maps.Clone(baseConfig)
			files["se-hidden.yaml"] = se("svc-a", exportTo)
			files["rl-a.yaml"] = "apiVersion: policy.rampart.dev/v1alpha1\nkind: RateLimitPolicy\nmetadata: {name: rl, namespace: a}\n" +
				"spec:\n  targetRefs: [{group: networking.istio.io, kind: ServiceEntry, name: hidden}]\n  limits: [{name: all, rate: {requests: 5, per: 1s}}]\n"
			f := newFixture(t, files, nil)
			limits := func(id string) int {
				wb, _, _ := f.x.Config("spiffe://cluster.local/ns/" + id)
				return len(wb.RateLimits)
			}
			if limits("a/sa/app1") != 1 || limits("a/sa/app2") != 0 {
				t.Fatalf("setup: a/app1 has %d limits, a/app2 %d; want 1 and 0", limits("a/sa/app1"), limits("a/sa/app2"))
			}
			f.write("se-hidden.yaml", se("other", exportTo)) // now selects a/app2
			if _, _, err := f.change(); err != nil {
				t.Fatal(err)
			}
			if limits("a/sa/app1") != 0 || limits("a/sa/app2") != 1 {
				t.Errorf("after retargeting: a/app1 has %d limits, a/app2 %d; want 0 and 1", limits("a/sa/app1"), limits("a/sa/app2"))
			}
			f.checkAgainstFull()
		})
	}
}
