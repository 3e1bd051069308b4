package route

import (
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
)

// hashPolicy is a compiled RouteAction.HashPolicy.
type hashPolicy struct {
	kind     hashKind
	header   headerRef
	rewrite  *regexRewrite // header regex_rewrite
	name     string        // cookie or query parameter name
	terminal bool

	// A cookie policy with a ttl generates its cookie when it is absent.
	cookiePath string
	cookieTTL  time.Duration
	hasTTL     bool
}

type hashKind uint8

const (
	hashHeader hashKind = iota
	hashCookie
	hashSourceIP
	hashQuery
)

func compileHashPolicies(at loc, hps []*routev3.RouteAction_HashPolicy) ([]hashPolicy, error) {
	var out []hashPolicy
	for i, hp := range hps {
		field := fmt.Sprintf("route.hash_policy[%d]", i)
		p := hashPolicy{terminal: hp.GetTerminal()}
		switch s := hp.GetPolicySpecifier().(type) {
		case *routev3.RouteAction_HashPolicy_Header_:
			if s.Header.GetHeaderName() == "" {
				return nil, at.errf(field+".header.header_name", "is empty")
			}
			p.kind, p.header = hashHeader, newHeaderRef(s.Header.GetHeaderName())
			if rr := s.Header.GetRegexRewrite(); rr != nil {
				rw, err := compileRegexRewrite(rr)
				if err != nil {
					return nil, at.err(field+".header.regex_rewrite", err)
				}
				p.rewrite = rw
			}
		case *routev3.RouteAction_HashPolicy_Cookie_:
			// A cookie with a ttl is generated when absent (HashKeyCookie),
			// as Envoy does; without a ttl, no cookie is no key.
			if s.Cookie.GetName() == "" {
				return nil, at.errf(field+".cookie.name", "is empty")
			}
			if strings.ContainsAny(s.Cookie.GetName(), "=;, \t\r\n\"") {
				return nil, at.errf(field+".cookie.name", "%q is not a cookie name", s.Cookie.GetName())
			}
			if strings.ContainsAny(s.Cookie.GetPath(), ";\r\n\x00") {
				return nil, at.errf(field+".cookie.path", "%q may not hold ';' or control characters", s.Cookie.GetPath())
			}
			if len(s.Cookie.GetAttributes()) > 0 {
				return nil, at.unsupported(field+".cookie.attributes", "attributes of generated cookies")
			}
			p.kind, p.name, p.cookiePath = hashCookie, s.Cookie.GetName(), s.Cookie.GetPath()
			if s.Cookie.GetTtl() != nil {
				ttl, err := duration(s.Cookie.GetTtl())
				if err != nil {
					return nil, at.err(field+".cookie.ttl", err)
				}
				p.cookieTTL, p.hasTTL = ttl, true
			}
		case *routev3.RouteAction_HashPolicy_ConnectionProperties_:
			if !s.ConnectionProperties.GetSourceIp() {
				continue // hashes nothing, as in Envoy
			}
			p.kind = hashSourceIP
		case *routev3.RouteAction_HashPolicy_QueryParameter_:
			if s.QueryParameter.GetName() == "" {
				return nil, at.errf(field+".query_parameter.name", "is empty")
			}
			p.kind, p.name = hashQuery, s.QueryParameter.GetName()
		case *routev3.RouteAction_HashPolicy_FilterState_:
			return nil, at.unsupported(field+".filter_state", "hashing on filter state")
		case nil:
			return nil, at.errf(field, "no policy: set one of header, cookie, connection_properties or query_parameter")
		default:
			return nil, at.unsupported(field, fmt.Sprintf("hash policy %T", s))
		}
		out = append(out, p)
	}
	return out, nil
}

// HashKey computes the request's consistent-hash key from the route's hash
// policies exactly as Envoy does (xxHash64 of each value, combined by
// rotate-and-xor, stopping at a terminal policy once a key exists). sourceIP
// is the downstream address without port, "" when unknown. ok is false when
// no policy produced a value: the load balancer then picks at random.
func (rt *Route) HashKey(r *http.Request, sourceIP string) (key uint64, ok bool) {
	key, ok, _ = rt.hashKey(r, sourceIP, "")
	return key, ok
}

// HashKeyCookie is HashKey for a request about to be forwarded: a cookie
// policy with a ttl whose cookie the request lacks generates one, as Envoy
// does: its value is derived from remoteAddr (the downstream address with
// its port), the key hashes that value, and setCookies holds the Set-Cookie
// values (name="value"; Max-Age=ttl; Path=path; HttpOnly) to add to the
// response so the client sends it from then on.
func (rt *Route) HashKeyCookie(r *http.Request, sourceIP, remoteAddr string) (key uint64, ok bool, setCookies []string) {
	return rt.hashKey(r, sourceIP, remoteAddr)
}

func (rt *Route) hashKey(r *http.Request, sourceIP, remoteAddr string) (key uint64, ok bool, setCookies []string) {
	for i := range rt.hash {
		p := &rt.hash[i]
		h, got := p.evaluate(r, sourceIP)
		if !got && p.kind == hashCookie && p.hasTTL && remoteAddr != "" {
			var set string
			h, set = p.generateCookie(remoteAddr)
			got = true
			setCookies = append(setCookies, set)
		}
		if got {
			if ok {
				key = (key<<1 | key>>63) ^ h
			} else {
				key = h
			}
			ok = true
		}
		if p.terminal && ok {
			break
		}
	}
	return key, ok, setCookies
}

// generateCookie makes the value of an absent hash cookie, Envoy's way (the
// hex xxHash64 of the downstream address), and returns its hash and its
// Set-Cookie value.
func (p *hashPolicy) generateCookie(remoteAddr string) (uint64, string) {
	value := strconv.FormatUint(xxHash64(remoteAddr, 0), 16)
	var b strings.Builder
	b.WriteString(p.name + `="` + value + `"`)
	if p.cookieTTL > 0 {
		b.WriteString("; Max-Age=" + strconv.FormatInt(int64(p.cookieTTL/time.Second), 10))
	}
	if p.cookiePath != "" {
		b.WriteString("; Path=" + p.cookiePath)
	}
	b.WriteString("; HttpOnly")
	return xxHash64(value, 0), b.String()
}

func (p *hashPolicy) evaluate(r *http.Request, sourceIP string) (uint64, bool) {
	switch p.kind {
	case hashHeader:
		var vals []string
		if p.header.kind == refHeader {
			vals = r.Header[p.header.key]
		} else if v, ok := p.header.value(r); ok {
			vals = []string{v}
		}
		if len(vals) == 0 {
			return 0, false
		}
		if p.rewrite == nil && len(vals) == 1 {
			return xxHash64(vals[0], 0), true
		}
		vs := slices.Clone(vals)
		if p.rewrite != nil {
			for i := range vs {
				vs[i] = p.rewrite.replace(vs[i])
			}
		}
		// Sorted, so that the order of repeated headers does not matter.
		slices.Sort(vs)
		var h uint64
		for _, v := range vs {
			h = xxHash64(v, h)
		}
		return h, true
	case hashCookie:
		if v, ok := cookieValue(r.Header["Cookie"], p.name); ok {
			return xxHash64(v, 0), true
		}
	case hashSourceIP:
		if sourceIP != "" {
			return xxHash64(sourceIP, 0), true
		}
	case hashQuery:
		if r.URL != nil {
			if v, ok := queryValue(r.URL.RawQuery, p.name); ok {
				return xxHash64(v, 0), true
			}
		}
	}
	return 0, false
}

// cookieValue finds the first cookie called name in the Cookie headers,
// without allocating; a double-quoted value is unquoted.
func cookieValue(headers []string, name string) (string, bool) {
	for _, line := range headers {
		for line != "" {
			var part string
			part, line, _ = strings.Cut(line, ";")
			part = strings.TrimSpace(part)
			k, v, ok := strings.Cut(part, "=")
			if !ok || k != name {
				continue
			}
			if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
				v = v[1 : len(v)-1]
			}
			return v, true
		}
	}
	return "", false
}
