package compile

import (
	"fmt"
	"golang.org/x/net/http/httpguts"
	"net/url"
	"sort"
	"strings"
	"time"

	"github.com/rampart-mesh/rampart/authn/jwt"
	"github.com/rampart-mesh/rampart/policies/source"
	"google.golang.org/protobuf/proto"
	security "istio.io/api/security/v1beta1"
)

// Finding codes for RequestAuthentication rules the sidecar's authenticator
// (authn/jwt, jwt.New) refuses. A sidecar refuses a bundle with such a rule
// whole and keeps its last good one, so these are errors. Invalid header names
// in fromHeaders, outputPayloadToHeader and outputClaimToHeaders are
// CodeRAHeader.
const (
	CodeRAIssuerURL  = "RA-ISSUER-NOT-URL" // neither jwks nor jwksUri, and the issuer is not an http(s) URL to discover keys from
	CodeRAInlineJWKS = "RA-JWKS-INLINE"    // inline jwks is not a JWK Set or has no usable key (symmetric keys, e.g. HS256, never are): every token for the rule gets 401
	CodeRATimeout    = "RA-TIMEOUT"        // negative timeout
	CodeRALocation   = "RA-TOKEN-LOCATION" // empty fromParams entry, or a fromCookies entry that is not a cookie name
	CodeRARefused    = "RA-REFUSED"        // refused by the sidecar's authenticator for a reason no other code names
)

// RequestAuthn is a decoded RequestAuthentication.
type RequestAuthn struct {
	Object source.Object
	Spec   *security.RequestAuthentication
}

// DecodeRequestAuthentications decodes every RequestAuthentication in objs.
func DecodeRequestAuthentications(objs []source.Object, defaultNS string) ([]*RequestAuthn, []Finding) {
	var out []*RequestAuthn
	fs := decodeSpec(objs, "RequestAuthentication", defaultNS, CodeRASchema, CodeRAUnknownField,
		func() proto.Message { return &security.RequestAuthentication{} },
		func(o source.Object, m proto.Message) {
			out = append(out, &RequestAuthn{Object: o, Spec: m.(*security.RequestAuthentication)})
		})
	return out, fs
}

// JWTRules returns the JWT rules of every RequestAuthentication that applies to
// wl, merged as Istio does: concatenated and sorted by issuer, "as if from a
// single policy". It also validates them: every rule the sidecar's
// authenticator would refuse has an error finding.
func JWTRules(m Mesh, wl Workload, ras []*RequestAuthn) ([]jwt.Rule, []Finding) {
	var rules []jwt.Rule
	var fs []Finding
	issuers := map[string]string{}
	for _, ra := range ras {
		o := ra.Object
		if !attaches(o, ra.Spec.GetSelector(), len(ra.Spec.GetTargetRefs())+btoi(ra.Spec.GetTargetRef() != nil), m, wl) {
			continue
		}
		for i, r := range ra.Spec.GetJwtRules() {
			p := fmt.Sprintf("spec.jwtRules[%d]", i)
			if prev, ok := issuers[r.GetIssuer()]; ok && r.GetIssuer() != "" {
				fs = append(fs, newFinding(o, SeverityWarning, CodeRADuplicate, p+".issuer", "issuer %q is also configured by %s; both rules apply", r.GetIssuer(), prev))
			}
			issuers[r.GetIssuer()] = o.Namespace + "/" + o.Name
			jr, rf, bad := jwtRule(o, p, r)
			fs = append(fs, rf...)
			if !bad {
				rules = append(rules, jr)
			}
		}
	}
	sort.SliceStable(rules, func(i, j int) bool { return rules[i].Issuer < rules[j].Issuer })
	return rules, fs
}

// jwtRule is rule p of o as the sidecar's authenticator takes it, with a
// finding for each part it would refuse; bad means the rule is left out.
func jwtRule(o source.Object, p string, r *security.JWTRule) (jr jwt.Rule, fs []Finding, bad bool) {
	if r.GetIssuer() == "" && r.GetJwksUri() == "" {
		fs = append(fs, newFinding(o, SeverityError, CodeRAIssuer, p+".issuer", "issuer is required unless jwksUri is set"))
		bad = true
	}
	if r.GetJwks() != "" && r.GetJwksUri() != "" {
		fs = append(fs, newFinding(o, SeverityError, CodeRAJWKS, p, "set jwks or jwksUri, not both"))
	}
	if u := r.GetJwksUri(); u != "" {
		if pu, err := url.Parse(u); err != nil || (pu.Scheme != "https" && pu.Scheme != "http") || pu.Host == "" {
			fs = append(fs, newFinding(o, SeverityError, CodeRAJWKS, p+".jwksUri", "%q is not an http(s) URL", u))
			bad = true
		}
	}
	jr = jwt.Rule{
		Issuer: r.GetIssuer(), Audiences: r.GetAudiences(), JWKSURI: r.GetJwksUri(), JWKS: r.GetJwks(),
		FromParams: r.GetFromParams(), FromCookies: r.GetFromCookies(),
		OutputPayloadToHeader: r.GetOutputPayloadToHeader(), ForwardOriginalToken: r.GetForwardOriginalToken(),
		SpaceDelimitedClaims: r.GetSpaceDelimitedClaims(),
	}
	if t := r.GetTimeout(); t != nil {
		jr.Timeout = t.AsDuration()
	} else {
		jr.Timeout = 5 * time.Second
	}
	for j, h := range r.GetFromHeaders() {
		if h.GetName() == "" {
			fs = append(fs, newFinding(o, SeverityError, CodeRAHeader, fmt.Sprintf("%s.fromHeaders[%d].name", p, j), "header name is required"))
			bad = true
		}
		if h.GetName() != "" && !httpguts.ValidHeaderFieldName(h.GetName()) {
			fs = append(fs, newFinding(o, SeverityError, CodeRAHeader, fmt.Sprintf("%s.fromHeaders[%d].name", p, j), "%q is not a valid header name", h.GetName()))
		}
		jr.FromHeaders = append(jr.FromHeaders, jwt.HeaderLocation{Name: h.GetName(), Prefix: h.GetPrefix()})
	}
	for j, c := range r.GetOutputClaimToHeaders() {
		if c.GetHeader() == "" || c.GetClaim() == "" {
			fs = append(fs, newFinding(o, SeverityError, CodeRAHeader, fmt.Sprintf("%s.outputClaimToHeaders[%d]", p, j), "header and claim are required"))
			continue
		}
		if !httpguts.ValidHeaderFieldName(c.GetHeader()) {
			fs = append(fs, newFinding(o, SeverityError, CodeRAHeader, fmt.Sprintf("%s.outputClaimToHeaders[%d].header", p, j), "%q is not a valid header name", c.GetHeader()))
		}
		jr.OutputClaimToHeaders = append(jr.OutputClaimToHeaders, jwt.ClaimToHeader{Header: c.GetHeader(), Claim: c.GetClaim()})
	}
	fs = append(fs, refusedRule(o, p, jr, hasError(fs))...)
	return jr, fs, bad
}

// ValidateRequestAuthentications checks the JWT rules of every
// RequestAuthentication in ras, whatever workloads they apply to: rampartd
// refuses a change with an error finding here, since every sidecar the rule
// reaches would refuse its whole bundle.
func ValidateRequestAuthentications(ras []*RequestAuthn) []Finding {
	var fs []Finding
	for _, ra := range ras {
		for i, r := range ra.Spec.GetJwtRules() {
			_, rf, _ := jwtRule(ra.Object, fmt.Sprintf("spec.jwtRules[%d]", i), r)
			fs = append(fs, rf...)
		}
	}
	return fs
}

// refusedRule returns an error finding for each part of jr, rule p of o, that
// the sidecar's authenticator (jwt.New, which does no I/O) refuses and the
// checks in JWTRules do not name. found says the rule already has an error
// finding; without one, a refusal no check here explains is CodeRARefused, so
// every rule the sidecar would refuse has a finding.
func refusedRule(o source.Object, p string, jr jwt.Rule, found bool) []Finding {
	var fs []Finding
	add := func(code, path, format string, args ...any) {
		fs = append(fs, newFinding(o, SeverityError, code, path, format, args...))
	}
	if jr.JWKS == "" && jr.JWKSURI == "" && jr.Issuer != "" && !httpURL(jr.Issuer) {
		add(CodeRAIssuerURL, p+".issuer", "issuer %q is not an http(s) URL, and without jwks or jwksUri the sidecar finds the keys by OpenID discovery from the issuer; set jwksUri or jwks", jr.Issuer)
	}
	if jr.JWKS != "" {
		// The inline key set as the sidecar parses it. Like Envoy, it keeps a
		// rule whose set it cannot use, and rejects every token for it.
		if err := jwt.CheckJWKS(jr.JWKS); err != nil {
			fs = append(fs, newFinding(o, SeverityWarning, CodeRAInlineJWKS, p+".jwks",
				"the sidecar cannot use this key set (%s), so every token for this rule gets 401; give the issuer's public signing keys (RSA, EC or Ed25519), or use jwksUri", err))
		}
	}
	if jr.Timeout < 0 {
		add(CodeRATimeout, p+".timeout", "timeout %s is negative; set a positive duration or leave it unset (5s)", jr.Timeout)
	}
	for j, q := range jr.FromParams {
		if q == "" {
			add(CodeRALocation, fmt.Sprintf("%s.fromParams[%d]", p, j), "query parameter name is empty; name the parameter or remove the entry")
		}
	}
	for j, c := range jr.FromCookies {
		if c == "" || strings.ContainsAny(c, "=; \t") {
			add(CodeRALocation, fmt.Sprintf("%s.fromCookies[%d]", p, j), "%q is not a valid cookie name", c)
		}
	}
	if h := jr.OutputPayloadToHeader; h != "" && !httpguts.ValidHeaderFieldName(h) {
		add(CodeRAHeader, p+".outputPayloadToHeader", "%q is not a valid header name", h)
	}
	if len(fs) > 0 || found {
		return fs
	}
	// Whatever else the authenticator refuses: every rule it would refuse
	// has a finding, even one these checks do not know yet.
	if _, err := jwt.New(jwt.Config{Rules: []jwt.Rule{jr}, TokenCacheSize: -1}); err != nil {
		add(CodeRARefused, p, "the sidecar refuses this rule: %s", jwtCause(err))
	}
	return fs
}

// jwtCause is jwt.New's error without its "invalid jwt config: jwtRules[i]
// (issuer …):" prefix, which a finding's object and path already say.
func jwtCause(err error) string {
	if u, ok := err.(interface{ Unwrap() []error }); ok {
		if es := u.Unwrap(); len(es) > 1 {
			return es[len(es)-1].Error()
		}
	}
	return err.Error()
}

func httpURL(s string) bool {
	u, err := url.Parse(s)
	return err == nil && (u.Scheme == "http" || u.Scheme == "https") && u.Host != ""
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}
