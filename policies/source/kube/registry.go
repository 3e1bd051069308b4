package kube

import (
	"encoding/json"
	"maps"
	"sort"
	"strings"

	"github.com/rampart-mesh/rampart/policies/registry"
	"github.com/rampart-mesh/rampart/policies/source"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// SidecarStatusAnnotation is the annotation Istio's injector (and Rampart's)
// writes on a pod it injected; a pod carrying it runs a sidecar.
const SidecarStatusAnnotation = "sidecar.istio.io/status"

// ExportToAnnotation is Istio's annotation limiting where a Kubernetes Service is
// visible: a comma-separated list of namespaces, "." or "*".
const ExportToAnnotation = "networking.istio.io/exportTo"

// sidecarContainers are the container names that show a pod runs a sidecar,
// as a regular container or a native sidecar (an init container that restarts).
var sidecarContainers = []string{"rampart-sidecar", "istio-proxy"}

// byService indexes EndpointSlices by "namespace/service".
const byService = "service"

func sliceService(obj any) ([]string, error) {
	es, ok := obj.(*discoveryv1.EndpointSlice)
	if !ok {
		return nil, nil
	}
	name := es.Labels[discoveryv1.LabelServiceName]
	if name == "" {
		return nil, nil
	}
	return []string{es.Namespace + "/" + name}, nil
}

// Registry returns the Kubernetes service registry as the caches hold it now.
// domain is the cluster domain ("" = registry.DefaultDomain).
//
// Each Kubernetes Service is one registry.Service with host
// <name>.<namespace>.svc.<domain>, Internal and resolution STATIC (an
// ExternalName Service is external, resolution DNS, its endpoint the external
// name). Port protocols follow Istio: appProtocol, else the port name's
// <protocol>[-suffix], else TCP (UDP for UDP ports); SCTP ports are left out.
//
// Selector is always nil and Endpoints holds the Service's endpoints, so
// Registry.EndpointsOf returns exactly them: the ready endpoints of the
// EndpointSlices labelled with the Service's name (the service's own
// spec.selector stays in Object.Spec). An endpoint whose targetRef names a
// cached Pod takes that Pod's labels, service account and namespace
// (Endpoint.Object is the Pod); its Mesh is true when the pod runs a sidecar:
// label security.istio.io/tlsMode=istio, else the sidecar.istio.io/status
// annotation or a container (or native sidecar) named rampart-sidecar or
// istio-proxy; tlsMode=disabled says no. An endpoint without a Pod is outside
// the mesh.
//
// Workloads lists every ready Pod with an IP, as a WorkloadEntry would list
// it, so a ServiceEntry's workloadSelector also selects Pods, as in Istio.
func (s *Source) Registry(domain string) *registry.Registry {
	if domain == "" {
		domain = registry.DefaultDomain
	}
	r := &registry.Registry{Domain: domain}
	for _, item := range s.services.GetStore().List() {
		if svc, ok := item.(*corev1.Service); ok {
			r.Services = append(r.Services, s.serviceOf(svc, domain))
		}
	}
	// Registry.Service searches by host.
	sort.Slice(r.Services, func(i, j int) bool { return r.Services[i].Host < r.Services[j].Host })
	for _, item := range s.pods.GetStore().List() {
		if pod, ok := item.(*corev1.Pod); ok && podReady(pod) {
			ep := registry.Endpoint{Address: pod.Status.PodIP}
			fromPod(&ep, pod)
			r.Workloads = append(r.Workloads, ep)
		}
	}
	sort.Slice(r.Workloads, func(i, j int) bool {
		a, b := r.Workloads[i].Object, r.Workloads[j].Object
		return a.Namespace+"/"+a.Name < b.Namespace+"/"+b.Name
	})
	return r
}

func (s *Source) serviceOf(svc *corev1.Service, domain string) *registry.Service {
	out := &registry.Service{
		Host:      strings.ToLower(svc.Name + "." + svc.Namespace + ".svc." + domain),
		Namespace: svc.Namespace, Name: svc.Name,
		Internal: true, Resolution: "STATIC",
		ExportTo: exportTo(svc.Annotations[ExportToAnnotation]),
		Object:   objectOf("v1", "Service", svc),
	}
	if js, err := json.Marshal(svc.Spec); err == nil {
		out.Object.Spec = js
	}
	for _, p := range svc.Spec.Ports {
		if p.Protocol == corev1.ProtocolSCTP {
			continue // the mesh proxies TCP (and passes UDP); Istio drops SCTP ports too
		}
		port := registry.Port{Number: uint32(p.Port), Name: p.Name, Protocol: protocolOf(p)}
		if p.TargetPort.Type == intstr.Int && p.TargetPort.IntVal > 0 {
			port.TargetPort = uint32(p.TargetPort.IntVal)
		}
		// A named targetPort resolves per endpoint, through the slice's ports.
		out.Ports = append(out.Ports, port)
	}
	if svc.Spec.Type == corev1.ServiceTypeExternalName {
		out.Internal, out.Resolution = false, "DNS"
		if svc.Spec.ExternalName != "" {
			out.Endpoints = []registry.Endpoint{{
				Address: svc.Spec.ExternalName, Labels: map[string]string{}, ServiceAccount: "default",
			}}
		}
		return out
	}
	out.Endpoints = s.endpointsOf(svc)
	return out
}

func (s *Source) endpointsOf(svc *corev1.Service) []registry.Endpoint {
	items, err := s.slices.GetIndexer().ByIndex(byService, svc.Namespace+"/"+svc.Name)
	if err != nil {
		return nil // the index is registered in New; it cannot be missing
	}
	slices := make([]*discoveryv1.EndpointSlice, 0, len(items))
	for _, item := range items {
		if es, ok := item.(*discoveryv1.EndpointSlice); ok && es.AddressType != discoveryv1.AddressTypeFQDN {
			slices = append(slices, es)
		}
	}
	sort.Slice(slices, func(i, j int) bool { return slices[i].Name < slices[j].Name })
	var out []registry.Endpoint
	seen := map[string]bool{} // an address moving between slices may show in two for a moment
	for _, es := range slices {
		ports := map[string]uint32{}
		for _, p := range es.Ports {
			if p.Port == nil {
				continue
			}
			name := ""
			if p.Name != nil {
				name = *p.Name
			}
			ports[name] = uint32(*p.Port)
		}
		for _, e := range es.Endpoints {
			// An unset Ready means unknown, which consumers are to treat as ready.
			if (e.Conditions.Ready != nil && !*e.Conditions.Ready) || len(e.Addresses) == 0 || seen[e.Addresses[0]] {
				continue
			}
			seen[e.Addresses[0]] = true
			ep := registry.Endpoint{
				Address: e.Addresses[0], Ports: maps.Clone(ports),
				Labels: map[string]string{}, ServiceAccount: "default",
				Object: source.Object{File: File, APIVersion: "discovery.k8s.io/v1", Kind: "EndpointSlice", Name: es.Name, Namespace: es.Namespace},
			}
			if pod := s.podOf(es.Namespace, e); pod != nil {
				fromPod(&ep, pod)
			}
			out = append(out, ep)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Address < out[j].Address })
	return out
}

// podOf finds the cached Pod an endpoint's targetRef names.
func (s *Source) podOf(ns string, e discoveryv1.Endpoint) *corev1.Pod {
	ref := e.TargetRef
	if ref == nil || ref.Kind != "Pod" || ref.Name == "" {
		return nil
	}
	if ref.Namespace != "" {
		ns = ref.Namespace
	}
	item, ok, err := s.pods.GetStore().GetByKey(ns + "/" + ref.Name)
	if err != nil || !ok {
		return nil
	}
	pod, _ := item.(*corev1.Pod)
	return pod
}

// fromPod fills an endpoint's identity from its pod.
func fromPod(ep *registry.Endpoint, pod *corev1.Pod) {
	ep.Labels = maps.Clone(pod.Labels)
	if ep.Labels == nil {
		ep.Labels = map[string]string{}
	}
	ep.ServiceAccount = pod.Spec.ServiceAccountName
	if ep.ServiceAccount == "" {
		ep.ServiceAccount = "default"
	}
	ep.Mesh = inMesh(pod)
	ep.Object = objectOf("v1", "Pod", pod)
}

// inMesh reports whether a pod runs a sidecar: the label
// security.istio.io/tlsMode decides when set ("istio" or "disabled");
// otherwise the injector's sidecar.istio.io/status annotation, or a container
// (or native sidecar init container) named rampart-sidecar or istio-proxy.
func inMesh(pod *corev1.Pod) bool {
	switch pod.Labels[registry.TLSModeLabel] {
	case "istio":
		return true
	case "disabled":
		return false
	}
	if _, ok := pod.Annotations[SidecarStatusAnnotation]; ok {
		return true
	}
	for _, c := range pod.Spec.Containers {
		if isSidecar(c.Name) {
			return true
		}
	}
	for _, c := range pod.Spec.InitContainers {
		if c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways && isSidecar(c.Name) {
			return true
		}
	}
	return false
}

func isSidecar(name string) bool {
	for _, n := range sidecarContainers {
		if name == n {
			return true
		}
	}
	return false
}

func podReady(pod *corev1.Pod) bool {
	if pod.Status.PodIP == "" || pod.DeletionTimestamp != nil {
		return false
	}
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func exportTo(v string) []string {
	var out []string
	for _, ns := range strings.Split(v, ",") {
		if ns = strings.TrimSpace(ns); ns != "" {
			out = append(out, ns)
		}
	}
	return out
}

// protocolOf applies Istio's protocol selection to a Service port: appProtocol
// first, then the port name as <protocol>[-<suffix>], else TCP (UDP for a UDP
// port). Istio sniffs unnamed ports; Rampart does not sniff outbound, so they
// are TCP.
func protocolOf(p corev1.ServicePort) string {
	if p.AppProtocol != nil {
		if proto := parseProtocol(*p.AppProtocol); proto != "" {
			return proto
		}
	}
	if p.Protocol == corev1.ProtocolUDP {
		return "UDP"
	}
	name, _, _ := strings.Cut(p.Name, "-")
	if proto := parseProtocol(name); proto != "" {
		return proto
	}
	return "TCP"
}

func parseProtocol(s string) string {
	switch s = strings.ToLower(s); s {
	case "http", "kubernetes.io/ws":
		return "HTTP"
	case "http2", "kubernetes.io/h2c":
		return "HTTP2"
	case "https", "kubernetes.io/wss": // TLS the sidecar passes through
		return "HTTPS"
	case "grpc", "grpc-web", "tls", "tcp", "udp", "mongo", "mysql", "redis":
		return strings.ToUpper(s)
	}
	return ""
}
