package compile

import (
	"fmt"
	"sort"
	"strings"

	"github.com/open-policy-agent/opa/v1/ast"
	security "istio.io/api/security/v1beta1"
)

// checkStructure parses a module CompileAuthz generated for wl and checks that
// it holds only what the compiler means to write: match-set rules whose
// "policy" is a policy that applies, in the set of its action, with a rule
// index it has; r_* helper rules; and the fixed summary rules with the right
// policy names. Input text that escaped a string or a comment would show up
// here as a rule of its own.
func checkStructure(module string, policies []*AuthzPolicy, m Mesh, wl Workload) error {
	mod, err := ast.ParseModuleWithOpts("policy.rego", module, ast.ParserOptions{RegoVersion: ast.RegoV1})
	if err != nil {
		return err
	}
	if got := mod.Package.Path.String(); got != "data."+PolicyPackage {
		return fmt.Errorf("package %s, want %s", got, PolicyPackage)
	}
	// Names need not be unique in a file: keep every applied policy of a name.
	applied := map[string][]*AuthzPolicy{}
	enforcedAllow, dryAllow := map[string]bool{}, map[string]bool{}
	for _, p := range policies {
		if !p.Applies(m, wl) {
			continue
		}
		applied[p.Name()] = append(applied[p.Name()], p)
		if p.Spec.GetAction() == security.AuthorizationPolicy_ALLOW {
			if p.DryRun {
				dryAllow[p.Name()] = true
			} else {
				enforcedAllow[p.Name()] = true
			}
		}
	}
	for _, r := range mod.Rules {
		name := r.Head.Ref().String()
		switch {
		case name == "hits":
			if r.Head.Key == nil {
				if s, ok := r.Head.Value.Value.(ast.Set); !ok || s.Len() != 0 {
					return fmt.Errorf("%v: %s is neither a contains rule nor set()", r.Location, name)
				}
				continue
			}
			obj, err := hitObject(r.Head.Key)
			if err != nil {
				return fmt.Errorf("%v: %w", r.Location, err)
			}
			action, ok := obj.Get(ast.StringTerm("action")).Value.(ast.String)
			if !ok {
				return fmt.Errorf("%v: hits key %v has no action", r.Location, r.Head.Key)
			}
			if err := checkMatch(string(action), ast.NewTerm(obj), applied); err != nil {
				return fmt.Errorf("%v: %s rule: %w", r.Location, action, err)
			}
		case strings.HasPrefix(name, "r_"):
			if r.Head.Key != nil || len(r.Head.Args) != 0 {
				return fmt.Errorf("%v: helper %s is not a plain boolean rule", r.Location, name)
			}
		case name == "allow_policies":
			if err := checkNameSet(r.Head.Value, enforcedAllow); err != nil {
				return fmt.Errorf("%v: %s: %w", r.Location, name, err)
			}
		case name == "dry_run_allow_policies":
			if err := checkNameSet(r.Head.Value, dryAllow); err != nil {
				return fmt.Errorf("%v: %s: %w", r.Location, name, err)
			}
		default:
			return fmt.Errorf("%v: unexpected rule %s", r.Location, name)
		}
	}
	return nil
}

// hitObject reads a hits element, [action, policy, rule, dry_run] with the
// provider fifth for CUSTOM, as an object with those keys.
func hitObject(key *ast.Term) (ast.Object, error) {
	arr, ok := key.Value.(*ast.Array)
	if !ok || (arr.Len() != 4 && arr.Len() != 5) {
		return nil, fmt.Errorf("hits key %v is not an array of 4 or 5", key)
	}
	obj := ast.NewObject(
		[2]*ast.Term{ast.StringTerm("action"), arr.Elem(0)},
		[2]*ast.Term{ast.StringTerm("policy"), arr.Elem(1)},
		[2]*ast.Term{ast.StringTerm("rule"), arr.Elem(2)},
		[2]*ast.Term{ast.StringTerm("dry_run"), arr.Elem(3)})
	if arr.Len() == 5 {
		obj.Insert(ast.StringTerm("provider"), arr.Elem(4))
	}
	return obj, nil
}

// checkMatch checks the head of a match-set rule against the policies of the
// name it gives (one of them must fit).
func checkMatch(set string, key *ast.Term, applied map[string][]*AuthzPolicy) error {
	obj, ok := key.Value.(ast.Object)
	if !ok {
		return fmt.Errorf("key %v is not an object", key)
	}
	t := obj.Get(ast.StringTerm("policy"))
	if t == nil {
		return fmt.Errorf("key %v has no policy", key)
	}
	name, ok := t.Value.(ast.String)
	if !ok || len(applied[string(name)]) == 0 {
		return fmt.Errorf("key %v does not name a policy that applies to the workload", key)
	}
	var errs []string
	for _, p := range applied[string(name)] {
		err := checkMatchOf(set, obj, p)
		if err == nil {
			return nil
		}
		errs = append(errs, err.Error())
	}
	return fmt.Errorf("%s", strings.Join(errs, "; "))
}

func checkMatchOf(set string, obj ast.Object, p *AuthzPolicy) error {
	action := p.Spec.GetAction()
	inSet := map[string]bool{
		"allow":  action == security.AuthorizationPolicy_ALLOW,
		"deny":   action == security.AuthorizationPolicy_DENY || action == security.AuthorizationPolicy_CUSTOM,
		"audit":  action == security.AuthorizationPolicy_AUDIT,
		"custom": action == security.AuthorizationPolicy_CUSTOM,
	}[set]
	if !inSet {
		return fmt.Errorf("policy %q (%s) in set %s", p.Name(), action, set)
	}
	rule := obj.Get(ast.StringTerm("rule"))
	if rule == nil {
		return fmt.Errorf("%v has no rule", obj)
	}
	idx, ok := rule.Value.(ast.Number)
	if !ok {
		return fmt.Errorf("rule %v is not a number", rule)
	}
	if n, isInt := idx.Int(); !isInt || n < 0 || n >= len(p.Spec.GetRules()) {
		return fmt.Errorf("policy %q has no rule %v", p.Name(), rule)
	}
	if dr := obj.Get(ast.StringTerm("dry_run")); dr == nil || !dr.Equal(ast.BooleanTerm(p.DryRun)) {
		return fmt.Errorf("policy %q: dry_run %v, want %t", p.Name(), dr, p.DryRun)
	}
	fields := 4
	if set == "custom" {
		fields = 5
		prov := obj.Get(ast.StringTerm("provider"))
		if prov == nil || !prov.Equal(ast.StringTerm(p.Spec.GetProvider().GetName())) {
			return fmt.Errorf("policy %q: provider %v, want %q", p.Name(), prov, p.Spec.GetProvider().GetName())
		}
	}
	if obj.Len() != fields {
		return fmt.Errorf("%v has %d fields, want %d", obj, obj.Len(), fields)
	}
	return nil
}

func checkNameSet(t *ast.Term, want map[string]bool) error {
	s, ok := t.Value.(ast.Set)
	if !ok {
		return fmt.Errorf("%v is not a set", t)
	}
	var got, wantList []string
	for _, e := range s.Slice() {
		str, ok := e.Value.(ast.String)
		if !ok {
			return fmt.Errorf("element %v is not a string", e)
		}
		got = append(got, string(str))
	}
	for n := range want {
		wantList = append(wantList, n)
	}
	sort.Strings(got)
	sort.Strings(wantList)
	if fmt.Sprintf("%q", got) != fmt.Sprintf("%q", wantList) {
		return fmt.Errorf("%q, want %q", got, wantList)
	}
	return nil
}
