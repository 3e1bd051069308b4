package kube

import (
	"encoding/json"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/rampart-mesh/rampart/policies/registry"
	"github.com/rampart-mesh/rampart/policies/source"
	"go.uber.org/goleak"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

func TestRegistry(t *testing.T) {
	defer goleak.VerifyNone(t)
	f := newFixture(t, "bookinfo.yaml")
	r := f.start(t, Config{})
	reg := r.Registry("mesh.example")

	if reg.Domain != "mesh.example" {
		t.Errorf("Domain = %q", reg.Domain)
	}
	http9080 := []registry.Port{{Number: 9080, Name: "http", Protocol: "HTTP", TargetPort: 9080}}
	pod := func(name string) source.Object {
		return source.Object{File: "kubernetes", APIVersion: "v1", Kind: "Pod", Namespace: "default", Name: name}
	}
	want := []*registry.Service{
		{
			Host: "details.default.svc.mesh.example", Namespace: "default", Name: "details",
			Ports: http9080, Internal: true, Resolution: "STATIC",
			Endpoints: []registry.Endpoint{{
				Address: "10.0.0.10", Ports: map[string]uint32{"http": 9080}, ServiceAccount: "bookinfo-details", Mesh: true,
				Labels: map[string]string{"app": "details", "version": "v1", registry.TLSModeLabel: "istio"},
				Object: pod("details-v1-1"),
			}},
		},
		{
			Host: "httpbin.other.svc.mesh.example", Namespace: "other", Name: "httpbin",
			Ports:    []registry.Port{{Number: 443, Name: "https", Protocol: "HTTPS"}},
			Internal: false, Resolution: "DNS",
			Endpoints: []registry.Endpoint{{Address: "httpbin.org", Labels: map[string]string{}, ServiceAccount: "default"}},
		},
		{
			Host: "productpage.default.svc.mesh.example", Namespace: "default", Name: "productpage",
			// appProtocol over the name; a named targetPort resolves through the slice.
			Ports:    []registry.Port{{Number: 9080, Name: "web", Protocol: "HTTP"}},
			Internal: true, Resolution: "STATIC",
			Endpoints: []registry.Endpoint{{
				Address: "10.0.0.40", Ports: map[string]uint32{"web": 9081}, ServiceAccount: "default", Mesh: true,
				Labels: map[string]string{"app": "productpage", "version": "v1"},
				Object: pod("productpage-v1-1"),
			}},
		},
		{
			Host: "ratings.default.svc.mesh.example", Namespace: "default", Name: "ratings",
			Ports:    []registry.Port{{Number: 9080, Name: "http", Protocol: "HTTP"}},
			Internal: true, Resolution: "STATIC",
			Endpoints: []registry.Endpoint{{
				Address: "10.0.0.30", Ports: map[string]uint32{"http": 9080}, ServiceAccount: "bookinfo-ratings", Mesh: false,
				Labels: map[string]string{"app": "ratings", "version": "v1"},
				Object: pod("ratings-v1-1"),
			}},
		},
		{
			Host: "reviews.default.svc.mesh.example", Namespace: "default", Name: "reviews",
			Ports: http9080, Internal: true, Resolution: "STATIC", ExportTo: []string{".", "istio-system"},
			// 10.0.0.23 is not ready; 10.0.0.24 has no pod in the cache.
			Endpoints: []registry.Endpoint{
				{
					Address: "10.0.0.21", Ports: map[string]uint32{"http": 9080}, ServiceAccount: "bookinfo-reviews", Mesh: true,
					Labels: map[string]string{"app": "reviews", "version": "v1"},
					Object: pod("reviews-v1-1"),
				},
				{
					Address: "10.0.0.22", Ports: map[string]uint32{"http": 9080}, ServiceAccount: "bookinfo-reviews", Mesh: true,
					Labels: map[string]string{"app": "reviews", "version": "v2"},
					Object: pod("reviews-v2-1"),
				},
				{
					Address: "10.0.0.24", Ports: map[string]uint32{"http": 9080}, ServiceAccount: "default", Mesh: false,
					Labels: map[string]string{},
					Object: source.Object{File: "kubernetes", APIVersion: "discovery.k8s.io/v1", Kind: "EndpointSlice", Namespace: "default", Name: "reviews-d3e4f"},
				},
			},
		},
		{
			Host: "toolbox.other.svc.mesh.example", Namespace: "other", Name: "toolbox",
			Ports: []registry.Port{
				{Number: 80, Name: "http-web", Protocol: "HTTP", TargetPort: 8080},
				{Number: 81, Name: "grpc-api", Protocol: "HTTP2"}, // appProtocol kubernetes.io/h2c wins over the name
				{Number: 82, Name: "metrics", Protocol: "TCP"},
				{Number: 443, Name: "tls", Protocol: "TLS"}, // an unknown appProtocol falls back to the name
				{Number: 83, Name: "GRPC", Protocol: "GRPC"},
				{Number: 53, Name: "dns", Protocol: "UDP"},
				// SCTP port 2905 is left out.
				{Number: 84, Protocol: "HTTPS"},
			},
			Internal: true, Resolution: "STATIC",
		},
	}
	// Service.Object carries the Service; checked below.
	opts := cmp.Options{
		cmpopts.IgnoreFields(registry.Service{}, "Object"),
		cmpopts.IgnoreFields(source.Object{}, "Annotations", "Labels", "CreationTimestamp", "Spec"),
		cmpopts.EquateEmpty(),
	}
	if diff := cmp.Diff(want, reg.Services, opts); diff != "" {
		t.Errorf("services (-want +got):\n%s", diff)
	}

	// Registry's own lookups work on what the source built.
	reviews := reg.Service("reviews.default.svc.mesh.example")
	if reviews == nil {
		t.Fatal("Service(reviews) = nil; services must be sorted by host")
	}
	if diff := cmp.Diff(reviews.Endpoints, reg.EndpointsOf(reviews)); diff != "" {
		t.Errorf("EndpointsOf(reviews) is not the service's endpoints:\n%s", diff)
	}
	if got := reg.Resolve("reviews", "default"); got != reviews.Host {
		t.Errorf("Resolve(reviews) = %q; want %q", got, reviews.Host)
	}
	if o := reviews.Object; o.Kind != "Service" || o.APIVersion != "v1" || o.Name != "reviews" || o.Labels["service"] != "reviews" {
		t.Errorf("reviews Object = %+v", o)
	} else {
		var spec corev1.ServiceSpec
		if err := json.Unmarshal(o.Spec, &spec); err != nil || spec.Selector["app"] != "reviews" {
			t.Errorf("reviews Object.Spec = %s (%v); want the ServiceSpec with its selector", o.Spec, err)
		}
	}
	if got := reviews.Endpoints[0].Object.Labels["version"]; got != "v1" {
		t.Errorf("endpoint Object is not the pod: labels %v", reviews.Endpoints[0].Object.Labels)
	}

	// Workloads: every ready pod, as a WorkloadEntry would list it.
	var workloads []string
	for _, w := range reg.Workloads {
		workloads = append(workloads, w.Object.Namespace+"/"+w.Object.Name+" "+w.Address+" "+w.ServiceAccount)
	}
	wantWorkloads := []string{
		"default/details-v1-1 10.0.0.10 bookinfo-details",
		"default/productpage-v1-1 10.0.0.40 default",
		"default/ratings-v1-1 10.0.0.30 bookinfo-ratings",
		"default/reviews-v1-1 10.0.0.21 bookinfo-reviews",
		"default/reviews-v2-1 10.0.0.22 bookinfo-reviews",
	}
	if diff := cmp.Diff(wantWorkloads, workloads); diff != "" {
		t.Errorf("workloads (-want +got):\n%s", diff)
	}
	r.stop(t)
}

func TestProtocolOf(t *testing.T) {
	tests := []struct {
		name string
		port corev1.ServicePort
		want string
	}{
		{"name http", corev1.ServicePort{Name: "http"}, "HTTP"},
		{"name with suffix", corev1.ServicePort{Name: "http2-api"}, "HTTP2"},
		{"name grpc-web is grpc with a suffix", corev1.ServicePort{Name: "grpc-web"}, "GRPC"},
		{"name in upper case", corev1.ServicePort{Name: "HTTPS"}, "HTTPS"},
		{"unknown name", corev1.ServicePort{Name: "admin"}, "TCP"},
		{"no name", corev1.ServicePort{}, "TCP"},
		{"name tcp", corev1.ServicePort{Name: "tcp-db"}, "TCP"},
		{"name mongo", corev1.ServicePort{Name: "mongo"}, "MONGO"},
		{"appProtocol wins", corev1.ServicePort{Name: "http", AppProtocol: ptr.To("grpc")}, "GRPC"},
		{"appProtocol grpc-web", corev1.ServicePort{Name: "web", AppProtocol: ptr.To("grpc-web")}, "GRPC-WEB"},
		{"appProtocol h2c", corev1.ServicePort{AppProtocol: ptr.To("kubernetes.io/h2c")}, "HTTP2"},
		{"appProtocol ws", corev1.ServicePort{AppProtocol: ptr.To("kubernetes.io/ws")}, "HTTP"},
		{"appProtocol wss", corev1.ServicePort{AppProtocol: ptr.To("kubernetes.io/wss")}, "HTTPS"},
		{"appProtocol TLS in upper case", corev1.ServicePort{AppProtocol: ptr.To("TLS")}, "TLS"},
		{"unknown appProtocol falls back to the name", corev1.ServicePort{Name: "redis", AppProtocol: ptr.To("example.com/x")}, "REDIS"},
		{"UDP port", corev1.ServicePort{Name: "dns", Protocol: corev1.ProtocolUDP}, "UDP"},
		{"UDP port named http", corev1.ServicePort{Name: "http", Protocol: corev1.ProtocolUDP}, "UDP"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := protocolOf(tt.port); got != tt.want {
				t.Errorf("protocolOf(%+v) = %q; want %q", tt.port, got, tt.want)
			}
		})
	}
}

func TestInMesh(t *testing.T) {
	always := corev1.ContainerRestartPolicyAlways
	tests := []struct {
		name string
		pod  corev1.Pod
		want bool
	}{
		{"plain pod", corev1.Pod{}, false},
		{"tlsMode istio", corev1.Pod{ObjectMeta: objMeta(map[string]string{registry.TLSModeLabel: "istio"}, nil)}, true},
		{"injector annotation", corev1.Pod{ObjectMeta: objMeta(nil, map[string]string{SidecarStatusAnnotation: "{}"})}, true},
		{"tlsMode disabled overrides the annotation", corev1.Pod{ObjectMeta: objMeta(map[string]string{registry.TLSModeLabel: "disabled"}, map[string]string{SidecarStatusAnnotation: "{}"})}, false},
		{"istio-proxy container", corev1.Pod{Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app"}, {Name: "istio-proxy"}}}}, true},
		{"rampart-sidecar native sidecar", corev1.Pod{Spec: corev1.PodSpec{InitContainers: []corev1.Container{{Name: "rampart-sidecar", RestartPolicy: &always}}}}, true},
		{"rampart-sidecar as a plain init container", corev1.Pod{Spec: corev1.PodSpec{InitContainers: []corev1.Container{{Name: "rampart-sidecar"}}}}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := inMesh(&tt.pod); got != tt.want {
				t.Errorf("inMesh = %v; want %v", got, tt.want)
			}
		})
	}
}

func objMeta(labels, annotations map[string]string) metav1.ObjectMeta {
	return metav1.ObjectMeta{Name: "p", Namespace: "default", Labels: labels, Annotations: annotations}
}
