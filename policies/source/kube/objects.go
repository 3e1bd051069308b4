package kube

import (
	"bytes"
	"encoding/json"
	"maps"
	"sort"

	"github.com/rampart-mesh/rampart/policies/source"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	istioinformers "istio.io/client-go/pkg/informers/externalversions"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"
)

// istioKind is one Istio kind the source watches.
type istioKind struct {
	apiVersion string
	kind       string
	informer   cache.SharedIndexInformer
}

func istioKinds(f istioinformers.SharedInformerFactory) []istioKind {
	sec, net := f.Security().V1(), f.Networking().V1()
	const security, networking = "security.istio.io/v1", "networking.istio.io/v1"
	return []istioKind{
		{security, "AuthorizationPolicy", sec.AuthorizationPolicies().Informer()},
		{security, "PeerAuthentication", sec.PeerAuthentications().Informer()},
		{security, "RequestAuthentication", sec.RequestAuthentications().Informer()},
		{networking, "DestinationRule", net.DestinationRules().Informer()},
		{networking, "Gateway", net.Gateways().Informer()},
		{networking, "ServiceEntry", net.ServiceEntries().Informer()},
		{networking, "Sidecar", net.Sidecars().Informer()},
		{networking, "VirtualService", net.VirtualServices().Informer()},
		{networking, "WorkloadEntry", net.WorkloadEntries().Informer()},
	}
}

// specOf returns the metadata and the istio.io/api spec of a typed Istio
// object. The client-go types embed the spec message by value; the pointer
// points into the cache, so it is only read.
func specOf(obj any) (metav1.Object, proto.Message, bool) {
	switch o := obj.(type) {
	case *securityv1.AuthorizationPolicy:
		return o, &o.Spec, true
	case *securityv1.PeerAuthentication:
		return o, &o.Spec, true
	case *securityv1.RequestAuthentication:
		return o, &o.Spec, true
	case *networkingv1.DestinationRule:
		return o, &o.Spec, true
	case *networkingv1.Gateway:
		return o, &o.Spec, true
	case *networkingv1.ServiceEntry:
		return o, &o.Spec, true
	case *networkingv1.Sidecar:
		return o, &o.Spec, true
	case *networkingv1.VirtualService:
		return o, &o.Spec, true
	case *networkingv1.WorkloadEntry:
		return o, &o.Spec, true
	}
	return nil, nil, false
}

// Objects returns every Istio and Rampart object in the caches as source.Object, ordered by
// kind, namespace and name. Spec is the protojson of the object's spec, as the
// YAML source gives it; File is "kubernetes" and Line 0.
func (s *Source) Objects() []source.Object {
	var out []source.Object
	for _, k := range s.istioKinds {
		for _, item := range k.informer.GetStore().List() {
			m, spec, ok := specOf(item)
			if !ok {
				continue
			}
			js, err := specJSON(spec)
			if err != nil {
				// Cannot happen for a message the informer decoded; say so if it does.
				s.log.Error("encode spec; object left out", "kind", k.kind, "namespace", m.GetNamespace(), "name", m.GetName(), "err", err)
				continue
			}
			o := objectOf(k.apiVersion, k.kind, m)
			o.Spec = js
			out = append(out, o)
		}
	}
	out = append(out, s.rampartObjects()...)
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

func specJSON(m proto.Message) (json.RawMessage, error) {
	js, err := protojson.Marshal(m)
	if err != nil {
		return nil, err
	}
	// protojson varies its whitespace on purpose; compact it so equal specs
	// are equal bytes.
	var b bytes.Buffer
	if err := json.Compact(&b, js); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
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
