package kubeapi

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"sigs.k8s.io/yaml"
)

// CRDs is the resource of CustomResourceDefinitions. They are handled as
// unstructured objects, so the tests need no apiextensions client.
var CRDs = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// Dynamic returns a dynamic client for the server.
func (s *Server) Dynamic(tb testing.TB) dynamic.Interface {
	tb.Helper()
	dc, err := dynamic.NewForConfig(s.Config)
	if err != nil {
		tb.Fatal(err)
	}
	return dc
}

// IstioCRDs returns the path of Istio's CRDs as istio.io/api ships them
// (kubernetes/customresourcedefinitions.gen.yaml), at the version this
// module requires, from the module cache.
func IstioCRDs(tb testing.TB) string {
	tb.Helper()
	cmd := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "istio.io/api")
	cmd.Dir = repoRoot()
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		tb.Fatalf("go list -m istio.io/api: %v: %s", err, stderr.String())
	}
	path := filepath.Join(strings.TrimSpace(string(out)), "kubernetes", "customresourcedefinitions.gen.yaml")
	if _, err := os.Stat(path); err != nil {
		tb.Fatalf("Istio's CRDs: %v", err)
	}
	return path
}

// RampartCRDs returns the paths of Rampart's own CRDs (deploy/crds).
func RampartCRDs(tb testing.TB) []string {
	tb.Helper()
	paths, err := filepath.Glob(filepath.Join(repoRoot(), "deploy", "crds", "*.yaml"))
	if err != nil || len(paths) == 0 {
		tb.Fatalf("no CRDs in deploy/crds (%v)", err)
	}
	return paths
}

// InstallCRDs creates every CustomResourceDefinition in the YAML files (other
// kinds are an error) and waits until each is Established, so its kind is
// served. It returns the CRDs' names.
func (s *Server) InstallCRDs(tb testing.TB, files ...string) []string {
	tb.Helper()
	dc := s.Dynamic(tb)
	ctx := withTimeout(tb, 2*time.Minute)
	var names []string
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			tb.Fatal(err)
		}
		for i, doc := range splitYAML(data) {
			var obj map[string]any
			if err := yaml.Unmarshal(doc, &obj); err != nil {
				tb.Fatalf("%s, document %d: %v", file, i+1, err)
			}
			if obj == nil {
				continue
			}
			u := &unstructured.Unstructured{Object: obj}
			if u.GetKind() != "CustomResourceDefinition" {
				tb.Fatalf("%s, document %d: kind %q, want CustomResourceDefinition", file, i+1, u.GetKind())
			}
			if _, err := dc.Resource(CRDs).Create(ctx, u, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
				tb.Fatalf("create CRD %s from %s: %v", u.GetName(), file, err)
			}
			names = append(names, u.GetName())
		}
	}
	for _, name := range names {
		s.WaitEstablished(tb, name)
	}
	return names
}

// WaitEstablished waits until the CRD's Established condition is True.
func (s *Server) WaitEstablished(tb testing.TB, name string) {
	tb.Helper()
	dc := s.Dynamic(tb)
	ctx := withTimeout(tb, time.Minute)
	var last string
	for {
		u, err := dc.Resource(CRDs).Get(ctx, name, metav1.GetOptions{})
		if err == nil {
			conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
			for _, c := range conds {
				m, _ := c.(map[string]any)
				if m["type"] == "Established" && m["status"] == "True" {
					return
				}
			}
			last = fmt.Sprintf("conditions %v", conds)
		} else {
			last = err.Error()
		}
		if ctx.Err() != nil {
			tb.Fatalf("CRD %s: %v: %s", name, errNotEstablished, last)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// splitYAML splits a multi-document YAML stream at its "---" lines.
func splitYAML(data []byte) [][]byte {
	var docs [][]byte
	var cur bytes.Buffer
	for _, line := range bytes.SplitAfter(data, []byte("\n")) {
		if t := bytes.TrimRight(line, " \t\r\n"); bytes.Equal(t, []byte("---")) {
			docs = append(docs, bytes.Clone(cur.Bytes()))
			cur.Reset()
			continue
		}
		cur.Write(line)
	}
	return append(docs, cur.Bytes())
}

// RepoFile is the path of a file of this repository, from its path in it
// (e.g. "deploy/kube/rampartd-rbac.yaml").
func RepoFile(rel string) string { return filepath.Join(repoRoot(), filepath.FromSlash(rel)) }

func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "..")
}
