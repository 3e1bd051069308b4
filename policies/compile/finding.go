package compile

import (
	"fmt"

	"github.com/rampart-mesh/rampart/policies/source"
)

// Severities of a Finding.
const (
	SeverityError   = "error"   // admission would reject the object
	SeverityWarning = "warning" // accepted, but probably not what was meant
)

// Finding is one validation result. Code is stable across releases; Path is the
// field path inside the object, e.g. spec.rules[0].when[1].key.
type Finding struct {
	Code     string `json:"code"`
	Severity string `json:"severity"`
	Object   string `json:"object"`
	File     string `json:"file,omitempty"`
	Line     int    `json:"line,omitempty"`
	Path     string `json:"path"`
	Message  string `json:"message"`
}

func (f Finding) String() string {
	loc := ""
	if f.File != "" {
		loc = fmt.Sprintf("%s:%d: ", f.File, f.Line)
	}
	return fmt.Sprintf("%s%s %s %s: %s: %s", loc, f.Severity, f.Code, f.Object, f.Path, f.Message)
}

func newFinding(o source.Object, severity, code, path, format string, args ...any) Finding {
	ns := o.Namespace
	obj := o.Kind + " " + o.Name
	if ns != "" {
		obj = o.Kind + " " + ns + "/" + o.Name
	}
	return Finding{Code: code, Severity: severity, Object: obj, File: o.File, Line: o.LineOf(path), Path: path, Message: fmt.Sprintf(format, args...)}
}

// Finding codes for AuthorizationPolicy.
const (
	CodeSchema            = "AP-SCHEMA"              // the spec does not decode (wrong type, unknown enum value)
	CodeUnknownField      = "AP-UNKNOWN-FIELD"       // a field the schema does not declare: dropped, the rest of the policy kept
	CodeUnknownKey        = "AP-UNKNOWN-KEY"         // unknown when.key
	CodeUnsupportedKey    = "AP-UNSUPPORTED-KEY"     // destination.labels / namespace / name / user
	CodeEmptyCondition    = "AP-EMPTY-CONDITION"     // neither values nor notValues
	CodeEmptyValue        = "AP-EMPTY-VALUE"         // an empty string value
	CodeBadIP             = "AP-BAD-IP"              // not an IP or CIDR
	CodeBadPort           = "AP-BAD-PORT"            // not a port number
	CodeBadKeyFormat      = "AP-BAD-KEY-FORMAT"      // request.headers / claims / experimental key not of the form a[b]
	CodeLiteralKeyName    = "AP-LITERAL-KEY-NAME"    // warning: request.headers[a][b] names the header "a][b"
	CodeEmptySource       = "AP-EMPTY-SOURCE"        // from[].source empty or missing
	CodeEmptyOperation    = "AP-EMPTY-OPERATION"     // to[].operation empty or missing
	CodeMissingRules      = "AP-MISSING-RULES"       // DENY or CUSTOM without rules
	CodeProviderAction    = "AP-PROVIDER-NOT-CUSTOM" // provider on a non-CUSTOM policy
	CodeMissingProvider   = "AP-MISSING-PROVIDER"    // CUSTOM without provider.name
	CodeUnknownProvider   = "AP-UNKNOWN-PROVIDER"    // provider not in the mesh config
	CodeCustomIdentity    = "AP-CUSTOM-IDENTITY"     // CUSTOM using identity or JWT fields
	CodeServiceAccounts   = "AP-SERVICE-ACCOUNTS"    // invalid serviceAccounts
	CodeTrustDomains      = "AP-TRUST-DOMAINS"       // invalid trustDomains
	CodeBadPathTemplate   = "AP-BAD-PATH-TEMPLATE"   // invalid {*} / {**} template
	CodeSelectorAndRef    = "AP-SELECTOR-AND-TARGETREF"
	CodeDryRunValue       = "AP-DRY-RUN-VALUE"      // istio.io/dry-run not a bool
	CodeInfixWildcard     = "AP-INFIX-WILDCARD"     // warning: '*' inside a value is a literal
	CodeDenyHTTPOnlyTCP   = "AP-DENY-HTTP-ONLY"     // warning: DENY with only HTTP fields denies all TCP traffic
	CodeTargetRefSidecar  = "AP-TARGETREF-IGNORED"  // warning: targetRef policies do not apply to sidecars
	CodeMultipleProviders = "AP-MULTIPLE-PROVIDERS" // a workload's CUSTOM policies name several providers
)
