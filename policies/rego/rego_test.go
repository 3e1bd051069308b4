package rego

import (
	"context"
	"io/fs"
	"sort"
	"strings"
	"testing"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/tester"
)

// minTests guards against a run that finds no tests (a renamed package, a
// filter that matches nothing) and passes vacuously.
const minTests = 20

// TestRego runs the test_* rules of the *_test.rego files with OPA's test
// runner, against the library as Modules() ships it, compiled strictly.
func TestRego(t *testing.T) {
	mods := map[string]*ast.Module{}
	for name, src := range Modules() {
		m, err := ast.ParseModuleWithOpts(name, src, ast.ParserOptions{RegoVersion: ast.RegoV1})
		if err != nil {
			t.Fatalf("parse %s: %v", name, err)
		}
		mods[name] = m
	}
	tests, err := fs.Glob(files, "*_test.rego")
	if err != nil {
		t.Fatal(err)
	}
	if len(tests) < 2 {
		t.Fatalf("found test files %v, want lib_test.rego and decision_test.rego", tests)
	}
	for _, name := range tests {
		src, err := files.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		m, err := ast.ParseModuleWithOpts(name, string(src), ast.ParserOptions{RegoVersion: ast.RegoV1})
		if err != nil {
			t.Fatalf("parse %s: %v", name, err)
		}
		mods["rampart/"+name] = m
	}

	compiler := ast.NewCompiler().WithStrict(true).WithEnablePrintStatements(true)
	// Builtin errors (e.g. startswith on a number) must stay undefined, as in
	// the engine, not fail the test.
	ch, err := tester.NewRunner().
		SetCompiler(compiler).
		SetModules(mods).
		CapturePrintOutput(true).
		RaiseBuiltinErrors(false).
		RunTests(context.Background(), nil)
	if err != nil {
		t.Fatalf("compile tests: %v", err)
	}
	var results []*tester.Result
	for r := range ch {
		results = append(results, r)
	}
	sort.Slice(results, func(i, j int) bool {
		if results[i].Package != results[j].Package {
			return results[i].Package < results[j].Package
		}
		return results[i].Name < results[j].Name
	})
	perPackage := map[string]int{}
	for _, r := range results {
		perPackage[r.Package]++
		switch {
		case r.Error != nil:
			t.Errorf("%s.%s: error: %v", r.Package, r.Name, r.Error)
		case r.Fail:
			t.Errorf("%s.%s: FAIL (%s)\n%s", r.Package, r.Name, r.Location, r.Output)
		case r.Skip:
			t.Errorf("%s.%s: skipped; todo_ tests are not allowed", r.Package, r.Name)
		}
	}
	if len(results) <= minTests {
		t.Errorf("ran %d Rego tests, want more than %d", len(results), minTests)
	}
	for _, pkg := range []string{"data.rampart.lib_test", "data.rampart.authz_test"} {
		if perPackage[pkg] == 0 {
			t.Errorf("no tests ran in %s (ran: %v)", pkg, perPackage)
		}
	}
	t.Logf("ran %d Rego tests: %v", len(results), perPackage)
}

// TestModulesExcludeTests: the shipped library has the two modules and none of
// the test files, which would otherwise be compiled into every bundle.
func TestModulesExcludeTests(t *testing.T) {
	mods := Modules()
	var names []string
	for n := range mods {
		names = append(names, n)
		if strings.HasSuffix(n, "_test.rego") {
			t.Errorf("Modules() includes test file %s", n)
		}
	}
	sort.Strings(names)
	want := []string{"rampart/decision.rego", "rampart/lib.rego"}
	if strings.Join(names, ",") != strings.Join(want, ",") {
		t.Errorf("Modules() = %v, want %v", names, want)
	}
	for n, src := range mods {
		if strings.TrimSpace(src) == "" {
			t.Errorf("module %s is empty", n)
		}
	}
}
