package kube

import (
	"encoding/json"
	"maps"
	"sort"

	"github.com/rampart-mesh/rampart/policies/api"
	"github.com/rampart-mesh/rampart/policies/source"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/tools/cache"
)

// crdKind is one custom kind the source watches (Istio's or Rampart's).
type crdKind struct {
	resource schema.GroupVersionResource
	kind     string
	informer cache.SharedIndexInformer
}

func (k crdKind) apiVersion() string { return k.resource.GroupVersion().String() }

// RateLimitPolicies is the resource of Rampart's RateLimitPolicy CRD.
var RateLimitPolicies = schema.GroupVersionResource{Group: api.Group, Version: api.Version, Resource: api.ResourceRateLimitPolicies}

func istio(group, resource string) schema.GroupVersionResource {
	return schema.GroupVersionResource{Group: group + ".istio.io", Version: "v1", Resource: resource}
}

// IstioResources are the Istio kinds the source reads, by resource; the
// values are their kinds.
var IstioResources = map[schema.GroupVersionResource]string{
	istio("security", "authorizationpolicies"):  "AuthorizationPolicy",
	istio("security", "peerauthentications"):    "PeerAuthentication",
	istio("security", "requestauthentications"): "RequestAuthentication",
	istio("networking", "destinationrules"):     "DestinationRule",
	istio("networking", "gateways"):             "Gateway",
	istio("networking", "serviceentries"):       "ServiceEntry",
	istio("networking", "sidecars"):             "Sidecar",
	istio("networking", "virtualservices"):      "VirtualService",
	istio("networking", "workloadentries"):      "WorkloadEntry",
}

// istioKinds watches Istio's kinds through the dynamic client, not Istio's
// typed one: istio.io/api's decoders skip fields they do not know, so a field
// that a newer Istio CRD in the cluster keeps (version skew) would vanish
// before validation, and the object be enforced without it. As unstructured
// objects the spec reaches the compiler as the API server stores it, and an
// unknown field is a finding there, as it is in a file.
func istioKinds(f dynamicinformer.DynamicSharedInformerFactory) []crdKind {
	var out []crdKind
	for gvr, kind := range IstioResources {
		out = append(out, crdKind{gvr, kind, f.ForResource(gvr).Informer()})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].kind < out[j].kind })
	return out
}

func rampartKinds(f dynamicinformer.DynamicSharedInformerFactory) []crdKind {
	return []crdKind{{RateLimitPolicies, api.KindRateLimitPolicy, f.ForResource(RateLimitPolicies).Informer()}}
}

// Objects returns every Istio and Rampart object in the caches as
// source.Object, ordered by kind, namespace and name. Spec is the object's
// spec as the API server holds it, in JSON, for the same strict decoding the
// YAML source's objects get; File is "kubernetes" and Line 0.
func (s *Source) Objects() []source.Object {
	var out []source.Object
	for _, k := range s.crdKinds {
		for _, item := range k.informer.GetStore().List() {
			u, ok := item.(*unstructured.Unstructured)
			if !ok {
				continue
			}
			o := objectOf(k.apiVersion(), k.kind, u)
			if spec, found := u.Object["spec"]; found {
				js, err := json.Marshal(spec)
				if err != nil {
					// Cannot happen for what the informer decoded from JSON; say so if it does.
					s.log.Error("encode spec; object left out", "kind", k.kind, "namespace", u.GetNamespace(), "name", u.GetName(), "err", err)
					continue
				}
				o.Spec = js
			}
			out = append(out, o)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.Kind != b.Kind {
			return a.Kind < b.Kind
		}
		if a.Namespace != b.Namespace {
			return a.Namespace < b.Namespace
		}
		return a.Name < b.Name
	})
	return out
}

// Namespaces returns the Namespace objects in the cache (only Config.Namespace
// when one is set), ordered by name, with their labels and annotations.
func (s *Source) Namespaces() []source.Object {
	var out []source.Object
	for _, item := range s.namespaces.GetStore().List() {
		if m, ok := item.(metav1.Object); ok {
			out = append(out, objectOf("v1", "Namespace", m))
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// lastApplied is kubectl's copy of the whole object: large, and never config.
const lastApplied = "kubectl.kubernetes.io/last-applied-configuration"

// objectOf copies an object's metadata; the maps are copies, never the cache's.
func objectOf(apiVersion, kind string, m metav1.Object) source.Object {
	o := source.Object{
		File:       File,
		APIVersion: apiVersion, Kind: kind,
		Name: m.GetName(), Namespace: m.GetNamespace(),
		Labels:            maps.Clone(m.GetLabels()),
		CreationTimestamp: m.GetCreationTimestamp().Time,
	}
	if a := m.GetAnnotations(); len(a) > 0 {
		o.Annotations = maps.Clone(a)
		delete(o.Annotations, lastApplied)
		if len(o.Annotations) == 0 {
			o.Annotations = nil
		}
	}
	return o
}
