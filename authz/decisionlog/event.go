package decisionlog

import (
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/rampart-mesh/rampart/authz"
)

// DefaultPath is the query path recorded for decisions of the compiled mesh
// policy: the Rego reference decision, data.rampart.authz.decision
// (policies/rego/decision.rego), which the sidecar computes in Go from the
// bundle's match sets.
const DefaultPath = "rampart/authz/decision"

// DefaultBundle is the bundle name under which a decision's revision is
// recorded.
const DefaultBundle = "rampart"

// Event is one decision-log record: OPA's decision-log event (decision_id,
// labels, bundles, path, input, result, timestamp, erased, masked), Rampart's
// mesh fields under "rampart", and the hash chain (seq, prev_hash, hash), which
// the Logger fills. The field order is the record's member order; see the
// package documentation for what is hashed.
type Event struct {
	DecisionID string                `json:"decision_id"`
	Labels     map[string]string     `json:"labels"`
	Bundles    map[string]BundleInfo `json:"bundles,omitempty"`
	// Path is the query path, e.g. "rampart/authz/decision".
	Path string `json:"path"`
	// Input is the document that was evaluated (generic JSON values or an OPA
	// ast.Value); Result the decision. The Logger masks its own copies, but the
	// caller must not modify them after Log.
	Input     any       `json:"input,omitempty"`
	Result    any       `json:"result,omitempty"`
	Timestamp time.Time `json:"timestamp"`
	// Erased and Masked are the JSON pointers removed and rewritten by masking.
	Erased  []string `json:"erased,omitempty"`
	Masked  []string `json:"masked,omitempty"`
	Rampart Mesh     `json:"rampart"`

	Seq      uint64 `json:"seq"`
	PrevHash string `json:"prev_hash"`
	// Hash must stay the last field: the chain hashes the line with its value
	// emptied, and finds it as the line's suffix.
	Hash string `json:"hash"`
}

// BundleInfo is the revision of a bundle that took part in a decision.
type BundleInfo struct {
	Revision string `json:"revision"`
}

// Mesh is what the mesh knows about a decision beyond OPA's event.
type Mesh struct {
	SourcePrincipal string `json:"source_principal"`
	// SourceWorkload and DestinationWorkload are "namespace/name", or "" when
	// unknown.
	SourceWorkload       string `json:"source_workload"`
	DestinationWorkload  string `json:"destination_workload"`
	DestinationPrincipal string `json:"destination_principal"`
	Policy               string `json:"policy"`
	Rule                 int    `json:"rule"`
	Allowed              bool   `json:"allowed"`
	Status               int    `json:"status"`
	// DryRun reports that a dry-run policy matched: this event is (also) about
	// what a dry-run policy would have done.
	DryRun    bool   `json:"dry_run"`
	Reason    string `json:"reason"`
	RequestID string `json:"request_id"`
}

// Meta is the request metadata that a Decision does not carry.
type Meta struct {
	RequestID            string
	SourcePrincipal      string
	SourceWorkload       string // namespace/name, if known
	DestinationWorkload  string // namespace/name
	DestinationPrincipal string
	// Path is the query path; default DefaultPath.
	Path string
	// Bundle names the bundle whose revision the decision carries; default
	// DefaultBundle.
	Bundle string
	Labels map[string]string
	// Time is when the decision was made; zero means "when Log is called".
	Time time.Time
}

// RequestMeta fills what Meta can take from an authz.Request: the request ID,
// the peer's principal, the source workload as "namespace/service-account" from
// a principal of the form spiffe://<td>/ns/<ns>/sa/<sa>, and the protected
// (destination) workload. The destination principal and the labels are the
// sidecar's own: its caller sets them.
func RequestMeta(r *authz.Request) Meta {
	m := Meta{RequestID: r.ID, SourcePrincipal: r.SourcePrincipal, SourceWorkload: workloadOf(r.SourcePrincipal)}
	if r.Workload.Name != "" {
		m.DestinationWorkload = r.Workload.Namespace + "/" + r.Workload.Name
	}
	return m
}

// workloadOf returns "ns/sa" for a Kubernetes-style SPIFFE ID, "" otherwise.
func workloadOf(principal string) string {
	id, err := spiffeid.FromString(principal)
	if err != nil {
		return ""
	}
	segs := strings.Split(id.Path(), "/")
	if len(segs) != 5 || segs[1] != "ns" || segs[3] != "sa" || segs[2] == "" || segs[4] == "" {
		return ""
	}
	return segs[2] + "/" + segs[4]
}

// FromDecision builds the event for d. The result is d itself (its JSON form);
// the input is d.Document(), the full input document.
func FromDecision(d authz.Decision, m Meta) Event {
	e := Event{
		DecisionID: d.DecisionID,
		Labels:     m.Labels,
		Path:       m.Path,
		Result:     d,
		Timestamp:  m.Time,
		Rampart: Mesh{
			SourcePrincipal:      m.SourcePrincipal,
			SourceWorkload:       m.SourceWorkload,
			DestinationWorkload:  m.DestinationWorkload,
			DestinationPrincipal: m.DestinationPrincipal,
			Policy:               d.Policy,
			Rule:                 d.Rule,
			Allowed:              d.Allowed,
			Status:               d.Status,
			DryRun:               len(d.DryRun.Matches) > 0,
			Reason:               d.Reason,
			RequestID:            m.RequestID,
		},
	}
	if in := d.Document(); in != nil {
		e.Input = in
	}
	if e.Path == "" {
		e.Path = DefaultPath
	}
	if d.Revision != "" {
		b := m.Bundle
		if b == "" {
			b = DefaultBundle
		}
		e.Bundles = map[string]BundleInfo{b: {Revision: d.Revision}}
	}
	return e
}
