package compile

import (
	"fmt"
	"math"
	"regexp/syntax"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/rampart-mesh/rampart/policies/registry"
	"github.com/rampart-mesh/rampart/policies/source"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	networking "istio.io/api/networking/v1alpha3"
)

// Finding codes for VirtualService, DestinationRule and the registry.
const (
	CodeVSSchema        = "VS-SCHEMA"
	CodeVSNoHosts       = "VS-NO-HOSTS"
	CodeVSNoAction      = "VS-NO-ACTION"    // an http route with neither route, redirect nor directResponse
	CodeVSBadRegex      = "VS-BAD-REGEX"    // a regex that RE2 does not accept
	CodeVSWeights       = "VS-WEIGHTS"      // a negative weight, or several destinations whose weights add up to 0
	CodeVSBadValue      = "VS-BAD-VALUE"    // a duration, status code or retry condition the sidecar refuses
	CodeVSUnknownHost   = "VS-UNKNOWN-HOST" // warning: a destination host not in the registry
	CodeVSUnsupported   = "VS-UNSUPPORTED"  // a field Rampart does not implement (delegate, ...)
	CodeVSPercent       = "VS-BAD-PERCENT"  // a percentage outside 0..100
	CodeDRSchema        = "DR-SCHEMA"
	CodeDRSubset        = "DR-SUBSET"         // an unnamed or duplicate subset
	CodeDRTLS           = "DR-TLS"            // SIMPLE/MUTUAL without what they need
	CodeSESchema        = "SE-SCHEMA"         // ServiceEntry or WorkloadEntry problems
	CodeVSMissingSubset = "VS-UNKNOWN-SUBSET" // warning: a subset no DestinationRule defines
	CodeSidecarSchema   = "SIDECAR-SCHEMA"    // a Sidecar that does not decode, or an egress host not "namespace/host"
	CodeVSSNI           = "VS-SNI"            // a tls route without matches or sniHosts, or an sniHost outside the VirtualService's hosts
	CodeGWUnsupported   = "GW-UNSUPPORTED"    // warning: a Gateway server Rampart does not serve (HTTPS, TLS, TCP, ...)
)

// VirtualService is a decoded networking.istio.io VirtualService.
type VirtualService struct {
	Object source.Object
	Spec   *networking.VirtualService
}

// DestinationRule is a decoded networking.istio.io DestinationRule.
type DestinationRule struct {
	Object source.Object
	Spec   *networking.DestinationRule
}

// Networking is the decoded routing configuration: the registry plus every
// VirtualService and DestinationRule, oldest first.
type Networking struct {
	Registry         *registry.Registry
	VirtualServices  []VirtualService
	DestinationRules []DestinationRule
	Gateways         []Gateway
	Sidecars         []SidecarScope
	// PeerAuthns decide, with auto mTLS, whether an endpoint is sent mTLS:
	// a workload whose port is DISABLE gets plaintext, as Istio does.
	PeerAuthns []*PeerAuthn
}

// SidecarScope is a decoded networking.istio.io Sidecar: which hosts its
// workloads' proxies may reach.
type SidecarScope struct {
	Object source.Object
	Spec   *networking.Sidecar
}

// Gateway is a decoded networking.istio.io Gateway.
type Gateway struct {
	Object source.Object
	Spec   *networking.Gateway
}

func isNetworking(o source.Object, kind string) bool {
	return o.Kind == kind && o.Group() == "networking.istio.io"
}

// DecodeNetworking decodes the registry, VirtualServices, DestinationRules and
// Gateways in objs and validates them. Objects with error findings are left out.
func DecodeNetworking(objs []source.Object, mesh Mesh, defaultNS string) (*Networking, []Finding) {
	return DecodeNetworkingWith(objs, mesh, defaultNS, nil)
}

// DecodeNetworkingWith is DecodeNetworking with services and workloads from
// another registry (Kubernetes Services and Pods) added to the ServiceEntries
// and WorkloadEntries in objs.
func DecodeNetworkingWith(objs []source.Object, mesh Mesh, defaultNS string, extra *registry.Registry) (*Networking, []Finding) {
	reg, issues := registry.Build(objs, defaultNS, mesh.domain())
	if extra != nil {
		reg.Services = append(reg.Services, extra.Services...)
		reg.Workloads = append(reg.Workloads, extra.Workloads...)
		sort.SliceStable(reg.Services, func(i, j int) bool { return reg.Services[i].Host < reg.Services[j].Host })
	}
	n := &Networking{Registry: reg}
	var fs []Finding
	n.PeerAuthns, _ = DecodePeerAuthentications(objs, defaultNS)
	for _, is := range issues {
		fs = append(fs, newFinding(is.Object, SeverityError, CodeSESchema, is.Field, "%s", is.Message))
	}
	for _, o := range objs {
		if o.Namespace == "" {
			o.Namespace = defaultNS
		}
		switch {
		case isNetworking(o, "VirtualService"):
			spec := &networking.VirtualService{}
			if err := unmarshalSpec(o, spec); err != nil {
				fs = append(fs, newFinding(o, SeverityError, CodeVSSchema, "spec", "%v", err))
				continue
			}
			vfs := validateVirtualService(o, spec)
			fs = append(fs, vfs...)
			if !hasError(vfs) {
				n.VirtualServices = append(n.VirtualServices, VirtualService{o, spec})
			}
		case isNetworking(o, "DestinationRule"):
			spec := &networking.DestinationRule{}
			if err := unmarshalSpec(o, spec); err != nil {
				fs = append(fs, newFinding(o, SeverityError, CodeDRSchema, "spec", "%v", err))
				continue
			}
			dfs := validateDestinationRule(o, spec)
			fs = append(fs, dfs...)
			if !hasError(dfs) {
				n.DestinationRules = append(n.DestinationRules, DestinationRule{o, spec})
			}
		case isNetworking(o, "Sidecar"):
			spec := &networking.Sidecar{}
			if err := unmarshalSpec(o, spec); err != nil {
				fs = append(fs, newFinding(o, SeverityError, CodeSidecarSchema, "spec", "%v", err))
				continue
			}
			sfs := validateSidecar(o, spec)
			fs = append(fs, sfs...)
			if !hasError(sfs) {
				n.Sidecars = append(n.Sidecars, SidecarScope{o, spec})
			}
		case isNetworking(o, "Gateway"):
			spec := &networking.Gateway{}
			if err := unmarshalSpec(o, spec); err != nil {
				fs = append(fs, newFinding(o, SeverityError, CodeVSSchema, "spec", "%v", err))
				continue
			}
			fs = append(fs, validateGateway(o, spec)...)
			n.Gateways = append(n.Gateways, Gateway{o, spec})
		}
	}
	older := func(a, b source.Object) bool {
		if !a.CreationTimestamp.Equal(b.CreationTimestamp) {
			return a.CreationTimestamp.Before(b.CreationTimestamp)
		}
		return a.Namespace+"/"+a.Name < b.Namespace+"/"+b.Name
	}
	sort.SliceStable(n.VirtualServices, func(i, j int) bool { return older(n.VirtualServices[i].Object, n.VirtualServices[j].Object) })
	sort.SliceStable(n.DestinationRules, func(i, j int) bool { return older(n.DestinationRules[i].Object, n.DestinationRules[j].Object) })
	// Cross-object checks: destinations the registry does not know, subsets no rule defines.
	for _, vs := range n.VirtualServices {
		for i, h := range vs.Spec.GetHttp() {
			for j, d := range h.GetRoute() {
				fs = append(fs, n.checkDestination(vs.Object, fmt.Sprintf("spec.http[%d].route[%d].destination", i, j), d.GetDestination())...)
			}
		}
		for i, t := range vs.Spec.GetTcp() {
			for j, d := range t.GetRoute() {
				fs = append(fs, n.checkDestination(vs.Object, fmt.Sprintf("spec.tcp[%d].route[%d].destination", i, j), d.GetDestination())...)
			}
		}
		for i, t := range vs.Spec.GetTls() {
			for j, d := range t.GetRoute() {
				fs = append(fs, n.checkDestination(vs.Object, fmt.Sprintf("spec.tls[%d].route[%d].destination", i, j), d.GetDestination())...)
			}
		}
	}
	return n, fs
}

func (n *Networking) checkDestination(o source.Object, path string, d *networking.Destination) []Finding {
	host := n.Registry.Resolve(d.GetHost(), o.Namespace)
	svc := n.Registry.Service(host)
	if svc == nil {
		return []Finding{newFinding(o, SeverityWarning, CodeVSUnknownHost, path+".host",
			"%q (%s) is not in the registry (no ServiceEntry has it); requests routed there get 503 (NR)", d.GetHost(), host)}
	}
	if d.GetSubset() != "" && n.subset(host, o.Namespace, d.GetSubset()) == nil {
		return []Finding{newFinding(o, SeverityWarning, CodeVSMissingSubset, path+".subset",
			"no DestinationRule for %s defines subset %q; requests routed there get 503 (UH)", host, d.GetSubset())}
	}
	return nil
}

func unmarshalSpec(o source.Object, m proto.Message) error {
	if len(o.Spec) == 0 || string(o.Spec) == "null" {
		return nil
	}
	return protojson.Unmarshal(o.Spec, m)
}

func hasError(fs []Finding) bool {
	for _, f := range fs {
		if f.Severity == SeverityError {
			return true
		}
	}
	return false
}

// checkWeights applies Istio's rules for destination weights: none negative
// and, with several destinations, a sum above 0 (a destination receives
// weight/sum of the traffic; with one destination the weight is ignored).
func checkWeights(o source.Object, path string, ws []int32) []Finding {
	var fs []Finding
	var sum int64
	for i, w := range ws {
		if w < 0 {
			fs = append(fs, newFinding(o, SeverityError, CodeVSWeights, fmt.Sprintf("%s[%d].weight", path, i), "%d is negative", w))
		}
		sum += int64(w)
	}
	if len(ws) > 1 && len(fs) == 0 && sum == 0 {
		fs = append(fs, newFinding(o, SeverityError, CodeVSWeights, path,
			"%d destinations and no weights: give each destination its share (a weight), or list one destination", len(ws)))
	}
	if sum > math.MaxUint32 {
		fs = append(fs, newFinding(o, SeverityError, CodeVSWeights, path, "weights add up to %d, more than %d", sum, uint64(math.MaxUint32)))
	}
	return fs
}

// Limits the sidecar's route compiler puts on regexes (proxy/route); the
// control plane may not import it, so the rule is repeated here and a test
// keeps the two in step.
const (
	maxRegexLen  = 1024
	maxRegexProg = 10_000
)

// checkRegex accepts what the sidecar accepts: an RE2 pattern parsed on its
// own (so "a)|(b" cannot escape the anchoring group), within the limits.
func checkRegex(pat string) error {
	if len(pat) > maxRegexLen {
		return fmt.Errorf("regex of %d bytes is longer than the limit of %d", len(pat), maxRegexLen)
	}
	parsed, err := syntax.Parse(pat, syntax.Perl)
	if err != nil {
		return fmt.Errorf("invalid regex %q: %w", pat, err)
	}
	prog, err := syntax.Compile(parsed.Simplify())
	if err != nil {
		return fmt.Errorf("invalid regex %q: %w", pat, err)
	}
	if len(prog.Inst) > maxRegexProg {
		return fmt.Errorf("regex %q compiles to %d instructions, more than the limit of %d", pat, len(prog.Inst), maxRegexProg)
	}
	return nil
}

// checkDuration refuses invalid and negative durations, as the sidecar does.
func checkDuration(d *durationpb.Duration) error {
	if d == nil {
		return nil
	}
	if err := d.CheckValid(); err != nil {
		return err
	}
	if d.GetSeconds() < 0 || d.GetNanos() < 0 {
		return fmt.Errorf("%v is negative", d.AsDuration())
	}
	if d.GetSeconds() > math.MaxInt64/int64(time.Second)-1 {
		return fmt.Errorf("%ds is too long", d.GetSeconds())
	}
	return nil
}

// retryOnTokens are the retry conditions the sidecar implements (Envoy's
// router and gRPC conditions); a test checks them against proxy/route.
var retryOnTokens = []string{
	"5xx", "gateway-error", "reset", "reset-before-request", "connect-failure", "envoy-ratelimited",
	"retriable-4xx", "refused-stream", "retriable-status-codes", "retriable-headers",
	"http3-post-connect-failure", "cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable",
}

// checkRetryOn refuses an unknown retryOn condition: the sidecar would refuse
// the whole route set for it. Numbers are retriable status codes.
func checkRetryOn(s string) error {
	for _, t := range strings.Split(s, ",") {
		t = strings.TrimSpace(t)
		if t == "" {
			continue
		}
		if n, err := strconv.Atoi(t); err == nil {
			if n < 100 || n > 599 {
				return fmt.Errorf("%d is not an HTTP status", n)
			}
			continue
		}
		if !slices.Contains(retryOnTokens, t) {
			return fmt.Errorf("unknown retry condition %q; known: %s and HTTP status codes", t, strings.Join(retryOnTokens, ", "))
		}
	}
	return nil
}

func validateVirtualService(o source.Object, vs *networking.VirtualService) []Finding {
	var fs []Finding
	if len(vs.GetHosts()) == 0 {
		fs = append(fs, newFinding(o, SeverityError, CodeVSNoHosts, "spec.hosts", "at least one host is required"))
	}
	re := func(path, expr string) {
		if err := checkRegex(expr); err != nil {
			fs = append(fs, newFinding(o, SeverityError, CodeVSBadRegex, path, "%v", err))
		}
	}
	dur := func(path string, d *durationpb.Duration) {
		if err := checkDuration(d); err != nil {
			fs = append(fs, newFinding(o, SeverityError, CodeVSBadValue, path, "%v", err))
		}
	}
	status := func(path string, code int32) {
		if code < 200 || code > 599 {
			fs = append(fs, newFinding(o, SeverityError, CodeVSBadValue, path, "%d is not an HTTP status in [200, 599]", code))
		}
	}
	sm := func(path string, m *networking.StringMatch) {
		if r := m.GetRegex(); r != "" {
			re(path+".regex", r)
		}
	}
	pct := func(path string, p *networking.Percent) {
		if p != nil && (p.GetValue() < 0 || p.GetValue() > 100) {
			fs = append(fs, newFinding(o, SeverityError, CodeVSPercent, path, "%v is not a percentage", p.GetValue()))
		}
	}
	for i, h := range vs.GetHttp() {
		base := fmt.Sprintf("spec.http[%d]", i)
		if h.GetDelegate() != nil {
			fs = append(fs, newFinding(o, SeverityError, CodeVSUnsupported, base+".delegate", "delegate is not supported"))
		}
		if len(h.GetRoute()) == 0 && h.GetRedirect() == nil && h.GetDirectResponse() == nil && h.GetDelegate() == nil {
			fs = append(fs, newFinding(o, SeverityError, CodeVSNoAction, base, "one of route, redirect or directResponse is required"))
		}
		for j, m := range h.GetMatch() {
			mb := fmt.Sprintf("%s.match[%d]", base, j)
			sm(mb+".uri", m.GetUri())
			sm(mb+".method", m.GetMethod())
			sm(mb+".authority", m.GetAuthority())
			sm(mb+".scheme", m.GetScheme())
			for k, v := range m.GetHeaders() {
				sm(fmt.Sprintf("%s.headers[%s]", mb, k), v)
			}
			for k, v := range m.GetQueryParams() {
				sm(fmt.Sprintf("%s.queryParams[%s]", mb, k), v)
			}
			for k, v := range m.GetWithoutHeaders() {
				sm(fmt.Sprintf("%s.withoutHeaders[%s]", mb, k), v)
			}
		}
		hw := make([]int32, len(h.GetRoute()))
		for j, d := range h.GetRoute() {
			hw[j] = d.GetWeight()
		}
		fs = append(fs, checkWeights(o, base+".route", hw)...)
		dur(base+".timeout", h.GetTimeout())
		if r := h.GetRetries(); r != nil {
			if r.GetAttempts() < 0 {
				fs = append(fs, newFinding(o, SeverityError, CodeVSBadValue, base+".retries.attempts", "%d is negative", r.GetAttempts()))
			}
			if err := checkRetryOn(r.GetRetryOn()); err != nil {
				fs = append(fs, newFinding(o, SeverityError, CodeVSBadValue, base+".retries.retryOn", "%v", err))
			}
			dur(base+".retries.perTryTimeout", r.GetPerTryTimeout())
		}
		if rd := h.GetRedirect(); rd != nil {
			switch rd.GetRedirectCode() {
			case 0, 301, 302, 303, 307, 308:
			default:
				fs = append(fs, newFinding(o, SeverityError, CodeVSBadValue, base+".redirect.redirectCode",
					"%d is not supported: use 301, 302, 303, 307 or 308", rd.GetRedirectCode()))
			}
		}
		if dr := h.GetDirectResponse(); dr != nil {
			status(base+".directResponse.status", int32(min(dr.GetStatus(), math.MaxInt32)))
		}
		if mo := h.GetCorsPolicy().GetMaxAge(); mo != nil {
			dur(base+".corsPolicy.maxAge", mo)
		}
		if rr := h.GetRewrite().GetUriRegexRewrite(); rr != nil {
			re(base+".rewrite.uriRegexRewrite.match", rr.GetMatch())
		}
		if f := h.GetFault(); f != nil {
			pct(base+".fault.delay.percentage", f.GetDelay().GetPercentage())
			pct(base+".fault.abort.percentage", f.GetAbort().GetPercentage())
			if f.GetDelay() != nil && f.GetDelay().GetFixedDelay() == nil {
				fs = append(fs, newFinding(o, SeverityError, CodeVSUnsupported, base+".fault.delay", "only fixedDelay is supported"))
			} else if f.GetDelay() != nil {
				dur(base+".fault.delay.fixedDelay", f.GetDelay().GetFixedDelay())
			}
			//lint:ignore SA1019 users' YAML still sets the deprecated field; Istio honours it
			if p := f.GetDelay().GetPercent(); p < 0 || p > 100 {
				fs = append(fs, newFinding(o, SeverityError, CodeVSPercent, base+".fault.delay.percent", "%d is not a percentage", p))
			}
			if f.GetAbort() != nil && f.GetAbort().GetHttpStatus() == 0 {
				fs = append(fs, newFinding(o, SeverityError, CodeVSUnsupported, base+".fault.abort", "only httpStatus aborts are supported"))
			} else if f.GetAbort() != nil {
				status(base+".fault.abort.httpStatus", f.GetAbort().GetHttpStatus())
			}
		}
		pct(base+".mirrorPercentage", h.GetMirrorPercentage())
		for j, m := range h.GetMirrors() {
			pct(fmt.Sprintf("%s.mirrors[%d].percentage", base, j), m.GetPercentage())
		}
		for j, c := range h.GetCorsPolicy().GetAllowOrigins() {
			sm(fmt.Sprintf("%s.corsPolicy.allowOrigins[%d]", base, j), c)
		}
	}
	weights := func(path string, ds []*networking.RouteDestination) {
		ws := make([]int32, len(ds))
		for i, d := range ds {
			ws[i] = d.GetWeight()
		}
		fs = append(fs, checkWeights(o, path, ws)...)
	}
	for i, t := range vs.GetTcp() {
		weights(fmt.Sprintf("spec.tcp[%d].route", i), t.GetRoute())
		for j, m := range t.GetMatch() {
			if len(m.GetDestinationSubnets()) > 0 {
				fs = append(fs, newFinding(o, SeverityWarning, CodeVSUnsupported, fmt.Sprintf("spec.tcp[%d].match[%d].destinationSubnets", i, j),
					"destinationSubnets is not implemented: this match never applies, so connections to %v take the next route that applies; route by service host (a tcp route per ServiceEntry) instead", m.GetDestinationSubnets()))
			}
		}
	}
	for i, t := range vs.GetTls() {
		fs = append(fs, validateTLSRoute(o, vs, fmt.Sprintf("spec.tls[%d]", i), t)...)
		weights(fmt.Sprintf("spec.tls[%d].route", i), t.GetRoute())
	}
	return fs
}

// validateTLSRoute applies Istio's rules for tls routes: at least one match,
// each with at least one sniHost, every sniHost within the VirtualService's
// hosts (short names resolved in its namespace), and at least one destination.
func validateTLSRoute(o source.Object, vs *networking.VirtualService, base string, t *networking.TLSRoute) []Finding {
	var fs []Finding
	if len(t.GetRoute()) == 0 {
		fs = append(fs, newFinding(o, SeverityError, CodeVSNoAction, base+".route", "a tls route needs at least one destination"))
	}
	if len(t.GetMatch()) == 0 {
		fs = append(fs, newFinding(o, SeverityError, CodeVSSNI, base+".match", "a tls route needs at least one match with sniHosts"))
	}
	r := &registry.Registry{Domain: registry.DefaultDomain}
	for j, m := range t.GetMatch() {
		mb := fmt.Sprintf("%s.match[%d]", base, j)
		if len(m.GetSniHosts()) == 0 {
			fs = append(fs, newFinding(o, SeverityError, CodeVSSNI, mb+".sniHosts", "at least one sniHost is required"))
		}
		for k, sni := range m.GetSniHosts() {
			within := false
			for _, h := range vs.GetHosts() {
				if hostMatches(r.Resolve(h, o.Namespace), r.Resolve(sni, o.Namespace)) {
					within = true
					break
				}
			}
			if !within {
				fs = append(fs, newFinding(o, SeverityError, CodeVSSNI, fmt.Sprintf("%s.sniHosts[%d]", mb, k),
					"%q is not within the VirtualService's hosts %v; use one of them or a name under a wildcard host", sni, vs.GetHosts()))
			}
		}
		if len(m.GetDestinationSubnets()) > 0 {
			fs = append(fs, newFinding(o, SeverityWarning, CodeVSUnsupported, mb+".destinationSubnets", "destinationSubnets is not applied: sidecars match tls routes by SNI only"))
		}
	}
	return fs
}

func validateDestinationRule(o source.Object, dr *networking.DestinationRule) []Finding {
	var fs []Finding
	if dr.GetHost() == "" {
		fs = append(fs, newFinding(o, SeverityError, CodeDRSchema, "spec.host", "a host is required"))
	}
	seen := map[string]bool{}
	for i, s := range dr.GetSubsets() {
		p := fmt.Sprintf("spec.subsets[%d].name", i)
		switch {
		case s.GetName() == "":
			fs = append(fs, newFinding(o, SeverityError, CodeDRSubset, p, "a subset needs a name"))
		case seen[s.GetName()]:
			fs = append(fs, newFinding(o, SeverityError, CodeDRSubset, p, "subset %q is defined twice", s.GetName()))
		}
		seen[s.GetName()] = true
	}
	check := func(path string, tp *networking.TrafficPolicy) {
		t := tp.GetTls()
		switch t.GetMode() {
		case networking.ClientTLSSettings_MUTUAL:
			if t.GetClientCertificate() == "" || t.GetPrivateKey() == "" {
				fs = append(fs, newFinding(o, SeverityError, CodeDRTLS, path+".tls", "MUTUAL needs clientCertificate and privateKey"))
			}
		}
	}
	check("spec.trafficPolicy", dr.GetTrafficPolicy())
	for i, s := range dr.GetSubsets() {
		check(fmt.Sprintf("spec.subsets[%d].trafficPolicy", i), s.GetTrafficPolicy())
	}
	return fs
}

// destinationRule finds the DestinationRule that applies to host for a proxy in
// namespace ns: one in the proxy's namespace first, then the service's, then the
// root namespace; the oldest wins among equals (Istio's lookup order).
func (n *Networking) destinationRule(host, ns, svcNS, root string, labels map[string]string) *DestinationRule {
	for _, want := range []string{ns, svcNS, root} {
		for i := range n.DestinationRules {
			dr := &n.DestinationRules[i]
			if dr.Object.Namespace != want || n.Registry.Resolve(dr.Spec.GetHost(), dr.Object.Namespace) != host {
				continue
			}
			if !visible(dr.Spec.GetExportTo(), dr.Object.Namespace, ns) {
				continue
			}
			if ws := dr.Spec.GetWorkloadSelector(); ws != nil && !registry.Matches(ws.GetMatchLabels(), labels) {
				continue
			}
			return dr
		}
	}
	return nil
}

func (n *Networking) subset(host, ns, name string) *networking.Subset {
	for _, dr := range n.DestinationRules {
		if n.Registry.Resolve(dr.Spec.GetHost(), dr.Object.Namespace) != host {
			continue
		}
		for _, s := range dr.Spec.GetSubsets() {
			if s.GetName() == name {
				return s
			}
		}
	}
	return nil
}

func visible(exportTo []string, objNS, ns string) bool {
	if len(exportTo) == 0 {
		return true
	}
	for _, e := range exportTo {
		if e == "*" || e == ns || (e == "." && objNS == ns) {
			return true
		}
	}
	return false
}

func (m Mesh) domain() string { return registry.DefaultDomain }

func validateSidecar(o source.Object, sc *networking.Sidecar) []Finding {
	var fs []Finding
	for i, e := range sc.GetEgress() {
		for j, h := range e.GetHosts() {
			if ns, host, ok := strings.Cut(h, "/"); !ok || ns == "" || host == "" {
				fs = append(fs, newFinding(o, SeverityError, CodeSidecarSchema, fmt.Sprintf("spec.egress[%d].hosts[%d]", i, j), "%q is not namespace/host (e.g. \"./*\", \"istio-system/*\")", h))
			}
		}
	}
	return fs
}

// sidecarFor finds the Sidecar that scopes a workload: one in its namespace
// whose selector matches, else its namespace's Sidecar without a selector, else
// the root namespace's (Istio's order; the oldest wins among equals).
func (n *Networking) sidecarFor(wl Workload, root string) *SidecarScope {
	var nsWide, rootWide *SidecarScope
	for i := range n.Sidecars {
		sc := &n.Sidecars[i]
		sel := sc.Spec.GetWorkloadSelector().GetLabels()
		switch {
		case sc.Object.Namespace == wl.Namespace && len(sel) > 0:
			if registry.Matches(sel, wl.Labels) {
				return sc
			}
		case sc.Object.Namespace == wl.Namespace && nsWide == nil:
			nsWide = sc
		case sc.Object.Namespace == root && len(sel) == 0 && rootWide == nil:
			rootWide = sc
		}
	}
	if nsWide != nil {
		return nsWide
	}
	return rootWide
}

// egressAllows reports whether a Sidecar's egress hosts admit a service. No
// egress listener means everything.
func egressAllows(sc *SidecarScope, svc *registry.Service, wlNS string) bool {
	if sc == nil || len(sc.Spec.GetEgress()) == 0 {
		return true
	}
	for _, e := range sc.Spec.GetEgress() {
		for _, h := range e.GetHosts() {
			ns, host, _ := strings.Cut(h, "/")
			switch ns {
			case "*":
			case ".":
				if svc.Namespace != wlNS {
					continue
				}
			case "~":
				continue
			default:
				if svc.Namespace != ns {
					continue
				}
			}
			if host == "*" || strings.EqualFold(host, svc.Host) || (strings.HasPrefix(host, "*.") && strings.HasSuffix(svc.Host, strings.ToLower(host[1:]))) {
				return true
			}
		}
	}
	return false
}
