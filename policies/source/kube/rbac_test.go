package kube

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	clienttesting "k8s.io/client-go/testing"

	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/yaml"
)

// The ClusterRole shipped in deploy/kube grants list and watch (what an
// informer does) on every resource the source reads: a kind added to the
// source without its grant would leave rampartd's caches unsynced in a
// cluster. (The kube tier runs rampartd under this role for real.) The
// resources are those a running source lists.
func TestShippedRoleGrantsEveryWatchedResource(t *testing.T) {
	const file = "../../../deploy/kube/rampartd-rbac.yaml"
	data, err := os.ReadFile(filepath.FromSlash(file))
	if err != nil {
		t.Fatal(err)
	}
	var role *rbacv1.ClusterRole
	for _, doc := range strings.Split(string(data), "\n---\n") {
		var meta struct{ Kind string }
		if err := yaml.Unmarshal([]byte(doc), &meta); err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		if meta.Kind == "ClusterRole" {
			role = &rbacv1.ClusterRole{}
			if err := yaml.UnmarshalStrict([]byte(doc), role); err != nil {
				t.Fatalf("%s: ClusterRole: %v", file, err)
			}
		}
	}
	if role == nil {
		t.Fatalf("%s has no ClusterRole", file)
	}
	grants := func(gr schema.GroupResource, verb string) bool {
		for _, r := range role.Rules {
			if slices.Contains(r.APIGroups, gr.Group) && slices.Contains(r.Resources, gr.Resource) && slices.Contains(r.Verbs, verb) {
				return true
			}
		}
		return false
	}
	// What the source lists, read off a running one's clients: a kind added
	// to it, typed or custom, is checked without this test being told.
	f := newFixture(t)
	f.start(t, Config{})
	seen := map[schema.GroupResource]bool{}
	for _, actions := range [][]clienttesting.Action{f.kube.Actions(), f.dyn.Actions()} {
		for _, a := range actions {
			if a.GetVerb() == "list" {
				seen[a.GetResource().GroupResource()] = true
			}
		}
	}
	var watched []schema.GroupResource
	for gr := range seen {
		watched = append(watched, gr)
	}
	for gvr := range IstioResources {
		if !seen[gvr.GroupResource()] {
			t.Errorf("the running source never listed %s", gvr)
		}
	}
	if len(watched) < len(IstioResources)+5 {
		t.Fatalf("the running source listed only %v", watched)
	}
	for _, gr := range watched {
		for _, verb := range []string{"list", "watch"} {
			if !grants(gr, verb) {
				t.Errorf("%s's ClusterRole %s does not grant %s on %s, which rampartd's kube source reads", file, role.Name, verb, gr)
			}
		}
	}
	// The CA reviews the service-account tokens sidecars join with.
	if !grants(schema.GroupResource{Group: "authentication.k8s.io", Resource: "tokenreviews"}, "create") {
		t.Errorf("%s's ClusterRole %s does not grant create on tokenreviews, which rampartd's CA needs", file, role.Name)
	}
	for _, r := range role.Rules {
		for _, v := range r.Verbs {
			review := slices.Equal(r.APIGroups, []string{"authentication.k8s.io"}) && slices.Equal(r.Resources, []string{"tokenreviews"}) && v == "create"
			if v != "get" && v != "list" && v != "watch" && !review {
				t.Errorf("%s's ClusterRole grants %q on %v: rampartd writes nothing to the cluster", file, v, r.Resources)
			}
		}
	}
}
