package decisionlog

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/rego"
	"github.com/rampart-mesh/rampart/internal/opacancel"
)

// Queries of a decision-log policy, OPA's defaults.
const (
	maskQuery = "data.system.log.mask"
	dropQuery = "data.system.log.drop"
)

// policy is a compiled "package system.log" module. compile does no I/O;
// prepare is called once, by Run.
type policy struct {
	compiler         *ast.Compiler
	hasMask, hasDrop bool
	mask, drop       rego.PreparedEvalQuery
}

func compilePolicy(file, src string) (*policy, error) {
	if file == "" {
		file = "decision_log_policy.rego"
	}
	m, err := ast.ParseModuleWithOpts(file, src, ast.ParserOptions{RegoVersion: ast.RegoV1})
	if err != nil {
		return nil, err
	}
	if want := ast.MustParseRef("data.system.log"); !m.Package.Path.Equal(want) {
		return nil, fmt.Errorf("%s: package is %s, want system.log", file, m.Package.Path)
	}
	p := &policy{}
	for _, r := range m.Rules {
		switch r.Head.Ref()[0].Value.String() {
		case "mask":
			p.hasMask = true
		case "drop":
			p.hasDrop = true
		}
	}
	if !p.hasMask && !p.hasDrop {
		return nil, fmt.Errorf("%s: defines neither a mask nor a drop rule", file)
	}
	c := ast.NewCompiler().WithCapabilities(localCapabilities())
	if c.Compile(map[string]*ast.Module{file: m}); c.Failed() {
		return nil, c.Errors
	}
	p.compiler = c
	return p, nil
}

// localCapabilities are OPA's builtins less those that reach the network: the
// policy runs for every event on the writer's goroutine, and without
// cancellation, so it must not wait on anything.
func localCapabilities() *ast.Capabilities {
	c := ast.CapabilitiesForThisVersion()
	c.Builtins = slices.DeleteFunc(slices.Clone(c.Builtins), func(b *ast.Builtin) bool {
		return b.Name == "http.send" || b.Name == "net.lookup_ip_addr"
	})
	return c
}

func (p *policy) prepare(ctx context.Context) error {
	var err error
	if p.hasMask {
		if p.mask, err = rego.New(rego.Query(maskQuery), rego.Compiler(p.compiler)).PrepareForEval(ctx); err != nil {
			return fmt.Errorf("prepare %s: %w", maskQuery, err)
		}
	}
	if p.hasDrop {
		if p.drop, err = rego.New(rego.Query(dropQuery), rego.Compiler(p.compiler)).PrepareForEval(ctx); err != nil {
			return fmt.Errorf("prepare %s: %w", dropQuery, err)
		}
	}
	return nil
}

// eval decides, for the event doc, whether to drop it and otherwise which mask
// rules to apply. Like OPA, drop is decided first, and both see the same input.
func (p *policy) eval(ctx context.Context, doc any) (drop bool, rules []maskRule, err error) {
	in, err := ast.InterfaceToValue(doc)
	if err != nil {
		return false, nil, fmt.Errorf("decision log policy input: %w", err)
	}
	cancel, release := opacancel.Option(ctx)
	defer release()
	if p.hasDrop {
		rs, err := p.drop.Eval(ctx, rego.EvalParsedInput(in), cancel)
		if err != nil {
			return false, nil, fmt.Errorf("evaluate %s: %w", dropQuery, err)
		}
		if rs.Allowed() {
			return true, nil, nil
		}
	}
	if !p.hasMask {
		return false, nil, nil
	}
	rs, err := p.mask.Eval(ctx, rego.EvalParsedInput(in), cancel)
	if err != nil {
		return false, nil, fmt.Errorf("evaluate %s: %w", maskQuery, err)
	}
	if len(rs) == 0 || len(rs[0].Expressions) == 0 {
		return false, nil, nil // undefined: nothing to mask
	}
	if len(rs) != 1 {
		return false, nil, errors.New(maskQuery + " has more than one value")
	}
	rules, err = parseMaskRules(rs[0].Expressions[0].Value)
	if err != nil {
		return false, nil, fmt.Errorf("%s: %w", maskQuery, err)
	}
	return false, rules, nil
}
