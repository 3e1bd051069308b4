package compile

import (
	"fmt"
	"net/netip"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/rampart-mesh/rampart/policies/source"
	security "istio.io/api/security/v1beta1"
)

// AuthzPolicy is a decoded AuthorizationPolicy.
type AuthzPolicy struct {
	Object source.Object
	Spec   *security.AuthorizationPolicy
	DryRun bool
}

// Name is the policy's "namespace/name".
func (p *AuthzPolicy) Name() string { return p.Object.Namespace + "/" + p.Object.Name }

// Workload identifies the proxy a policy set is compiled for.
type Workload struct {
	Namespace string
	Name      string
	Labels    map[string]string
	// Gateway says the proxy serves gateway listeners (a sidecar run with
	// --gateway-listen says so in its node metadata, ROUTER): Istio's router
	// proxies. A Gateway without a selector applies only to those.
	Gateway bool
	// SpaceDelimitedClaims are the claims, besides scope and permission, that the
	// workload's RequestAuthentications split on whitespace for authorization.
	SpaceDelimitedClaims []string
}

// IsAuthorizationPolicy reports whether o is a security.istio.io AuthorizationPolicy.
func IsAuthorizationPolicy(o source.Object) bool {
	return o.Kind == "AuthorizationPolicy" && o.Group() == "security.istio.io"
}

// DecodeAuthorizationPolicies decodes every AuthorizationPolicy in objs, giving
// those without a namespace defaultNS. An unknown field is reported
// (CodeUnknownField) and dropped, the rest of the policy kept, as the API server
// prunes it and istiod ignores it; a spec that still does not decode (wrong
// type, unknown enum value) is reported and left out, as the API server would
// refuse it.
func DecodeAuthorizationPolicies(objs []source.Object, defaultNS string) ([]*AuthzPolicy, []Finding) {
	var out []*AuthzPolicy
	var findings []Finding
	for _, o := range objs {
		if !IsAuthorizationPolicy(o) {
			continue
		}
		if o.Namespace == "" {
			o.Namespace = defaultNS
		}
		spec := &security.AuthorizationPolicy{}
		fs, ok := decodeIstioSpec(o, spec, CodeSchema, CodeUnknownField)
		findings = append(findings, fs...)
		if !ok {
			continue
		}
		p := &AuthzPolicy{Object: o, Spec: spec}
		if v, ok := o.Annotations["istio.io/dry-run"]; ok {
			b, err := strconv.ParseBool(v)
			if err != nil {
				findings = append(findings, newFinding(o, SeverityError, CodeDryRunValue, `metadata.annotations["istio.io/dry-run"]`,
					"%q is not a boolean; the policy is enforced", v))
			}
			p.DryRun = b
		}
		out = append(out, p)
	}
	return out, findings
}

// Applies reports whether p applies to the sidecar of wl: root-namespace policies
// everywhere, others in their namespace; selector labels a subset of the
// workload's; policies attached with targetRef(s) never apply to sidecars.
func (p *AuthzPolicy) Applies(m Mesh, wl Workload) bool {
	if p.Spec.GetTargetRef() != nil || len(p.Spec.GetTargetRefs()) > 0 {
		return false
	}
	if p.Object.Namespace != m.RootNamespace && p.Object.Namespace != wl.Namespace {
		return false
	}
	for k, v := range p.Spec.GetSelector().GetMatchLabels() {
		if got, ok := wl.Labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// parseKey splits a when.key into the base key ("request.headers" for
// "request.headers[x]") and the bracketed arguments; ok is false when the
// brackets are malformed. request.headers and experimental.envoy.filters.<f>
// take one argument, everything between the first '[' and the final ']', as
// Istio's translator reads it: request.headers[a][b] names the header "a][b".
func parseKey(key string) (base string, args []string, ok bool) {
	if i := strings.IndexByte(key, '['); i >= 0 {
		base = key[:i]
		if base == "request.headers" || strings.HasPrefix(base, "experimental.envoy.filters.") {
			if !strings.HasSuffix(key, "]") || len(key)-i < 3 {
				return base, nil, false
			}
			return base, []string{key[i+1 : len(key)-1]}, true
		}
		rest := key[i:]
		for rest != "" {
			if rest[0] != '[' {
				return base, nil, false
			}
			j := strings.IndexByte(rest, ']')
			if j < 0 {
				return base, nil, false
			}
			args = append(args, rest[1:j])
			rest = rest[j+1:]
		}
		return base, args, true
	}
	return key, nil, true
}

var simpleKeys = map[string]bool{
	"source.ip": true, "remote.ip": true, "source.namespace": true, "source.principal": true,
	"source.serviceAccount": true, "source.trustDomain": true, "request.auth.principal": true,
	"request.auth.audiences": true, "request.auth.presenter": true, "destination.ip": true,
	"destination.port": true, "connection.sni": true,
}

var unsupportedKeys = map[string]bool{
	"destination.labels": true, "destination.namespace": true, "destination.name": true, "destination.user": true,
}

// keyKnown reports whether Istio's translator knows a when.key: the simple keys
// exactly, and request.headers, request.auth.claims and experimental.envoy.filters.
// by prefix. Its model.New drops the whole rule for any other key (for every
// action), while a malformed argument of a known prefix is a bad value.
func keyKnown(key string) bool {
	if simpleKeys[key] {
		return true
	}
	for _, prefix := range []string{"request.headers", "request.auth.claims", "experimental.envoy.filters."} {
		if strings.HasPrefix(key, prefix) {
			return true
		}
	}
	return false
}

// keyMalformed reports whether a known key's bracketed arguments are wrong:
// request.headers[name] and experimental.envoy.filters.<f>[key] take exactly one
// non-empty argument, request.auth.claims[c1][c2]... one or more.
func keyMalformed(key string) bool {
	if simpleKeys[key] {
		return false
	}
	base, args, ok := parseKey(key)
	switch {
	case !ok || slicesContains(args, ""):
		return true
	case base == "request.headers" || strings.HasPrefix(base, "experimental.envoy.filters."):
		return len(args) != 1
	case base == "request.auth.claims":
		return len(args) == 0
	}
	return true
}

// httpOnlyKeys are the condition keys that exist only for HTTP.
func httpOnlyKey(base string) bool {
	return base == "request.headers" || strings.HasPrefix(base, "request.auth.")
}

// ValidateAuthorizationPolicy returns the findings for p (admission's checks).
func ValidateAuthorizationPolicy(p *AuthzPolicy, m Mesh) []Finding {
	var fs []Finding
	o := p.Object
	add := func(sev, code, path, format string, args ...any) {
		fs = append(fs, newFinding(o, sev, code, path, format, args...))
	}
	s := p.Spec
	if s.GetSelector() != nil && (s.GetTargetRef() != nil || len(s.GetTargetRefs()) > 0) {
		add(SeverityError, CodeSelectorAndRef, "spec", "only one of selector and targetRef(s) may be set")
	} else if s.GetTargetRef() != nil || len(s.GetTargetRefs()) > 0 {
		add(SeverityWarning, CodeTargetRefSidecar, "spec.targetRefs", "policies attached with targetRef(s) apply to gateways and waypoints, never to sidecars")
	}
	if p.DryRun && s.GetAction() != security.AuthorizationPolicy_ALLOW && s.GetAction() != security.AuthorizationPolicy_DENY {
		add(SeverityWarning, CodeDryRunValue, `metadata.annotations["istio.io/dry-run"]`, "Istio supports dry-run for ALLOW and DENY only; Rampart records %s dry-run results too", s.GetAction())
	}
	action := s.GetAction()
	if (action == security.AuthorizationPolicy_DENY || action == security.AuthorizationPolicy_CUSTOM) && len(s.GetRules()) == 0 {
		add(SeverityError, CodeMissingRules, "spec.rules", "a %s policy needs rules (without them it matches nothing)", action)
	}
	if action != security.AuthorizationPolicy_CUSTOM && s.GetProvider() != nil {
		add(SeverityError, CodeProviderAction, "spec.provider", "provider is only for action CUSTOM")
	}
	if action == security.AuthorizationPolicy_CUSTOM {
		switch name := s.GetProvider().GetName(); {
		case name == "":
			add(SeverityError, CodeMissingProvider, "spec.provider.name", "a CUSTOM policy needs provider.name; its rules will deny")
		default:
			if _, ok := m.Provider(name); !ok {
				add(SeverityError, CodeUnknownProvider, "spec.provider.name", "provider %q is not an authorization provider in the mesh config's extensionProviders; its rules will deny", name)
			}
		}
	}
	hasHTTP, hasPorts := false, false
	for i, r := range s.GetRules() {
		rp := fmt.Sprintf("spec.rules[%d]", i)
		for j, f := range r.GetFrom() {
			fp := fmt.Sprintf("%s.from[%d].source", rp, j)
			src := f.GetSource()
			if src == nil || isEmptySource(src) {
				add(SeverityError, CodeEmptySource, fp, "source must set at least one field")
				continue
			}
			if action == security.AuthorizationPolicy_CUSTOM && usesIdentity(src) {
				add(SeverityError, CodeCustomIdentity, fp, "CUSTOM policies cannot use principals, namespaces, serviceAccounts, trustDomains or requestPrincipals")
			}
			if len(src.GetRequestPrincipals())+len(src.GetNotRequestPrincipals()) > 0 {
				hasHTTP = true
			}
			fs = append(fs, checkValues(o, fp, map[string][]string{
				"principals": src.GetPrincipals(), "notPrincipals": src.GetNotPrincipals(),
				"requestPrincipals": src.GetRequestPrincipals(), "notRequestPrincipals": src.GetNotRequestPrincipals(),
				"namespaces": src.GetNamespaces(), "notNamespaces": src.GetNotNamespaces(),
			})...)
			for field, vals := range map[string][]string{"ipBlocks": src.GetIpBlocks(), "notIpBlocks": src.GetNotIpBlocks(), "remoteIpBlocks": src.GetRemoteIpBlocks(), "notRemoteIpBlocks": src.GetNotRemoteIpBlocks()} {
				for k, v := range vals {
					if _, err := parseCIDR(v); err != nil {
						add(SeverityError, CodeBadIP, fmt.Sprintf("%s.%s[%d]", fp, field, k), "%q is not an IP address or CIDR", v)
					}
				}
			}
			if len(src.GetServiceAccounts())+len(src.GetNotServiceAccounts()) > 0 &&
				len(src.GetPrincipals())+len(src.GetNotPrincipals())+len(src.GetNamespaces())+len(src.GetNotNamespaces()) > 0 {
				add(SeverityError, CodeServiceAccounts, fp+".serviceAccounts", "serviceAccounts cannot be combined with principals or namespaces in one source")
			}
			for _, field := range []struct {
				name string
				vals []string
			}{{"serviceAccounts", src.GetServiceAccounts()}, {"notServiceAccounts", src.GetNotServiceAccounts()}} {
				if len(field.vals) > 16 {
					add(SeverityError, CodeServiceAccounts, fp+"."+field.name, "at most 16 service accounts")
				}
				for k, v := range field.vals {
					if v == "" || strings.Contains(v, "*") || strings.Count(v, "/") > 1 {
						add(SeverityError, CodeServiceAccounts, fmt.Sprintf("%s.%s[%d]", fp, field.name, k), "%q must be 'namespace/name' or 'name', without wildcards", v)
					}
				}
			}
			for _, field := range []struct {
				name string
				vals []string
			}{{"trustDomains", src.GetTrustDomains()}, {"notTrustDomains", src.GetNotTrustDomains()}} {
				for k, v := range field.vals {
					if v == "" || strings.Count(v, "*") > 1 || strings.Contains(v, "/") || (strings.Contains(v, "*") && !strings.HasPrefix(v, "*") && !strings.HasSuffix(v, "*")) {
						add(SeverityError, CodeTrustDomains, fmt.Sprintf("%s.%s[%d]", fp, field.name, k), "%q: a trust domain has no '/', and at most one leading or trailing '*'", v)
					}
				}
			}
		}
		for j, t := range r.GetTo() {
			tp := fmt.Sprintf("%s.to[%d].operation", rp, j)
			op := t.GetOperation()
			if op == nil || isEmptyOperation(op) {
				add(SeverityError, CodeEmptyOperation, tp, "operation must set at least one field")
				continue
			}
			if len(op.GetHosts())+len(op.GetNotHosts())+len(op.GetMethods())+len(op.GetNotMethods())+len(op.GetPaths())+len(op.GetNotPaths()) > 0 {
				hasHTTP = true
			}
			if len(op.GetPorts())+len(op.GetNotPorts()) > 0 {
				hasPorts = true
			}
			fs = append(fs, checkValues(o, tp, map[string][]string{
				"hosts": op.GetHosts(), "notHosts": op.GetNotHosts(), "methods": op.GetMethods(), "notMethods": op.GetNotMethods(),
			})...)
			for field, vals := range map[string][]string{"ports": op.GetPorts(), "notPorts": op.GetNotPorts()} {
				for k, v := range vals {
					if _, err := parsePort(v); err != nil {
						add(SeverityError, CodeBadPort, fmt.Sprintf("%s.%s[%d]", tp, field, k), "%q is not a port (0-65535)", v)
					}
				}
			}
			for field, vals := range map[string][]string{"paths": op.GetPaths(), "notPaths": op.GetNotPaths()} {
				for k, v := range vals {
					fpath := fmt.Sprintf("%s.%s[%d]", tp, field, k)
					if v == "" {
						add(SeverityError, CodeEmptyValue, fpath, emptyValueMessage)
					} else if isTemplate(v) {
						if _, err := templateRegex(v); err != nil {
							add(SeverityError, CodeBadPathTemplate, fpath, "%q: %v", v, err)
						}
					} else if strings.ContainsAny(v, "{}") {
						// Admission (CheckValidPathTemplate) refuses '{' and '}' outside
						// {*} and {**}; the translator matches such a path as a string.
						add(SeverityError, CodeBadPathTemplate, fpath, "%q: '{' and '}' may only appear as a whole {*} or {**} segment; this is no template but a literal path, which requests never carry (named variables like {id} are not supported)", v)
					} else if infixStar(v) {
						add(SeverityWarning, CodeInfixWildcard, fpath, "%q: only a leading or trailing '*' is a wildcard; this one is a literal character", v)
					}
				}
			}
		}
		for j, c := range r.GetWhen() {
			cp := fmt.Sprintf("%s.when[%d]", rp, j)
			key := c.GetKey()
			base, args, ok := parseKey(key)
			switch {
			case key == "":
				add(SeverityError, CodeUnknownKey, cp+".key", "key is required")
				continue
			case ok && unsupportedKeys[base]:
				add(SeverityError, CodeUnsupportedKey, cp+".key", "%q is not supported in AuthorizationPolicy; the rule is ignored", key)
				continue
			case !keyKnown(key):
				add(SeverityError, CodeUnknownKey, cp+".key", "unknown condition key %q; the whole rule is ignored, for every action", key)
				continue
			case keyMalformed(key):
				add(SeverityError, CodeBadKeyFormat, cp+".key", "%q must have the form request.headers[name], request.auth.claims[name]... or experimental.envoy.filters.<filter>[key]", key)
			case base == "request.headers" && strings.ContainsAny(args[0], "[]"):
				add(SeverityWarning, CodeLiteralKeyName, cp+".key", "%q names the header %q: Istio reads everything between the first '[' and the last ']' as the name; no request carries such a header, so values never match and notValues always do", key, args[0])
			case strings.HasPrefix(base, "experimental.envoy.filters.") && strings.ContainsAny(args[0], "[]"):
				add(SeverityWarning, CodeLiteralKeyName, cp+".key", "%q names the metadata key %q: Istio reads everything between the first '[' and the last ']' as the key; nested keys are not supported", key, args[0])
			}
			if httpOnlyKey(base) {
				hasHTTP = true
			}
			if action == security.AuthorizationPolicy_CUSTOM && (strings.HasPrefix(base, "request.auth.") || base == "source.namespace" || base == "source.principal" || base == "source.serviceAccount" || base == "source.trustDomain") {
				add(SeverityError, CodeCustomIdentity, cp+".key", "CUSTOM policies cannot use %s", key)
			}
			if len(c.GetValues()) == 0 && len(c.GetNotValues()) == 0 {
				add(SeverityError, CodeEmptyCondition, cp, "a condition needs values or notValues")
			}
			for field, vals := range map[string][]string{"values": c.GetValues(), "notValues": c.GetNotValues()} {
				for k, v := range vals {
					vp := fmt.Sprintf("%s.%s[%d]", cp, field, k)
					switch {
					case v == "":
						add(SeverityError, CodeEmptyValue, vp, emptyValueMessage)
					case key == "source.ip" || key == "remote.ip" || key == "destination.ip":
						if _, err := parseCIDR(v); err != nil {
							add(SeverityError, CodeBadIP, vp, "%q is not an IP address or CIDR", v)
						}
					case key == "destination.port":
						if _, err := parsePort(v); err != nil {
							add(SeverityError, CodeBadPort, vp, "%q is not a port (0-65535)", v)
						}
					}
				}
			}
		}
	}
	if action == security.AuthorizationPolicy_DENY && hasHTTP && !hasPorts {
		add(SeverityWarning, CodeDenyHTTPOnlyTCP, "spec.rules", "this DENY policy uses HTTP-only fields without ports: on TCP traffic those fields are ignored, so it denies all TCP connections it otherwise matches")
	}
	return fs
}

// emptyValueMessage explains an empty value: admission refuses it, and
// Istio's translator matches it like any other value (the exact empty string,
// which a path, method or peer identity never is), so it neither widens a DENY
// rule nor drops an ALLOW rule.
const emptyValueMessage = "empty value: admission refuses it; if loaded, it matches only an empty attribute (never a path, method or peer identity)"

func slicesContains(xs []string, s string) bool {
	for _, x := range xs {
		if x == s {
			return true
		}
	}
	return false
}

func checkValues(o source.Object, prefix string, fields map[string][]string) []Finding {
	var fs []Finding
	names := make([]string, 0, len(fields))
	for k := range fields {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, field := range names {
		for k, v := range fields[field] {
			p := fmt.Sprintf("%s.%s[%d]", prefix, field, k)
			switch {
			case v == "":
				fs = append(fs, newFinding(o, SeverityError, CodeEmptyValue, p, emptyValueMessage))
			case infixStar(v) && !strings.HasSuffix(field, "amespaces") && !strings.HasSuffix(field, "amespaces"):
				fs = append(fs, newFinding(o, SeverityWarning, CodeInfixWildcard, p, "%q: only a leading or trailing '*' is a wildcard; this one is a literal character", v))
			}
		}
	}
	return fs
}

func infixStar(v string) bool {
	return len(v) > 2 && strings.Contains(v[1:len(v)-1], "*")
}

func isEmptySource(s *security.Source) bool {
	return len(s.GetPrincipals())+len(s.GetNotPrincipals())+len(s.GetRequestPrincipals())+len(s.GetNotRequestPrincipals())+
		len(s.GetNamespaces())+len(s.GetNotNamespaces())+len(s.GetServiceAccounts())+len(s.GetNotServiceAccounts())+
		len(s.GetIpBlocks())+len(s.GetNotIpBlocks())+len(s.GetRemoteIpBlocks())+len(s.GetNotRemoteIpBlocks())+
		len(s.GetTrustDomains())+len(s.GetNotTrustDomains()) == 0
}

func usesIdentity(s *security.Source) bool {
	return len(s.GetPrincipals())+len(s.GetNotPrincipals())+len(s.GetRequestPrincipals())+len(s.GetNotRequestPrincipals())+
		len(s.GetNamespaces())+len(s.GetNotNamespaces())+len(s.GetServiceAccounts())+len(s.GetNotServiceAccounts())+
		len(s.GetTrustDomains())+len(s.GetNotTrustDomains()) > 0
}

func isEmptyOperation(o *security.Operation) bool {
	return len(o.GetHosts())+len(o.GetNotHosts())+len(o.GetPorts())+len(o.GetNotPorts())+len(o.GetMethods())+
		len(o.GetNotMethods())+len(o.GetPaths())+len(o.GetNotPaths()) == 0
}

// parseCIDR accepts a single IP (as /32 or /128) or a CIDR.
func parseCIDR(v string) (netip.Prefix, error) {
	if strings.Contains(v, "/") {
		p, err := netip.ParsePrefix(v)
		if err != nil {
			return netip.Prefix{}, err
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(v)
	if err != nil {
		return netip.Prefix{}, err
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// parsePort reads a port as Istio does (strconv.ParseUint in base 10, at most
// 65535): no sign, no space.
func parsePort(v string) (int, error) {
	n, err := strconv.ParseUint(v, 10, 32)
	if err != nil || n > 65535 {
		return 0, fmt.Errorf("bad port %q", v)
	}
	return int(n), nil
}

// isTemplate reports whether Istio's translator reads a path as a URI template
// (security.ContainsPathTemplate): only {*} and {**} make one. Any other path,
// braces and all, is matched as a string.
func isTemplate(v string) bool { return strings.Contains(v, "{*}") || strings.Contains(v, "{**}") }

// templateRegex turns an Istio path template into an anchored regex: {*} is
// exactly one non-empty segment, {**} zero or more segments; no operator may follow
// {**} (literal segments may).
func templateRegex(v string) (string, error) {
	if !strings.HasPrefix(v, "/") {
		return "", fmt.Errorf("a path template must start with '/'")
	}
	var b strings.Builder
	b.WriteString("^")
	segs := strings.Split(v[1:], "/")
	doubleStar := false
	for _, seg := range segs {
		b.WriteString("/")
		switch {
		case seg == "{*}" || seg == "{**}":
			if doubleStar {
				return "", fmt.Errorf("no operator may follow {**}")
			}
			if seg == "{*}" {
				b.WriteString("[^/]+")
			} else {
				doubleStar = true
				b.WriteString(".*")
			}
		case strings.ContainsAny(seg, "{}*"):
			return "", fmt.Errorf("segment %q: '{', '}' and '*' may only appear as a whole {*} or {**} segment", seg)
		default:
			b.WriteString(regexp.QuoteMeta(seg))
		}
	}
	b.WriteString("$")
	return b.String(), nil
}
