// Package kube is the Kubernetes config source: shared informers over the
// Kubernetes API (Services, EndpointSlices, Pods, Namespaces) and over Istio's
// CRDs (security.istio.io/v1 AuthorizationPolicy, RequestAuthentication,
// PeerAuthentication; networking.istio.io/v1 VirtualService, DestinationRule,
// Gateway, ServiceEntry, WorkloadEntry, Sidecar) and Rampart's own CRDs.
//
// It owns the informer caches and two views of them, both built fresh on every
// call from what the caches hold at that moment:
//
//   - [Source.Objects]: the Istio objects as [source.Object], the same values the
//     YAML directory source gives, so every compiler consumes them unchanged.
//   - [Source.Registry]: the Kubernetes service registry as [registry.Registry]:
//     one Service per Kubernetes Service, endpoints from ready EndpointSlice
//     endpoints, labels and service accounts from their Pods.
//
// It does not debounce, compile or validate: it calls Config.OnChange after its
// caches change and leaves the rest to its caller. Objects enter the caches
// trimmed (no managed fields; Pods keep only what the registry reads).
//
// Istio's kinds and Rampart's own policy.rampart.dev kinds (RateLimitPolicy;
// CRDs in deploy/crds) are watched through dynamic informers
// (Config.Dynamic): their specs reach the compiler as the API server stores
// them, so a field this build does not know (a newer CRD in the cluster) is a
// finding, not silently dropped as istio.io/api's typed decoders would.
//
// It is control plane: it must not import proxy/..., ca/agent or ca/workloadapi.
package kube
