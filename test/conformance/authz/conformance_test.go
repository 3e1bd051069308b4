// Package authz runs the Istio AuthorizationPolicy conformance corpus in cases/
// through the same offline pipeline as `rampartctl authz test`.
package authz

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rampart-mesh/rampart/policies/offline"
)

func TestConformance(t *testing.T) {
	files, err := filepath.Glob("cases/*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatal("no case files in cases/")
	}
	total := 0
	for _, f := range files {
		cases, err := offline.LoadCases(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range cases {
			total++
			t.Run(strings.TrimSuffix(filepath.Base(f), ".yaml")+"/"+c.Name, func(t *testing.T) {
				if c.Source == "" {
					t.Error("every case must name the istio.io page or documented behaviour it encodes (source:)")
				}
				r := c.Run(context.Background(), f)
				for _, msg := range r.Failures {
					t.Error(msg)
				}
				if !r.Passed && r.Result != nil {
					t.Logf("reason: %s; findings: %v", r.Result.Reason, r.Result.Findings)
				}
				// The engine combines matches in Go; the Rego reference decision must agree
				// wherever no CUSTOM provider or request check (400) had a say.
				if res := r.Result; res != nil && res.Input != nil && res.Status != 400 && !strings.Contains(res.Reason, "CUSTOM") {
					allowed, policy, rule, err := offline.ReferenceDecision(context.Background(), res.Bundle, res.Input)
					if err != nil {
						t.Fatalf("reference decision: %v", err)
					}
					if allowed != res.Allowed || policy != res.Policy || rule != res.Rule {
						t.Errorf("engine decided allowed=%t %s rules[%d]; the Rego reference decided allowed=%t %s rules[%d]",
							res.Allowed, res.Policy, res.Rule, allowed, policy, rule)
					}
				}
			})
		}
	}
	if total < 200 {
		t.Errorf("the corpus has %d cases; the issue asks for at least 200", total)
	}
}
