package route

import (
	"errors"
	"fmt"
	"regexp"
	"regexp/syntax"
	"strings"

	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
)

// Limits on regexes. Envoy refuses, by default, a regex whose RE2 program is
// larger than 100 instructions; Go's compiler counts differently, so these
// limits are looser, and only keep a configuration from making New slow.
const (
	maxRegexLen  = 1024
	maxRegexProg = 10_000
)

// parseRegex parses an RE2 pattern within the limits.
func parseRegex(pat string) (*syntax.Regexp, error) {
	if len(pat) > maxRegexLen {
		return nil, fmt.Errorf("regex of %d bytes is longer than the limit of %d", len(pat), maxRegexLen)
	}
	parsed, err := syntax.Parse(pat, syntax.Perl)
	if err != nil {
		return nil, fmt.Errorf("invalid regex %q: %w", pat, err)
	}
	prog, err := syntax.Compile(parsed.Simplify())
	if err != nil {
		return nil, fmt.Errorf("invalid regex %q: %w", pat, err)
	}
	if len(prog.Inst) > maxRegexProg {
		return nil, fmt.Errorf("regex %q compiles to %d instructions, more than the limit of %d", pat, len(prog.Inst), maxRegexProg)
	}
	return parsed, nil
}

// compileFullRegex compiles an Envoy RegexMatcher for a full match, as RE2's
// FullMatch: the pattern must match the whole input. The pattern is parsed on
// its own first, so that it cannot escape the anchoring group: "a)|(b" is an
// error, as in RE2, and an unterminated \Q quotes only to the pattern's end.
func compileFullRegex(m *matcherv3.RegexMatcher) (*regexp.Regexp, error) {
	parsed, err := parseRegex(m.GetRegex())
	if err != nil {
		return nil, err
	}
	return regexp.Compile(`^(?:` + parsed.String() + `)$`)
}

// compileRegex compiles an unanchored pattern (regex_rewrite searches).
func compileRegex(m *matcherv3.RegexMatcher) (*regexp.Regexp, error) {
	if _, err := parseRegex(m.GetRegex()); err != nil {
		return nil, err
	}
	return regexp.Compile(m.GetRegex())
}

// regexRewrite is a compiled RegexMatchAndSubstitute: every match of the
// pattern is replaced, as RE2::GlobalReplace does.
type regexRewrite struct {
	re       *regexp.Regexp
	template string // in regexp.Expand syntax
}

func (rw *regexRewrite) replace(s string) string { return rw.re.ReplaceAllString(s, rw.template) }

func compileRegexRewrite(m *matcherv3.RegexMatchAndSubstitute) (*regexRewrite, error) {
	if m.GetPattern() == nil {
		return nil, errors.New("pattern is missing")
	}
	re, err := compileRegex(m.GetPattern())
	if err != nil {
		return nil, err
	}
	tmpl, err := re2Substitution(m.GetSubstitution(), re.NumSubexp())
	if err != nil {
		return nil, err
	}
	return &regexRewrite{re: re, template: tmpl}, nil
}

// re2Substitution translates an RE2 rewrite string (\0..\9 name groups, \\ is
// a backslash) into Go's template syntax, rejecting what RE2 rejects.
func re2Substitution(sub string, groups int) (string, error) {
	var b strings.Builder
	for i := 0; i < len(sub); i++ {
		switch c := sub[i]; c {
		case '$':
			b.WriteString("$$")
		case '\\':
			if i+1 == len(sub) {
				return "", fmt.Errorf("substitution %q ends in a lone backslash", sub)
			}
			i++
			switch d := sub[i]; {
			case d == '\\':
				b.WriteByte('\\')
			case '0' <= d && d <= '9':
				n := int(d - '0')
				if n > groups {
					return "", fmt.Errorf("substitution %q refers to group \\%d but the pattern has %d", sub, n, groups)
				}
				fmt.Fprintf(&b, "${%d}", n)
			default:
				return "", fmt.Errorf("substitution %q: invalid escape \\%c (only \\0 to \\9 and \\\\ are allowed)", sub, d)
			}
		default:
			b.WriteByte(c)
		}
	}
	return b.String(), nil
}

// StringMatcher is a compiled envoy.type.matcher.v3.StringMatcher.
type StringMatcher struct {
	kind       stringKind
	value      string // the pattern; for exact/prefix/suffix/contains
	ignoreCase bool
	re         *regexp.Regexp
}

type stringKind uint8

const (
	stringExact stringKind = iota
	stringPrefix
	stringSuffix
	stringContains
	stringRegex
)

// Match reports whether s satisfies the matcher.
func (m *StringMatcher) Match(s string) bool {
	switch m.kind {
	case stringExact:
		if m.ignoreCase {
			return asciiEqualFold(s, m.value)
		}
		return s == m.value
	case stringPrefix:
		return hasPrefix(s, m.value, m.ignoreCase)
	case stringSuffix:
		if len(s) < len(m.value) {
			return false
		}
		if m.ignoreCase {
			return asciiEqualFold(s[len(s)-len(m.value):], m.value)
		}
		return strings.HasSuffix(s, m.value)
	case stringContains:
		if m.ignoreCase {
			return asciiContainsFold(s, m.value)
		}
		return strings.Contains(s, m.value)
	case stringRegex:
		return m.re.MatchString(s)
	}
	return false
}

// String describes the matcher, e.g. `prefix "https://" (ignore case)`.
func (m *StringMatcher) String() string {
	k := [...]string{"exact", "prefix", "suffix", "contains", "safe_regex"}[m.kind]
	if m.ignoreCase {
		return fmt.Sprintf("%s %q (ignore case)", k, m.value)
	}
	return fmt.Sprintf("%s %q", k, m.value)
}

// NewStringMatcher compiles an Envoy StringMatcher (routes use it, and so do
// upstream subject-alt-name checks).
func NewStringMatcher(m *matcherv3.StringMatcher) (StringMatcher, error) {
	return compileStringMatcher(m)
}

// Exact returns the pattern of an exact matcher.
func (m *StringMatcher) Exact() (string, bool) { return m.value, m.kind == stringExact }

func compileStringMatcher(m *matcherv3.StringMatcher) (StringMatcher, error) {
	sm := StringMatcher{ignoreCase: m.GetIgnoreCase()}
	switch p := m.GetMatchPattern().(type) {
	case *matcherv3.StringMatcher_Exact:
		sm.kind, sm.value = stringExact, p.Exact
	case *matcherv3.StringMatcher_Prefix:
		sm.kind, sm.value = stringPrefix, p.Prefix
	case *matcherv3.StringMatcher_Suffix:
		sm.kind, sm.value = stringSuffix, p.Suffix
	case *matcherv3.StringMatcher_Contains:
		sm.kind, sm.value = stringContains, p.Contains
	case *matcherv3.StringMatcher_SafeRegex:
		if sm.ignoreCase {
			return sm, errors.New("ignore_case has no effect for safe_regex; use (?i) in the pattern")
		}
		re, err := compileFullRegex(p.SafeRegex)
		if err != nil {
			return sm, err
		}
		sm.kind, sm.value, sm.re = stringRegex, p.SafeRegex.GetRegex(), re
	case *matcherv3.StringMatcher_Custom:
		return sm, fmt.Errorf("custom string matcher: %w", ErrUnsupported)
	case nil:
		return sm, errors.New("no match pattern: set one of exact, prefix, suffix, contains or safe_regex")
	default:
		return sm, fmt.Errorf("match pattern %T: %w", p, ErrUnsupported)
	}
	return sm, nil
}

func hasPrefix(s, prefix string, fold bool) bool {
	if len(s) < len(prefix) {
		return false
	}
	if fold {
		return asciiEqualFold(s[:len(prefix)], prefix)
	}
	return s[:len(prefix)] == prefix
}

func asciiLower(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + ('a' - 'A')
	}
	return c
}

// asciiEqualFold is Envoy's absl::EqualsIgnoreCase: ASCII letters only, unlike
// strings.EqualFold, which also folds Unicode.
func asciiEqualFold(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		if asciiLower(a[i]) != asciiLower(b[i]) {
			return false
		}
	}
	return true
}

func asciiContainsFold(s, sub string) bool {
	for i := 0; i+len(sub) <= len(s); i++ {
		if asciiEqualFold(s[i:i+len(sub)], sub) {
			return true
		}
	}
	return false
}
