// Package rego embeds Rampart's Rego library: the matching helpers compiled
// policies call (package rampart.lib) and the decision that combines their
// matches (package rampart.authz). Its *_test.rego files run with OPA's test
// runner in rego_test.go.
package rego

import (
	"embed"
	"io/fs"
	"strings"
)

//go:embed *.rego
var files embed.FS

// Modules returns the library modules, file name to source, without tests.
func Modules() map[string]string {
	out := map[string]string{}
	entries, _ := fs.ReadDir(files, ".")
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), "_test.rego") {
			continue
		}
		data, _ := files.ReadFile(e.Name())
		out["rampart/"+e.Name()] = string(data)
	}
	return out
}

// DecisionModule is the name Modules gives the reference decision (package
// rampart.authz), which combines the policies' matches in Rego.
const DecisionModule = "rampart/decision.rego"

// DecisionQuery is the query whose value is the decision.
const DecisionQuery = "data.rampart.authz.decision"
