package compile

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rampart-mesh/rampart/policies/source"
	"golang.org/x/tools/txtar"
)

// FuzzCompileAuthz parses arbitrary bytes as a YAML file, decodes the
// AuthorizationPolicies in it and compiles them for a fixed workload. Nothing
// may panic, and every module the compiler produces must load: the module and
// the Rego library pass OPA's strict compile, so bad input can only make a
// policy narrower or wider, never break the bundle of a whole workload.
func FuzzCompileAuthz(f *testing.F) {
	files, err := filepath.Glob("testdata/*.txtar")
	if err != nil {
		f.Fatal(err)
	}
	for _, file := range files {
		ar, err := txtar.ParseFile(file)
		if err != nil {
			f.Fatal(err)
		}
		for _, s := range ar.Files {
			if s.Name == "input.yaml" {
				f.Add(s.Data)
			}
		}
	}
	if len(files) == 0 {
		f.Fatal("no seeds: testdata/*.txtar missing")
	}
	mesh, err := ParseMesh([]byte(`
trustDomain: td.example
trustDomainAliases: [old.example, cluster.local]
extensionProviders:
- name: sample-ext-authz-grpc
  envoyExtAuthzGrpc: {service: ext-authz.foo.svc.cluster.local, port: 9000}
- name: sample-ext-authz-http
  envoyExtAuthzHttp: {service: ext-authz.foo.svc.cluster.local, port: 8000}
`))
	if err != nil {
		f.Fatal(err)
	}
	wl := Workload{Namespace: "foo", Name: "httpbin", Labels: map[string]string{"app": "httpbin", "version": "v1"}}

	f.Fuzz(func(t *testing.T, data []byte) {
		objs, err := source.Parse("fuzz.yaml", data)
		if err != nil {
			return
		}
		policies, _ := DecodeAuthorizationPolicies(objs, wl.Namespace)
		out := CompileAuthz(mesh, wl, policies)
		if out.Module == "" {
			t.Fatal("CompileAuthz produced no module")
		}
		if !strings.Contains(out.Module, "\npackage "+PolicyPackage+"\n") {
			t.Fatalf("module has no package %s line:\n%s", PolicyPackage, out.Module)
		}
		applied := 0
		for _, p := range policies {
			if p.Applies(mesh, wl) {
				applied++
			}
		}
		if len(out.Policies) != applied {
			t.Fatalf("out.Policies = %v, want the %d policies that apply", out.Policies, applied)
		}
		if err := checkStructure(out.Module, policies, mesh, wl); err != nil {
			t.Fatalf("compiled module: %v\n%s", err, out.Module)
		}
		if err := checkModule(out.Module); err != nil {
			t.Fatalf("compiled module fails OPA's strict compile: %v\n%s", err, out.Module)
		}
	})
}

// FuzzCompileAuthzFields puts arbitrary strings straight into the fields of
// policies (name, condition key and values, paths, principals, hosts, ports,
// provider), which random YAML rarely reaches intact, and checks that every
// module still passes OPA's strict compile.
func FuzzCompileAuthzFields(f *testing.F) {
	f.Add("p", "request.headers[x-a]", "v*", "/a/{*}/b", "cluster.local/ns/foo/sa/*", "Example.com:*", "8080", "sample-ext-authz-grpc", uint8(0))
	f.Add("a-b", "request.auth.claims[a][b]", "[x]", "/{**}", "*", "*", "0", "nope", uint8(1))
	f.Add("a.b", "experimental.envoy.filters.a.b[c]", "*x", "*", "iss/sub", "h", "65535", "", uint8(2))
	f.Add("x\ny", "source.ip", "10.0.0.0/8", "/a\\b", "prod-*", "\"", "x", "sample-ext-authz-http", uint8(3))
	f.Add("n", "foo[bar", "\n", "/a/{**}/{*}", "a\"b", "}", " 1", "\\", uint8(4))
	mesh, err := ParseMesh([]byte(`
trustDomain: td.example
trustDomainAliases: [old.example]
extensionProviders:
- name: sample-ext-authz-grpc
  envoyExtAuthzGrpc: {service: ext-authz.foo.svc.cluster.local, port: 9000}
- name: sample-ext-authz-http
  envoyExtAuthzHttp: {service: ext-authz.foo.svc.cluster.local, port: 8000}
`))
	if err != nil {
		f.Fatal(err)
	}
	wl := Workload{Namespace: "foo", Name: "httpbin", Labels: map[string]string{"app": "httpbin"}}
	actions := []string{"ALLOW", "DENY", "AUDIT", "CUSTOM"}
	f.Fuzz(func(t *testing.T, name, key, value, path, principal, host, port, provider string, action uint8) {
		spec := map[string]any{
			"action":   actions[int(action)%len(actions)],
			"provider": map[string]any{"name": provider},
			"rules": []any{
				map[string]any{
					"from": []any{
						map[string]any{"source": map[string]any{"principals": []any{principal}, "notNamespaces": []any{principal}, "requestPrincipals": []any{principal}}},
						map[string]any{"source": map[string]any{"trustDomains": []any{principal}, "serviceAccounts": []any{principal}, "ipBlocks": []any{value}}},
					},
					"to": []any{
						map[string]any{"operation": map[string]any{"paths": []any{path}, "hosts": []any{host}, "ports": []any{port}}},
						map[string]any{"operation": map[string]any{"notPaths": []any{path}, "methods": []any{value}, "notPorts": []any{port}}},
					},
					"when": []any{
						map[string]any{"key": key, "values": []any{value}},
						map[string]any{"key": key, "notValues": []any{value, path}},
					},
				},
			},
		}
		if action&4 != 0 {
			delete(spec, "provider")
		}
		js, err := json.Marshal(spec)
		if err != nil {
			t.Fatal(err)
		}
		objs := []source.Object{
			{APIVersion: "security.istio.io/v1", Kind: "AuthorizationPolicy", Name: name, Namespace: "foo", Spec: js,
				Annotations: map[string]string{"istio.io/dry-run": map[bool]string{true: "true", false: "false"}[action&8 != 0]}},
			{APIVersion: "security.istio.io/v1", Kind: "AuthorizationPolicy", Name: name + "-2", Namespace: "foo", Spec: js},
		}
		policies, _ := DecodeAuthorizationPolicies(objs, wl.Namespace)
		out := CompileAuthz(mesh, wl, policies)
		if err := checkStructure(out.Module, policies, mesh, wl); err != nil {
			t.Fatalf("compiled module: %v\n%s", err, out.Module)
		}
		if err := checkModule(out.Module); err != nil {
			t.Fatalf("compiled module fails OPA's strict compile: %v\n%s", err, out.Module)
		}
	})
}
