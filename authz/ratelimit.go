package authz

// RateLimit is one local rate limit as the control plane sends it to a
// sidecar in WireBundle.RateLimits: already validated and scoped to the
// workload (policies/compile builds it from RateLimitPolicy; proxy/ratelimit
// enforces it). Strings in Match use Istio's forms: exact, "prefix*",
// "*suffix", or "*" (present).
type RateLimit struct {
	// ID is "NAMESPACE/POLICY/LIMIT": the metrics label and the name in logs.
	ID    string         `json:"id"`
	Match RateLimitMatch `json:"match,omitzero"`
	// Key is what requests are bucketed by: Shared, SourcePrincipal,
	// RequestPrincipal, SourceIP or Header (with KeyHeader naming it).
	Key       string `json:"key"`
	KeyHeader string `json:"keyHeader,omitempty"`
	// Requests per Period (a Go duration) refill a bucket of Burst tokens.
	Requests int64  `json:"requests"`
	Period   string `json:"period"`
	Burst    int64  `json:"burst"`
	// DryRun counts and logs what would be limited but lets it through.
	DryRun bool `json:"dryRun,omitempty"`
}

// RateLimitMatch is the request a RateLimit counts; empty lists match anything.
type RateLimitMatch struct {
	Hosts                []string          `json:"hosts,omitempty"`
	NotHosts             []string          `json:"notHosts,omitempty"`
	Ports                []string          `json:"ports,omitempty"`
	NotPorts             []string          `json:"notPorts,omitempty"`
	Methods              []string          `json:"methods,omitempty"`
	NotMethods           []string          `json:"notMethods,omitempty"`
	Paths                []string          `json:"paths,omitempty"`
	NotPaths             []string          `json:"notPaths,omitempty"`
	Principals           []string          `json:"principals,omitempty"`
	NotPrincipals        []string          `json:"notPrincipals,omitempty"`
	RequestPrincipals    []string          `json:"requestPrincipals,omitempty"`
	NotRequestPrincipals []string          `json:"notRequestPrincipals,omitempty"`
	Namespaces           []string          `json:"namespaces,omitempty"`
	NotNamespaces        []string          `json:"notNamespaces,omitempty"`
	Headers              []RateLimitHeader `json:"headers,omitempty"`
}

// RateLimitHeader matches one header by name (lower case).
type RateLimitHeader struct {
	Name      string   `json:"name"`
	Values    []string `json:"values,omitempty"`
	NotValues []string `json:"notValues,omitempty"`
}

// HeaderMap is r's headers as authorization matches them (Envoy's header
// map): :authority (the Host), :method and :path (path, which is normalized,
// with r's query) first, then the rest. Rate limits match and key on it, so
// a limit on host or :path sees what a policy on it sees.
func (r *Request) HeaderMap(path string) []Header { return r.withPseudo(path) }
