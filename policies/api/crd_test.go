package api

import (
	"flag"
	"go/ast"
	"go/doc"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"sigs.k8s.io/yaml"
)

var update = flag.Bool("update", false, "rewrite deploy/crds from the Go types")

const crdFile = "../../deploy/crds/policy.rampart.dev_ratelimitpolicies.yaml"

// TestCRDInSync generates the RateLimitPolicy CRD from the Go types and their
// doc comments and compares it with the checked-in manifest; -update rewrites it.
func TestCRDInSync(t *testing.T) {
	docs := fieldDocs(t)
	spec := schemaOf(t, reflect.TypeFor[RateLimitPolicySpec](), docs)
	spec["description"] = docs.types["RateLimitPolicySpec"]
	crd := map[string]any{
		"apiVersion": "apiextensions.k8s.io/v1",
		"kind":       "CustomResourceDefinition",
		"metadata":   map[string]any{"name": ResourceRateLimitPolicies + "." + Group},
		"spec": map[string]any{
			"group": Group,
			"scope": "Namespaced",
			"names": map[string]any{
				"kind": KindRateLimitPolicy, "listKind": KindRateLimitPolicy + "List",
				"plural": ResourceRateLimitPolicies, "singular": "ratelimitpolicy",
				"shortNames": []string{"rlp"}, "categories": []string{"rampart"},
			},
			"versions": []any{map[string]any{
				"name": Version, "served": true, "storage": true,
				"schema": map[string]any{"openAPIV3Schema": map[string]any{
					"type":        "object",
					"description": docs.types["RateLimitPolicy"],
					"required":    []string{"spec"},
					"properties": map[string]any{
						"apiVersion": map[string]any{"type": "string"},
						"kind":       map[string]any{"type": "string"},
						"metadata":   map[string]any{"type": "object"},
						"spec":       spec,
					},
				}},
			}},
		},
	}
	got, err := yaml.Marshal(crd)
	if err != nil {
		t.Fatal(err)
	}
	got = append([]byte("# Generated from policies/api by `go test ./policies/api -update`; do not edit.\n"), got...)
	if *update {
		if err := os.WriteFile(crdFile, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(crdFile)
	if err != nil {
		t.Fatalf("%v (run go test ./policies/api -update)", err)
	}
	if diff := cmp.Diff(string(want), string(got)); diff != "" {
		t.Errorf("%s is out of date with the Go types (run go test ./policies/api -update); -file +generated:\n%s", crdFile, diff)
	}
}

// TestCRDSchemaDescribesEveryField: every field has a doc comment, so
// kubectl explain has something to say about it.
func TestCRDSchemaDescribesEveryField(t *testing.T) {
	docs := fieldDocs(t)
	spec := schemaOf(t, reflect.TypeFor[RateLimitPolicySpec](), docs)
	var walk func(path string, s map[string]any)
	count := 0
	walk = func(path string, s map[string]any) {
		if !strings.HasSuffix(path, "[]") && (s["description"] == "" || s["description"] == nil) {
			t.Errorf("%s has no description (doc comment)", path)
		}
		props, _ := s["properties"].(map[string]any)
		for k, v := range props {
			count++
			walk(path+"."+k, v.(map[string]any))
		}
		if it, ok := s["items"].(map[string]any); ok {
			walk(path+"[]", it)
		}
	}
	spec["description"] = docs.types["RateLimitPolicySpec"]
	walk("spec", spec)
	if count < 30 {
		t.Fatalf("schema has %d properties; the generator is not seeing the types", count)
	}
}

type apiDocs struct {
	types  map[string]string            // type → doc
	fields map[string]map[string]string // type → Go field → doc
}

func fieldDocs(t *testing.T) apiDocs {
	t.Helper()
	fset := token.NewFileSet()
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	var asts []*ast.File
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		af, err := parser.ParseFile(fset, f, nil, parser.ParseComments)
		if err != nil {
			t.Fatal(err)
		}
		asts = append(asts, af)
	}
	p, err := doc.NewFromFiles(fset, asts, "github.com/rampart-mesh/rampart/policies/api")
	if err != nil {
		t.Fatal(err)
	}
	d := apiDocs{types: map[string]string{}, fields: map[string]map[string]string{}}
	for _, ty := range p.Types {
		d.types[ty.Name] = clean(ty.Doc)
		d.fields[ty.Name] = map[string]string{}
		for _, spec := range ty.Decl.Specs {
			st, ok := spec.(*ast.TypeSpec).Type.(*ast.StructType)
			if !ok {
				continue
			}
			for _, f := range st.Fields.List {
				for _, n := range f.Names {
					d.fields[ty.Name][n.Name] = f.Doc.Text()
				}
			}
		}
	}
	return d
}

// clean joins a comment into one description, without marker lines.
func clean(s string) string {
	var lines []string
	for _, l := range strings.Split(s, "\n") {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "+") {
			continue
		}
		lines = append(lines, l)
	}
	return strings.Join(lines, " ")
}

// markers returns a comment's +name[=value] lines.
func markers(s string) map[string]string {
	out := map[string]string{}
	for _, l := range strings.Split(s, "\n") {
		l = strings.TrimSpace(l)
		if m, ok := strings.CutPrefix(l, "+"); ok {
			k, v, _ := strings.Cut(m, "=")
			out[k] = v
		}
	}
	return out
}

func schemaOf(t *testing.T, ty reflect.Type, docs apiDocs) map[string]any {
	t.Helper()
	for ty.Kind() == reflect.Pointer {
		ty = ty.Elem()
	}
	switch ty.Kind() {
	case reflect.String:
		return map[string]any{"type": "string"}
	case reflect.Bool:
		return map[string]any{"type": "boolean"}
	case reflect.Int64, reflect.Int32, reflect.Int:
		return map[string]any{"type": "integer", "format": "int64"}
	case reflect.Slice:
		return map[string]any{"type": "array", "items": schemaOf(t, ty.Elem(), docs)}
	case reflect.Map:
		return map[string]any{"type": "object", "additionalProperties": schemaOf(t, ty.Elem(), docs)}
	case reflect.Struct:
		props := map[string]any{}
		var required []string
		for i := range ty.NumField() {
			f := ty.Field(i)
			name, opts, _ := strings.Cut(f.Tag.Get("json"), ",")
			if name == "" || name == "-" {
				t.Fatalf("%s.%s has no json name", ty.Name(), f.Name)
			}
			raw := docs.fields[ty.Name()][f.Name]
			s := schemaOf(t, f.Type, docs)
			s["description"] = clean(raw)
			if s["description"] == "" {
				if ft := f.Type; ft.Kind() == reflect.Pointer {
					s["description"] = docs.types[ft.Elem().Name()]
				}
			}
			m := markers(raw)
			if _, ok := m["required"]; ok {
				required = append(required, name)
			} else if !strings.Contains(opts, "omitempty") {
				t.Fatalf("%s.%s: a field without omitempty must be marked +required", ty.Name(), f.Name)
			}
			if v, ok := m["enum"]; ok {
				s["enum"] = strings.Split(v, ";")
			}
			for _, k := range []string{"minimum", "minItems"} {
				if v, ok := m[k]; ok {
					n, err := strconv.Atoi(v)
					if err != nil {
						t.Fatalf("%s.%s: +%s=%s: %v", ty.Name(), f.Name, k, v, err)
					}
					s[k] = n
				}
			}
			props[name] = s
		}
		out := map[string]any{"type": "object", "properties": props}
		if len(required) > 0 {
			out["required"] = required
		}
		return out
	}
	t.Fatalf("no schema for %s", ty)
	return nil
}
