package route

import (
	"fmt"
	"math"
	"net/http"
	"net/url"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	corsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/cors/v3"
	"google.golang.org/protobuf/types/known/durationpb"
)

// DefaultTimeout is Envoy's route timeout when route.timeout is not set.
const DefaultTimeout = 15 * time.Second

// Route is one compiled route: its action and policies. A Route is shared by
// every request that matches it: its methods only read it, and callers must
// not modify it (nor its slices).
type Route struct {
	Name        string // the route's name (Istio puts the VirtualService rule name here)
	VirtualHost string // the virtual host's name
	Config      string // the route configuration's name

	// Exactly one action is set: Cluster, Weighted, Redirect or Direct.
	Cluster  string
	Weighted []WeightedCluster
	Redirect *Redirect
	Direct   *DirectResponse

	// Timeout bounds the whole request including retries; 0 means none.
	// Unset in the configuration is Envoy's 15s; an explicit 0 disables it.
	Timeout time.Duration
	Retry   *RetryPolicy // nil: no retries
	Mirrors []Mirror
	Fault   *Fault // nil: no per-route fault injection
	Cors    *Cors  // nil: no CORS policy

	match       routeMatch
	totalWeight uint64
	cumWeights  []uint64 // cumulative upper bounds, per Weighted entry
	rewrite     pathRewrite
	host        hostRewrite
	hash        []hashPolicy
	request     []*headerOps // in the order Envoy applies them
	response    []*headerOps
}

// WeightedCluster is one cluster of a weighted route.
type WeightedCluster struct {
	Name   string
	Weight uint32

	hostRewrite string
	request     *headerOps
	response    *headerOps
}

// DirectResponse answers the request from the sidecar.
type DirectResponse struct {
	Status int
	Body   string
}

// Mirror sends a copy of a fraction (runtime_fraction's default value; 100%
// when unset) of requests to Cluster and ignores the reply. As in Envoy the
// copy's Host gets the suffix "-shadow" unless NoShadowSuffix is set, after
// HostRewrite (if any) replaced it.
type Mirror struct {
	Cluster                string
	Numerator, Denominator uint32
	HostRewrite            string
	NoShadowSuffix         bool
}

// ShouldMirror reports, for a uniform random rnd, whether this request is mirrored.
func (m Mirror) ShouldMirror(rnd uint64) bool {
	return Fraction{m.Numerator, m.Denominator}.Hit(rnd)
}

// PickCluster returns the upstream cluster for one request: Cluster, or for
// a weighted route Envoy's choice, the cluster whose share of the cumulative
// weights holds rnd % total weight. rnd should be uniform over uint64
// (math/rand/v2's Uint64); a value in [0, total weight) selects directly, so
// enumerating 0..total-1 visits every cluster in proportion to its weight.
// Redirect and direct-response routes return "".
func (rt *Route) PickCluster(rnd uint64) string {
	if len(rt.Weighted) == 0 {
		return rt.Cluster
	}
	v := rnd % rt.totalWeight
	for i, end := range rt.cumWeights {
		if v < end {
			return rt.Weighted[i].Name
		}
	}
	return rt.Weighted[len(rt.Weighted)-1].Name // unreachable: the last bound is the total
}

// TotalWeight is the sum of a weighted route's cluster weights (0 for other routes).
func (rt *Route) TotalWeight() uint64 { return rt.totalWeight }

// ApplyRequest rewrites r for its trip upstream as Envoy's router does:
// request_headers_to_remove then request_headers_to_add of the route, its
// virtual host and its route configuration (most specific first, unless the
// configuration sets most_specific_header_mutations_wins, which reverses the
// order so that the most specific level wins), then the host rewrite (r.Host),
// then the path rewrite of r.URL (prefix_rewrite, regex_rewrite, path_rewrite).
// It does not add x-envoy-original-path. For a weighted route, use
// ApplyRequestFor to include the chosen cluster's header operations.
func (rt *Route) ApplyRequest(r *http.Request) { rt.applyRequest(r, nil) }

// ApplyRequestFor is ApplyRequest for a request sent to cluster (as returned
// by PickCluster): the weighted cluster's own header operations and
// host_rewrite_literal apply first, as in Envoy.
func (rt *Route) ApplyRequestFor(r *http.Request, cluster string) {
	rt.applyRequest(r, rt.weighted(cluster))
}

// ApplyResponse applies response_headers_to_remove and _to_add of the route,
// its virtual host and its route configuration, in the order ApplyRequest
// uses.
func (rt *Route) ApplyResponse(h http.Header) { rt.applyResponse(h, nil) }

// ApplyResponseFor is ApplyResponse for a response from cluster; the weighted
// cluster's own operations apply first.
func (rt *Route) ApplyResponseFor(h http.Header, cluster string) {
	rt.applyResponse(h, rt.weighted(cluster))
}

func (rt *Route) weighted(cluster string) *WeightedCluster {
	for i := range rt.Weighted {
		if rt.Weighted[i].Name == cluster {
			return &rt.Weighted[i]
		}
	}
	return nil
}

func (rt *Route) applyRequest(r *http.Request, wc *WeightedCluster) {
	if r.Header == nil {
		r.Header = http.Header{}
	}
	path := requestPath(r)
	if wc != nil {
		wc.request.apply(r.Header)
		if wc.hostRewrite != "" {
			r.Host = wc.hostRewrite
		}
	}
	for _, o := range rt.request {
		o.apply(r.Header)
	}
	rt.host.apply(r, path)
	if r.URL != nil {
		if p, ok := rt.rewrite.apply(&rt.match.path, path); ok {
			setEscapedPath(r.URL, p)
		}
	}
}

func (rt *Route) applyResponse(h http.Header, wc *WeightedCluster) {
	if h == nil {
		return
	}
	if wc != nil {
		wc.response.apply(h)
	}
	for _, o := range rt.response {
		o.apply(h)
	}
}

// requestPath is the path routes match: r.URL.EscapedPath(), the path as the
// client sent it, percent-encoding intact, without the query. Envoy matches
// the :path header before any decoding, and so does this package; path
// normalisation, if any, is the listener's job.
func requestPath(r *http.Request) string {
	if r.URL == nil {
		return "/"
	}
	if p := r.URL.EscapedPath(); p != "" {
		return p
	}
	return "/"
}

// setEscapedPath sets u's path from its escaped form.
func setEscapedPath(u *url.URL, p string) {
	if dec, err := url.PathUnescape(p); err == nil {
		u.Path, u.RawPath = dec, p
	} else {
		u.Path, u.RawPath = p, ""
	}
}

// pathRewrite is a route action's (or redirect's) path rewrite.
type pathRewrite struct {
	prefix string        // prefix_rewrite
	regex  *regexRewrite // regex_rewrite
	whole  string        // path_rewrite (literal)
}

// apply returns the rewritten path, Envoy's way: prefix_rewrite replaces the
// part of path the route matched (the configured prefix or path, the whole
// path for a regex route) — so "/foo" rewritten to "/" turns "/foo/bar" into
// "//bar", which is why Envoy's documentation pairs a "/foo/" route with a
// "/foo" one; regex_rewrite replaces every match in the path.
func (pr *pathRewrite) apply(m *pathMatch, path string) (string, bool) {
	switch {
	case pr.prefix != "":
		if m == nil || !m.matches(path) {
			return "", false // the path changed since Match; leave it alone
		}
		return pr.prefix + path[m.matchedLen(path):], true
	case pr.regex != nil:
		return pr.regex.replace(path), true
	case pr.whole != "":
		return pr.whole, true
	}
	return "", false
}

type hostRewrite struct {
	literal   string
	header    string // canonical key
	pathRegex *regexRewrite
	appendXFH bool
}

func (hr *hostRewrite) apply(r *http.Request, path string) {
	var host string
	switch {
	case hr.literal != "":
		host = hr.literal
	case hr.header != "":
		host = firstHeader(r.Header, hr.header)
	case hr.pathRegex != nil:
		host = hr.pathRegex.replace(path)
	}
	if host == "" {
		return
	}
	if hr.appendXFH && r.Host != "" {
		old := r.Header["X-Forwarded-Host"]
		if len(old) == 0 {
			r.Header["X-Forwarded-Host"] = []string{r.Host}
		} else {
			vs := append([]string(nil), old...)
			vs[len(vs)-1] += "," + r.Host
			r.Header["X-Forwarded-Host"] = vs
		}
	}
	r.Host = host
}

// duration converts a proto duration, refusing invalid and negative ones.
func duration(d *durationpb.Duration) (time.Duration, error) {
	if d == nil {
		return 0, nil
	}
	if err := d.CheckValid(); err != nil {
		return 0, err
	}
	if d.GetSeconds() < 0 || d.GetNanos() < 0 {
		return 0, fmt.Errorf("%v is negative", d.AsDuration())
	}
	if d.GetSeconds() > math.MaxInt64/int64(time.Second)-1 {
		return 0, fmt.Errorf("%ds is too long", d.GetSeconds())
	}
	return d.AsDuration(), nil
}

// levels is what a route inherits from its virtual host and route
// configuration while it is compiled.
type levels struct {
	config           string
	vhost            string
	vhostRetry       *RetryPolicy
	mirrors          []Mirror // the virtual host's, else the configuration's
	filters          []filterLevel
	legacyVhostCors  *routev3.CorsPolicy
	request          []*headerOps // virtual host, then configuration
	response         []*headerOps
	mostSpecificWins bool
	maxBody          uint32
}

func compileRoute(at loc, r *routev3.Route, lv *levels) (*Route, error) {
	rt := &Route{Name: r.GetName(), VirtualHost: lv.vhost, Config: lv.config}
	var err error
	if rt.match, err = compileRouteMatch(at, r.GetMatch()); err != nil {
		return nil, err
	}
	if len(r.GetRouteSpecifiers()) > 0 {
		return nil, at.unsupported("route_specifiers", "route specifiers")
	}
	var legacyCors *routev3.CorsPolicy
	switch a := r.GetAction().(type) {
	case *routev3.Route_Route:
		if err := compileRouteAction(at, rt, a.Route, lv); err != nil {
			return nil, err
		}
		//lint:ignore SA1019 Envoy still honours this deprecated field, so the sidecar must too.
		legacyCors = a.Route.GetCors()
	case *routev3.Route_Redirect:
		if rt.Redirect, err = compileRedirect(at, a.Redirect, &rt.match.path); err != nil {
			return nil, err
		}
	case *routev3.Route_DirectResponse:
		if rt.Direct, err = compileDirect(at, a.DirectResponse, lv.maxBody); err != nil {
			return nil, err
		}
	case *routev3.Route_FilterAction:
		return nil, at.unsupported("filter_action", "filter actions")
	case *routev3.Route_NonForwardingAction:
		return nil, at.unsupported("non_forwarding_action", "non-forwarding actions")
	case nil:
		return nil, at.errf("action", "missing: set one of route, redirect or direct_response")
	default:
		return nil, at.unsupported("action", fmt.Sprintf("action %T", a))
	}

	req, err := compileHeaderOps(at, "", "request", r.GetRequestHeadersToAdd(), r.GetRequestHeadersToRemove())
	if err != nil {
		return nil, err
	}
	resp, err := compileHeaderOps(at, "", "response", r.GetResponseHeadersToAdd(), r.GetResponseHeadersToRemove())
	if err != nil {
		return nil, err
	}
	rt.request = chain(req, lv.request, lv.mostSpecificWins)
	rt.response = chain(resp, lv.response, lv.mostSpecificWins)

	filters := append([]filterLevel{{configs: r.GetTypedPerFilterConfig()}}, lv.filters...)
	if rt.Fault, err = resolveFault(at, filters); err != nil {
		return nil, err
	}
	if rt.Cors, err = resolveCors(at, filters, legacyCors, lv.legacyVhostCors); err != nil {
		return nil, err
	}
	return rt, nil
}

// chain orders a route's header operations with its virtual host's and
// configuration's (given most specific first): most specific first by
// default, least specific first when the most specific mutation must win.
func chain(own *headerOps, outer []*headerOps, mostSpecificWins bool) []*headerOps {
	var out []*headerOps
	if own != nil {
		out = append(out, own)
	}
	for _, o := range outer {
		if o != nil {
			out = append(out, o)
		}
	}
	if mostSpecificWins {
		for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
			out[i], out[j] = out[j], out[i]
		}
	}
	return out
}

func resolveFault(at loc, filters []filterLevel) (*Fault, error) {
	pfs, disabled, err := lookupPerFilter(at, FaultFilter, filters)
	if err != nil || disabled || len(pfs) == 0 {
		return nil, err
	}
	return compileFault(at, pfs[0].field, pfs[0].cfg)
}

func resolveCors(at loc, filters []filterLevel, routeCors, vhostCors *routev3.CorsPolicy) (*Cors, error) {
	pfs, disabled, err := lookupPerFilter(at, CorsFilter, filters)
	if err != nil || disabled {
		return nil, err
	}
	var sources []corsSource
	for _, pf := range pfs {
		p := &corsv3.CorsPolicy{}
		if err := unmarshalAny(pf.cfg, p); err != nil {
			return nil, at.err(pf.field, err)
		}
		sources = append(sources, corsSource{field: pf.field, policy: p})
	}
	if len(sources) == 0 {
		if routeCors != nil {
			sources = append(sources, corsSource{field: "route.cors", policy: routeCors})
		}
		if vhostCors != nil {
			sources = append(sources, corsSource{field: "(virtual host) cors", policy: vhostCors})
		}
	}
	return mergeCors(at, sources)
}

func compileRouteAction(at loc, rt *Route, ra *routev3.RouteAction, lv *levels) error {
	var err error
	switch cs := ra.GetClusterSpecifier().(type) {
	case *routev3.RouteAction_Cluster:
		if cs.Cluster == "" {
			return at.errf("route.cluster", "is empty")
		}
		rt.Cluster = cs.Cluster
	case *routev3.RouteAction_WeightedClusters:
		if err := compileWeighted(at, rt, cs.WeightedClusters); err != nil {
			return err
		}
	case *routev3.RouteAction_ClusterHeader:
		return at.unsupported("route.cluster_header", "choosing the cluster from a request header")
	case *routev3.RouteAction_ClusterSpecifierPlugin:
		return at.unsupported("route.cluster_specifier_plugin", "cluster specifier plugins")
	case *routev3.RouteAction_InlineClusterSpecifierPlugin:
		return at.unsupported("route.inline_cluster_specifier_plugin", "cluster specifier plugins")
	case nil:
		return at.errf("route", "no cluster: set cluster or weighted_clusters")
	default:
		return at.unsupported("route", fmt.Sprintf("cluster specifier %T", cs))
	}

	rewrites := 0
	if ra.GetPrefixRewrite() != "" {
		rewrites++
		rt.rewrite.prefix = ra.GetPrefixRewrite()
	}
	if ra.GetRegexRewrite() != nil {
		rewrites++
		if rt.rewrite.regex, err = compileRegexRewrite(ra.GetRegexRewrite()); err != nil {
			return at.err("route.regex_rewrite", err)
		}
	}
	if ra.GetPathRewrite() != "" {
		rewrites++
		if rt.rewrite.whole, err = literalHeaderValue(ra.GetPathRewrite()); err != nil {
			return at.err("route.path_rewrite", err)
		}
	}
	if ra.GetPathRewritePolicy() != nil {
		return at.unsupported("route.path_rewrite_policy", "path rewrite extensions")
	}
	if rewrites > 1 {
		return at.errf("route", "only one of prefix_rewrite, regex_rewrite and path_rewrite may be set")
	}

	switch hr := ra.GetHostRewriteSpecifier().(type) {
	case nil:
	case *routev3.RouteAction_HostRewriteLiteral:
		rt.host.literal = hr.HostRewriteLiteral
	case *routev3.RouteAction_HostRewriteHeader:
		if err := checkHeaderName(hr.HostRewriteHeader); err != nil {
			return at.err("route.host_rewrite_header", err)
		}
		rt.host.header = newHeaderRef(hr.HostRewriteHeader).key
	case *routev3.RouteAction_HostRewritePathRegex:
		if rt.host.pathRegex, err = compileRegexRewrite(hr.HostRewritePathRegex); err != nil {
			return at.err("route.host_rewrite_path_regex", err)
		}
	case *routev3.RouteAction_HostRewrite:
		if rt.host.literal, err = literalHeaderValue(hr.HostRewrite); err != nil {
			return at.err("route.host_rewrite", err)
		}
	case *routev3.RouteAction_AutoHostRewrite:
		if hr.AutoHostRewrite.GetValue() {
			return at.unsupported("route.auto_host_rewrite", "rewriting the host to the upstream host's name")
		}
	default:
		return at.unsupported("route", fmt.Sprintf("host rewrite %T", hr))
	}
	rt.host.appendXFH = ra.GetAppendXForwardedHost()

	rt.Timeout = DefaultTimeout
	if ra.GetTimeout() != nil {
		if rt.Timeout, err = duration(ra.GetTimeout()); err != nil {
			return at.err("route.timeout", err)
		}
	}

	rt.Retry = lv.vhostRetry
	if ra.GetRetryPolicy() != nil {
		if rt.Retry, err = compileRetryPolicy(at, "route.retry_policy", ra.GetRetryPolicy()); err != nil {
			return err
		}
	}
	if ra.GetRetryPolicyTypedConfig() != nil {
		return at.unsupported("route.retry_policy_typed_config", "retry policy extensions")
	}

	rt.Mirrors = lv.mirrors
	if len(ra.GetRequestMirrorPolicies()) > 0 {
		if rt.Mirrors, err = compileMirrors(at, "route.request_mirror_policies", ra.GetRequestMirrorPolicies()); err != nil {
			return err
		}
	}
	if rt.hash, err = compileHashPolicies(at, ra.GetHashPolicy()); err != nil {
		return err
	}

	switch {
	case ra.GetMetadataMatch() != nil:
		return at.unsupported("route.metadata_match", "endpoint subset selection by metadata")
	case ra.GetInternalRedirectPolicy() != nil:
		return at.unsupported("route.internal_redirect_policy", "following upstream redirects")
	//lint:ignore SA1019 Envoy still honours this deprecated field, so the sidecar must too.
	case ra.GetInternalRedirectAction() == routev3.RouteAction_HANDLE_INTERNAL_REDIRECT:
		return at.unsupported("route.internal_redirect_action", "following upstream redirects")
	case ra.GetEarlyDataPolicy() != nil:
		return at.unsupported("route.early_data_policy", "early data policies")
	}
	return nil
}

func compileWeighted(at loc, rt *Route, wc *routev3.WeightedCluster) error {
	switch s := wc.GetRandomValueSpecifier().(type) {
	case nil:
	case *routev3.WeightedCluster_HeaderName:
		return at.unsupported("route.weighted_clusters.header_name", "taking the random value from a header")
	case *routev3.WeightedCluster_UseHashPolicy:
		if s.UseHashPolicy.GetValue() {
			return at.unsupported("route.weighted_clusters.use_hash_policy", "picking the weighted cluster by hash")
		}
	}
	if len(wc.GetClusters()) == 0 {
		return at.errf("route.weighted_clusters.clusters", "is empty")
	}
	var total uint64
	for i, c := range wc.GetClusters() {
		field := fmt.Sprintf("route.weighted_clusters.clusters[%d]", i)
		if c.GetClusterHeader() != "" {
			return at.unsupported(field+".cluster_header", "choosing the cluster from a request header")
		}
		if c.GetName() == "" {
			return at.errf(field+".name", "is empty")
		}
		if c.GetMetadataMatch() != nil {
			return at.unsupported(field+".metadata_match", "endpoint subset selection by metadata")
		}
		for _, key := range []string{FaultFilter, CorsFilter} {
			if _, ok := c.GetTypedPerFilterConfig()[key]; ok {
				return at.unsupported(fmt.Sprintf("%s.typed_per_filter_config[%q]", field, key), "per-cluster filter configuration")
			}
		}
		w := WeightedCluster{Name: c.GetName(), Weight: c.GetWeight().GetValue(), hostRewrite: c.GetHostRewriteLiteral()}
		var err error
		if w.request, err = compileHeaderOps(at, field+".", "request", c.GetRequestHeadersToAdd(), c.GetRequestHeadersToRemove()); err != nil {
			return err
		}
		if w.response, err = compileHeaderOps(at, field+".", "response", c.GetResponseHeadersToAdd(), c.GetResponseHeadersToRemove()); err != nil {
			return err
		}
		total += uint64(w.Weight)
		rt.Weighted = append(rt.Weighted, w)
		rt.cumWeights = append(rt.cumWeights, total)
	}
	if total == 0 {
		return at.errf("route.weighted_clusters", "weights sum to 0; the sum must be greater than 0")
	}
	if total > math.MaxUint32 {
		return at.errf("route.weighted_clusters", "weights sum to %d, more than %d", total, uint64(math.MaxUint32))
	}
	//lint:ignore SA1019 Envoy still honours this deprecated field, so the sidecar must too.
	if tw := wc.GetTotalWeight().GetValue(); tw > 0 && uint64(tw) != total {
		return at.errf("route.weighted_clusters.total_weight", "is %d but the weights sum to %d", tw, total)
	}
	rt.totalWeight = total
	return nil
}

func compileMirrors(at loc, field string, ps []*routev3.RouteAction_RequestMirrorPolicy) ([]Mirror, error) {
	var out []Mirror
	for i, p := range ps {
		f := fmt.Sprintf("%s[%d]", field, i)
		switch {
		case p.GetClusterHeader() != "":
			return nil, at.unsupported(f+".cluster_header", "choosing the mirror cluster from a request header")
		case p.GetCluster() == "":
			return nil, at.errf(f+".cluster", "is empty")
		case len(p.GetRequestHeadersMutations()) > 0:
			return nil, at.unsupported(f+".request_headers_mutations", "header mutations of mirrored requests")
		}
		fr, err := runtimeFraction(p.GetRuntimeFraction())
		if err != nil {
			return nil, at.err(f+".runtime_fraction", err)
		}
		out = append(out, Mirror{Cluster: p.GetCluster(), Numerator: fr.Numerator, Denominator: fr.Denominator,
			HostRewrite: p.GetHostRewriteLiteral(), NoShadowSuffix: p.GetDisableShadowHostSuffixAppend()})
	}
	return out, nil
}

func compileDirect(at loc, dr *routev3.DirectResponseAction, maxBody uint32) (*DirectResponse, error) {
	d := &DirectResponse{Status: int(dr.GetStatus())}
	if d.Status < 200 || d.Status > 599 {
		return nil, at.errf("direct_response.status", "%d is not in [200, 600)", dr.GetStatus())
	}
	if dr.GetBodyFormat() != nil {
		return nil, at.unsupported("direct_response.body_format", "formatted direct response bodies")
	}
	if b := dr.GetBody(); b != nil {
		switch s := b.GetSpecifier().(type) {
		case *corev3.DataSource_InlineString:
			d.Body = s.InlineString
		case *corev3.DataSource_InlineBytes:
			d.Body = string(s.InlineBytes)
		case nil:
		case *corev3.DataSource_Filename:
			return nil, at.unsupported("direct_response.body.filename", "bodies read from files")
		case *corev3.DataSource_EnvironmentVariable:
			return nil, at.unsupported("direct_response.body.environment_variable", "bodies read from the environment")
		default:
			return nil, at.unsupported("direct_response.body", fmt.Sprintf("data source %T", s))
		}
		if b.GetWatchedDirectory() != nil {
			return nil, at.unsupported("direct_response.body.watched_directory", "watched directories")
		}
	}
	if uint64(len(d.Body)) > uint64(maxBody) {
		return nil, at.errf("direct_response.body", "is %d bytes, more than max_direct_response_body_size_bytes (%d)", len(d.Body), maxBody)
	}
	return d, nil
}
