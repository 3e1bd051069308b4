package authz

import (
	"fmt"
	"sort"

	"github.com/open-policy-agent/opa/v1/ast"
)

// matchSets is the value of data.rampart.policy.hits for one request, by action.
type matchSets struct {
	allow, deny, audit, custom []Match
}

// verdict combines matches the way policies/rego/decision.rego does (a test holds
// the two equal): DENY first; no enforced ALLOW policy means allowed; ALLOW
// policies present and none matching means denied. Dry-run matches are reported,
// never enforced; CUSTOM matches go to their providers.
func (p *prepared) verdict(ms matchSets) result {
	var r result
	enforced := func(in []Match) []Match {
		var out []Match
		for _, m := range in {
			if m.DryRun {
				r.DryRun.Matches = append(r.DryRun.Matches, m)
			} else {
				out = append(out, m)
			}
		}
		return out
	}
	deny, allow := enforced(ms.deny), enforced(ms.allow)
	r.Audit, r.Custom = enforced(ms.audit), enforced(ms.custom)
	sortMatches(r.DryRun.Matches)
	r.Rule = -1
	switch {
	case len(deny) > 0:
		sortMatches(deny)
		r.Policy, r.Rule = deny[0].Policy, deny[0].Rule
		r.Reason = fmt.Sprintf("denied by DENY policy %s rules[%d]", r.Policy, r.Rule)
	case p.allowPolicies == 0:
		r.Allowed = true
		r.Reason = "no ALLOW policy applies to the workload"
	case len(allow) > 0:
		sortMatches(allow)
		r.Allowed, r.Policy, r.Rule = true, allow[0].Policy, allow[0].Rule
		r.Reason = fmt.Sprintf("allowed by ALLOW policy %s rules[%d]", r.Policy, r.Rule)
	default:
		r.Reason = "no ALLOW policy matched"
	}
	// The dry-run policies alone.
	r.DryRun.Allowed = true
	dryAllowHit := false
	for _, m := range r.DryRun.Matches {
		if m.Provider == "" && m.action == "deny" {
			r.DryRun.Allowed = false
		}
		if m.action == "allow" {
			dryAllowHit = true
		}
	}
	if p.dryRunAllowPolicies > 0 && !dryAllowHit {
		r.DryRun.Allowed = false
	}
	if r.DryRun.Matches == nil {
		r.DryRun.Matches = []Match{}
	}
	return r
}

// sortMatches orders matches as Rego's sort does for these objects: by dry_run,
// then policy, then provider, then rule.
func sortMatches(ms []Match) {
	sort.Slice(ms, func(i, j int) bool {
		a, b := ms[i], ms[j]
		if a.Policy != b.Policy {
			return a.Policy < b.Policy
		}
		return a.Rule < b.Rule
	})
}

// parseMatches reads the hits set (every matching rule, tagged with its action)
// without going through JSON.
func parseMatches(v ast.Value) (matchSets, error) {
	set, ok := v.(ast.Set)
	if !ok {
		return matchSets{}, fmt.Errorf("hits is %T, want a set", v)
	}
	var ms matchSets
	var err error
	set.Foreach(func(e *ast.Term) {
		if err != nil {
			return
		}
		m, perr := parseMatch(e.Value)
		if perr != nil {
			err = perr
			return
		}
		switch m.action {
		case "allow":
			ms.allow = append(ms.allow, m)
		case "deny":
			ms.deny = append(ms.deny, m)
		case "audit":
			ms.audit = append(ms.audit, m)
		case "custom":
			ms.custom = append(ms.custom, m)
		default:
			err = fmt.Errorf("hit with unknown action %q", m.action)
		}
	})
	return ms, err
}

// parseMatch reads one element of hits: [action, policy, rule, dry_run] with
// the provider fifth for CUSTOM, as the compiler writes it, or the object
// {"action", "policy", "rule", "dry_run", "provider"} that bundles compiled
// before that carry.
func parseMatch(v ast.Value) (Match, error) {
	var action, policy, rule, dryRun, provider *ast.Term
	switch x := v.(type) {
	case *ast.Array:
		if x.Len() != 4 && x.Len() != 5 {
			return Match{}, fmt.Errorf("match has %d elements, want 4 or 5", x.Len())
		}
		action, policy, rule, dryRun = x.Elem(0), x.Elem(1), x.Elem(2), x.Elem(3)
		if x.Len() == 5 {
			provider = x.Elem(4)
		}
	case ast.Object:
		action, policy, rule = x.Get(ast.InternedTerm("action")), x.Get(ast.InternedTerm("policy")), x.Get(ast.InternedTerm("rule"))
		dryRun, provider = x.Get(ast.InternedTerm("dry_run")), x.Get(ast.InternedTerm("provider"))
	default:
		return Match{}, fmt.Errorf("match is %T, want an array", v)
	}
	var m Match
	if action != nil {
		if s, ok := action.Value.(ast.String); ok {
			m.action = string(s)
		}
	}
	s, ok := ast.String(""), false
	if policy != nil {
		s, ok = policy.Value.(ast.String)
	}
	if !ok {
		return m, fmt.Errorf("match without a policy")
	}
	m.Policy = string(s)
	if rule != nil {
		if n, ok := rule.Value.(ast.Number); ok {
			m.Rule, _ = n.Int()
		}
	}
	if dryRun != nil {
		if b, ok := dryRun.Value.(ast.Boolean); ok {
			m.DryRun = bool(b)
		}
	}
	if provider != nil {
		if s, ok := provider.Value.(ast.String); ok {
			m.Provider = string(s)
		}
	}
	return m, nil
}
