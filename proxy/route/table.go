package route

import (
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sort"
	"strings"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
)

// defaultMaxBody is Envoy's max_direct_response_body_size_bytes default.
const defaultMaxBody = 4096

// Table is an immutable set of compiled route configurations, by
// RouteConfiguration name. It is safe for concurrent use.
type Table struct {
	configs map[string]*routeConfig
	names   []string
}

type routeConfig struct {
	name       string
	exact      map[string]*virtualHost
	suffixes   []wildcards // longest first
	prefixes   []wildcards // longest first
	fallback   *virtualHost
	ignorePort bool
	vhostRef   *headerRef // vhost_header; nil: the authority
}

// wildcards holds the virtual hosts of the wildcard domains of one length
// (without the "*"), as Envoy indexes them.
type wildcards struct {
	n     int
	hosts map[string]*virtualHost
}

type virtualHost struct {
	name   string
	routes []*Route
}

// New validates and compiles route configurations. It refuses, with an
// *Error naming the route configuration, virtual host, route and field,
// anything Envoy would refuse and anything this package does not implement
// (errors.Is(err, ErrUnsupported)); it does not panic on any input.
func New(rcs []*routev3.RouteConfiguration) (*Table, error) {
	t := &Table{configs: make(map[string]*routeConfig, len(rcs))}
	for i, rc := range rcs {
		if rc == nil {
			return nil, &Error{Config: fmt.Sprintf("#%d", i), Err: errors.New("is null")}
		}
		if _, dup := t.configs[rc.GetName()]; dup {
			return nil, &Error{Config: rc.GetName(), Err: fmt.Errorf("duplicate route configuration name (also #%d)", slices.Index(t.names, rc.GetName()))}
		}
		c, err := compileConfig(rc)
		if err != nil {
			return nil, err
		}
		t.configs[c.name] = c
		t.names = append(t.names, c.name)
	}
	sort.Strings(t.names)
	return t, nil
}

// Names lists the route configuration names, sorted.
func (t *Table) Names() []string {
	if t == nil {
		return nil
	}
	return slices.Clone(t.names)
}

// Match finds the route for r in route configuration config, or returns nil
// when config is unknown, no virtual host's domains match the authority, or
// no route of that virtual host matches (Envoy then answers 404, flag NR).
//
// The virtual host is chosen by r.Host (or the configured vhost_header) as
// Envoy does, case-insensitively: an exact domain, then the longest suffix
// wildcard ("*.foo.com", "*-bar"), then the longest prefix wildcard
// ("foo.*"), then "*". Unless the configuration sets
// ignore_port_in_host_matching, the port is part of the authority, so
// "foo.com:8080" matches the domain "foo.com:8080" but not "foo.com". A
// request without an authority finds only a "*" virtual host, and only when
// it is the configuration's only one.
//
// Routes are tried in order against the request path, r.URL.EscapedPath()
// (still percent-encoded, without the query), headers (":authority" is
// r.Host, ":method" r.Method, ":path" the request target, ":scheme" the
// request's scheme) and the raw query string. Match does not allocate,
// except to join repeated headers a header matcher reads.
func (t *Table) Match(config string, r *http.Request) *Route {
	if t == nil {
		return nil
	}
	c := t.configs[config]
	if c == nil {
		return nil
	}
	vh := c.virtualHost(r)
	if vh == nil {
		return nil
	}
	path := requestPath(r)
	for _, rt := range vh.routes {
		if rt.match.matches(r, path) {
			return rt
		}
	}
	return nil
}

// VirtualHost returns the name of the virtual host Match would search for r,
// and false when there is none.
func (t *Table) VirtualHost(config string, r *http.Request) (string, bool) {
	if t == nil || t.configs[config] == nil {
		return "", false
	}
	vh := t.configs[config].virtualHost(r)
	if vh == nil {
		return "", false
	}
	return vh.name, true
}

func (c *routeConfig) virtualHost(r *http.Request) *virtualHost {
	if len(c.exact) == 0 && len(c.suffixes) == 0 && len(c.prefixes) == 0 {
		return c.fallback
	}
	var host string
	if c.vhostRef != nil {
		v, ok := c.vhostRef.value(r)
		if !ok || v == "" {
			return nil
		}
		host = v
	} else {
		if r.Host == "" {
			return nil
		}
		host = r.Host
	}
	if c.ignorePort {
		host = stripPort(host)
	}
	// Lower-case into a stack buffer: map lookups with string(b) do not
	// allocate. Longer hosts (rare) pay for a conversion.
	var buf [256]byte
	var b []byte
	if len(host) <= len(buf) {
		b = buf[:len(host)]
	} else {
		b = make([]byte, len(host))
	}
	for i := 0; i < len(host); i++ {
		b[i] = asciiLower(host[i])
	}
	if vh, ok := c.exact[string(b)]; ok {
		return vh
	}
	for _, w := range c.suffixes {
		// ">" because "*.foo.com" must not match ".foo.com".
		if len(b) > w.n {
			if vh, ok := w.hosts[string(b[len(b)-w.n:])]; ok {
				return vh
			}
		}
	}
	for _, w := range c.prefixes {
		if len(b) > w.n {
			if vh, ok := w.hosts[string(b[:w.n])]; ok {
				return vh
			}
		}
	}
	return c.fallback
}

// stripPort removes a trailing ":port" (not from a bare IPv6 address).
func stripPort(host string) string {
	i := strings.LastIndexByte(host, ':')
	if i < 0 {
		return host
	}
	if j := strings.LastIndexByte(host, ']'); j > i {
		return host
	}
	if strings.HasPrefix(host, "[") || !strings.Contains(host[:i], ":") {
		return host[:i]
	}
	return host // an unbracketed IPv6 address has no port
}

func compileConfig(rc *routev3.RouteConfiguration) (*routeConfig, error) {
	at := loc{config: rc.GetName()}
	switch {
	case rc.GetVhds() != nil:
		return nil, at.unsupported("vhds", "on-demand virtual hosts (VHDS)")
	case len(rc.GetClusterSpecifierPlugins()) > 0:
		return nil, at.unsupported("cluster_specifier_plugins", "cluster specifier plugins")
	case len(rc.GetRouteSpecifiers()) > 0:
		return nil, at.unsupported("route_specifiers", "route specifiers")
	case rc.GetIgnorePathParametersInPathMatching():
		return nil, at.unsupported("ignore_path_parameters_in_path_matching", "ignoring path parameters")
	}
	c := &routeConfig{name: rc.GetName(), exact: map[string]*virtualHost{}, ignorePort: rc.GetIgnorePortInHostMatching()}
	if h := rc.GetVhostHeader(); h != "" {
		if err := checkHeaderName(h); err != nil {
			return nil, at.err("vhost_header", err)
		}
		ref := newHeaderRef(h)
		c.vhostRef = &ref
	}
	lv := levels{config: rc.GetName(), mostSpecificWins: rc.GetMostSpecificHeaderMutationsWins(), maxBody: defaultMaxBody}
	if m := rc.GetMaxDirectResponseBodySizeBytes(); m != nil {
		lv.maxBody = m.GetValue()
	}
	req, err := compileHeaderOps(at, "", "request", rc.GetRequestHeadersToAdd(), rc.GetRequestHeadersToRemove())
	if err != nil {
		return nil, err
	}
	resp, err := compileHeaderOps(at, "", "response", rc.GetResponseHeadersToAdd(), rc.GetResponseHeadersToRemove())
	if err != nil {
		return nil, err
	}
	configMirrors, err := compileMirrors(at, "request_mirror_policies", rc.GetRequestMirrorPolicies())
	if err != nil {
		return nil, err
	}
	suffixes := map[int]map[string]*virtualHost{}
	prefixes := map[int]map[string]*virtualHost{}
	for i, vh := range rc.GetVirtualHosts() {
		vat := at
		vat.vhost = vhostLabel(vh.GetName(), i)
		v, err := compileVirtualHost(vat, vh, lv, req, resp, configMirrors, rc)
		if err != nil {
			return nil, err
		}
		if len(vh.GetDomains()) == 0 {
			return nil, vat.errf("domains", "is empty; a virtual host needs at least one domain")
		}
		for j, d := range vh.GetDomains() {
			field := fmt.Sprintf("domains[%d]", j)
			if d == "" {
				return nil, vat.errf(field, "is empty")
			}
			d = strings.ToLower(d)
			var table map[string]*virtualHost
			key := d
			switch {
			case d == "*":
				if c.fallback != nil {
					return nil, vat.errf(field, `"*": only one virtual host may have the domain "*" (%q has it)`, c.fallback.name)
				}
				c.fallback = v
				continue
			case d[0] == '*':
				key = d[1:]
				table = suffixes[len(key)]
				if table == nil {
					table = map[string]*virtualHost{}
					suffixes[len(key)] = table
				}
			case d[len(d)-1] == '*':
				key = d[:len(d)-1]
				table = prefixes[len(key)]
				if table == nil {
					table = map[string]*virtualHost{}
					prefixes[len(key)] = table
				}
			default:
				table = c.exact
			}
			if other, dup := table[key]; dup {
				return nil, vat.errf(field, "%q is also a domain of virtual host %q; domains must be unique in a route configuration", vh.GetDomains()[j], other.name)
			}
			table[key] = v
		}
	}
	c.suffixes = sortedWildcards(suffixes)
	c.prefixes = sortedWildcards(prefixes)
	// Envoy's own proto constraints, for what the checks above do not cover.
	if err := rc.Validate(); err != nil {
		return nil, at.err("", err)
	}
	return c, nil
}

func sortedWildcards(m map[int]map[string]*virtualHost) []wildcards {
	var out []wildcards
	for n, hosts := range m {
		out = append(out, wildcards{n: n, hosts: hosts})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].n > out[j].n })
	return out
}

func compileVirtualHost(at loc, vh *routev3.VirtualHost, lv levels, req, resp *headerOps, configMirrors []Mirror, rc *routev3.RouteConfiguration) (*virtualHost, error) {
	switch {
	case vh.GetMatcher() != nil:
		return nil, at.unsupported("matcher", "matcher trees (use routes)")
	case vh.GetRequireTls() != routev3.VirtualHost_NONE:
		return nil, at.unsupported("require_tls", "TLS requirements ("+vh.GetRequireTls().String()+")")
	case vh.GetRetryPolicyTypedConfig() != nil:
		return nil, at.unsupported("retry_policy_typed_config", "retry policy extensions")
	case len(vh.GetRouteSpecifiers()) > 0:
		return nil, at.unsupported("route_specifiers", "route specifiers")
	}
	v := &virtualHost{name: vh.GetName()}
	lv.vhost = vh.GetName()
	vreq, err := compileHeaderOps(at, "", "request", vh.GetRequestHeadersToAdd(), vh.GetRequestHeadersToRemove())
	if err != nil {
		return nil, err
	}
	vresp, err := compileHeaderOps(at, "", "response", vh.GetResponseHeadersToAdd(), vh.GetResponseHeadersToRemove())
	if err != nil {
		return nil, err
	}
	lv.request = []*headerOps{vreq, req}
	lv.response = []*headerOps{vresp, resp}
	if lv.vhostRetry, err = compileRetryPolicy(at, "retry_policy", vh.GetRetryPolicy()); err != nil {
		return nil, err
	}
	lv.mirrors = configMirrors
	if len(vh.GetRequestMirrorPolicies()) > 0 {
		if lv.mirrors, err = compileMirrors(at, "request_mirror_policies", vh.GetRequestMirrorPolicies()); err != nil {
			return nil, err
		}
	}
	lv.filters = []filterLevel{
		{prefix: "(virtual host) ", configs: vh.GetTypedPerFilterConfig()},
		{prefix: "(route configuration) ", configs: rc.GetTypedPerFilterConfig()},
	}
	//lint:ignore SA1019 Envoy still honours this deprecated field, so the sidecar must too.
	lv.legacyVhostCors = vh.GetCors()
	// Check the inherited filter configurations here too, so that a bad one
	// is found (and reported at its own level) even without routes.
	if _, err := resolveFault(at, lv.filters); err != nil {
		return nil, err
	}
	if _, err := resolveCors(at, lv.filters, nil, lv.legacyVhostCors); err != nil {
		return nil, err
	}
	for i, r := range vh.GetRoutes() {
		rat := at
		rat.route = routeLabel(r.GetName(), i)
		rt, err := compileRoute(rat, r, &lv)
		if err != nil {
			return nil, err
		}
		v.routes = append(v.routes, rt)
	}
	return v, nil
}
