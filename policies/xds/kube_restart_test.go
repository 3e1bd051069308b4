package xds

import (
	"strings"
	"testing"
	"time"

	"github.com/rampart-mesh/rampart/ca/catest"
	"github.com/rampart-mesh/rampart/policies/compile"
	"github.com/rampart-mesh/rampart/policies/registry"
	"github.com/rampart-mesh/rampart/policies/source"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// A RequestAuthentication in the cluster edited into one rampartd refuses
// (a second jwtRule whose issuer is no URL, without jwksUri) is kept at its
// last good version by the running rampartd. That version lives only in
// memory: a restarted rampartd (upgrade, reschedule, a second replica) must
// not leave the RequestAuthentication out, or the workload would stop
// validating JWTs (a forged or expired token reaching the app; DENY rules on
// request.auth.claims no longer matching); it refuses to start instead.
func TestKubeSecurityObjectRefusedAtStart(t *testing.T) {
	a := catest.Authority(t)
	parse := func(y string) []source.Object {
		t.Helper()
		o, err := source.Parse("kubernetes", []byte(y))
		if err != nil {
			t.Fatal(err)
		}
		return o
	}
	good := parse("apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: jwt, namespace: foo}\nspec:\n  jwtRules:\n  - {issuer: \"https://issuer.example\", jwksUri: \"https://issuer.example/jwks\"}\n")
	edited := parse("apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: jwt, namespace: foo}\nspec:\n  jwtRules:\n  - {issuer: \"https://issuer.example\", jwksUri: \"https://issuer.example/jwks\"}\n  - {issuer: \"internal\"}\n")
	mesh, _ := compile.Mesh{}.WithDefaults()
	id := spiffeid.RequireFromString("spiffe://cluster.local/ns/foo/sa/httpbin")
	jwtRules := func(x *Server) string {
		t.Helper()
		x.nodes[id.String()] = &node{id: id, workload: compile.Workload{Namespace: "foo", Name: "httpbin", Labels: map[string]string{}}, acked: map[string]string{}}
		if err := x.push(id.String(), time.Now()); err != nil {
			t.Fatal(err)
		}
		wb, _, _ := x.Config(id.String())
		return string(wb.JWTRules)
	}

	// The running rampartd: good, then the edit.
	kube := &fakeKube{objs: good, reg: &registry.Registry{Domain: "cluster.local"}}
	x, err := New(Config{Kube: kube, Mesh: mesh, Trust: a.Bundle()})
	if err != nil {
		t.Fatal(err)
	}
	if err := x.reload(true); err != nil {
		t.Fatal(err)
	}
	kube.mu.Lock()
	kube.objs = edited
	kube.mu.Unlock()
	x.KubeChanged()
	if err := x.reload(false); err != nil {
		t.Fatal(err)
	}
	running := jwtRules(x)
	if !strings.Contains(running, "issuer.example") {
		t.Fatalf("setup: running rampartd serves %s", running)
	}

	// rampartd restarts with the same cluster state.
	y, err := New(Config{Kube: &fakeKube{objs: edited, reg: &registry.Registry{Domain: "cluster.local"}}, Mesh: mesh, Trust: a.Bundle()})
	if err != nil {
		t.Fatal(err)
	}
	err = y.reload(true)
	if err == nil {
		if restarted := jwtRules(y); !strings.Contains(restarted, "issuer.example") {
			t.Errorf("after a restart the RequestAuthentication is gone: the running rampartd serves jwtRules %s, the restarted one %s (start error: %v)", running, restarted, err)
		}
	}
}
