package authz

import (
	"reflect"
	"strings"
	"testing"
	"unsafe"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/ast/location"
)

// reach calls visit on every pointer reachable from v (through unexported
// fields too), once each.
func reach(v reflect.Value, seen map[uintptr]bool, path string, visit func(path string, p reflect.Value)) {
	switch v.Kind() {
	case reflect.Pointer:
		if v.IsNil() || seen[v.Pointer()] {
			return
		}
		seen[v.Pointer()] = true
		visit(path, v)
		reach(v.Elem(), seen, path, visit)
	case reflect.Interface:
		if !v.IsNil() {
			reach(v.Elem(), seen, path, visit)
		}
	case reflect.Struct:
		if !v.CanAddr() {
			c := reflect.New(v.Type()).Elem()
			c.Set(v)
			v = c
		}
		for i := range v.NumField() {
			f := v.Field(i)
			f = reflect.NewAt(f.Type(), unsafe.Pointer(f.UnsafeAddr())).Elem()
			reach(f, seen, path+"."+v.Type().Field(i).Name, visit)
		}
	case reflect.Slice:
		if v.IsNil() || seen[v.Pointer()] && v.Len() > 0 {
			return
		}
		if v.Len() > 0 {
			seen[v.Pointer()] = true
		}
		for i := range v.Len() {
			reach(v.Index(i), seen, path+"[]", visit)
		}
	case reflect.Array:
		for i := range v.Len() {
			reach(v.Index(i), seen, path+"[]", visit)
		}
	case reflect.Map:
		for it := v.MapRange(); it.Next(); {
			reach(it.Key(), seen, path+"{k}", visit)
			reach(it.Value(), seen, path+"{}", visit)
		}
	}
}

// A prepared bundle lives as long as it is in force, so it must not keep
// what only compiling needed: the rule dependency graph (the query compiler
// works on a copy of the compiler, which kept it), or any location's source
// text (a slice of the parser's copy of the whole source; a rule head's
// reference kept one, since OPA's visitor does not walk it). At 10,000
// policies the two were 7 MB of the bundle's memory.
func TestPreparedKeepsNoGraphOrSource(t *testing.T) {
	p, err := Prepare(t.Context(), Bundle{Modules: map[string]string{"policy.rego": `package rampart.policy

import rego.v1

hits contains {"policy": "ns/p", "action": "ALLOW"} if {
	input.attributes.request.http.method == "GET"
	startswith(input.attributes.request.http.path, "/api/")
}

allow_policies := {"ns/p"}

dry_run_allow_policies := set()
`}})
	if err != nil {
		t.Fatal(err)
	}
	var graphs, texts []string
	reach(reflect.ValueOf(p), map[uintptr]bool{}, "prepared", func(path string, v reflect.Value) {
		switch x := v.Interface().(type) {
		case *ast.Graph:
			graphs = append(graphs, path)
		case *location.Location:
			// The query's own parse (MatchesQuery) is the prepared query's.
			if x.Text != nil && !strings.Contains(path, "parsedQuery") {
				texts = append(texts, path)
			}
		}
	})
	if len(graphs) > 0 {
		t.Errorf("the prepared bundle keeps the rule dependency graph at %v", graphs)
	}
	if len(texts) > 0 {
		t.Errorf("the prepared bundle keeps source text at %d locations, e.g. %s", len(texts), texts[0])
	}
}

// The parser's strings are slices of its copy of the whole source, so one
// kept for the life of the bundle keeps all of it: a prepared bundle's
// strings have memory of their own, one copy per distinct value.
func TestPreparedStringsAreOwned(t *testing.T) {
	p, err := Prepare(t.Context(), Bundle{Modules: map[string]string{"policy.rego": `package rampart.policy

import rego.v1

hits contains {"policy": "ns/a", "action": "ALLOW"} if input.attributes.request.http.method == "GET"

hits contains {"policy": "ns/b", "action": "ALLOW"} if {
	input.attributes.request.http.method == "GET"
	input.attributes.request.http.path == "/b"
}

allow_policies := {"ns/a", "ns/b"}

dry_run_allow_policies := set()
`}})
	if err != nil {
		t.Fatal(err)
	}
	data := map[string]map[*byte]bool{} // value → the memory holding it
	reach(reflect.ValueOf(p), map[uintptr]bool{}, "prepared", func(path string, v reflect.Value) {
		if term, ok := v.Interface().(*ast.Term); ok {
			if s, ok := term.Value.(ast.String); ok && (s == "GET" || s == "ALLOW") {
				if data[string(s)] == nil {
					data[string(s)] = map[*byte]bool{}
				}
				data[string(s)][unsafe.StringData(string(s))] = true
			}
		}
	})
	for _, s := range []string{"GET", "ALLOW"} {
		if len(data[s]) != 1 {
			t.Errorf("the prepared bundle holds %q in %d places in memory, want 1 (the parser's slices of the source)", s, len(data[s]))
		}
	}
}
