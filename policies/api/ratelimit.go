package api

import (
	"fmt"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Group, version and kind of Rampart's policy kinds.
const (
	Group      = "policy.rampart.dev"
	Version    = "v1alpha1"
	APIVersion = Group + "/" + Version

	KindRateLimitPolicy = "RateLimitPolicy"
	// ResourceRateLimitPolicies is the plural resource name of RateLimitPolicy.
	ResourceRateLimitPolicies = "ratelimitpolicies"
)

// DryRunAnnotation, set to "true" on a policy, makes every limit in it dry-run,
// as it does for Istio's AuthorizationPolicy.
const DryRunAnnotation = "istio.io/dry-run"

// RateLimitPolicy limits the rate of requests a workload's sidecar lets through
// to the app. Its limits are local: every sidecar keeps its own token buckets,
// so a workload with three replicas admits up to three times a limit. Global
// limits shared by replicas are not part of this kind.
type RateLimitPolicy struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// Spec is the policy.
	Spec RateLimitPolicySpec `json:"spec"`
}

// RateLimitPolicySpec says which workloads a policy applies to and what it
// limits there.
type RateLimitPolicySpec struct {
	// Selector picks the workloads, in the policy's namespace, whose sidecars
	// enforce the policy: every label given must be on the workload. Without a
	// selector (and without targetRefs) the policy applies to every workload in
	// its namespace, or to every workload in the mesh when it is in the root
	// namespace (rampart-system unless the mesh config says otherwise).
	Selector *WorkloadSelector `json:"selector,omitempty"`
	// TargetRefs attach the policy to the workloads of the named services
	// instead of by labels: a ServiceEntry (group networking.istio.io) in the
	// policy's namespace applies to the workloads its workloadSelector picks.
	// At most one of selector and targetRefs may be set.
	TargetRefs []PolicyTargetReference `json:"targetRefs,omitempty"`
	// Limits are checked in order on every request the workload receives after
	// authorization; a request that exhausts any enforced limit it matches is
	// answered 429 and does not reach the app. A request takes a token from
	// every limit it matches.
	// +required
	// +minItems=1
	Limits []Limit `json:"limits"`
}

// WorkloadSelector selects workloads by their labels.
type WorkloadSelector struct {
	// MatchLabels are the labels a workload must have, all of them, with these values.
	MatchLabels map[string]string `json:"matchLabels,omitempty"`
}

// PolicyTargetReference names an object a policy attaches to, as Istio's
// targetRefs do.
type PolicyTargetReference struct {
	// Group of the target: networking.istio.io for a ServiceEntry.
	Group string `json:"group,omitempty"`
	// Kind of the target: ServiceEntry.
	// +required
	Kind string `json:"kind"`
	// Name of the target, in the policy's namespace.
	// +required
	Name string `json:"name"`
	// Namespace of the target; it must be empty or the policy's own namespace.
	Namespace string `json:"namespace,omitempty"`
}

// Limit is one rate limit: which requests it counts, how they are bucketed,
// and how many each bucket admits.
type Limit struct {
	// Name identifies the limit in metrics (label limit="NAMESPACE/POLICY/NAME"),
	// logs and findings. Unique within the policy; lower-case letters, digits
	// and '-'.
	// +required
	Name string `json:"name"`
	// Match restricts the limit to the requests it describes; without it the
	// limit counts every request. Every field given must match (AND); within a
	// list any entry may match (OR).
	Match *RequestMatch `json:"match,omitempty"`
	// Key says how requests are split into buckets, each with its own rate.
	// Without a key all matching requests share one bucket.
	Key *Key `json:"key,omitempty"`
	// Rate is how many requests a bucket admits per period, on average.
	// +required
	Rate Rate `json:"rate"`
	// Burst is how many requests a full bucket admits at once before the rate
	// applies. Default: rate.requests. A bucket starts full.
	// +minimum=1
	Burst *int64 `json:"burst,omitempty"`
	// DryRun counts and logs the requests the limit would refuse but lets them
	// through. The istio.io/dry-run: "true" annotation makes every limit of the
	// policy dry-run.
	DryRun bool `json:"dryRun,omitempty"`
}

// Rate is a number of requests per period.
type Rate struct {
	// Requests admitted per period.
	// +required
	// +minimum=1
	Requests int64 `json:"requests"`
	// Per is the period, a duration such as 1s, 1m or 1h (Go's duration
	// syntax). Default: 1s.
	Per string `json:"per,omitempty"`
}

// RequestMatch describes requests with the vocabulary of Istio's
// AuthorizationPolicy: operation fields (to[].operation), source fields
// (from[].source) and headers (when: request.headers[...]). Strings match
// exactly, or by prefix ("abc*"), suffix ("*abc"), or presence ("*"), as in
// Istio.
type RequestMatch struct {
	// Operation matches what the request asks for.
	Operation *Operation `json:"operation,omitempty"`
	// Source matches who sends the request.
	Source *Source `json:"source,omitempty"`
	// Headers match request headers; every header listed must match.
	Headers []HeaderMatch `json:"headers,omitempty"`
}

// Operation matches request attributes, as Istio's Operation does.
type Operation struct {
	// Hosts match the request's Host (or :authority), case-insensitively.
	Hosts []string `json:"hosts,omitempty"`
	// NotHosts exclude hosts.
	NotHosts []string `json:"notHosts,omitempty"`
	// Ports match the port the request arrived on, as strings ("8080").
	Ports []string `json:"ports,omitempty"`
	// NotPorts exclude ports.
	NotPorts []string `json:"notPorts,omitempty"`
	// Methods match the HTTP method ("GET"); for gRPC it is always POST.
	Methods []string `json:"methods,omitempty"`
	// NotMethods exclude methods.
	NotMethods []string `json:"notMethods,omitempty"`
	// Paths match the normalized path, without the query ("/api/*"); for gRPC
	// the path is /package.Service/Method.
	Paths []string `json:"paths,omitempty"`
	// NotPaths exclude paths.
	NotPaths []string `json:"notPaths,omitempty"`
}

// Source matches the client of a request, as Istio's Source does.
type Source struct {
	// Principals match the peer's identity from its mTLS certificate, in
	// Istio's form "cluster.local/ns/NAMESPACE/sa/SERVICE-ACCOUNT".
	Principals []string `json:"principals,omitempty"`
	// NotPrincipals exclude peer identities.
	NotPrincipals []string `json:"notPrincipals,omitempty"`
	// RequestPrincipals match the request's validated JWT as "ISSUER/SUBJECT".
	RequestPrincipals []string `json:"requestPrincipals,omitempty"`
	// NotRequestPrincipals exclude request principals.
	NotRequestPrincipals []string `json:"notRequestPrincipals,omitempty"`
	// Namespaces match the peer's namespace, from its mTLS identity.
	Namespaces []string `json:"namespaces,omitempty"`
	// NotNamespaces exclude namespaces.
	NotNamespaces []string `json:"notNamespaces,omitempty"`
}

// HeaderMatch matches one request header.
type HeaderMatch struct {
	// Name of the header, case-insensitive.
	// +required
	Name string `json:"name"`
	// Values the header may have (any of them); "*" means present. A request
	// without the header does not match.
	Values []string `json:"values,omitempty"`
	// NotValues the header must not have; a request without the header matches.
	NotValues []string `json:"notValues,omitempty"`
}

// What a Key buckets requests by.
const (
	KeyShared           = "Shared"
	KeySourcePrincipal  = "SourcePrincipal"
	KeyRequestPrincipal = "RequestPrincipal"
	KeySourceIP         = "SourceIP"
	KeyHeader           = "Header"
)

// Key says what requests are bucketed by.
type Key struct {
	// By is what to bucket by: Shared (one bucket for all), SourcePrincipal
	// (the peer's mTLS identity), RequestPrincipal (the validated JWT's
	// ISSUER/SUBJECT), SourceIP (the connecting address) or Header (the value of
	// the header named by header). Requests without the attribute (plaintext,
	// no JWT, no header) share one bucket of their own.
	// +required
	// +enum=Shared;SourcePrincipal;RequestPrincipal;SourceIP;Header
	By string `json:"by"`
	// Header names the header whose value is the key, with by: Header.
	Header string `json:"header,omitempty"`
}

// Period returns r.Per as a duration (1s when empty).
func (r Rate) Period() (time.Duration, error) {
	if r.Per == "" {
		return time.Second, nil
	}
	d, err := time.ParseDuration(r.Per)
	if err != nil {
		return 0, fmt.Errorf("%q is not a duration such as 1s, 1m or 1h", r.Per)
	}
	return d, nil
}

// BurstOrDefault is the bucket size: Burst, or Rate.Requests when unset.
// Burst is a pointer so that an explicit 0, which the schema refuses, is
// told apart from leaving it out.
func (l Limit) BurstOrDefault() int64 {
	if l.Burst != nil && *l.Burst > 0 {
		return *l.Burst
	}
	return l.Rate.Requests
}
