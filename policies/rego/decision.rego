# The authorization decision for one request, from the rules compiled for the
# workload (package rampart.policy). CUSTOM providers are consulted by the engine
# for the matches in `custom`; everything else is decided here:
#   DENY before ALLOW; no enforced ALLOW policy means allowed; ALLOW policies
#   present and none matches means denied. AUDIT only records. Dry-run matches
#   are reported and never enforced.
package rampart.authz

import rego.v1

import data.rampart.policy

# The compiled module puts every matching rule into one set, hits (one indexed
# lookup per request). Each element is [action, policy, rule index, dry run],
# with the provider fifth for CUSTOM; below it is read as an object.
default hits := set()

hits := policy.hits

matches := {as_object(m) | some m in hits}

as_object(m) := {"action": m[0], "policy": m[1], "rule": m[2], "dry_run": m[3]} if count(m) == 4

as_object(m) := {"action": m[0], "policy": m[1], "rule": m[2], "dry_run": m[3], "provider": m[4]} if count(m) == 5

deny_set := {m | some m in matches; m.action == "deny"}

allow_set := {m | some m in matches; m.action == "allow"}

audit_set := {m | some m in matches; m.action == "audit"}

custom_set := {m | some m in matches; m.action == "custom"}

default allow_policies := set()

allow_policies := policy.allow_policies

default dry_run_allow_policies := set()

dry_run_allow_policies := policy.dry_run_allow_policies

# The decision lists matches without their action tag.
enforced(set) := [object.remove(m, ["action"]) | some m in set; not m.dry_run]

shadow(set) := [object.remove(m, ["action"]) | some m in set; m.dry_run]

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
