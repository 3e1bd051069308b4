package compile

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/rampart-mesh/rampart/authz"
	regolib "github.com/rampart-mesh/rampart/policies/rego"
	"github.com/rampart-mesh/rampart/policies/source"
	"golang.org/x/tools/txtar"
)

var update = flag.Bool("update", false, "rewrite the want.rego and findings sections of testdata/*.txtar")

// A golden case is testdata/<case>.txtar: input.yaml (AuthorizationPolicies),
// workload ("ns/name k=v,k=v"), optional mesh.yaml, and the expected want.rego
// and findings ("CODE object path" per line, sorted).

func parseWorkload(s string) (Workload, error) {
	fields := strings.Fields(s)
	if len(fields) == 0 || len(fields) > 2 {
		return Workload{}, fmt.Errorf("workload %q: want \"ns/name [k=v,...]\"", s)
	}
	ns, name, ok := strings.Cut(fields[0], "/")
	if !ok || ns == "" || name == "" {
		return Workload{}, fmt.Errorf("workload %q: want ns/name", fields[0])
	}
	wl := Workload{Namespace: ns, Name: name, Labels: map[string]string{}}
	if len(fields) == 2 {
		for _, kv := range strings.Split(fields[1], ",") {
			k, v, ok := strings.Cut(kv, "=")
			if !ok || k == "" {
				return Workload{}, fmt.Errorf("workload label %q: want k=v", kv)
			}
			wl.Labels[k] = v
		}
	}
	return wl, nil
}

// compileCase runs the pipeline rampartctl runs: parse, decode, compile.
func compileCase(t testing.TB, file string, ar *txtar.Archive) (AuthzOutput, []Finding) {
	t.Helper()
	sections := map[string][]byte{}
	for _, f := range ar.Files {
		if _, dup := sections[f.Name]; dup {
			t.Fatalf("%s: section %q twice", file, f.Name)
		}
		sections[f.Name] = f.Data
	}
	for name := range sections {
		switch name {
		case "input.yaml", "workload", "mesh.yaml", "want.rego", "findings":
		default:
			t.Fatalf("%s: unknown section %q", file, name)
		}
	}
	if _, ok := sections["input.yaml"]; !ok {
		t.Fatalf("%s: no input.yaml section", file)
	}
	wl, err := parseWorkload(string(sections["workload"]))
	if err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	mesh, err := ParseMesh(sections["mesh.yaml"])
	if err != nil {
		t.Fatalf("%s: mesh.yaml: %v", file, err)
	}
	objs, err := source.Parse("input.yaml", sections["input.yaml"])
	if err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	policies, findings := DecodeAuthorizationPolicies(objs, wl.Namespace)
	out := CompileAuthz(mesh, wl, policies)
	if err := checkStructure(out.Module, policies, mesh, wl); err != nil {
		t.Errorf("%s: generated module: %v", file, err)
	}
	return out, append(findings, out.Findings...)
}

func formatFindings(fs []Finding) string {
	lines := make([]string, len(fs))
	for i, f := range fs {
		lines[i] = fmt.Sprintf("%s %s %s", f.Code, comment(strings.TrimPrefix(f.Object, "AuthorizationPolicy ")), f.Path)
	}
	sort.Strings(lines)
	if len(lines) == 0 {
		return ""
	}
	return strings.Join(lines, "\n") + "\n"
}

// checkModule compiles the generated module with the library under OPA's
// strict checks, as the engine loads it.
func checkModule(module string) error {
	mods := regolib.Modules()
	mods["rampart/policy.rego"] = module
	return authz.CheckStrict(mods)
}

func TestGolden(t *testing.T) {
	files, err := filepath.Glob("testdata/*.txtar")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 15 {
		t.Fatalf("found %d golden cases in testdata/, want at least 15", len(files))
	}
	for _, file := range files {
		t.Run(strings.TrimSuffix(filepath.Base(file), ".txtar"), func(t *testing.T) {
			ar, err := txtar.ParseFile(file)
			if err != nil {
				t.Fatal(err)
			}
			out, findings := compileCase(t, file, ar)
			got := map[string]string{"want.rego": out.Module, "findings": formatFindings(findings)}

			if err := checkModule(out.Module); err != nil {
				t.Errorf("generated module fails OPA's strict compile: %v\n%s", err, out.Module)
			}

			if *update {
				var files []txtar.File
				for _, f := range ar.Files {
					if f.Name != "want.rego" && f.Name != "findings" {
						files = append(files, f)
					}
				}
				files = append(files, txtar.File{Name: "want.rego", Data: []byte(got["want.rego"])}, txtar.File{Name: "findings", Data: []byte(got["findings"])})
				ar.Files = files
				if err := os.WriteFile(file, txtar.Format(ar), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			for _, section := range []string{"want.rego", "findings"} {
				var want []byte
				found := false
				for _, f := range ar.Files {
					if f.Name == section {
						want, found = f.Data, true
					}
				}
				if !found {
					t.Errorf("no %s section; run go test ./policies/compile -run TestGolden -update", section)
					continue
				}
				if diff := cmp.Diff(string(want), got[section]); diff != "" {
					t.Errorf("%s mismatch (-want +got); if intended, run go test ./policies/compile -run TestGolden -update\n%s", section, diff)
				}
			}
		})
	}
}

// TestGoldenDeterministic: compiling the same input twice, or with the policies
// in another order, gives the same module (it is the bundle's content, and
// reloads compare it).
func TestGoldenDeterministic(t *testing.T) {
	files, err := filepath.Glob("testdata/*.txtar")
	if err != nil {
		t.Fatal(err)
	}
	for _, file := range files {
		ar, err := txtar.ParseFile(file)
		if err != nil {
			t.Fatal(err)
		}
		out1, _ := compileCase(t, file, ar)
		// Reverse the documents of input.yaml.
		for i, f := range ar.Files {
			if f.Name != "input.yaml" {
				continue
			}
			docs := bytes.Split(f.Data, []byte("\n---\n"))
			for l, r := 0, len(docs)-1; l < r; l, r = l+1, r-1 {
				docs[l], docs[r] = docs[r], docs[l]
			}
			ar.Files[i].Data = bytes.Join(docs, []byte("\n---\n"))
		}
		out2, _ := compileCase(t, file, ar)
		if diff := cmp.Diff(out1.Module, out2.Module); diff != "" {
			t.Errorf("%s: module depends on input order (-first +reversed):\n%s", file, diff)
		}
	}
}
