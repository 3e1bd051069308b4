package kubeapi

import (
	"os"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/restmapper"
	"sigs.k8s.io/yaml"
)

// Apply creates every object in the YAML file as the admin, as `kubectl
// create -f` would: each kind's resource found through the server's
// discovery. Objects that exist already are an error.
func (s *Server) Apply(tb testing.TB, file string) {
	tb.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		tb.Fatal(err)
	}
	dc := s.Dynamic(tb)
	disc, err := discovery.NewDiscoveryClientForConfig(s.Config)
	if err != nil {
		tb.Fatal(err)
	}
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(disc))
	ctx := withTimeout(tb, time.Minute)
	for i, doc := range splitYAML(data) {
		var obj map[string]any
		if err := yaml.Unmarshal(doc, &obj); err != nil {
			tb.Fatalf("%s, document %d: %v", file, i+1, err)
		}
		if obj == nil {
			continue
		}
		u := &unstructured.Unstructured{Object: obj}
		gvk := u.GroupVersionKind()
		m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if err != nil {
			tb.Fatalf("%s, document %d: %s: %v", file, i+1, gvk, err)
		}
		ri := dc.Resource(m.Resource)
		if ns := u.GetNamespace(); ns != "" {
			_, err = ri.Namespace(ns).Create(ctx, u, metav1.CreateOptions{})
		} else {
			_, err = ri.Create(ctx, u, metav1.CreateOptions{})
		}
		if err != nil {
			tb.Fatalf("%s, document %d: create %s %s: %v", file, i+1, gvk.Kind, u.GetName(), err)
		}
	}
}
