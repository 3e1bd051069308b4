package route

import (
	"errors"
	"fmt"
	"net/http"
	"net/textproto"
	"regexp"
	"strconv"
	"strings"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
)

// routeMatch is a compiled envoy.config.route.v3.RouteMatch.
type routeMatch struct {
	path    pathMatch
	grpc    bool
	headers []headerMatch
	query   []queryMatch
}

func (m *routeMatch) matches(r *http.Request, path string) bool {
	if !m.path.matches(path) {
		return false
	}
	if m.grpc && !isGRPC(r) {
		return false
	}
	for i := range m.headers {
		if !m.headers[i].matches(r) {
			return false
		}
	}
	if len(m.query) > 0 {
		raw := ""
		if r.URL != nil {
			raw = r.URL.RawQuery
		}
		for i := range m.query {
			if !m.query[i].matches(raw) {
				return false
			}
		}
	}
	return true
}

func compileRouteMatch(at loc, m *routev3.RouteMatch) (routeMatch, error) {
	var out routeMatch
	if m == nil {
		return out, at.errf("match", "missing; every route needs a match")
	}
	fold := m.GetCaseSensitive() != nil && !m.GetCaseSensitive().GetValue()
	switch ps := m.GetPathSpecifier().(type) {
	case *routev3.RouteMatch_Prefix:
		out.path = pathMatch{kind: pathPrefix, value: ps.Prefix, fold: fold}
	case *routev3.RouteMatch_Path:
		out.path = pathMatch{kind: pathExact, value: ps.Path, fold: fold}
	case *routev3.RouteMatch_PathSeparatedPrefix:
		p := ps.PathSeparatedPrefix
		if p == "" || strings.HasSuffix(p, "/") || strings.ContainsAny(p, "?#") {
			return out, at.errf("match.path_separated_prefix", "%q must be non-empty, must not end in / and must not contain ? or #", p)
		}
		out.path = pathMatch{kind: pathSeparated, value: p, fold: fold}
	case *routev3.RouteMatch_SafeRegex:
		// case_sensitive has no effect on regex matches in Envoy.
		re, err := compileFullRegex(ps.SafeRegex)
		if err != nil {
			return out, at.err("match.safe_regex.regex", err)
		}
		lit, _ := re.LiteralPrefix()
		out.path = pathMatch{kind: pathRegex, value: lit, re: re}
	case *routev3.RouteMatch_ConnectMatcher_:
		return out, at.unsupported("match.connect_matcher", "CONNECT routes")
	case *routev3.RouteMatch_PathMatchPolicy:
		return out, at.unsupported("match.path_match_policy", "path match extensions")
	case nil:
		return out, at.errf("match", "no path specifier: set one of prefix, path, safe_regex or path_separated_prefix")
	default:
		return out, at.unsupported("match", fmt.Sprintf("path specifier %T", ps))
	}
	switch {
	case m.GetRuntimeFraction() != nil:
		return out, at.unsupported("match.runtime_fraction", "runtime-fraction matching")
	case m.GetTlsContext() != nil:
		return out, at.unsupported("match.tls_context", "TLS context matching")
	case len(m.GetDynamicMetadata()) > 0:
		return out, at.unsupported("match.dynamic_metadata", "dynamic metadata matching")
	case len(m.GetFilterState()) > 0:
		return out, at.unsupported("match.filter_state", "filter state matching")
	case len(m.GetCookies()) > 0:
		return out, at.unsupported("match.cookies", "cookie matching")
	}
	out.grpc = m.GetGrpc() != nil
	for i, h := range m.GetHeaders() {
		hm, err := compileHeaderMatch(h)
		if err != nil {
			return out, at.err(fmt.Sprintf("match.headers[%d]", i), err)
		}
		out.headers = append(out.headers, hm)
	}
	for i, q := range m.GetQueryParameters() {
		qm, err := compileQueryMatch(q)
		if err != nil {
			return out, at.err(fmt.Sprintf("match.query_parameters[%d]", i), err)
		}
		out.query = append(out.query, qm)
	}
	return out, nil
}

type pathKind uint8

const (
	pathPrefix pathKind = iota
	pathExact
	pathSeparated
	pathRegex
)

// pathMatch matches the request path without its query string.
type pathMatch struct {
	kind  pathKind
	value string // the prefix or path; for a regex, its literal prefix
	fold  bool   // case_sensitive: false (ASCII case folding, as Envoy)
	re    *regexp.Regexp
}

func (m *pathMatch) matches(path string) bool {
	switch m.kind {
	case pathPrefix:
		return hasPrefix(path, m.value, m.fold)
	case pathExact:
		if m.fold {
			return asciiEqualFold(path, m.value)
		}
		return path == m.value
	case pathSeparated:
		return hasPrefix(path, m.value, m.fold) && (len(path) == len(m.value) || path[len(m.value)] == '/')
	case pathRegex:
		// The literal every match starts with rules most paths out without
		// running the regex engine.
		return strings.HasPrefix(path, m.value) && m.re.MatchString(path)
	}
	return false
}

// matchedLen is the length of the part of path that prefix_rewrite replaces:
// the configured prefix or path, or (for regex routes) the whole path.
func (m *pathMatch) matchedLen(path string) int {
	if m.kind == pathRegex {
		return len(path)
	}
	return len(m.value)
}

func isGRPC(r *http.Request) bool {
	ct := firstHeader(r.Header, "Content-Type")
	rest, ok := strings.CutPrefix(ct, "application/grpc")
	return ok && (rest == "" || rest[0] == '+' || rest[0] == ';')
}

func firstHeader(h http.Header, key string) string {
	if v := h[key]; len(v) > 0 {
		return v[0]
	}
	return ""
}

// headerRef names where a header matcher or hash policy reads its value:
// Envoy's pseudo-headers map onto the request's fields.
type headerRef struct {
	kind refKind
	key  string // canonical MIME key for refHeader; the name as configured otherwise
}

type refKind uint8

const (
	refHeader refKind = iota
	refAuthority
	refMethod
	refPath
	refScheme
	refAbsent // another pseudo-header: never present on a request
)

func newHeaderRef(name string) headerRef {
	switch strings.ToLower(name) {
	case ":authority":
		return headerRef{kind: refAuthority, key: name}
	case ":method":
		return headerRef{kind: refMethod, key: name}
	case ":path":
		return headerRef{kind: refPath, key: name}
	case ":scheme":
		return headerRef{kind: refScheme, key: name}
	}
	if strings.HasPrefix(name, ":") {
		return headerRef{kind: refAbsent, key: name}
	}
	return headerRef{kind: refHeader, key: textproto.CanonicalMIMEHeaderKey(name)}
}

// value is the header's value as Envoy sees it for matching: several values
// joined with ",". ok is false when the header is absent.
func (h headerRef) value(r *http.Request) (string, bool) {
	switch h.kind {
	case refHeader:
		vs := r.Header[h.key]
		switch len(vs) {
		case 0:
			return "", false
		case 1:
			return vs[0], true
		}
		return strings.Join(vs, ","), true
	case refAuthority:
		return r.Host, r.Host != ""
	case refMethod:
		m := r.Method
		if m == "" {
			m = http.MethodGet
		}
		return m, true
	case refPath:
		// As sent, in origin form: a proxy request's absolute target
		// (http://host/p) is matched as Envoy sees it, by its path.
		if strings.HasPrefix(r.RequestURI, "/") {
			return r.RequestURI, true
		}
		if r.URL == nil {
			return "", false
		}
		return r.URL.RequestURI(), true
	case refScheme:
		return requestScheme(r), true
	}
	return "", false
}

// requestScheme is the :scheme Envoy would see for r: the absolute-form
// request's scheme, else that of the connection.
func requestScheme(r *http.Request) string {
	if r.URL != nil && r.URL.Scheme != "" {
		return strings.ToLower(r.URL.Scheme)
	}
	if r.TLS != nil {
		return "https"
	}
	return "http"
}

type headerKind uint8

const (
	headerPresent headerKind = iota
	headerString
	headerExactLegacy // deprecated exact_match: an empty value matches any value
	headerRange
)

// headerMatch is a compiled envoy.config.route.v3.HeaderMatcher.
type headerMatch struct {
	ref            headerRef
	kind           headerKind
	present        bool
	str            StringMatcher
	exact          string
	start, end     int64
	invert         bool
	missingAsEmpty bool
}

func (m *headerMatch) matches(r *http.Request) bool {
	v, ok := m.ref.value(r)
	if m.kind == headerPresent {
		return (ok == m.present) != m.invert
	}
	if !ok {
		if !m.missingAsEmpty {
			return false // an absent header never matches, inverted or not
		}
		v = ""
	}
	var match bool
	switch m.kind {
	case headerString:
		match = m.str.Match(v)
	case headerExactLegacy:
		match = m.exact == "" || v == m.exact
	case headerRange:
		n, err := strconv.ParseInt(v, 10, 64)
		match = err == nil && m.start <= n && n < m.end
	}
	return match != m.invert
}

func compileHeaderMatch(h *routev3.HeaderMatcher) (headerMatch, error) {
	if h.GetName() == "" {
		return headerMatch{}, errors.New("name is empty")
	}
	m := headerMatch{ref: newHeaderRef(h.GetName()), invert: h.GetInvertMatch(), missingAsEmpty: h.GetTreatMissingHeaderAsEmpty()}
	var err error
	switch s := h.GetHeaderMatchSpecifier().(type) {
	case nil:
		m.kind, m.present = headerPresent, true
	case *routev3.HeaderMatcher_PresentMatch:
		m.kind, m.present = headerPresent, s.PresentMatch
	case *routev3.HeaderMatcher_StringMatch:
		m.kind = headerString
		if m.str, err = compileStringMatcher(s.StringMatch); err != nil {
			return m, fmt.Errorf("string_match: %w", err)
		}
	case *routev3.HeaderMatcher_ExactMatch:
		//lint:ignore SA1019 Envoy still honours this deprecated field, so the sidecar must too.
		m.kind, m.exact = headerExactLegacy, s.ExactMatch
	case *routev3.HeaderMatcher_PrefixMatch:
		//lint:ignore SA1019 Envoy still honours this deprecated field, so the sidecar must too.
		m.kind, m.str = headerString, StringMatcher{kind: stringPrefix, value: s.PrefixMatch}
	case *routev3.HeaderMatcher_SuffixMatch:
		//lint:ignore SA1019 Envoy still honours this deprecated field, so the sidecar must too.
		m.kind, m.str = headerString, StringMatcher{kind: stringSuffix, value: s.SuffixMatch}
	case *routev3.HeaderMatcher_ContainsMatch:
		//lint:ignore SA1019 Envoy still honours this deprecated field, so the sidecar must too.
		m.kind, m.str = headerString, StringMatcher{kind: stringContains, value: s.ContainsMatch}
	case *routev3.HeaderMatcher_SafeRegexMatch:
		//lint:ignore SA1019 Envoy still honours this deprecated field, so the sidecar must too.
		rm := s.SafeRegexMatch
		re, err := compileFullRegex(rm)
		if err != nil {
			return m, fmt.Errorf("safe_regex_match: %w", err)
		}
		m.kind, m.str = headerString, StringMatcher{kind: stringRegex, value: rm.GetRegex(), re: re}
	case *routev3.HeaderMatcher_RangeMatch:
		m.kind, m.start, m.end = headerRange, s.RangeMatch.GetStart(), s.RangeMatch.GetEnd()
		if m.start > m.end {
			return m, fmt.Errorf("range_match: start %d is after end %d", m.start, m.end)
		}
	default:
		return m, fmt.Errorf("header match specifier %T: %w", s, ErrUnsupported)
	}
	return m, nil
}

// queryMatch is a compiled envoy.config.route.v3.QueryParameterMatcher. As in
// Envoy's router, the raw (still percent-encoded) query string is searched and
// only a parameter's first value counts.
type queryMatch struct {
	name       string
	presentSet bool
	present    bool
	str        *StringMatcher // nil: presence only
}

func (m *queryMatch) matches(rawQuery string) bool {
	v, ok := queryValue(rawQuery, m.name)
	if m.presentSet {
		return ok == m.present
	}
	if !ok {
		return false
	}
	return m.str == nil || m.str.Match(v)
}

func compileQueryMatch(q *routev3.QueryParameterMatcher) (queryMatch, error) {
	m := queryMatch{name: q.GetName()}
	if m.name == "" {
		return m, errors.New("name is empty")
	}
	switch s := q.GetQueryParameterMatchSpecifier().(type) {
	case nil:
	case *routev3.QueryParameterMatcher_PresentMatch:
		m.presentSet, m.present = true, s.PresentMatch
	case *routev3.QueryParameterMatcher_StringMatch:
		sm, err := compileStringMatcher(s.StringMatch)
		if err != nil {
			return m, fmt.Errorf("string_match: %w", err)
		}
		m.str = &sm
	default:
		return m, fmt.Errorf("query parameter match specifier %T: %w", s, ErrUnsupported)
	}
	return m, nil
}

// queryValue returns the first value of parameter name in a raw query string
// (keys and values compared and returned undecoded; a key without "=" has the
// empty value).
func queryValue(raw, name string) (string, bool) {
	for raw != "" {
		var part string
		part, raw, _ = strings.Cut(raw, "&")
		k, v, _ := strings.Cut(part, "=")
		if k == name && part != "" {
			return v, true
		}
	}
	return "", false
}
