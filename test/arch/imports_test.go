// Package arch holds tests that keep the package map in docs/architecture.md true.
package arch

import (
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/rampart-mesh/rampart"

var (
	dataPlane    = []string{"proxy", "ca/agent", "ca/workloadapi"}
	controlPlane = []string{"policies", "ca/server", "ca/jointoken"}
)

type pkg struct {
	ImportPath string
	Deps       []string
}

// listDeps returns every package of the module with its transitive imports.
func listDeps(t *testing.T) []pkg {
	t.Helper()
	out, err := exec.Command("go", "list", "-deps=false", "-json=ImportPath,Deps", module+"/...").Output()
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			t.Fatalf("go list: %v\n%s", err, ee.Stderr)
		}
		t.Fatalf("go list: %v", err)
	}
	var pkgs []pkg
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for dec.More() {
		var p pkg
		if err := dec.Decode(&p); err != nil {
			t.Fatal(err)
		}
		pkgs = append(pkgs, p)
	}
	if len(pkgs) < 5 {
		t.Fatalf("go list found only %d packages; the test is not looking at the module", len(pkgs))
	}
	return pkgs
}

func in(path string, roots []string) bool {
	rel, ok := strings.CutPrefix(path, module+"/")
	if !ok {
		return false
	}
	for _, r := range roots {
		if rel == r || strings.HasPrefix(rel, r+"/") {
			return true
		}
	}
	return false
}

// The data plane and the control plane meet only in shared packages (ca types,
// authn, authz, Envoy protos); neither may import the other.
func TestPlanesDoNotImportEachOther(t *testing.T) {
	checked := map[string]int{}
	for _, p := range listDeps(t) {
		var from, forbidden []string
		switch {
		case in(p.ImportPath, dataPlane):
			from, forbidden = dataPlane, controlPlane
		case in(p.ImportPath, controlPlane):
			from, forbidden = controlPlane, dataPlane
		default:
			continue
		}
		checked[from[0]]++
		for _, d := range p.Deps {
			if in(d, forbidden) {
				t.Errorf("%s imports %s: the data plane (%s) and the control plane (%s) must not import each other",
					p.ImportPath, d, strings.Join(dataPlane, ", "), strings.Join(controlPlane, ", "))
			}
		}
	}
	if checked["proxy"] == 0 || checked["policies"] == 0 {
		t.Fatalf("checked %v packages; expected both planes to have packages", checked)
	}
}

// The rule above must actually catch a violation.
func TestPlaneRuleCatchesViolation(t *testing.T) {
	if !in(module+"/ca/server", controlPlane) || !in(module+"/proxy/xds", dataPlane) || in(module+"/ca", dataPlane) {
		t.Fatal("plane membership is wrong")
	}
}
