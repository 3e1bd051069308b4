package xds

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rampart-mesh/rampart/authz"
	"github.com/rampart-mesh/rampart/ca/catest"
	"github.com/rampart-mesh/rampart/policies/compile"
	"github.com/rampart-mesh/rampart/policies/registry"
	"github.com/rampart-mesh/rampart/policies/source"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// A VirtualService Istio accepts (http[].delegate) that Rampart does not
// implement, created by a tenant in namespace "tenant", must not freeze the
// whole mesh: endpoint churn of an unrelated Service in "foo" must still reach
// proxies (and rampartd must still start with it present).
func TestKubeBadObjectRefusedAlone(t *testing.T) {
	a := catest.Authority(t)
	svc := func(ip string) *registry.Registry {
		return &registry.Registry{Domain: "cluster.local", Services: []*registry.Service{{
			Host: "httpbin.foo.svc.cluster.local", Namespace: "foo", Name: "httpbin", Internal: true, Resolution: "STATIC",
			Ports:     []registry.Port{{Number: 8000, Name: "http", Protocol: "HTTP"}},
			Endpoints: []registry.Endpoint{{Address: ip, Ports: map[string]uint32{}, Labels: map[string]string{"app": "httpbin"}, ServiceAccount: "httpbin", Mesh: true, Object: source.Object{Namespace: "foo", Name: "httpbin-1"}}},
		}}}
	}
	bad, err := source.Parse("kubernetes", []byte(`apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: delegating, namespace: tenant}
spec:
  hosts: [reviews.tenant.svc.cluster.local]
  http:
  - delegate: {name: reviews-routes, namespace: tenant}
`))
	if err != nil {
		t.Fatal(err)
	}
	endpointsOf := func(x *Server, id string) string {
		out, _, _ := x.Outbound(id)
		var b strings.Builder
		for _, e := range out.Endpoints {
			for _, l := range e.GetEndpoints() {
				for _, le := range l.GetLbEndpoints() {
					b.WriteString(e.GetClusterName() + " -> " + le.GetEndpoint().GetAddress().GetSocketAddress().GetAddress() + " ")
				}
			}
		}
		return b.String()
	}
	mesh, _ := compile.Mesh{}.WithDefaults()

	t.Run("change after the bad object", func(t *testing.T) {
		kube := &fakeKube{reg: svc("10.0.0.7")}
		x, err := New(Config{Kube: kube, Mesh: mesh, Trust: a.Bundle()})
		if err != nil {
			t.Fatal(err)
		}
		if err := x.reload(true); err != nil {
			t.Fatal(err)
		}
		id := spiffeid.RequireFromString("spiffe://cluster.local/ns/foo/sa/sleep")
		x.nodes[id.String()] = &node{id: id, workload: compile.Workload{Namespace: "foo", Name: "sleep", Labels: map[string]string{}}, acked: map[string]string{}}
		if err := x.push(id.String(), time.Now()); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(endpointsOf(x, id.String()), "10.0.0.7") {
			t.Fatal("setup: no endpoint 10.0.0.7")
		}
		// A tenant creates the VirtualService; later httpbin's pod is replaced.
		kube.mu.Lock()
		kube.objs = bad
		kube.mu.Unlock()
		x.KubeChanged()
		err1 := x.reload(false)
		kube.mu.Lock()
		kube.reg = svc("10.0.0.8")
		kube.mu.Unlock()
		x.KubeChanged()
		err2 := x.reload(false)
		// Refused on both reloads, reported (and counted) once.
		if n := testutil.ToFloat64(x.rejects.WithLabelValues("invalid_object")); n != 1 {
			t.Errorf("rampart_xds_config_rejected_total{reason=invalid_object} = %v after two reloads with one bad object, want 1", n)
		}
		if eps := endpointsOf(x, id.String()); !strings.Contains(eps, "10.0.0.8") {
			t.Errorf("namespace foo's endpoint change was refused because of an object in namespace tenant;\n"+
				"proxies still route to the deleted pod:\n  reload after VS: %v\n  reload after pod churn: %v\n  endpoints served: %s", err1, err2, eps)
		}
	})

	t.Run("start with the bad object present", func(t *testing.T) {
		kube := &fakeKube{objs: bad, reg: svc("10.0.0.7")}
		x, err := New(Config{Kube: kube, Mesh: mesh, Trust: a.Bundle()})
		if err != nil {
			t.Fatal(err)
		}
		if err := x.reload(true); err != nil {
			t.Errorf("first load fails (rampartd exits, and crash-loops while the object exists): %v", err)
		}
	})
}

// An AuthorizationPolicy in the cluster edited into one Rampart refuses (a
// field its schema does not declare) stays at its last good version, while a
// change elsewhere goes through; the same edit in a file refuses the change
// whole.
func TestKubeObjectKeepsLastGood(t *testing.T) {
	a := catest.Authority(t)
	good := parseKube(t, "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-admin, namespace: foo}\nspec:\n  action: DENY\n  rules: [{to: [{operation: {paths: [/admin]}}]}]\n")
	typo := parseKube(t, "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-admin, namespace: foo}\nspec:\n  action: DENY\n  rules: [{to: [{operation: {pathz: [/admin]}}]}]\n")
	other := parseKube(t, "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: other, namespace: foo}\nspec: {}\n")
	mesh, _ := compile.Mesh{}.WithDefaults()
	kube := &fakeKube{objs: good, reg: &registry.Registry{Domain: "cluster.local"}}
	x, err := New(Config{Kube: kube, Mesh: mesh, Trust: a.Bundle()})
	if err != nil {
		t.Fatal(err)
	}
	if err := x.reload(true); err != nil {
		t.Fatal(err)
	}
	policy := func() string {
		t.Helper()
		return httpbinBundle(t, x).Modules["rampart/policy.rego"]
	}
	if p := policy(); !strings.Contains(p, `"/admin"`) {
		t.Fatalf("setup: the DENY on /admin is not in the bundle:\n%s", p)
	}
	kube.mu.Lock()
	kube.objs = append(append([]source.Object{}, typo...), other...)
	kube.mu.Unlock()
	x.KubeChanged()
	if err := x.reload(false); err != nil {
		t.Fatalf("a change with one refused cluster object: %v", err)
	}
	p := policy()
	if !strings.Contains(p, `"/admin"`) || !strings.Contains(p, "foo/other") {
		t.Errorf("want the DENY on /admin at its last good version and the new policy foo/other served:\n%s", p)
	}

	// The same edit in a file refuses the change whole.
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "p.yaml"), []byte("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-admin, namespace: foo}\nspec:\n  action: DENY\n  rules: [{to: [{operation: {pathz: [/admin]}}]}]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	y, err := New(Config{Paths: []string{dir}, Mesh: mesh, Trust: a.Bundle()})
	if err != nil {
		t.Fatal(err)
	}
	if err := y.reload(true); err == nil || !strings.Contains(err.Error(), "pathz") {
		t.Errorf("a file with the typo: %v; want the change refused, naming the field", err)
	}
}

// parseKube parses y as objects read from the cluster.
func parseKube(t *testing.T, y string) []source.Object {
	t.Helper()
	o, err := source.Parse("kubernetes", []byte(y))
	if err != nil {
		t.Fatal(err)
	}
	return o
}

// httpbinBundle is the bundle x serves a proxy of foo/httpbin (registered
// if it is not yet).
func httpbinBundle(t *testing.T, x *Server) authz.WireBundle {
	t.Helper()
	id := spiffeid.RequireFromString("spiffe://cluster.local/ns/foo/sa/httpbin")
	if x.nodes[id.String()] == nil {
		x.nodes[id.String()] = &node{id: id, workload: compile.Workload{Namespace: "foo", Name: "httpbin", Labels: map[string]string{}}, acked: map[string]string{}}
	}
	if err := x.push(id.String(), time.Now()); err != nil {
		t.Fatal(err)
	}
	wb, _, _ := x.Config(id.String())
	return wb
}

// A RequestAuthentication in the cluster edited into one rampartd refuses
// (a second jwtRule whose issuer is no URL, without jwksUri) is kept at its
// last good version by the running rampartd. A restarted rampartd (upgrade,
// reschedule) must not leave it out, or the workload would stop validating
// JWTs (a forged or expired token reaching the app; DENY rules on
// request.auth.claims no longer matching). With a state dir it finds the
// saved last good version and serves it; without one, or with an unreadable
// file, it has none and refuses to start.
func TestKubeSecurityObjectAcrossRestart(t *testing.T) {
	a := catest.Authority(t)
	good := parseKube(t, "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: jwt, namespace: foo}\nspec:\n  jwtRules:\n  - {issuer: \"https://issuer.example\", jwksUri: \"https://issuer.example/jwks\"}\n")
	edited := parseKube(t, "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: jwt, namespace: foo}\nspec:\n  jwtRules:\n  - {issuer: \"https://issuer.example\", jwksUri: \"https://issuer.example/jwks\"}\n  - {issuer: \"internal\"}\n")
	mesh, _ := compile.Mesh{}.WithDefaults()
	for _, tc := range []struct {
		name      string
		stateDir  bool
		corrupt   bool // the saved file is unreadable at the restart
		wantStart bool
	}{
		{"no state dir", false, false, false},
		{"state dir", true, false, true},
		{"unreadable saved file", true, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			state := ""
			if tc.stateDir {
				state = t.TempDir()
			}
			// The running rampartd: good, then the edit, refused alone.
			kube := &fakeKube{objs: good, reg: &registry.Registry{Domain: "cluster.local"}}
			x, err := New(Config{Kube: kube, Mesh: mesh, Trust: a.Bundle(), StateDir: state})
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
			if rules := string(httpbinBundle(t, x).JWTRules); !strings.Contains(rules, "issuer.example") {
				t.Fatalf("setup: the running rampartd serves %s", rules)
			}
			if tc.stateDir {
				fi, err := os.Stat(filepath.Join(state, lastGoodFile))
				if err != nil || fi.Mode().Perm() != 0o600 {
					t.Fatalf("saved last good objects: %v; want a 0600 file", err)
				}
			}
			if tc.corrupt {
				if err := os.WriteFile(filepath.Join(state, lastGoodFile), []byte("{"), 0o600); err != nil {
					t.Fatal(err)
				}
			}

			// rampartd restarts with the same cluster state.
			y, err := New(Config{Kube: &fakeKube{objs: edited, reg: &registry.Registry{Domain: "cluster.local"}}, Mesh: mesh, Trust: a.Bundle(), StateDir: state})
			if err != nil {
				t.Fatal(err)
			}
			err = y.reload(true)
			if !tc.wantStart {
				if err == nil {
					t.Fatalf("started with a refused security object and no last good version of it: jwtRules %s", httpbinBundle(t, y).JWTRules)
				}
				return
			}
			if err != nil {
				t.Fatalf("restart with the refused object and its saved last good version: %v", err)
			}
			if rules := string(httpbinBundle(t, y).JWTRules); !strings.Contains(rules, "issuer.example") || strings.Contains(rules, "internal") {
				t.Errorf("the restarted rampartd serves jwtRules %s; want the last good version", rules)
			}
		})
	}
}
