package offline

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/rampart-mesh/rampart/policies/compile"
	"github.com/rampart-mesh/rampart/policies/source"
)

// Case is one policy test: policies plus a request and the expected decision.
type Case struct {
	Name     string           `json:"name"`
	Source   string           `json:"source,omitempty"`
	Mesh     json.RawMessage  `json:"mesh,omitempty"`
	Policies []map[string]any `json:"policies"`
	Request  RequestSpec      `json:"request"`
	Expect   Expect           `json:"expect"`
}

// Expect is what a Case must decide.
type Expect struct {
	Allowed  *bool    `json:"allowed"`
	Status   *int     `json:"status"`
	Policy   *string  `json:"policy"`
	Findings []string `json:"findings"`
}

// CaseResult is the outcome of one Case.
type CaseResult struct {
	Name     string   `json:"name"`
	Passed   bool     `json:"passed"`
	Failures []string `json:"failures,omitempty"`
	Result   *Result  `json:"result,omitempty"`
}

// LoadCases reads a YAML list of cases.
func LoadCases(path string) ([]Case, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var cases []Case
	if err := DecodeStrict(data, &cases); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	seen := map[string]bool{}
	for i, c := range cases {
		if c.Name == "" {
			return nil, fmt.Errorf("%s: case %d has no name", path, i)
		}
		if seen[c.Name] {
			return nil, fmt.Errorf("%s: duplicate case name %q", path, c.Name)
		}
		seen[c.Name] = true
		if c.Expect.Allowed == nil {
			return nil, fmt.Errorf("%s: case %q: expect.allowed is required", path, c.Name)
		}
	}
	return cases, nil
}

// Run decides one case and compares it with its expectation.
func (c Case) Run(ctx context.Context, file string) CaseResult {
	cr := CaseResult{Name: c.Name}
	fail := func(format string, args ...any) { cr.Failures = append(cr.Failures, fmt.Sprintf(format, args...)) }
	var mesh compile.Mesh
	var err error
	if len(c.Mesh) > 0 {
		mesh, err = ParseMeshJSON(c.Mesh)
	} else {
		mesh, err = compile.Mesh{}.WithDefaults()
	}
	if err != nil {
		fail("mesh: %v", err)
		return cr
	}
	var objs []source.Object
	for i, p := range c.Policies {
		js, _ := json.Marshal(p)
		os, err := source.Parse(fmt.Sprintf("%s[%s].policies[%d]", file, c.Name, i), js)
		if err != nil {
			fail("policies[%d]: %v", i, err)
			return cr
		}
		objs = append(objs, os...)
	}
	res, err := Check(ctx, objs, mesh, filepath.Dir(file), c.Request)
	if err != nil {
		fail("%v", err)
		return cr
	}
	cr.Result = &res
	if e := c.Expect; e.Allowed != nil && *e.Allowed != res.Allowed {
		fail("allowed = %t, want %t (%s)", res.Allowed, *e.Allowed, res.Reason)
	}
	if e := c.Expect; e.Status != nil && *e.Status != res.Status {
		fail("status = %d, want %d", res.Status, *e.Status)
	}
	if e := c.Expect; e.Policy != nil && *e.Policy != res.Policy {
		fail("policy = %q, want %q", res.Policy, *e.Policy)
	}
	var codes []string
	for _, f := range res.Findings {
		codes = append(codes, f.Code)
	}
	for _, want := range c.Expect.Findings {
		if !slices.Contains(codes, want) {
			fail("finding %s not reported (got %s)", want, strings.Join(codes, ", "))
		}
	}
	cr.Passed = len(cr.Failures) == 0
	return cr
}

// ParseMeshJSON decodes a mesh config given as JSON (a case's mesh field).
func ParseMeshJSON(js json.RawMessage) (compile.Mesh, error) {
	return compile.ParseMesh(js)
}
