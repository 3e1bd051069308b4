package ratelimit

import (
	"strconv"
	"strings"

	"github.com/rampart-mesh/rampart/authz"
)

// request is what matching and keys read from one request, computed once.
type request struct {
	r         *authz.Request
	path      string // normalized, without the query
	principal string // Istio form: cluster.local/ns/NS/sa/SA
	namespace string
	reqPrinc  string
	port      string
	headers   map[string][]string // lower-case names
}

func newRequest(r *authz.Request, path string) *request {
	q := &request{r: r, principal: strings.TrimPrefix(r.SourcePrincipal, "spiffe://")}
	if _, rest, ok := strings.Cut(q.principal, "/ns/"); ok {
		q.namespace, _, _ = strings.Cut(rest, "/")
	}
	if r.Auth != nil {
		q.reqPrinc = r.Auth.Principal
	}
	if r.DestinationPort > 0 {
		q.port = strconv.Itoa(r.DestinationPort)
	}
	if path != "" {
		q.path = path
	} else if p, _, err := authz.NormalizePath(r.Path, ""); err == nil {
		q.path = p
	} else {
		// Authorization answers 400 to paths it cannot normalize; should one
		// get here, match it as received, without the query.
		q.path, _, _ = strings.Cut(r.Path, "?")
	}
	return q
}

// header returns the values of the header name (lower case) as authorization
// sees them: with the pseudo-headers :authority (the request's Host, which
// net/http keeps out of its header map), :method and :path (normalized, with
// the query), and "host" answered with :authority, as Envoy's header map and
// the compiled policies answer request.headers[host].
func (q *request) header(name string) ([]string, bool) {
	if q.headers == nil {
		hs := q.r.HeaderMap(q.path)
		q.headers = make(map[string][]string, len(hs))
		for _, h := range hs {
			n := strings.ToLower(h.Name)
			q.headers[n] = append(q.headers[n], h.Value)
		}
	}
	if name == "host" {
		name = ":authority"
	}
	v, ok := q.headers[name]
	return v, ok
}

// istioMatch matches one value against one Istio string form: "*" (any
// non-empty value), "prefix*", "*suffix", or exact.
func istioMatch(pattern, v string, fold bool) bool {
	if fold {
		pattern, v = strings.ToLower(pattern), strings.ToLower(v)
	}
	switch {
	case pattern == "*":
		return v != ""
	case strings.HasSuffix(pattern, "*"):
		return strings.HasPrefix(v, pattern[:len(pattern)-1])
	case strings.HasPrefix(pattern, "*"):
		return strings.HasSuffix(v, pattern[1:])
	}
	return v == pattern
}

func anyMatch(patterns []string, v string, fold bool) bool {
	for _, p := range patterns {
		if istioMatch(p, v, fold) {
			return true
		}
	}
	return false
}

// field is one positive/negative pair: the request matches when some value
// is in in (or in is empty) and none is in not.
func field(in, not []string, v string, fold bool) bool {
	if len(in) > 0 && !anyMatch(in, v, fold) {
		return false
	}
	return !anyMatch(not, v, fold)
}

// hostOnly drops a port from a Host header, as Istio's host match does
// (hosts "example.com" matches "example.com:8080").
func hostOnly(h string) string {
	if i := strings.LastIndexByte(h, ':'); i >= 0 && !strings.Contains(h[i:], "]") {
		return h[:i]
	}
	return h
}

// matches reports whether q is a request m counts.
func matches(m *authz.RateLimitMatch, q *request) bool {
	r := q.r
	if len(m.Hosts) > 0 || len(m.NotHosts) > 0 {
		// Either form of the host counts, with or without its port: included
		// if hosts has either, excluded if notHosts has either.
		h, bare := r.Host, hostOnly(r.Host)
		if len(m.Hosts) > 0 && !anyMatch(m.Hosts, h, true) && !anyMatch(m.Hosts, bare, true) {
			return false
		}
		if anyMatch(m.NotHosts, h, true) || anyMatch(m.NotHosts, bare, true) {
			return false
		}
	}
	return field(m.Ports, m.NotPorts, q.port, false) &&
		field(m.Methods, m.NotMethods, r.Method, false) &&
		field(m.Paths, m.NotPaths, q.path, false) &&
		field(m.Principals, m.NotPrincipals, q.principal, false) &&
		field(m.RequestPrincipals, m.NotRequestPrincipals, q.reqPrinc, false) &&
		field(m.Namespaces, m.NotNamespaces, q.namespace, false) &&
		headersMatch(m.Headers, q)
}

func headersMatch(hs []authz.RateLimitHeader, q *request) bool {
	for _, h := range hs {
		vals, present := q.header(h.Name)
		if len(h.Values) > 0 {
			ok := false
			for _, v := range vals {
				if anyMatch(h.Values, v, false) {
					ok = true
					break
				}
			}
			if !present || !ok {
				return false
			}
		}
		for _, v := range vals {
			if anyMatch(h.NotValues, v, false) {
				return false
			}
		}
	}
	return true
}

// maxKeyBytes bounds a key kept in memory; longer values (a header can be
// kilobytes) are kept as a hash.
const maxKeyBytes = 128

// keyOf returns the bucket key of q for l; "" is the bucket of requests
// without the attribute.
func keyOf(l *authz.RateLimit, q *request) string {
	var k string
	switch l.Key {
	case keySourcePrincipal:
		k = q.principal
	case keyRequestPrincipal:
		k = q.reqPrinc
	case keySourceIP:
		k = q.r.SourceIP
	case keyHeader:
		vals, _ := q.header(l.KeyHeader)
		k = strings.Join(vals, ",")
	}
	if len(k) > maxKeyBytes {
		k = hashKey(k)
	}
	return k
}
