package kube

import (
	"encoding/json"

	"github.com/rampart-mesh/rampart/policies/api"
	"github.com/rampart-mesh/rampart/policies/source"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/tools/cache"
)

// RateLimitPolicies is the resource of Rampart's RateLimitPolicy CRD.
var RateLimitPolicies = schema.GroupVersionResource{Group: api.Group, Version: api.Version, Resource: api.ResourceRateLimitPolicies}

// rampartKind is one of Rampart's own kinds, watched through the dynamic
// client (they have no typed clientset).
type rampartKind struct {
	apiVersion string
	kind       string
	informer   cache.SharedIndexInformer
}

func rampartKinds(f dynamicinformer.DynamicSharedInformerFactory) []rampartKind {
	return []rampartKind{
		{api.APIVersion, api.KindRateLimitPolicy, f.ForResource(RateLimitPolicies).Informer()},
	}
}

// rampartObjects returns the cached Rampart objects as source.Objects, their
// spec as JSON for the same strict decoding the files get (an object the API
// server admitted can still fail it, e.g. a value its schema cannot check).
func (s *Source) rampartObjects() []source.Object {
	var out []source.Object
	for _, k := range s.rampartKinds {
		for _, item := range k.informer.GetStore().List() {
			u, ok := item.(*unstructured.Unstructured)
			if !ok {
				continue
			}
			o := objectOf(k.apiVersion, k.kind, u)
			if spec, found := u.Object["spec"]; found {
				js, err := json.Marshal(spec)
				if err != nil {
					s.log.Error("encode spec; object left out", "kind", k.kind, "namespace", u.GetNamespace(), "name", u.GetName(), "err", err)
					continue
				}
				o.Spec = js
			}
			out = append(out, o)
		}
	}
	return out
}
