# Tests of the decision (package rampart.authz), run by rego_test.go with OPA's
# test runner. The compiled policy (package rampart.policy) is mocked with `with`.
package rampart.authz_test

import rego.v1

import data.rampart.authz

hit(policy, rule) := {"policy": policy, "rule": rule, "dry_run": false}

dry(policy, rule) := {"policy": policy, "rule": rule, "dry_run": true}

# mock turns per-action sets into the compiled module's shape: one hits set of
# [action, policy, rule, dry_run] (and the provider, when there is one).
tag(p, action) := {element(m, action) | some m in object.get(p, action, set())}

element(m, action) := [action, m.policy, m.rule, m.dry_run, m.provider] if "provider" in object.keys(m)

element(m, action) := [action, m.policy, m.rule, m.dry_run] if not "provider" in object.keys(m)

mock(p) := {
	"hits": ((tag(p, "deny") | tag(p, "allow")) | tag(p, "audit")) | tag(p, "custom"),
	"allow_policies": object.get(p, "allow_policies", set()),
	"dry_run_allow_policies": object.get(p, "dry_run_allow_policies", set()),
}

test_no_policies_allowed if {
	d := authz.decision with data.rampart.policy as mock({})
	d.allowed == true
	d.policy == ""
	d.rule == -1
	d.reason == "no ALLOW policy applies to the workload"
	d.custom == []
	d.audit == []
	d.dry_run == {"allowed": true, "matches": []}
}

# The compiled module defines only the sets that have rules; the others default to empty.
test_empty_sets_are_defaults if {
	d := authz.decision with data.rampart.policy as mock({"deny": set(), "allow": set(), "allow_policies": set()})
	d.allowed == true
	d.reason == "no ALLOW policy applies to the workload"
}

test_deny_match_denies if {
	d := authz.decision with data.rampart.policy as mock({"deny": {hit("foo/deny", 2)}})
	d.allowed == false
	d.policy == "foo/deny"
	d.rule == 2
	d.reason == "denied by DENY policy foo/deny rules[2]"
}

test_deny_wins_over_allow if {
	d := authz.decision with data.rampart.policy as mock({
		"deny": {hit("foo/deny", 0)},
		"allow": {hit("foo/allow", 0)},
		"allow_policies": {"foo/allow"},
	})
	d.allowed == false
	d.policy == "foo/deny"
}

test_deny_reports_first_match_in_order if {
	d := authz.decision with data.rampart.policy as mock({"deny": {hit("foo/b", 0), hit("foo/a", 3), hit("foo/a", 1)}})
	d.allowed == false
	d.policy == "foo/a"
	d.rule == 1
}

test_deny_with_no_allow_policies_still_denies if {
	d := authz.decision with data.rampart.policy as mock({"deny": {hit("istio-system/global-deny", 0)}})
	d.allowed == false
	d.policy == "istio-system/global-deny"
}

test_allow_policies_and_none_matches_denied if {
	d := authz.decision with data.rampart.policy as mock({"allow": set(), "allow_policies": {"foo/allow"}})
	d.allowed == false
	d.policy == ""
	d.rule == -1
	d.reason == "no ALLOW policy matched"
}

# An ALLOW policy whose rules were all skipped has no rules in `allow` but still
# counts: default deny.
test_allow_policy_without_rules_denies if {
	d := authz.decision with data.rampart.policy as mock({"allow_policies": {"foo/allow-nothing"}})
	d.allowed == false
}

test_allow_match_allows if {
	d := authz.decision with data.rampart.policy as mock({
		"allow": {hit("foo/b", 0), hit("foo/a", 4)},
		"allow_policies": {"foo/a", "foo/b"},
	})
	d.allowed == true
	d.policy == "foo/a"
	d.rule == 4
	d.reason == "allowed by ALLOW policy foo/a rules[4]"
}

test_dry_run_deny_reported_not_enforced if {
	d := authz.decision with data.rampart.policy as mock({"deny": {dry("foo/deny", 0)}})
	d.allowed == true
	d.reason == "no ALLOW policy applies to the workload"
	d.dry_run.allowed == false
	d.dry_run.matches == [dry("foo/deny", 0)]
}

test_dry_run_deny_does_not_deny_allowed_request if {
	d := authz.decision with data.rampart.policy as mock({
		"deny": {dry("foo/deny", 0)},
		"allow": {hit("foo/allow", 0)},
		"allow_policies": {"foo/allow"},
	})
	d.allowed == true
	d.policy == "foo/allow"
	d.dry_run.allowed == false
}

test_dry_run_allow_does_not_allow if {
	d := authz.decision with data.rampart.policy as mock({
		"allow": {dry("foo/dry-allow", 0)},
		"allow_policies": {"foo/allow"},
		"dry_run_allow_policies": {"foo/dry-allow"},
	})
	d.allowed == false
	d.reason == "no ALLOW policy matched"
	d.dry_run.allowed == true
	d.dry_run.matches == [dry("foo/dry-allow", 0)]
}

# Dry-run ALLOW policies are not enforced ALLOW policies: no default deny.
test_dry_run_allow_only_no_default_deny if {
	d := authz.decision with data.rampart.policy as mock({"dry_run_allow_policies": {"foo/dry-allow"}})
	d.allowed == true
	d.reason == "no ALLOW policy applies to the workload"
	d.dry_run.allowed == false
	d.dry_run.matches == []
}

test_dry_run_allow_hit if {
	d := authz.decision with data.rampart.policy as mock({
		"allow": {dry("foo/dry-allow", 1)},
		"dry_run_allow_policies": {"foo/dry-allow"},
	})
	d.allowed == true
	d.dry_run.allowed == true
}

test_dry_run_deny_beats_dry_run_allow if {
	d := authz.decision with data.rampart.policy as mock({
		"deny": {dry("foo/dry-deny", 0)},
		"allow": {dry("foo/dry-allow", 0)},
		"dry_run_allow_policies": {"foo/dry-allow"},
	})
	d.dry_run.allowed == false
	count(d.dry_run.matches) == 2
}

test_dry_run_matches_of_every_action_listed if {
	d := authz.decision with data.rampart.policy as mock({
		"deny": {dry("foo/d", 0)},
		"allow": {dry("foo/a", 0)},
		"audit": {dry("foo/au", 0)},
		"custom": {object.union(dry("foo/c", 0), {"provider": "ext"})},
	})
	policies := {m.policy | some m in d.dry_run.matches}
	policies == {"foo/d", "foo/a", "foo/au", "foo/c"}
	d.audit == []
	d.custom == []
}

test_audit_recorded_not_enforced if {
	d := authz.decision with data.rampart.policy as mock({
		"audit": {hit("foo/audit", 0), hit("foo/audit", 1)},
		"allow_policies": {"foo/allow"},
	})
	d.allowed == false
	d.audit == [hit("foo/audit", 0), hit("foo/audit", 1)]
	d.dry_run.matches == []
}

test_audit_does_not_count_as_allow_policy if {
	d := authz.decision with data.rampart.policy as mock({"audit": {hit("foo/audit", 0)}})
	d.allowed == true
	d.audit == [hit("foo/audit", 0)]
}

test_custom_hits_listed if {
	c := object.union(hit("foo/ext", 0), {"provider": "ext-authz"})
	d := authz.decision with data.rampart.policy as mock({"custom": {c}})
	d.custom == [c]
	d.custom[0].provider == "ext-authz"

	# CUSTOM is not an ALLOW policy: the verdict before the provider runs is allowed.
	d.allowed == true
	d.reason == "no ALLOW policy applies to the workload"
}

test_custom_listed_with_deny if {
	c := object.union(hit("foo/ext", 0), {"provider": "ext-authz"})
	d := authz.decision with data.rampart.policy as mock({"custom": {c}, "deny": {hit("foo/deny", 0)}})
	d.allowed == false
	d.custom == [c]
}

test_dry_run_custom_not_listed if {
	c := object.union(dry("foo/ext", 0), {"provider": "ext-authz"})
	d := authz.decision with data.rampart.policy as mock({"custom": {c}})
	d.custom == []
	d.dry_run.matches == [c]
}
