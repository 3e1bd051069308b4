package compile

import (
	"github.com/rampart-mesh/rampart/policies/source"
	"google.golang.org/protobuf/proto"
	typev1beta1 "istio.io/api/type/v1beta1"
)

// Finding codes for RequestAuthentication and PeerAuthentication.
const (
	CodeRASchema       = "RA-SCHEMA"
	CodeRAUnknownField = "RA-UNKNOWN-FIELD" // a field the schema does not declare: dropped, the rest kept
	CodeRAIssuer       = "RA-ISSUER"        // issuer empty without jwksUri
	CodeRAJWKS         = "RA-JWKS"          // both jwks and jwksUri, or a bad jwksUri
	CodeRAHeader       = "RA-HEADER"        // empty header name in fromHeaders / outputClaimToHeaders
	CodeRADuplicate    = "RA-DUPLICATE-ISSUER"
	CodePASchema       = "PA-SCHEMA"
	CodePAUnknownField = "PA-UNKNOWN-FIELD"         // a field the schema does not declare: dropped, the rest kept
	CodePAPortNoSelect = "PA-PORT-WITHOUT-SELECTOR" // portLevelMtls needs a selector
	CodePABadPort      = "PA-BAD-PORT"
	CodePARootSelector = "PA-ROOT-SELECTOR" // warning: selector policies in the root namespace are ignored
)

// attachable is what RequestAuthentication and PeerAuthentication share with
// AuthorizationPolicy for attachment.
func attaches(o source.Object, sel *typev1beta1.WorkloadSelector, refs int, m Mesh, wl Workload) bool {
	if refs > 0 {
		return false
	}
	if o.Namespace != m.RootNamespace && o.Namespace != wl.Namespace {
		return false
	}
	for k, v := range sel.GetMatchLabels() {
		if got, ok := wl.Labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// decodeSpec decodes the objects of a security.istio.io kind as
// DecodeAuthorizationPolicies does: unknown fields dropped with an unknownCode
// finding, a spec that still does not decode left out with a schemaCode one.
func decodeSpec(objs []source.Object, kind, defaultNS, schemaCode, unknownCode string, newSpec func() proto.Message, keep func(source.Object, proto.Message)) []Finding {
	var fs []Finding
	for _, o := range objs {
		if o.Kind != kind || o.Group() != "security.istio.io" {
			continue
		}
		if o.Namespace == "" {
			o.Namespace = defaultNS
		}
		spec := newSpec()
		dfs, ok := decodeIstioSpec(o, spec, schemaCode, unknownCode)
		fs = append(fs, dfs...)
		if ok {
			keep(o, spec)
		}
	}
	return fs
}
