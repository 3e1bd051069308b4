package route

import (
	"fmt"
	"net/http"
	"strings"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
)

// Redirect answers the request with a redirect; Location computes its target.
type Redirect struct {
	Code       int    // 301 (Envoy's default), 302, 303, 307 or 308
	Scheme     string // "" keeps the request's
	Host       string // "" keeps the request's
	Port       uint32 // 0 keeps none (see Location)
	Path       string // path_redirect; "" keeps the request's path, rewritten by PrefixRewrite or the regex rewrite
	StripQuery bool

	PrefixRewrite string
	regex         *regexRewrite
	match         *pathMatch
}

// Location is the Location header of the redirect for r, computed as Envoy
// does: the scheme is Scheme or the request's; the host is Host or the
// request's, whose port is dropped when Port is set or when it is the
// default port of a scheme being changed; path_redirect replaces the path
// and keeps the request's query unless it has a query of its own;
// StripQuery drops the query otherwise.
func (rd *Redirect) Location(r *http.Request) string {
	scheme := rd.Scheme
	if scheme == "" {
		scheme = requestScheme(r)
	}
	port := ""
	if rd.Port != 0 {
		port = fmt.Sprintf(":%d", rd.Port)
	}
	host := rd.Host
	if host == "" {
		host = redirectHost(r, scheme, port)
	}
	path := requestPath(r)
	query, hasQuery := "", false
	if r.URL != nil && (r.URL.RawQuery != "" || r.URL.ForceQuery) {
		query, hasQuery = "?"+r.URL.RawQuery, true
	}
	ownQuery := false
	switch {
	case rd.Path != "":
		path = rd.Path
		ownQuery = strings.Contains(rd.Path, "?")
		if ownQuery {
			query, hasQuery = "", false
		}
	default:
		pr := pathRewrite{prefix: rd.PrefixRewrite, regex: rd.regex}
		if p, ok := pr.apply(rd.match, path); ok {
			path = p
		}
	}
	if hasQuery && !rd.StripQuery {
		path += query
	}
	if !strings.HasPrefix(path, "/") {
		path = "/" + path
	}
	return scheme + "://" + host + port + path
}

// redirectHost is the request's host for a redirect: without its port when
// the redirect sets one, or when the scheme changes and the port was the
// default of the request's scheme.
func redirectHost(r *http.Request, scheme, port string) string {
	host := r.Host
	var end int
	if strings.HasPrefix(host, "[") {
		end = strings.LastIndex(host, "]:")
		if end >= 0 {
			end++
		}
	} else {
		end = strings.LastIndexByte(host, ':')
	}
	if end < 0 {
		return host
	}
	reqPort := host[end:]
	proto := firstHeader(r.Header, "X-Forwarded-Proto")
	if proto == "" {
		proto = requestScheme(r)
	}
	remove := port != ""
	if scheme != proto {
		remove = remove || (proto == "https" && reqPort == ":443") || (proto == "http" && reqPort == ":80")
	}
	if remove {
		return host[:end]
	}
	return host
}

func compileRedirect(at loc, ra *routev3.RedirectAction, m *pathMatch) (*Redirect, error) {
	rd := &Redirect{Host: ra.GetHostRedirect(), Port: ra.GetPortRedirect(), StripQuery: ra.GetStripQuery(), match: m}
	if rd.Port > 65535 {
		return nil, at.errf("redirect.port_redirect", "%d is not a port", rd.Port)
	}
	switch s := ra.GetSchemeRewriteSpecifier().(type) {
	case nil:
	case *routev3.RedirectAction_HttpsRedirect:
		if s.HttpsRedirect {
			rd.Scheme = "https"
		}
	case *routev3.RedirectAction_SchemeRedirect:
		rd.Scheme = strings.ToLower(s.SchemeRedirect)
	}
	var err error
	switch s := ra.GetPathRewriteSpecifier().(type) {
	case nil:
	case *routev3.RedirectAction_PathRedirect:
		rd.Path = s.PathRedirect
	case *routev3.RedirectAction_PrefixRewrite:
		rd.PrefixRewrite = s.PrefixRewrite
	case *routev3.RedirectAction_RegexRewrite:
		if rd.regex, err = compileRegexRewrite(s.RegexRewrite); err != nil {
			return nil, at.err("redirect.regex_rewrite", err)
		}
	case *routev3.RedirectAction_PathRewrite:
		return nil, at.unsupported("redirect.path_rewrite", "formatted redirect paths (use path_redirect)")
	default:
		return nil, at.unsupported("redirect", fmt.Sprintf("path rewrite %T", s))
	}
	switch ra.GetResponseCode() {
	case routev3.RedirectAction_MOVED_PERMANENTLY:
		rd.Code = http.StatusMovedPermanently
	case routev3.RedirectAction_FOUND:
		rd.Code = http.StatusFound
	case routev3.RedirectAction_SEE_OTHER:
		rd.Code = http.StatusSeeOther
	case routev3.RedirectAction_TEMPORARY_REDIRECT:
		rd.Code = http.StatusTemporaryRedirect
	case routev3.RedirectAction_PERMANENT_REDIRECT:
		rd.Code = http.StatusPermanentRedirect
	default:
		return nil, at.errf("redirect.response_code", "unknown value %d", ra.GetResponseCode())
	}
	return rd, nil
}
