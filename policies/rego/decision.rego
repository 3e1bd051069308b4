# The authorization decision for one request, from the rules compiled for the
# workload (package rampart.policy). CUSTOM providers are consulted by the engine
# for the matches in `custom`; everything else is decided here:
#   DENY before ALLOW; no enforced ALLOW policy means allowed; ALLOW policies
#   present and none matches means denied. AUDIT only records. Dry-run matches
#   are reported and never enforced.
package rampart.authz

import rego.v1

import data.rampart.policy

# The compiled module defines only the sets that have rules.
default deny_set := set()

deny_set := policy.deny

default allow_set := set()

allow_set := policy.allow

default audit_set := set()

audit_set := policy.audit

default custom_set := set()

custom_set := policy.custom

default allow_policies := set()

allow_policies := policy.allow_policies

default dry_run_allow_policies := set()

dry_run_allow_policies := policy.dry_run_allow_policies

enforced(set) := [m | some m in set; not m.dry_run]

shadow(set) := [m | some m in set; m.dry_run]

deny_hits := sort(enforced(deny_set))

allow_hits := sort(enforced(allow_set))

audit_hits := sort(enforced(audit_set))

custom_hits := sort(enforced(custom_set))

dry_run_hits := sort(array.concat(array.concat(shadow(deny_set), shadow(allow_set)), array.concat(shadow(audit_set), shadow(custom_set))))

default verdict := {
	"allowed": false,
	"policy": "",
	"rule": -1,
	"reason": "no ALLOW policy matched",
}

verdict := {
	"allowed": false,
	"policy": deny_hits[0].policy,
	"rule": deny_hits[0].rule,
	"reason": sprintf("denied by DENY policy %s rules[%d]", [deny_hits[0].policy, deny_hits[0].rule]),
} if {
	count(deny_hits) > 0
} else := {
	"allowed": true,
	"policy": "",
	"rule": -1,
	"reason": "no ALLOW policy applies to the workload",
} if {
	count(allow_policies) == 0
} else := {
	"allowed": true,
	"policy": allow_hits[0].policy,
	"rule": allow_hits[0].rule,
	"reason": sprintf("allowed by ALLOW policy %s rules[%d]", [allow_hits[0].policy, allow_hits[0].rule]),
} if {
	count(allow_hits) > 0
}

# matches is what the engine evaluates per request: every rule that matched, by
# action. The engine combines them exactly as `decision` does (a test checks the
# two agree), which costs far less than building the decision in Rego.
matches := {
	"deny": deny_set,
	"allow": allow_set,
	"audit": audit_set,
	"custom": custom_set,
}

# What the dry-run policies alone would have decided.
dry_run_deny := [m | some m in shadow(deny_set)]

dry_run_allow := [m | some m in shadow(allow_set)]

default dry_run_allowed := true

dry_run_allowed := false if count(dry_run_deny) > 0

dry_run_allowed := false if {
	count(dry_run_allow_policies) > 0
	count(dry_run_allow) == 0
}

decision := {
	"allowed": verdict.allowed,
	"policy": verdict.policy,
	"rule": verdict.rule,
	"reason": verdict.reason,
	"custom": custom_hits,
	"audit": audit_hits,
	"dry_run": {"allowed": dry_run_allowed, "matches": dry_run_hits},
}
