# Matching helpers for compiled Istio AuthorizationPolicies. Each follows Istio's
# semantics (see docs/architecture.md and the semantics reference).
package rampart.lib

import rego.v1

# match reports whether v matches one Istio string pattern: "*" is presence (a
# non-empty value), a leading "*" a suffix, a trailing "*" a prefix; anything else,
# including a "*" inside the value, is exact.
match(v, "*") if {
	is_string(v)
	v != ""
}

match(v, p) if {
	p != "*"
	startswith(p, "*")
	endswith(v, substring(p, 1, -1))
}

match(v, p) if {
	not startswith(p, "*")
	endswith(p, "*")
	startswith(v, substring(p, 0, count(p) - 1))
}

match(v, p) if {
	not startswith(p, "*")
	not endswith(p, "*")
	v == p
}

# match_any: v matches at least one pattern.
match_any(v, patterns) if {
	some p in patterns
	match(v, p)
}

# regex_any: v matches at least one (anchored) regular expression.
regex_any(v, regexes) if {
	is_string(v)
	some re in regexes
	regex.match(re, v)
}

# path_match: exact/prefix/suffix patterns or {*}/{**} templates (as regexes).
path_match(v, patterns, _) if match_any(v, patterns)

path_match(v, _, regexes) if regex_any(v, regexes)

# ip_in: ip is inside one of the CIDRs.
ip_in(ip, cidrs) if {
	is_string(ip)
	ip != ""
	some c in cidrs
	net.cidr_contains(c, ip)
}

# claim_match: a string claim matches a pattern, or a list claim has an element
# that does. Other types (numbers, booleans, objects) never match, as in Istio.
claim_match(v, patterns) if {
	is_string(v)
	match_any(v, patterns)
}

claim_match(v, patterns) if {
	is_array(v)
	some e in v
	is_string(e)
	match_any(e, patterns)
}

# claim_match_split: as claim_match, with a string claim split on spaces first
# (Istio does this for the scope and permission claims).
claim_match_split(v, patterns) if {
	is_string(v)
	some e in split(v, " ")
	e != ""
	match_any(e, patterns)
}

claim_match_split(v, patterns) if {
	is_array(v)
	claim_match(v, patterns)
}

# metadata_match: an Envoy dynamic-metadata value (experimental.envoy.filters.*
# conditions) is a string matching one of string_patterns, or a list with a
# string element matching one of list_patterns (values written "[v]" in the
# policy).
metadata_match(v, string_patterns, _) if {
	is_string(v)
	match_any(v, string_patterns)
}

metadata_match(v, _, list_patterns) if {
	is_array(v)
	some e in v
	is_string(e)
	match_any(e, list_patterns)
}

# request_principal_match: the JWT's iss and sub match one pattern
# [iss_mode, iss, sub_mode, sub], which the compiler makes from an <iss>/<sub>
# value the way Istio reads it: only a leading or trailing "*" of the whole
# value is a wildcard, on the half it touches; the other half is exact. Modes:
# "exact", "prefix", "suffix", "present" (non-empty) and "any".
request_principal_match(auth, patterns) if {
	some p in patterns
	principal_half(auth.issuer, p[0], p[1])
	principal_half(auth.subject, p[2], p[3])
}

principal_half(_, "any", _)

principal_half(v, "present", _) if {
	is_string(v)
	v != ""
}

principal_half(v, "exact", p) if v == p

principal_half(v, "prefix", p) if {
	is_string(v)
	startswith(v, p)
}

principal_half(v, "suffix", p) if {
	is_string(v)
	endswith(v, p)
}
