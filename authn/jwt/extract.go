package jwt

import (
	"errors"
	"fmt"
	"net/url"
	"sort"
	"strings"
)

type locKind uint8

const (
	locHeader locKind = iota
	locParam
	locCookie
)

// location is one place a token may be, shared by every rule that names it, as
// Envoy's extractor merges them (keyed by header name + prefix, param, cookie).
type location struct {
	kind   locKind
	name   string // lower-case header name, param or cookie name
	prefix string // headers only
	// Issuers of the rules naming this location; a token from here whose iss is
	// not among them is invalid. anyIssuer: some such rule has an empty issuer.
	issuers   map[string]bool
	anyIssuer bool
	rules     []int // indexes of those rules, in rule order
}

func (l *location) allows(iss string) bool { return l.anyIssuer || l.issuers[iss] }

func (l *location) String() string {
	switch l.kind {
	case locHeader:
		if l.prefix != "" {
			return fmt.Sprintf("header %s (prefix %q)", l.name, l.prefix)
		}
		return "header " + l.name
	case locParam:
		return "query parameter " + l.name
	default:
		return "cookie " + l.name
	}
}

// extractor finds tokens in a request, in Envoy's order: headers (sorted by
// name+prefix), then query parameters, then cookies (each sorted by name).
type extractor struct {
	headers []*location
	params  []*location
	cookies map[string]*location
	cookieN []*location
}

type token struct {
	raw string
	loc *location
}

// errDuplicateToken: a header location yields more than one token.
var errDuplicateToken = errors.New("more than one token in the same header")

func newExtractor(rules []Rule) *extractor {
	hs := map[string]*location{}
	ps := map[string]*location{}
	cs := map[string]*location{}
	add := func(m map[string]*location, key string, l location, ri int, iss string) {
		cur, ok := m[key]
		if !ok {
			l.issuers = map[string]bool{}
			cur = &l
			m[key] = cur
		}
		if iss == "" {
			cur.anyIssuer = true
		} else {
			cur.issuers[iss] = true
		}
		if n := len(cur.rules); n == 0 || cur.rules[n-1] != ri {
			cur.rules = append(cur.rules, ri)
		}
	}
	for i, r := range rules {
		for _, h := range r.FromHeaders {
			name := strings.ToLower(h.Name)
			add(hs, name+h.Prefix, location{kind: locHeader, name: name, prefix: h.Prefix}, i, r.Issuer)
		}
		for _, p := range r.FromParams {
			add(ps, p, location{kind: locParam, name: p}, i, r.Issuer)
		}
		for _, c := range r.FromCookies {
			add(cs, c, location{kind: locCookie, name: c}, i, r.Issuer)
		}
		if len(r.FromHeaders) == 0 && len(r.FromParams) == 0 && len(r.FromCookies) == 0 {
			add(hs, "authorization"+"Bearer ", location{kind: locHeader, name: "authorization", prefix: "Bearer "}, i, r.Issuer)
			add(ps, "access_token", location{kind: locParam, name: "access_token"}, i, r.Issuer)
		}
	}
	e := &extractor{headers: sorted(hs), params: sorted(ps), cookies: cs, cookieN: sorted(cs)}
	return e
}

func sorted(m map[string]*location) []*location {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := make([]*location, len(keys))
	for i, k := range keys {
		out[i] = m[k]
	}
	return out
}

// extract returns every token the request carries in a configured location.
// Each header value is a separate token, as in Envoy; a prefix is searched for
// anywhere in the value and a value without it is skipped. Unlike Envoy, two
// tokens in one header location (two Authorization headers) are an error: which
// one the application reads is anyone's guess.
func (e *extractor) extract(r Request, out []token) ([]token, *location, error) {
	for _, l := range e.headers {
		n := 0
		for _, h := range r.Headers {
			if !strings.EqualFold(h.Name, l.name) {
				continue
			}
			v := h.Value
			if l.prefix != "" {
				pos := strings.Index(v, l.prefix)
				if pos < 0 {
					continue
				}
				v = jwtAfter(v, pos+len(l.prefix))
			}
			if n++; n > 1 {
				return out, l, errDuplicateToken
			}
			out = append(out, token{raw: v, loc: l})
		}
	}
	if len(e.params) > 0 {
		if _, q, ok := strings.Cut(r.Path, "?"); ok {
			for _, l := range e.params {
				if v, ok := firstParam(q, l.name); ok {
					out = append(out, token{raw: v, loc: l})
				}
			}
		}
	}
	if len(e.cookies) > 0 {
		var found map[string]string
		for _, h := range r.Headers {
			if strings.EqualFold(h.Name, "cookie") {
				found = parseCookies(h.Value, e.cookies, found)
			}
		}
		for _, l := range e.cookieN {
			if v, ok := found[l.name]; ok {
				out = append(out, token{raw: v, loc: l})
			}
		}
	}
	return out, nil, nil
}

// jwtAfter is Envoy's extractJWT: the token is the run of base64url-or-dot
// characters that starts at the first such character at or after i, so
// "Bearer <jwt> extra" and "Bearer <jwt>," yield <jwt> as in Envoy. With no
// such character it is the whole value, which then fails as malformed.
func jwtAfter(v string, i int) string {
	for ; i < len(v); i++ {
		if isJWTChar(v[i]) {
			j := i + 1
			for j < len(v) && isJWTChar(v[j]) {
				j++
			}
			return v[i:j]
		}
	}
	return v
}

func isJWTChar(c byte) bool {
	return c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.'
}

// firstParam returns the first value of name in a raw query, decoded as a query
// component ('+' is a space). A name without '=' has the empty value.
func firstParam(q, name string) (string, bool) {
	if i := strings.IndexByte(q, '#'); i >= 0 {
		q = q[:i]
	}
	for q != "" {
		var seg string
		seg, q, _ = strings.Cut(q, "&")
		k, v, _ := strings.Cut(seg, "=")
		if k != name {
			if dk, err := url.QueryUnescape(k); err != nil || dk != name {
				continue
			}
		}
		if dv, err := url.QueryUnescape(v); err == nil {
			v = dv
		}
		return v, true
	}
	return "", false
}

// parseCookies adds the wanted cookies of one Cookie header to found; the first
// occurrence of a name wins and surrounding double quotes are removed, as in
// Envoy's Http::Utility::parseCookies.
func parseCookies(header string, want map[string]*location, found map[string]string) map[string]string {
	for header != "" {
		var part string
		part, header, _ = strings.Cut(header, ";")
		part = strings.TrimLeft(part, " \t")
		k, v, ok := strings.Cut(part, "=")
		if !ok || want[k] == nil {
			continue
		}
		if _, dup := found[k]; dup {
			continue
		}
		if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
			v = v[1 : len(v)-1]
		}
		if found == nil {
			found = map[string]string{}
		}
		found[k] = v
	}
	return found
}
