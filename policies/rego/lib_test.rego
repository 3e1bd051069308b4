# Tests of the matching helpers (package rampart.lib), run by rego_test.go with
# OPA's test runner. Non-string values come from input so that the type checker
# cannot reject the call before the helper sees the value.
package rampart.lib_test

import rego.v1

import data.rampart.lib

# match: "*" is presence.

test_match_presence if {
	lib.match("a", "*")
	lib.match("*", "*")
}

test_match_presence_empty if not lib.match("", "*")

test_match_presence_non_string if {
	not lib.match(input.n, "*") with input as {"n": 1}
	not lib.match(input.n, "*") with input as {"n": true}
	not lib.match(input.n, "*") with input as {"n": null}
	not lib.match(input.n, "*") with input as {"n": ["a"]}
	not lib.match(input.n, "*") with input as {"n": {"a": "b"}}
}

# match: a trailing "*" is a prefix, a leading one a suffix.

test_match_prefix if {
	lib.match("/admin/users", "/admin/*")
	lib.match("/admin/", "/admin/*")
	not lib.match("/admin", "/admin/*")
	not lib.match("/x/admin/", "/admin/*")
}

test_match_prefix_equal_string if lib.match("abc", "abc*")

test_match_suffix if {
	lib.match("spiffe://td/ns/foo/sa/bar", "*/sa/bar")
	lib.match("/sa/bar", "*/sa/bar")
	not lib.match("/sa/bar/x", "*/sa/bar")
}

# "*abc*" is a suffix match on "abc*" (a leading star wins, as in Istio).
test_match_leading_star_wins if {
	lib.match("xabc*", "*abc*")
	not lib.match("xabcd", "*abc*")
}

# "**" is a suffix match on "*".
test_match_double_star if {
	lib.match("a*", "**")
	not lib.match("ab", "**")
}

test_match_exact if {
	lib.match("GET", "GET")
	not lib.match("get", "GET")
	not lib.match("GETX", "GET")
	not lib.match("", "GET")
	lib.match("", "")
}

# A "*" inside a value is a literal character.
test_match_infix_star_literal if {
	lib.match("/a/*/b", "/a/*/b")
	not lib.match("/a/x/b", "/a/*/b")
	not lib.match("/a//b", "/a/*/b")
}

test_match_non_string_values if {
	not lib.match(input.n, "1") with input as {"n": 1}
	not lib.match(input.n, "true") with input as {"n": true}
	not lib.match(input.n, "1*") with input as {"n": 12}
	not lib.match(input.n, "*2") with input as {"n": 12}
	not lib.match(input.n, "") with input as {"n": null}
}

# OPA's "not f(x)" is undefined, not true, when x is undefined: compiled
# negations read optional attributes with object.get. Both forms are pinned here.
test_match_undefined_value if {
	not lib.match(object.get(input, "missing", null), "*") with input as {}
	not negated_undefined with input as {}
}

negated_undefined if not lib.match(input.missing, "*")

# match_any

test_match_any if {
	lib.match_any("/b", ["/a", "/b"])
	lib.match_any("/b/c", ["/a", "/b/*"])
	lib.match_any("x.example.com", ["/a", "*.example.com"])
	not lib.match_any("/c", ["/a", "/b*", "*x"])
}

test_match_any_empty_patterns if not lib.match_any("/a", [])

test_match_any_non_string if not lib.match_any(input.n, ["*", "1"]) with input as {"n": 1}

# regex_any

test_regex_any if {
	lib.regex_any("/store/a/cart", ["^/x$", "^/store/[^/]+/cart$"])
	not lib.regex_any("/store/a/b/cart", ["^/store/[^/]+/cart$"])
	not lib.regex_any("/a", [])
}

# The regexes are used as given: anchoring is the compiler's job.
test_regex_any_unanchored_is_a_search if lib.regex_any("xx/ay", ["/a"])

test_regex_any_non_string if {
	not lib.regex_any(input.n, [".*"]) with input as {"n": 1}
	not lib.regex_any(input.n, [".*"]) with input as {"n": null}
}

# path_match: plain patterns or template regexes.

test_path_match_plain if {
	lib.path_match("/a", ["/a", "/b*"], ["^/c/[^/]+$"])
	lib.path_match("/bcd", ["/a", "/b*"], ["^/c/[^/]+$"])
}

test_path_match_regex if lib.path_match("/c/x", ["/a"], ["^/c/[^/]+$"])

test_path_match_none if {
	not lib.path_match("/c/x/y", ["/a"], ["^/c/[^/]+$"])
	not lib.path_match("/c", [], [])
}

# ip_in

test_ip_in_v4 if {
	lib.ip_in("10.1.2.3", ["10.0.0.0/8"])
	lib.ip_in("192.168.0.1", ["10.0.0.0/8", "192.168.0.1/32"])
	not lib.ip_in("11.0.0.1", ["10.0.0.0/8"])
	not lib.ip_in("192.168.0.2", ["192.168.0.1/32"])
}

test_ip_in_v6 if {
	lib.ip_in("2001:db8::1", ["2001:db8::/32"])
	lib.ip_in("::1", ["::1/128"])
	not lib.ip_in("2001:db9::1", ["2001:db8::/32"])
	not lib.ip_in("10.0.0.1", ["2001:db8::/32"])
	not lib.ip_in("2001:db8::1", ["10.0.0.0/8"])
}

test_ip_in_empty_and_garbage if {
	not lib.ip_in("", ["0.0.0.0/0"])
	not lib.ip_in("not-an-ip", ["0.0.0.0/0"])
	not lib.ip_in("10.0.0.1", [])
}

test_ip_in_non_string if {
	not lib.ip_in(input.n, ["0.0.0.0/0"]) with input as {"n": 167772161}
	not lib.ip_in(input.n, ["0.0.0.0/0"]) with input as {"n": null}
}

# claim_match: a string claim, or any string element of a list claim.

test_claim_match_string if {
	lib.claim_match("admin", ["admin"])
	lib.claim_match("admin", ["adm*"])
	not lib.claim_match("admin", ["user"])
	not lib.claim_match("", ["*"])
}

test_claim_match_list if {
	lib.claim_match(["a", "b"], ["b"])
	lib.claim_match(["a", "group-x"], ["group-*"])
	not lib.claim_match(["a", "b"], ["c"])
	not lib.claim_match([], ["*"])
}

test_claim_match_list_skips_non_strings if {
	lib.claim_match([1, "b"], ["b"])
	not lib.claim_match([1, true, null], ["*"])
	not lib.claim_match([["b"]], ["b"])
}

test_claim_match_number if {
	not lib.claim_match(input.n, ["1"]) with input as {"n": 1}
	not lib.claim_match(input.n, ["*"]) with input as {"n": 1}
}

test_claim_match_bool if {
	not lib.claim_match(input.n, ["true"]) with input as {"n": true}
	not lib.claim_match(input.n, ["*"]) with input as {"n": false}
}

test_claim_match_object if {
	not lib.claim_match(input.n, ["*"]) with input as {"n": {"a": "b"}}
	not lib.claim_match(input.n, ["b"]) with input as {"n": {"a": "b"}}
}

test_claim_match_null if not lib.claim_match(input.n, ["*"]) with input as {"n": null}

# claim_match_split: a string claim is split on spaces first.

test_claim_match_split_string if {
	lib.claim_match_split("read write", ["write"])
	lib.claim_match_split("read  write", ["write"])
	lib.claim_match_split("read write", ["wr*"])
	not lib.claim_match_split("read write", ["read write"])
	not lib.claim_match_split("read write", ["admin"])
}

test_claim_match_split_empty_elements_skipped if not lib.claim_match_split("  ", [""])

test_claim_match_split_list if {
	lib.claim_match_split(["read", "write"], ["write"])
	not lib.claim_match_split(["read write"], ["write"])
}

test_claim_match_split_non_string if {
	not lib.claim_match_split(input.n, ["*"]) with input as {"n": 1}
	not lib.claim_match_split(input.n, ["*"]) with input as {"n": {"a": "b"}}
	not lib.claim_match_split(input.n, ["*"]) with input as {"n": null}
}

# request_principal_match: iss and sub against [iss_mode, iss, sub_mode, sub].

auth := {"issuer": "https://issuer.example.com", "subject": "alice", "principal": "https://issuer.example.com/alice"}

test_request_principal_exact if {
	lib.request_principal_match(auth, [["exact", "https://issuer.example.com", "exact", "alice"]])
	not lib.request_principal_match(auth, [["exact", "https://issuer.example.com", "exact", "bob"]])
	not lib.request_principal_match(auth, [["exact", "https://other.example.com", "exact", "alice"]])
}

test_request_principal_any if lib.request_principal_match(auth, [["present", "", "present", ""]])

test_request_principal_modes if {
	lib.request_principal_match(auth, [["exact", "https://issuer.example.com", "present", ""]])
	lib.request_principal_match(auth, [["exact", "https://issuer.example.com", "prefix", "al"]])
	lib.request_principal_match(auth, [["any", "", "exact", "alice"]])
	lib.request_principal_match(auth, [["suffix", ".example.com", "exact", "alice"]])
	lib.request_principal_match(auth, [["prefix", "https://issuer", "present", ""]])
	lib.request_principal_match(auth, [["any", "", "suffix", "ice"]])
	not lib.request_principal_match(auth, [["suffix", ".example.org", "exact", "alice"]])
}

# A '*' that the mode does not make a wildcard is a literal.
test_request_principal_literal_star if {
	star := {"issuer": "https://iss*", "subject": "ali*"}
	lib.request_principal_match(star, [["exact", "https://iss*", "exact", "ali*"]])
	not lib.request_principal_match(auth, [["exact", "https://issuer.example.com", "exact", "*"]])
	not lib.request_principal_match(auth, [["exact", "https://iss*", "exact", "alice"]])
}

test_request_principal_any_pair if lib.request_principal_match(auth, [["exact", "x", "exact", "y"], ["exact", "https://issuer.example.com", "exact", "alice"]])

test_request_principal_missing_sub if {
	no_sub := {"issuer": "https://issuer.example.com", "subject": ""}
	not lib.request_principal_match(no_sub, [["present", "", "present", ""]])
	not lib.request_principal_match(no_sub, [["exact", "https://issuer.example.com", "present", ""]])
	not lib.request_principal_match(no_sub, [["any", "", "suffix", "x"]])
	absent := {"issuer": "https://issuer.example.com"}
	not lib.request_principal_match(absent, [["present", "", "present", ""]])
	not lib.request_principal_match(absent, [["any", "", "suffix", ""]])
}

test_request_principal_no_token if {
	not lib.request_principal_match(input.auth, [["present", "", "present", ""]]) with input as {"auth": null}

	# The compiled form: object.get makes the negation hold without a token.
	not lib.request_principal_match(object.get(input, "auth", null), [["any", "", "suffix", ""]]) with input as {}
}

test_request_principal_no_pairs if not lib.request_principal_match(auth, [])

# metadata_match: "v" patterns match a string value, "[v]" ones (passed as
# lists) an element of a list value.

test_metadata_match_string if {
	lib.metadata_match("update", ["update"], [])
	lib.metadata_match("update", ["up*"], [])
	not lib.metadata_match("update", [], ["update"])
	not lib.metadata_match("update", ["select"], ["update"])
}

test_metadata_match_list if {
	lib.metadata_match(["select", "update"], [], ["update"])
	lib.metadata_match(["select", "update"], ["x"], ["upd*"])
	not lib.metadata_match(["select", "update"], ["update"], [])
	not lib.metadata_match([1, true], [], ["*"])
}

test_metadata_match_other_types if {
	not lib.metadata_match(input.n, ["*"], ["*"]) with input as {"n": 1}
	not lib.metadata_match(input.n, ["*"], ["*"]) with input as {"n": null}
	not lib.metadata_match(input.n, ["*"], ["*"]) with input as {"n": {"a": "b"}}
}
