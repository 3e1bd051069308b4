package compile

import (
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/rampart-mesh/rampart/authz"
	"github.com/rampart-mesh/rampart/policies/api"
	"github.com/rampart-mesh/rampart/policies/source"
	networking "istio.io/api/networking/v1alpha3"
)

// Finding codes for RateLimitPolicy.
const (
	CodeRLSchema         = "RL-SCHEMA"                 // the spec does not decode (unknown field, wrong type)
	CodeRLNoLimits       = "RL-NO-LIMITS"              // spec.limits empty
	CodeRLName           = "RL-NAME"                   // limit name empty, malformed or repeated
	CodeRLRate           = "RL-RATE"                   // rate.requests out of range
	CodeRLPeriod         = "RL-PERIOD"                 // rate.per not a duration, or out of range
	CodeRLBurst          = "RL-BURST"                  // burst out of range
	CodeRLKey            = "RL-KEY"                    // key.by unknown, or header missing / misplaced
	CodeRLEmptyValue     = "RL-EMPTY-VALUE"            // an empty string in a match list
	CodeRLBadPort        = "RL-BAD-PORT"               // not a port number
	CodeRLBadPath        = "RL-BAD-PATH"               // not a path, or a {*} template (not supported)
	CodeRLHeader         = "RL-HEADER"                 // header match without a name, or without values
	CodeRLSelectorAndRef = "RL-SELECTOR-AND-TARGETREF" // both selector and targetRefs
	CodeRLTargetRef      = "RL-TARGETREF"              // a targetRef kind or namespace that cannot apply
	CodeRLDryRunValue    = "RL-DRY-RUN-VALUE"          // istio.io/dry-run not a boolean
	CodeRLInfixWildcard  = "RL-INFIX-WILDCARD"         // warning: '*' inside a value is a literal
	CodeRLTargetMissing  = "RL-TARGETREF-NOT-FOUND"    // warning: the ServiceEntry does not exist or selects nothing
	CodeRLDuplicate      = "RL-DUPLICATE"              // a policy namespace/name, or a limit ID, defined twice
)

// Bounds of a limit. A bucket refills at most once a nanosecond, so rates above
// a billion per second mean nothing; a day is the longest period a sidecar
// can be expected to keep a bucket for.
const (
	maxRequests = 1_000_000_000
	maxBurst    = 1_000_000_000
	maxPeriod   = 24 * time.Hour
	minPeriod   = time.Millisecond
	maxLimits   = 100 // per policy
)

var limitName = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)

// RateLimitPolicy is a decoded and validated RateLimitPolicy.
type RateLimitPolicy struct {
	Object source.Object
	Spec   *api.RateLimitPolicySpec
	DryRun bool // istio.io/dry-run: "true"
	// targets are the workload selectors of the ServiceEntries its targetRefs name.
	targets []map[string]string
}

// IsRateLimitPolicy reports whether o is a policy.rampart.dev RateLimitPolicy.
func IsRateLimitPolicy(o source.Object) bool {
	return o.Kind == api.KindRateLimitPolicy && o.Group() == api.Group
}

// DecodeRateLimitPolicies decodes and validates every RateLimitPolicy in objs,
// giving those without a namespace defaultNS. A policy with an error finding
// is left out of the result (rampartd refuses the whole change). A policy
// whose namespace and name (or one of whose limit IDs) an earlier one already
// has is an error: both would apply, and a sidecar refuses a bundle with a
// limit ID twice.
func DecodeRateLimitPolicies(objs []source.Object, defaultNS string) ([]*RateLimitPolicy, []Finding) {
	var out []*RateLimitPolicy
	var fs []Finding
	type identity struct{ group, kind, namespace, name string }
	objects := map[identity]source.Object{} // the first of each
	limitIDs := map[string]source.Object{}
	for _, o := range objs {
		if !IsRateLimitPolicy(o) {
			continue
		}
		if o.Namespace == "" {
			o.Namespace = defaultNS
		}
		id := identity{o.Group(), o.Kind, o.Namespace, o.Name}
		if first, dup := objects[id]; dup {
			fs = append(fs, newFinding(o, SeverityError, CodeRLDuplicate, "metadata.name",
				"%s/%s is also defined at %s; remove or rename one (both would apply, and sidecars refuse the repeated limits)",
				o.Namespace, o.Name, location(first)))
			continue
		}
		objects[id] = o
		spec, err := api.DecodeRateLimitPolicySpec(o.Spec)
		if err != nil {
			var fe *api.FieldError
			if errors.As(err, &fe) {
				fs = append(fs, newFinding(o, SeverityError, CodeRLSchema, fe.Path, "%s", fe.Reason))
			} else {
				fs = append(fs, newFinding(o, SeverityError, CodeRLSchema, "spec", "%v", err))
			}
			continue
		}
		p := &RateLimitPolicy{Object: o, Spec: spec}
		pfs := validateRateLimitPolicy(p, objs, defaultNS)
		// Against earlier policies only: a name repeated within this one is RL-NAME.
		for i, l := range spec.Limits {
			lid := limitID(o, l)
			if first, dup := limitIDs[lid]; dup {
				pfs = append(pfs, newFinding(o, SeverityError, CodeRLDuplicate, fmt.Sprintf("spec.limits[%d].name", i),
					"limit ID %q is also the ID of a limit of %s %s/%s at %s; rename the policy or the limit",
					lid, first.Kind, first.Namespace, first.Name, location(first)))
			}
		}
		for _, l := range spec.Limits {
			limitIDs[limitID(o, l)] = o
		}
		fs = append(fs, pfs...)
		if !hasError(pfs) {
			out = append(out, p)
		}
	}
	return out, fs
}

func validateRateLimitPolicy(p *RateLimitPolicy, objs []source.Object, defaultNS string) []Finding {
	o, spec := p.Object, p.Spec
	var fs []Finding
	add := func(sev, code, path, format string, args ...any) {
		fs = append(fs, newFinding(o, sev, code, path, format, args...))
	}
	if v, ok := o.Annotations[api.DryRunAnnotation]; ok {
		b, err := strconv.ParseBool(v)
		if err != nil {
			add(SeverityError, CodeRLDryRunValue, `metadata.annotations["istio.io/dry-run"]`, "%q is not a boolean (true or false)", v)
		}
		p.DryRun = b
	}
	if spec.Selector != nil && len(spec.TargetRefs) > 0 {
		add(SeverityError, CodeRLSelectorAndRef, "spec", "set selector or targetRefs, not both")
	}
	for i, ref := range spec.TargetRefs {
		path := fmt.Sprintf("spec.targetRefs[%d]", i)
		if ref.Kind != "ServiceEntry" || (ref.Group != "" && ref.Group != "networking.istio.io") {
			add(SeverityError, CodeRLTargetRef, path+".kind", "%s/%s: only ServiceEntry (group networking.istio.io) can be a target; use selector.matchLabels for other workloads", ref.Group, ref.Kind)
			continue
		}
		if ref.Namespace != "" && ref.Namespace != o.Namespace {
			add(SeverityError, CodeRLTargetRef, path+".namespace", "%q: a policy can only target objects in its own namespace %q", ref.Namespace, o.Namespace)
			continue
		}
		sel, found := serviceEntrySelector(objs, o.Namespace, ref.Name, defaultNS)
		if !found || len(sel) == 0 {
			add(SeverityWarning, CodeRLTargetMissing, path+".name", "ServiceEntry %s/%s does not exist or has no workloadSelector; the policy applies to no workload", o.Namespace, ref.Name)
			continue
		}
		p.targets = append(p.targets, sel)
	}
	if len(spec.Limits) == 0 {
		add(SeverityError, CodeRLNoLimits, "spec.limits", "a RateLimitPolicy needs at least one limit")
	}
	if len(spec.Limits) > maxLimits {
		add(SeverityError, CodeRLNoLimits, "spec.limits", "%d limits; at most %d per policy", len(spec.Limits), maxLimits)
	}
	names := map[string]int{}
	for i, l := range spec.Limits {
		path := fmt.Sprintf("spec.limits[%d]", i)
		switch prev, dup := names[l.Name]; {
		case l.Name == "":
			add(SeverityError, CodeRLName, path+".name", "required: name the limit (it labels metrics and logs)")
		case !limitName.MatchString(l.Name):
			add(SeverityError, CodeRLName, path+".name", "%q: use lower-case letters, digits and '-', at most 63", l.Name)
		case dup:
			add(SeverityError, CodeRLName, path+".name", "%q is also the name of spec.limits[%d]", l.Name, prev)
		}
		names[l.Name] = i
		if l.Rate.Requests < 1 || l.Rate.Requests > maxRequests {
			add(SeverityError, CodeRLRate, path+".rate.requests", "%d: want 1 to %d", l.Rate.Requests, maxRequests)
		}
		if d, err := l.Rate.Period(); err != nil {
			add(SeverityError, CodeRLPeriod, path+".rate.per", "%v", err)
		} else if d < minPeriod || d > maxPeriod {
			add(SeverityError, CodeRLPeriod, path+".rate.per", "%s: want %s to %s", l.Rate.Per, minPeriod, maxPeriod)
		}
		if b := l.Burst; b != nil && (*b < 1 || *b > maxBurst) {
			add(SeverityError, CodeRLBurst, path+".burst", "%d: want 1 to %d (or leave it out for rate.requests)", *b, maxBurst)
		}
		if k := l.Key; k != nil {
			switch k.By {
			case api.KeyShared, api.KeySourcePrincipal, api.KeyRequestPrincipal, api.KeySourceIP:
				if k.Header != "" {
					add(SeverityError, CodeRLKey, path+".key.header", "header is only used with by: Header")
				}
			case api.KeyHeader:
				if strings.TrimSpace(k.Header) == "" {
					add(SeverityError, CodeRLKey, path+".key.header", "required with by: Header: the header whose value is the key")
				}
			default:
				add(SeverityError, CodeRLKey, path+".key.by", "%q: want Shared, SourcePrincipal, RequestPrincipal, SourceIP or Header", k.By)
			}
		}
		if m := l.Match; m != nil {
			fs = append(fs, validateRateLimitMatch(o, path+".match", m)...)
		}
	}
	return fs
}

func validateRateLimitMatch(o source.Object, path string, m *api.RequestMatch) []Finding {
	var fs []Finding
	values := func(field string, vs []string, check func(string) (string, string)) {
		for j, v := range vs {
			p := fmt.Sprintf("%s.%s[%d]", path, field, j)
			if v == "" {
				fs = append(fs, newFinding(o, SeverityError, CodeRLEmptyValue, p, "empty value; use \"*\" for any"))
				continue
			}
			if check != nil {
				if code, msg := check(v); code != "" {
					fs = append(fs, newFinding(o, SeverityError, code, p, "%q: %s", v, msg))
					continue
				}
			}
			if infixStar(v) {
				fs = append(fs, newFinding(o, SeverityWarning, CodeRLInfixWildcard, p, "%q: '*' only matches at the start or end of a value; inside it is a literal", v))
			}
		}
	}
	port := func(v string) (string, string) {
		if n, err := strconv.Atoi(v); err != nil || n < 1 || n > 65535 {
			return CodeRLBadPort, "want a port number 1-65535"
		}
		return "", ""
	}
	pathCheck := func(v string) (string, string) {
		if strings.ContainsAny(v, "{}") {
			return CodeRLBadPath, "path templates ({*}, {**}) are not supported in rate limits; use \"prefix*\" or \"*suffix\""
		}
		if !strings.HasPrefix(v, "/") && !strings.HasPrefix(v, "*") {
			return CodeRLBadPath, "a path starts with '/' (or '*' for a suffix match)"
		}
		return "", ""
	}
	if op := m.Operation; op != nil {
		p := path
		path = p + ".operation"
		values("hosts", op.Hosts, nil)
		values("notHosts", op.NotHosts, nil)
		values("ports", op.Ports, port)
		values("notPorts", op.NotPorts, port)
		values("methods", op.Methods, nil)
		values("notMethods", op.NotMethods, nil)
		values("paths", op.Paths, pathCheck)
		values("notPaths", op.NotPaths, pathCheck)
		path = p
	}
	if src := m.Source; src != nil {
		p := path
		path = p + ".source"
		values("principals", src.Principals, nil)
		values("notPrincipals", src.NotPrincipals, nil)
		values("requestPrincipals", src.RequestPrincipals, nil)
		values("notRequestPrincipals", src.NotRequestPrincipals, nil)
		values("namespaces", src.Namespaces, nil)
		values("notNamespaces", src.NotNamespaces, nil)
		path = p
	}
	for i, h := range m.Headers {
		hp := fmt.Sprintf("%s.headers[%d]", path, i)
		if strings.TrimSpace(h.Name) == "" {
			fs = append(fs, newFinding(o, SeverityError, CodeRLHeader, hp+".name", "required: the header's name"))
		}
		if len(h.Values) == 0 && len(h.NotValues) == 0 {
			fs = append(fs, newFinding(o, SeverityError, CodeRLHeader, hp, "give values or notValues (\"*\" for present)"))
		}
		p := path
		path = hp
		values("values", h.Values, nil)
		values("notValues", h.NotValues, nil)
		path = p
	}
	return fs
}

// serviceEntrySelector returns the workloadSelector labels of the ServiceEntry
// ns/name in objs.
func serviceEntrySelector(objs []source.Object, ns, name, defaultNS string) (map[string]string, bool) {
	for _, o := range objs {
		if !isNetworking(o, "ServiceEntry") || o.Name != name {
			continue
		}
		ons := o.Namespace
		if ons == "" {
			ons = defaultNS
		}
		if ons != ns {
			continue
		}
		spec := &networking.ServiceEntry{}
		if err := unmarshalSpec(o, spec); err != nil {
			return nil, false
		}
		return spec.GetWorkloadSelector().GetLabels(), true
	}
	return nil, false
}

// Applies reports whether p applies to the sidecar of wl: in the root
// namespace to every namespace, otherwise to its own; by selector labels, or
// by the workload selectors of its targetRefs.
func (p *RateLimitPolicy) Applies(m Mesh, wl Workload) bool {
	if p.Object.Namespace != m.RootNamespace && p.Object.Namespace != wl.Namespace {
		return false
	}
	if len(p.Spec.TargetRefs) > 0 {
		if p.Object.Namespace != wl.Namespace {
			return false
		}
		for _, sel := range p.targets {
			if labelsMatch(sel, wl.Labels) {
				return true
			}
		}
		return false
	}
	if p.Spec.Selector != nil {
		return labelsMatch(p.Spec.Selector.MatchLabels, wl.Labels)
	}
	return true
}

func labelsMatch(sel, labels map[string]string) bool {
	for k, v := range sel {
		if got, ok := labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// RateLimits returns the limits that apply to wl, ordered by policy namespace,
// policy name and then as listed, ready for the wire bundle; nil when none do.
// Only valid policies (those DecodeRateLimitPolicies returns) are considered.
func RateLimits(pols []*RateLimitPolicy, m Mesh, wl Workload) []authz.RateLimit {
	var applying []*RateLimitPolicy
	for _, p := range pols {
		if p.Applies(m, wl) {
			applying = append(applying, p)
		}
	}
	sort.Slice(applying, func(i, j int) bool {
		a, b := applying[i].Object, applying[j].Object
		if a.Namespace != b.Namespace {
			return a.Namespace < b.Namespace
		}
		return a.Name < b.Name
	})
	var out []authz.RateLimit
	for _, p := range applying {
		for _, l := range p.Spec.Limits {
			d, _ := l.Rate.Period() // validated
			rl := authz.RateLimit{
				ID:       limitID(p.Object, l),
				Key:      api.KeyShared,
				Requests: l.Rate.Requests,
				Period:   d.String(),
				Burst:    l.BurstOrDefault(),
				DryRun:   l.DryRun || p.DryRun,
			}
			if l.Key != nil {
				rl.Key = l.Key.By
				if l.Key.By == api.KeyHeader {
					rl.KeyHeader = strings.ToLower(strings.TrimSpace(l.Key.Header))
				}
			}
			if m := l.Match; m != nil {
				if op := m.Operation; op != nil {
					rl.Match.Hosts, rl.Match.NotHosts = op.Hosts, op.NotHosts
					rl.Match.Ports, rl.Match.NotPorts = op.Ports, op.NotPorts
					rl.Match.Methods, rl.Match.NotMethods = op.Methods, op.NotMethods
					rl.Match.Paths, rl.Match.NotPaths = op.Paths, op.NotPaths
				}
				if s := m.Source; s != nil {
					rl.Match.Principals, rl.Match.NotPrincipals = s.Principals, s.NotPrincipals
					rl.Match.RequestPrincipals, rl.Match.NotRequestPrincipals = s.RequestPrincipals, s.NotRequestPrincipals
					rl.Match.Namespaces, rl.Match.NotNamespaces = s.Namespaces, s.NotNamespaces
				}
				for _, h := range m.Headers {
					rl.Match.Headers = append(rl.Match.Headers, authz.RateLimitHeader{
						Name: strings.ToLower(strings.TrimSpace(h.Name)), Values: h.Values, NotValues: h.NotValues})
				}
			}
			out = append(out, rl)
		}
	}
	return out
}

// limitID is the ID a limit goes to sidecars with: NAMESPACE/POLICY/LIMIT.
func limitID(o source.Object, l api.Limit) string {
	return o.Namespace + "/" + o.Name + "/" + l.Name
}

// location is where o was read from, for a finding about another object.
func location(o source.Object) string {
	switch {
	case o.File == "":
		return "an object built in code"
	case o.Line > 0:
		return fmt.Sprintf("%s:%d", o.File, o.Line)
	}
	return o.File
}
