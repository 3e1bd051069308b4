package kube

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/rampart-mesh/rampart/policies/compile"
	"github.com/rampart-mesh/rampart/policies/registry"
	"github.com/rampart-mesh/rampart/policies/source"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/durationpb"
	networkingapi "istio.io/api/networking/v1alpha3"
	securityapi "istio.io/api/security/v1beta1"
	typeapi "istio.io/api/type/v1beta1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

func unmarshalSpec(t *testing.T, o source.Object, m proto.Message) {
	t.Helper()
	if err := protojson.Unmarshal(o.Spec, m); err != nil {
		t.Fatalf("%s: spec %s does not decode as %T: %v", o.Where(), o.Spec, m, err)
	}
}

// specType is the istio.io/api message of each kind.
var specType = map[string]func() proto.Message{
	"AuthorizationPolicy":   func() proto.Message { return &securityapi.AuthorizationPolicy{} },
	"PeerAuthentication":    func() proto.Message { return &securityapi.PeerAuthentication{} },
	"RequestAuthentication": func() proto.Message { return &securityapi.RequestAuthentication{} },
	"DestinationRule":       func() proto.Message { return &networkingapi.DestinationRule{} },
	"Gateway":               func() proto.Message { return &networkingapi.Gateway{} },
	"ServiceEntry":          func() proto.Message { return &networkingapi.ServiceEntry{} },
	"Sidecar":               func() proto.Message { return &networkingapi.Sidecar{} },
	"VirtualService":        func() proto.Message { return &networkingapi.VirtualService{} },
	"WorkloadEntry":         func() proto.Message { return &networkingapi.WorkloadEntry{} },
}

func TestObjects(t *testing.T) {
	defer goleak.VerifyNone(t)
	f := newFixture(t, "bookinfo.yaml", "istio.yaml")
	r := f.start(t, Config{})
	got := r.Objects()

	type id struct{ APIVersion, Kind, Namespace, Name string }
	var ids []id
	for _, o := range got {
		ids = append(ids, id{o.APIVersion, o.Kind, o.Namespace, o.Name})
		if o.File != "kubernetes" || o.Line != 0 {
			t.Errorf("%s: File, Line = %q, %d; want \"kubernetes\", 0", o.Where(), o.File, o.Line)
		}
	}
	wantIDs := []id{ // kind, namespace, name order
		{"security.istio.io/v1", "AuthorizationPolicy", "default", "productpage-viewer"},
		{"networking.istio.io/v1", "DestinationRule", "default", "reviews"},
		{"security.istio.io/v1", "PeerAuthentication", "istio-system", "default"},
		{"networking.istio.io/v1", "ServiceEntry", "other", "httpbin-ext"},
		{"networking.istio.io/v1", "VirtualService", "default", "reviews"},
	}
	if diff := cmp.Diff(wantIDs, ids); diff != "" {
		t.Fatalf("Objects() (-want +got):\n%s", diff)
	}

	ap := got[0]
	if w := ap.Where(); w != "AuthorizationPolicy default/productpage-viewer (kubernetes)" {
		t.Errorf("Where() = %q", w)
	}
	if diff := cmp.Diff(map[string]string{"team": "bookinfo"}, ap.Labels); diff != "" {
		t.Errorf("labels (-want +got):\n%s", diff)
	}
	// kubectl's last-applied copy is not config and is left out.
	if diff := cmp.Diff(map[string]string{"owner": "web-team"}, ap.Annotations); diff != "" {
		t.Errorf("annotations (-want +got):\n%s", diff)
	}
	if want := time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC); !ap.CreationTimestamp.Equal(want) {
		t.Errorf("creation timestamp = %v; want %v", ap.CreationTimestamp, want)
	}
	wantAP := &securityapi.AuthorizationPolicy{
		Selector: &typeapi.WorkloadSelector{MatchLabels: map[string]string{"app": "productpage"}},
		Action:   securityapi.AuthorizationPolicy_ALLOW,
		Rules: []*securityapi.Rule{{
			From: []*securityapi.Rule_From{{Source: &securityapi.Source{
				Principals: []string{"cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account"}}}},
			To: []*securityapi.Rule_To{{Operation: &securityapi.Operation{
				Methods: []string{"GET"}, Paths: []string{"/productpage", "/static/*"}}}},
		}},
	}
	gotAP := &securityapi.AuthorizationPolicy{}
	unmarshalSpec(t, ap, gotAP)
	if diff := cmp.Diff(wantAP, gotAP, protocmp.Transform()); diff != "" {
		t.Errorf("AuthorizationPolicy spec (-want +got):\n%s", diff)
	}
	gotVS := &networkingapi.VirtualService{}
	unmarshalSpec(t, got[4], gotVS)
	if n, w := len(gotVS.GetHttp()), gotVS.GetHttp()[1].GetRoute()[1].GetWeight(); n != 2 || w != 10 ||
		!proto.Equal(gotVS.GetHttp()[1].GetTimeout(), durationpb.New(2*time.Second)) {
		t.Errorf("VirtualService spec = %v", gotVS)
	}

	// Callers own what they get: changing it leaves the cache alone.
	ap.Labels["team"] = "changed"
	if r.Objects()[0].Labels["team"] != "bookinfo" {
		t.Error("a caller's change to Labels reached the cache")
	}
	r.stop(t)
}

// Every object reads the same from Kubernetes as from the YAML file it was
// applied from, so compilers cannot tell the sources apart.
func TestObjectsMatchFileSource(t *testing.T) {
	defer goleak.VerifyNone(t)
	f := newFixture(t, "istio.yaml")
	r := f.start(t, Config{})
	fromKube := map[string]source.Object{}
	for _, o := range r.Objects() {
		fromKube[o.Kind+" "+o.Namespace+"/"+o.Name] = o
	}
	fromFile, err := source.ReadPaths([]string{filepath.Join("testdata", "istio.yaml")})
	if err != nil {
		t.Fatal(err)
	}
	if len(fromFile) != len(fromKube) {
		t.Fatalf("the file has %d objects, Kubernetes %d", len(fromFile), len(fromKube))
	}
	for _, want := range fromFile {
		got, ok := fromKube[want.Kind+" "+want.Namespace+"/"+want.Name]
		if !ok {
			t.Errorf("%s: not in Objects()", want.Where())
			continue
		}
		delete(want.Annotations, lastApplied)
		if len(want.Annotations) == 0 {
			want.Annotations = nil
		}
		opts := cmp.Options{cmp.FilterPath(func(p cmp.Path) bool {
			switch p.String() {
			case "File", "Line", "Lines", "Spec":
				return true
			}
			return false
		}, cmp.Ignore())}
		if diff := cmp.Diff(want, got, opts); diff != "" {
			t.Errorf("%s (-file +kubernetes):\n%s", want.Where(), diff)
		}
		wantSpec, gotSpec := specType[want.Kind](), specType[want.Kind]()
		unmarshalSpec(t, want, wantSpec)
		unmarshalSpec(t, got, gotSpec)
		if diff := cmp.Diff(wantSpec, gotSpec, protocmp.Transform()); diff != "" {
			t.Errorf("%s spec (-file +kubernetes):\n%s", want.Where(), diff)
		}
	}

	// And the registry reads a ServiceEntry from Kubernetes as from a file.
	reg, issues := registry.Build(r.Objects(), "", "")
	if len(issues) > 0 {
		t.Fatalf("registry.Build: %v", issues)
	}
	se := reg.Service("httpbin.example.com")
	if se == nil || se.Internal || se.Resolution != "DNS" || se.Namespace != "other" || len(se.Ports) != 1 || se.Ports[0].Protocol != "TLS" {
		t.Errorf("ServiceEntry httpbin-ext in the registry = %+v", se)
	}
	r.stop(t)
}

// A cluster whose Istio CRDs are newer than the istio.io/api Rampart links
// keeps fields Rampart does not know. Istio's typed client would drop them
// on decode, and an ALLOW rule narrowed by such a field would be enforced
// wider than written. Read as the API server stores it, the field reaches the
// compiler, which reports it with its path, as it does for a file.
func TestUnknownFieldFromNewerCRDReachesTheCompiler(t *testing.T) {
	defer goleak.VerifyNone(t)
	f := newFixture(t)
	ap := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
		"metadata": map[string]any{"name": "allow-get", "namespace": "default"},
		"spec": map[string]any{
			"action": "ALLOW",
			"rules": []any{map[string]any{"to": []any{map[string]any{"operation": map[string]any{
				"methods":        []any{"GET"},
				"futureNotPaths": []any{"/admin"},
			}}}}},
		},
	}}
	if _, err := f.dyn.Resource(istio("security", "authorizationpolicies")).Namespace("default").Create(t.Context(), ap, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	r := f.start(t, Config{})
	objs := r.Objects()
	r.stop(t)
	if len(objs) != 1 || !strings.Contains(string(objs[0].Spec), "futureNotPaths") {
		t.Fatalf("Objects() = %+v; want the AuthorizationPolicy with its spec as stored", objs)
	}
	_, fs := compile.DecodeAuthorizationPolicies(objs, "default")
	found := false
	for _, f := range fs {
		if f.Severity == compile.SeverityError && strings.Contains(f.Path, "futureNotPaths") && strings.Contains(f.Message, "newer Istio") {
			found = true
		}
	}
	if !found {
		t.Errorf("findings %v; want an error naming spec.rules[0].to[0].operation.futureNotPaths", fs)
	}
}
