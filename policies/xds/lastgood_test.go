package xds

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/rampart-mesh/rampart/ca/catest"
	"github.com/rampart-mesh/rampart/policies/compile"
	"github.com/rampart-mesh/rampart/policies/registry"
	"github.com/rampart-mesh/rampart/policies/source"
)

// A non-security cluster object this rampartd refuses is left out at start
// (rampartd starts). With a kube-last-good.json holding a version of it that
// an earlier rampartd accepted but this one refuses too (an upgrade that
// validates more), the start must not be refused because of the saved file.
func TestSavedLastGoodRefusedByThisBinary(t *testing.T) {
	a := catest.Authority(t)
	vs := parseKube(t, `apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: delegating, namespace: tenant}
spec:
  hosts: [reviews.tenant.svc.cluster.local]
  http:
  - delegate: {name: reviews-routes, namespace: tenant}
`)
	mesh, _ := compile.Mesh{}.WithDefaults()
	reg := &registry.Registry{Domain: "cluster.local"}

	// Without a state dir: the object is left out, rampartd starts.
	x, err := New(Config{Kube: &fakeKube{objs: vs, reg: reg}, Mesh: mesh, Trust: a.Bundle()})
	if err != nil {
		t.Fatal(err)
	}
	if err := x.reload(true); err != nil {
		t.Fatalf("setup: without saved state: %v", err)
	}

	// With the saved state of an earlier rampartd that had it in force.
	state := t.TempDir()
	o := vs[0]
	o.Namespace = "tenant"
	data, _ := json.Marshal(lastGoodDoc{Version: 1, Objects: []source.Object{o}})
	if err := os.WriteFile(filepath.Join(state, lastGoodFile), data, 0o600); err != nil {
		t.Fatal(err)
	}
	y, err := New(Config{Kube: &fakeKube{objs: vs, reg: reg}, Mesh: mesh, Trust: a.Bundle(), StateDir: state})
	if err != nil {
		t.Fatal(err)
	}
	if err := y.reload(true); err != nil {
		t.Fatalf("with kube-last-good.json holding the (now refused) VirtualService, the start is refused: %v", err)
	}
}

// An object deleted and recreated with the same spec has a new creation time,
// which Istio's oldest-wins ordering reads: the saved set changes with it.
func TestLastGoodDigestSeesRecreation(t *testing.T) {
	o := source.Object{APIVersion: "security.istio.io/v1", Kind: "AuthorizationPolicy", Namespace: "foo", Name: "a", Spec: []byte(`{}`)}
	before := digestOf(map[string]source.Object{objectKey(o): o})
	o.CreationTimestamp = time.Unix(1700000000, 0)
	if digestOf(map[string]source.Object{objectKey(o): o}) == before {
		t.Error("a recreated object (new creation time) leaves the digest unchanged: it would not be saved")
	}
}
