package compile

import (
	"fmt"
	"net/url"
	"sort"
	"time"

	"github.com/rampart-mesh/rampart/authn/jwt"
	"github.com/rampart-mesh/rampart/policies/source"
	"google.golang.org/protobuf/proto"
	security "istio.io/api/security/v1beta1"
)

// RequestAuthn is a decoded RequestAuthentication.
type RequestAuthn struct {
	Object source.Object
	Spec   *security.RequestAuthentication
}

// DecodeRequestAuthentications decodes every RequestAuthentication in objs.
func DecodeRequestAuthentications(objs []source.Object, defaultNS string) ([]*RequestAuthn, []Finding) {
	var out []*RequestAuthn
	fs := decodeSpec(objs, "RequestAuthentication", defaultNS, CodeRASchema,
		func() proto.Message { return &security.RequestAuthentication{} },
		func(o source.Object, m proto.Message) {
			out = append(out, &RequestAuthn{Object: o, Spec: m.(*security.RequestAuthentication)})
		})
	return out, fs
}

// JWTRules returns the JWT rules of every RequestAuthentication that applies to
// wl, merged as Istio does: concatenated and sorted by issuer, "as if from a
// single policy". It also validates them.
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
			bad := false
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
			if prev, ok := issuers[r.GetIssuer()]; ok && r.GetIssuer() != "" {
				fs = append(fs, newFinding(o, SeverityWarning, CodeRADuplicate, p+".issuer", "issuer %q is also configured by %s; both rules apply", r.GetIssuer(), prev))
			}
			issuers[r.GetIssuer()] = o.Namespace + "/" + o.Name
			jr := jwt.Rule{
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
				jr.FromHeaders = append(jr.FromHeaders, jwt.HeaderLocation{Name: h.GetName(), Prefix: h.GetPrefix()})
			}
			for j, c := range r.GetOutputClaimToHeaders() {
				if c.GetHeader() == "" || c.GetClaim() == "" {
					fs = append(fs, newFinding(o, SeverityError, CodeRAHeader, fmt.Sprintf("%s.outputClaimToHeaders[%d]", p, j), "header and claim are required"))
					continue
				}
				jr.OutputClaimToHeaders = append(jr.OutputClaimToHeaders, jwt.ClaimToHeader{Header: c.GetHeader(), Claim: c.GetClaim()})
			}
			if !bad {
				rules = append(rules, jr)
			}
		}
	}
	sort.SliceStable(rules, func(i, j int) bool { return rules[i].Issuer < rules[j].Issuer })
	return rules, fs
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}
