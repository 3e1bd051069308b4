package kube

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"encoding/json"

	"github.com/rampart-mesh/rampart/policies/api"
	istioscheme "istio.io/client-go/pkg/clientset/versioned/scheme"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/apimachinery/pkg/watch"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	clientfeatures "k8s.io/client-go/features"
	clientfeaturestesting "k8s.io/client-go/features/testing"
	kubefake "k8s.io/client-go/kubernetes/fake"
	kubescheme "k8s.io/client-go/kubernetes/scheme"
	clienttesting "k8s.io/client-go/testing"
	"sigs.k8s.io/yaml"
)

var testScheme = func() *runtime.Scheme {
	s := runtime.NewScheme()
	utilruntime.Must(kubescheme.AddToScheme(s))
	utilruntime.Must(istioscheme.AddToScheme(s))
	return s
}()

// decodeFile reads a multi-document YAML file into typed objects, strictly
// (an unknown field is an error, so a typo in testdata cannot pass silently).
func decodeFile(t *testing.T, path string) []runtime.Object {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	dec := serializer.NewCodecFactory(testScheme, serializer.EnableStrict).UniversalDeserializer()
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	var out []runtime.Object
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if js, err := yaml.YAMLToJSON(doc); err != nil || string(bytes.TrimSpace(js)) == "null" {
			continue // a document of only comments
		}
		if u, ok := rampartObject(t, path, doc); ok {
			out = append(out, u)
			continue
		}
		obj, _, err := dec.Decode(doc, nil, nil)
		if err != nil {
			t.Fatalf("%s: %v\n%s", path, err, doc)
		}
		if strings.HasSuffix(obj.GetObjectKind().GroupVersionKind().Group, "istio.io") {
			// Checked strictly as the typed object above; served by the
			// dynamic client, as the source reads it.
			u := &unstructured.Unstructured{}
			if err := u.UnmarshalJSON(mustJSON(t, doc)); err != nil {
				t.Fatalf("%s: %v", path, err)
			}
			obj = u
		}
		out = append(out, obj)
	}
}

func mustJSON(t *testing.T, doc []byte) []byte {
	t.Helper()
	js, err := yaml.YAMLToJSON(doc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

// fixture is a pair of fake clientsets seeded from testdata.
type fixture struct {
	kube *kubefake.Clientset
	dyn  *dynamicfake.FakeDynamicClient // Istio's and Rampart's kinds
	// dynWatches counts the watches the dynamic fake has opened.
	dynWatches atomic.Int32
}

// listKinds are the dynamic fake's list kinds for every custom resource the
// source watches.
func listKinds() map[schema.GroupVersionResource]string {
	m := map[schema.GroupVersionResource]string{RateLimitPolicies: api.KindRateLimitPolicy + "List"}
	for gvr, kind := range IstioResources {
		m[gvr] = kind + "List"
	}
	return m
}

// rampartObject decodes a policy.rampart.dev document as the dynamic client
// holds it, checking its spec strictly so a typo in testdata cannot pass.
func rampartObject(t *testing.T, path string, doc []byte) (*unstructured.Unstructured, bool) {
	t.Helper()
	js, err := yaml.YAMLToJSON(doc)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	u := &unstructured.Unstructured{}
	if err := u.UnmarshalJSON(js); err != nil || u.GroupVersionKind().Group != api.Group {
		return nil, false
	}
	spec, err := json.Marshal(u.Object["spec"])
	if err == nil {
		_, err = api.DecodeRateLimitPolicySpec(spec)
	}
	if err != nil {
		t.Fatalf("%s: %s %s: %v", path, u.GetKind(), u.GetName(), err)
	}
	return u, true
}

func newFixture(t *testing.T, files ...string) *fixture {
	t.Helper()
	// The Istio informers (generated against client-go 0.35) do not tell the
	// reflector that the Istio fake cannot stream lists, so with WatchListClient
	// on (the default since 1.35) they would wait for a bookmark the fake never
	// sends. A real API server streams lists; fakes need the classic list+watch.
	clientfeaturestesting.SetFeatureDuringTest(t, clientfeatures.WatchListClient, false)
	var kubeObjs, dynObjs []runtime.Object
	for _, f := range files {
		for _, obj := range decodeFile(t, filepath.Join("testdata", f)) {
			if _, ok := obj.(*unstructured.Unstructured); ok {
				dynObjs = append(dynObjs, obj)
			} else {
				kubeObjs = append(kubeObjs, obj)
			}
		}
	}
	f := &fixture{kube: kubefake.NewClientset(kubeObjs...),
		dyn: dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), listKinds(), dynObjs...)}
	// The dynamic fake's watch starts from "now" (it ignores resourceVersion),
	// so a change made between an informer's list and its watch would be lost:
	// tests wait until every watch is open before they change anything.
	f.dyn.PrependWatchReactor("*", func(a clienttesting.Action) (bool, watch.Interface, error) {
		w, err := f.dyn.Tracker().Watch(a.GetResource(), a.GetNamespace())
		f.dynWatches.Add(1)
		return true, w, err
	})
	return f
}

// running is a Source whose Run is under way.
type running struct {
	*Source
	changes atomic.Int32 // OnChange calls
	cancel  context.CancelFunc
	done    chan error
	once    sync.Once
}

// start runs a Source over the fixture and waits until its caches have synced
// and its Istio watches are open. The source is stopped at the end of the test
// if the test has not stopped it.
func (f *fixture) start(t *testing.T, cfg Config) *running {
	t.Helper()
	r := &running{done: make(chan error, 1)}
	cfg.Kube, cfg.Dynamic = f.kube, f.dyn
	cfg.OnChange = func() { r.changes.Add(1) }
	if cfg.Log == nil {
		cfg.Log = testLogger(t)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	r.Source = s
	ctx, cancel := context.WithCancel(t.Context())
	r.cancel = cancel
	go func() { r.done <- s.Run(ctx) }()
	t.Cleanup(func() { r.stop(t) })
	eventually(t, "caches synced and custom kinds' watches open", func() bool {
		return s.HasSynced() && f.dynWatches.Load() >= int32(len(s.crdKinds)) && r.changes.Load() >= 1
	})
	return r
}

// stop cancels Run and checks it returns nil promptly.
func (r *running) stop(t *testing.T) {
	t.Helper()
	r.once.Do(func() {
		r.cancel()
		select {
		case err := <-r.done:
			if err != nil {
				t.Errorf("Run returned %v after cancel; want nil", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("Run did not return within 10s of cancel")
		}
	})
}

// eventually polls cond until it holds, failing the test after 10s. Informers
// deliver on their own goroutines; there is no event to wait on instead.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
