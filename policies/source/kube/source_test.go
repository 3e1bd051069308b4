package kube

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/testing/protocmp"
	securityapi "istio.io/api/security/v1beta1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	kubefake "k8s.io/client-go/kubernetes/fake"
	clienttesting "k8s.io/client-go/testing"
)

// lockedBuffer is a log sink the informer goroutines and the test share.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, nil))
}

func TestNewValidates(t *testing.T) {
	kube, dyn := kubefake.NewClientset(), newFixture(t).dyn
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{"no kube client", Config{Dynamic: dyn}, "Config.Kube"},
		{"no dynamic client", Config{Kube: kube}, "Config.Dynamic"},
		{"negative resync", Config{Kube: kube, Dynamic: dyn, Resync: -time.Second}, "Config.Resync"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := New(tt.cfg)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("New() = %v, %v; want an error naming %s", s, err, tt.want)
			}
		})
	}
	if _, err := New(Config{Kube: kube, Dynamic: dyn}); err != nil {
		t.Fatalf("New with both clients: %v", err)
	}
}

func TestRunTwiceIsAnError(t *testing.T) {
	defer goleak.VerifyNone(t)
	f := newFixture(t)
	r := f.start(t, Config{})
	if err := r.Run(t.Context()); !errors.Is(err, ErrRunning) {
		t.Fatalf("second Run = %v; want ErrRunning", err)
	}
	r.stop(t)
}

// A cache that cannot sync (here: no permission to list pods) keeps Run
// waiting and says why in the log; cancelling still returns nil and stops
// every goroutine.
func TestRunReturnsOnCancelBeforeSync(t *testing.T) {
	defer goleak.VerifyNone(t)
	f := newFixture(t, "bookinfo.yaml", "istio.yaml")
	f.kube.PrependReactor("list", "pods", func(clienttesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewForbidden(schema.GroupResource{Resource: "pods"}, "", errors.New("RBAC: access denied"))
	})
	var logs lockedBuffer
	var changes int
	s, err := New(Config{Kube: f.kube, Dynamic: f.dyn, Log: slog.New(slog.NewTextHandler(&logs, nil)), OnChange: func() { changes++ }})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	// The Istio caches sync regardless, and their objects are readable.
	eventually(t, "a warning about the pods list, and the Istio objects", func() bool {
		return strings.Contains(logs.String(), "kind=Pod") && strings.Contains(logs.String(), "forbidden") && len(s.Objects()) == 5
	})
	if s.HasSynced() {
		t.Error("HasSynced() = true with the pod cache unable to list")
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run = %v after cancel; want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	if changes != 0 {
		t.Errorf("OnChange called %d times before the caches synced; want 0", changes)
	}
}

// A resync replays objects with an unchanged resourceVersion: not a change.
func TestResyncIsNotAChange(t *testing.T) {
	calls := 0
	s, err := New(Config{Kube: kubefake.NewClientset(), Dynamic: newFixture(t).dyn, OnChange: func() { calls++ }})
	if err != nil {
		t.Fatal(err)
	}
	s.synced.Store(true)
	pod := func(rv string) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p", ResourceVersion: rv}}
	}
	s.updated(pod("7"), pod("7"))
	if calls != 0 {
		t.Fatalf("OnChange called on a resync")
	}
	s.updated(pod("7"), pod("8"))
	if calls != 1 {
		t.Fatalf("OnChange calls = %d after a real update; want 1", calls)
	}
	// A custom object whose content changed under the same resourceVersion
	// (the watch cache's pruned copy, then the relist's whole one, after a
	// CRD change) is a change; the same content is a resync.
	ap := func(spec map[string]any) *unstructured.Unstructured {
		return &unstructured.Unstructured{Object: map[string]any{"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
			"metadata": map[string]any{"name": "a", "namespace": "foo", "resourceVersion": "9"}, "spec": spec}}
	}
	s.updated(ap(map[string]any{"action": "DENY"}), ap(map[string]any{"action": "DENY"}))
	if calls != 1 {
		t.Fatalf("OnChange called on a custom object's resync")
	}
	s.updated(ap(map[string]any{"action": "DENY"}), ap(map[string]any{"action": "DENY", "futureField": true}))
	if calls != 2 {
		t.Fatalf("OnChange calls = %d after a content change under one resourceVersion; want 2", calls)
	}
}

// Changes made through the API after Run started reach Objects and Registry
// and call OnChange.
func TestLiveChanges(t *testing.T) {
	defer goleak.VerifyNone(t)
	f := newFixture(t, "bookinfo.yaml", "istio.yaml")
	r := f.start(t, Config{})
	ctx := t.Context()

	step := func(what string, change func() error, reached func() bool) {
		t.Helper()
		before := r.changes.Load()
		if err := change(); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		eventually(t, what, func() bool { return reached() && r.changes.Load() > before })
	}
	hasObject := func(kind, ns, name string) bool {
		for _, o := range r.Objects() {
			if o.Kind == kind && o.Namespace == ns && o.Name == name {
				return true
			}
		}
		return false
	}
	endpoint := func(host, addr string) (labels map[string]string, mesh, ok bool) {
		s := r.Registry("").Service(host)
		if s == nil {
			return nil, false, false
		}
		for _, ep := range s.Endpoints {
			if ep.Address == addr {
				return ep.Labels, ep.Mesh, true
			}
		}
		return nil, false, false
	}

	aps := f.dyn.Resource(istio("security", "authorizationpolicies")).Namespace("default")
	deny := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
		"metadata": map[string]any{"name": "deny-ratings", "namespace": "default"},
		"spec":     map[string]any{"action": "DENY"},
	}}
	step("AuthorizationPolicy created", func() error {
		_, err := aps.Create(ctx, deny, metav1.CreateOptions{})
		return err
	}, func() bool { return hasObject("AuthorizationPolicy", "default", "deny-ratings") })

	step("AuthorizationPolicy updated", func() error {
		ap, err := aps.Get(ctx, "deny-ratings", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if err := unstructured.SetNestedField(ap.Object, "AUDIT", "spec", "action"); err != nil {
			return err
		}
		_, err = aps.Update(ctx, ap, metav1.UpdateOptions{})
		return err
	}, func() bool {
		for _, o := range r.Objects() {
			if o.Name == "deny-ratings" {
				got := &securityapi.AuthorizationPolicy{}
				unmarshalSpec(t, o, got)
				return cmp.Equal(got, &securityapi.AuthorizationPolicy{Action: securityapi.AuthorizationPolicy_AUDIT}, protocmp.Transform())
			}
		}
		return false
	})

	step("reviews-v3 became ready", func() error {
		es, err := f.kube.DiscoveryV1().EndpointSlices("default").Get(ctx, "reviews-a1b2c", metav1.GetOptions{})
		if err != nil {
			return err
		}
		ready := true
		es.Endpoints[2].Conditions.Ready = &ready
		_, err = f.kube.DiscoveryV1().EndpointSlices("default").Update(ctx, es, metav1.UpdateOptions{})
		return err
	}, func() bool {
		labels, mesh, ok := endpoint("reviews.default.svc.cluster.local", "10.0.0.23")
		return ok && labels["version"] == "v3" && mesh
	})

	step("reviews-v1 relabelled", func() error {
		pod, err := f.kube.CoreV1().Pods("default").Get(ctx, "reviews-v1-1", metav1.GetOptions{})
		if err != nil {
			return err
		}
		pod.Labels["version"] = "v1-canary"
		_, err = f.kube.CoreV1().Pods("default").Update(ctx, pod, metav1.UpdateOptions{})
		return err
	}, func() bool {
		labels, _, ok := endpoint("reviews.default.svc.cluster.local", "10.0.0.21")
		return ok && labels["version"] == "v1-canary"
	})

	step("ratings Service deleted", func() error {
		return f.kube.CoreV1().Services("default").Delete(ctx, "ratings", metav1.DeleteOptions{})
	}, func() bool { return r.Registry("").Service("ratings.default.svc.cluster.local") == nil })

	step("AuthorizationPolicy deleted", func() error {
		return aps.Delete(ctx, "deny-ratings", metav1.DeleteOptions{})
	}, func() bool { return !hasObject("AuthorizationPolicy", "default", "deny-ratings") })

	step("Namespace created", func() error {
		_, err := f.kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop", Labels: map[string]string{"istio-injection": "enabled"}}}, metav1.CreateOptions{})
		return err
	}, func() bool {
		for _, ns := range r.Namespaces() {
			if ns.Name == "shop" && ns.Labels["istio-injection"] == "enabled" {
				return true
			}
		}
		return false
	})

	r.stop(t)
}

// With Config.Namespace set, only that namespace's objects are seen, and the
// Namespace informer asks for that one namespace only.
func TestNamespaceScoped(t *testing.T) {
	defer goleak.VerifyNone(t)
	f := newFixture(t, "bookinfo.yaml", "istio.yaml")
	r := f.start(t, Config{Namespace: "default"})

	for _, o := range r.Objects() {
		if o.Namespace != "default" {
			t.Errorf("Objects() has %s outside namespace default", o.Where())
		}
	}
	if len(r.Objects()) != 3 {
		t.Errorf("Objects() has %d objects; want the 3 in namespace default", len(r.Objects()))
	}
	reg := r.Registry("")
	var hosts []string
	for _, s := range reg.Services {
		hosts = append(hosts, s.Host)
	}
	want := []string{"details.default.svc.cluster.local", "productpage.default.svc.cluster.local", "ratings.default.svc.cluster.local", "reviews.default.svc.cluster.local"}
	if diff := cmp.Diff(want, hosts); diff != "" {
		t.Errorf("hosts (-want +got):\n%s", diff)
	}

	var selectors []string
	for _, a := range f.kube.Actions() {
		if l, ok := a.(clienttesting.ListAction); ok && a.GetResource().Resource == "namespaces" {
			selectors = append(selectors, l.GetListRestrictions().Fields.String())
		}
	}
	if len(selectors) == 0 || selectors[0] != "metadata.name=default" {
		t.Errorf("namespace list field selectors = %q; want [metadata.name=default]", selectors)
	}
	r.stop(t)
}
