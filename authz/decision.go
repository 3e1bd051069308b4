package authz

import "github.com/open-policy-agent/opa/v1/ast"

// Match is one policy rule that matched.
type Match struct {
	Policy   string `json:"policy"`
	Rule     int    `json:"rule"`
	DryRun   bool   `json:"dry_run"`
	Provider string `json:"provider,omitempty"`
	action   string // allow, deny, audit or custom
}

// DryRun is what the dry-run policies alone would have decided.
type DryRun struct {
	Allowed bool    `json:"allowed"`
	Matches []Match `json:"matches"`
}

// Decision is the answer for one request. A denial is a value, not an error.
type Decision struct {
	Allowed bool `json:"allowed"`
	// Status is the HTTP status the client gets: 200, 400 or 403 (a CUSTOM
	// provider may choose another); 0 for TCP.
	Status int    `json:"http_status"`
	Policy string `json:"policy"`
	Rule   int    `json:"rule"`
	Reason string `json:"reason"`
	// Stage says what decided: "request" (a bad request, 400), "custom" (a CUSTOM
	// provider), "policy" (DENY and ALLOW), or "error".
	Stage      string  `json:"stage"`
	DecisionID string  `json:"decision_id"`
	Revision   string  `json:"revision,omitempty"`
	DryRun     DryRun  `json:"dry_run"`
	Audit      []Match `json:"audit,omitempty"`
	// Headers and Body come from a CUSTOM provider (opa-envoy-plugin's optional
	// headers and body). On a denial by the provider they are the response's;
	// on an allowed request Headers replace the request's headers of the same
	// name before it goes to the app.
	Headers map[string]string `json:"headers,omitempty"`
	Body    string            `json:"body,omitempty"`
	// AppendHeaders and RemoveHeaders are the CUSTOM providers' other changes
	// to an allowed request's headers, applied after Headers: values added,
	// then headers removed (never host or a pseudo-header).
	// ResponseHeaders are the headers the CUSTOM providers that allowed the
	// request add to the response the client gets, even when DENY or ALLOW
	// then deny it. They are for the sidecar, not the decision log (a
	// provider's header values may be credentials), so they are not encoded.
	AppendHeaders   []Header         `json:"-"`
	RemoveHeaders   []string         `json:"-"`
	ResponseHeaders []ResponseHeader `json:"-"`
	NormalizedPath  string           `json:"normalized_path,omitempty"`
	// Input, when set, is the full input document; otherwise Document builds it
	// from the request on demand.
	Input ast.Value `json:"-"`
	// req and query rebuild the full input document on demand (Document).
	req   *Request
	query string
}

// DeniedBody is the body of a 403, as Envoy's RBAC filter sends it.
const DeniedBody = "RBAC: access denied"

// ResponseCodeDetail is the access-log detail Envoy's RBAC filter writes.
func (d Decision) ResponseCodeDetail() string {
	if d.Allowed {
		return ""
	}
	p := d.Policy
	if p == "" {
		p = "none"
	}
	return "rbac_access_denied_matched_policy[" + p + "]"
}

func (d Decision) deny(r *Request, status int, policy string, rule int, reason string) Decision {
	d.Allowed, d.Policy, d.Rule, d.Reason = false, policy, rule, reason
	d.Status = status
	if r.Protocol == ProtocolTCP {
		d.Status = 0
	}
	return d
}

// result is a combined verdict before CUSTOM providers run.
type result struct {
	Allowed bool
	Policy  string
	Rule    int
	Reason  string
	Custom  []Match
	Audit   []Match
	DryRun  DryRun
}

// Document returns the full input document of the decision (opa-envoy-plugin's
// input plus Rampart's fields), for CUSTOM providers and the decision log. It is
// built on demand: the per-request evaluation reads a smaller one.
func (d Decision) Document() ast.Value {
	if d.Input != nil {
		return d.Input
	}
	if d.req == nil {
		return nil
	}
	return d.req.input(d.NormalizedPath, d.query)
}
