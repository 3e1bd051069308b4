package compile

import (
	"strings"
	"testing"

	"github.com/rampart-mesh/rampart/policies/source"
)

func rlObjects(t *testing.T, yaml string) []source.Object {
	t.Helper()
	objs, err := source.Parse("rl.yaml", []byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	return objs
}

const rlHead = "apiVersion: policy.rampart.dev/v1alpha1\nkind: RateLimitPolicy\nmetadata: {name: p, namespace: foo%s}\nspec:\n"

func rlDoc(annotations, spec string) string {
	a := ""
	if annotations != "" {
		a = ", annotations: {" + annotations + "}"
	}
	return strings.Replace(rlHead, "%s", a, 1) + spec
}

func TestRateLimitFindings(t *testing.T) {
	tests := []struct {
		name, annotations, spec string
		want                    []string // code@path
	}{
		{"valid", "", "  limits: [{name: a, rate: {requests: 5, per: 1m}, key: {by: Header, header: x-user},\n    match: {operation: {paths: [/api/*], ports: ['8080']}, source: {principals: ['*']}, headers: [{name: x-tier, values: [free]}]}}]", nil},
		{"no limits", "", "  limits: []", []string{"RL-NO-LIMITS@spec.limits"}},
		{"name", "", "  limits: [{rate: {requests: 1}}, {name: Bad_Name, rate: {requests: 1}}, {name: a, rate: {requests: 1}}, {name: a, rate: {requests: 1}}]",
			[]string{"RL-NAME@spec.limits[0].name", "RL-NAME@spec.limits[1].name", "RL-NAME@spec.limits[3].name"}},
		{"rate", "", "  limits: [{name: a, rate: {requests: 0}}]", []string{"RL-RATE@spec.limits[0].rate.requests"}},
		{"period", "", "  limits: [{name: a, rate: {requests: 1, per: soon}}, {name: b, rate: {requests: 1, per: 48h}}, {name: c, rate: {requests: 1, per: -1s}}]",
			[]string{"RL-PERIOD@spec.limits[0].rate.per", "RL-PERIOD@spec.limits[1].rate.per", "RL-PERIOD@spec.limits[2].rate.per"}},
		{"burst", "", "  limits: [{name: a, rate: {requests: 1}, burst: -1}]", []string{"RL-BURST@spec.limits[0].burst"}},
		{"burst zero", "", "  limits: [{name: a, rate: {requests: 1000}, burst: 0}, {name: b, rate: {requests: 1}, burst: 1000000001}, {name: c, rate: {requests: 1}, burst: 1}]",
			[]string{"RL-BURST@spec.limits[0].burst", "RL-BURST@spec.limits[1].burst"}},
		{"key", "", "  limits: [{name: a, rate: {requests: 1}, key: {by: Cookie}}, {name: b, rate: {requests: 1}, key: {by: Header}}, {name: c, rate: {requests: 1}, key: {by: SourceIP, header: x}}]",
			[]string{"RL-KEY@spec.limits[0].key.by", "RL-KEY@spec.limits[1].key.header", "RL-KEY@spec.limits[2].key.header"}},
		{"match values", "", "  limits: [{name: a, rate: {requests: 1}, match: {operation: {ports: [http], paths: ['', 'api', '/a/{*}', '/a*b']}, headers: [{name: ''}]}}]",
			[]string{"RL-BAD-PORT@spec.limits[0].match.operation.ports[0]", "RL-EMPTY-VALUE@spec.limits[0].match.operation.paths[0]",
				"RL-BAD-PATH@spec.limits[0].match.operation.paths[1]", "RL-BAD-PATH@spec.limits[0].match.operation.paths[2]",
				"RL-INFIX-WILDCARD@spec.limits[0].match.operation.paths[3]",
				"RL-HEADER@spec.limits[0].match.headers[0].name", "RL-HEADER@spec.limits[0].match.headers[0]"}},
		{"selector and targetRefs", "", "  selector: {matchLabels: {app: a}}\n  targetRefs: [{kind: Service, name: a}]\n  limits: [{name: a, rate: {requests: 1}}]",
			[]string{"RL-SELECTOR-AND-TARGETREF@spec", "RL-TARGETREF@spec.targetRefs[0].kind"}},
		{"targetRef missing", "", "  targetRefs: [{group: networking.istio.io, kind: ServiceEntry, name: nope}]\n  limits: [{name: a, rate: {requests: 1}}]",
			[]string{"RL-TARGETREF-NOT-FOUND@spec.targetRefs[0].name"}},
		{"dry-run annotation", `istio.io/dry-run: "maybe"`, "  limits: [{name: a, rate: {requests: 1}}]", []string{`RL-DRY-RUN-VALUE@metadata.annotations["istio.io/dry-run"]`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, fs := DecodeRateLimitPolicies(rlObjects(t, rlDoc(tt.annotations, tt.spec)), "default")
			var got []string
			for _, f := range fs {
				got = append(got, f.Code+"@"+f.Path)
				// A finding in the spec is at its field's line, below the head.
				wantSpecLine := strings.HasPrefix(f.Path, "spec") == (f.Line > 3)
				if f.File != "rl.yaml" || f.Line < 1 || !wantSpecLine || f.Object != "RateLimitPolicy foo/p" {
					t.Errorf("finding %s: file %q line %d object %q", f.Code, f.File, f.Line, f.Object)
				}
			}
			if strings.Join(got, "\n") != strings.Join(tt.want, "\n") {
				t.Errorf("findings:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tt.want, "\n"))
			}
		})
	}
}

// Scope follows Istio's: root namespace everywhere, else its namespace;
// selector labels, or the workloadSelector of a targeted ServiceEntry.
func TestRateLimitsScope(t *testing.T) {
	objs := rlObjects(t, `
apiVersion: policy.rampart.dev/v1alpha1
kind: RateLimitPolicy
metadata: {name: mesh, namespace: rampart-system}
spec: {limits: [{name: all, rate: {requests: 100}}]}
---
apiVersion: policy.rampart.dev/v1alpha1
kind: RateLimitPolicy
metadata: {name: ns, namespace: foo, annotations: {istio.io/dry-run: "true"}}
spec: {limits: [{name: all, rate: {requests: 10, per: 1m}, burst: 3}]}
---
apiVersion: policy.rampart.dev/v1alpha1
kind: RateLimitPolicy
metadata: {name: sel, namespace: foo}
spec: {selector: {matchLabels: {app: a}}, limits: [{name: one, rate: {requests: 1}}]}
---
apiVersion: policy.rampart.dev/v1alpha1
kind: RateLimitPolicy
metadata: {name: ref, namespace: foo}
spec: {targetRefs: [{group: networking.istio.io, kind: ServiceEntry, name: b}], limits: [{name: one, rate: {requests: 1}}]}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: b, namespace: foo}
spec: {hosts: [b.foo.svc], ports: [{number: 80, name: http, protocol: HTTP}], workloadSelector: {labels: {app: b}}}
`)
	pols, fs := DecodeRateLimitPolicies(objs, "default")
	if len(fs) != 0 || len(pols) != 4 {
		t.Fatalf("%d policies, findings %v", len(pols), fs)
	}
	mesh := Mesh{RootNamespace: "rampart-system"}
	ids := func(wl Workload) string {
		var out []string
		for _, rl := range RateLimits(pols, mesh, wl) {
			out = append(out, rl.ID)
		}
		return strings.Join(out, " ")
	}
	for _, tt := range []struct {
		wl   Workload
		want string
	}{
		{Workload{Namespace: "foo", Labels: map[string]string{"app": "a"}}, "foo/ns/all foo/sel/one rampart-system/mesh/all"},
		{Workload{Namespace: "foo", Labels: map[string]string{"app": "b"}}, "foo/ns/all foo/ref/one rampart-system/mesh/all"},
		{Workload{Namespace: "foo", Labels: map[string]string{"app": "c"}}, "foo/ns/all rampart-system/mesh/all"},
		{Workload{Namespace: "bar", Labels: map[string]string{"app": "a"}}, "rampart-system/mesh/all"},
	} {
		if got := ids(tt.wl); got != tt.want {
			t.Errorf("%s %v: %q; want %q", tt.wl.Namespace, tt.wl.Labels, got, tt.want)
		}
	}
	rls := RateLimits(pols, mesh, Workload{Namespace: "foo"})
	if ns := rls[0]; !ns.DryRun || ns.Period != "1m0s" || ns.Burst != 3 || ns.Key != "Shared" {
		t.Errorf("foo/ns/all = %+v; want dry-run, 1m0s, burst 3, Shared", ns)
	}
	if m := rls[1]; m.DryRun || m.Period != "1s" || m.Burst != 100 {
		t.Errorf("mesh/all = %+v; want enforced, 1s, burst = requests", m)
	}
}

// Two policies with one namespace and name (two files, or a file and
// Kubernetes) would both apply and send each limit ID twice, which sidecars
// refuse: the second is an error naming where the first is.
func TestRateLimitDuplicates(t *testing.T) {
	doc := func(ns, name, limits string) string {
		meta := "{name: " + name + "}"
		if ns != "" {
			meta = "{name: " + name + ", namespace: " + ns + "}"
		}
		return "apiVersion: policy.rampart.dev/v1alpha1\nkind: RateLimitPolicy\nmetadata: " + meta + "\nspec:\n  limits: " + limits + "\n"
	}
	parse := func(t *testing.T, file, yaml string) []source.Object {
		t.Helper()
		objs, err := source.Parse(file, []byte(yaml))
		if err != nil {
			t.Fatal(err)
		}
		return objs
	}
	tests := []struct {
		name      string
		a, b      string
		want      string // code@path of the one finding, on the second object
		wantMsg   string
		wantValid int
	}{
		{"same namespace and name", doc("foo", "p", "[{name: a, rate: {requests: 1}}]"), doc("foo", "p", "[{name: b, rate: {requests: 1}}]"),
			"RL-DUPLICATE@metadata.name", "a.yaml:1", 1},
		{"default namespace", doc("default", "p", "[{name: a, rate: {requests: 1}}]"), doc("", "p", "[{name: a, rate: {requests: 1}}]"),
			"RL-DUPLICATE@metadata.name", "a.yaml:1", 1},
		{"other namespace", doc("foo", "p", "[{name: a, rate: {requests: 1}}]"), doc("bar", "p", "[{name: a, rate: {requests: 1}}]"), "", "", 2},
		{"other name", doc("foo", "p", "[{name: a, rate: {requests: 1}}]"), doc("foo", "q", "[{name: a, rate: {requests: 1}}]"), "", "", 2},
		{"one limit ID from two names", doc("foo", "a/b", "[{name: c, rate: {requests: 1}}]"), doc("foo/a", "b", "[{name: d, rate: {requests: 1}}, {name: c, rate: {requests: 1}}]"),
			"RL-DUPLICATE@spec.limits[1].name", `"foo/a/b/c" is also the ID of a limit of RateLimitPolicy foo/a/b at a.yaml:1`, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			objs := append(parse(t, "a.yaml", tt.a), parse(t, "b.yaml", tt.b)...)
			pols, fs := DecodeRateLimitPolicies(objs, "default")
			var got []string
			for _, f := range fs {
				got = append(got, f.Code+"@"+f.Path)
				if f.Severity != SeverityError || f.File != "b.yaml" || !strings.Contains(f.Message, tt.wantMsg) {
					t.Errorf("finding %+v: want an error on b.yaml naming %s", f, tt.wantMsg)
				}
			}
			want := []string(nil)
			if tt.want != "" {
				want = []string{tt.want}
			}
			if strings.Join(got, ",") != strings.Join(want, ",") {
				t.Errorf("findings %v; want %v", got, want)
			}
			if len(pols) != tt.wantValid {
				t.Errorf("%d valid policies; want %d", len(pols), tt.wantValid)
			}
			ids := map[string]bool{}
			for _, rl := range RateLimits(pols, Mesh{}, Workload{Namespace: "foo"}) {
				if ids[rl.ID] {
					t.Errorf("limit ID %s twice in one workload's limits", rl.ID)
				}
				ids[rl.ID] = true
			}
		})
	}
}
