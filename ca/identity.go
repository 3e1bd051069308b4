package ca

import (
	"fmt"
	"regexp"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Identity is a workload identity in Istio's shape: a namespace and a service account.
type Identity struct {
	Namespace      string
	ServiceAccount string
}

func (i Identity) String() string { return i.Namespace + "/" + i.ServiceAccount }

// ID returns the identity's SPIFFE ID, spiffe://<td>/ns/<ns>/sa/<sa>.
func (i Identity) ID(td spiffeid.TrustDomain) (spiffeid.ID, error) {
	if err := i.Validate(); err != nil {
		return spiffeid.ID{}, err
	}
	return spiffeid.FromSegments(td, "ns", i.Namespace, "sa", i.ServiceAccount)
}

// Validate checks both names the way Kubernetes does: the namespace is a DNS-1123
// label and the service account a DNS-1123 subdomain.
func (i Identity) Validate() error {
	if !dns1123Label.MatchString(i.Namespace) || len(i.Namespace) > 63 {
		return fmt.Errorf("namespace %q is not a valid DNS-1123 label (lowercase letters, digits and '-', at most 63 characters)", i.Namespace)
	}
	if !dns1123Subdomain.MatchString(i.ServiceAccount) || len(i.ServiceAccount) > 253 {
		return fmt.Errorf("service account %q is not a valid DNS-1123 subdomain (lowercase letters, digits, '-' and '.', at most 253 characters)", i.ServiceAccount)
	}
	return nil
}

// IdentityFromID parses a workload SPIFFE ID of the form /ns/<ns>/sa/<sa>.
func IdentityFromID(id spiffeid.ID) (Identity, error) {
	parts := strings.Split(strings.TrimPrefix(id.Path(), "/"), "/")
	if len(parts) != 4 || parts[0] != "ns" || parts[2] != "sa" {
		return Identity{}, fmt.Errorf("SPIFFE ID %q is not of the form spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>", id)
	}
	ident := Identity{Namespace: parts[1], ServiceAccount: parts[3]}
	if err := ident.Validate(); err != nil {
		return Identity{}, fmt.Errorf("SPIFFE ID %q: %w", id, err)
	}
	return ident, nil
}

var (
	dns1123Label     = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)
	dns1123Subdomain = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)
)

// ControlPlaneIdentity is the identity rampartd's own serving certificate carries,
// in the given root namespace.
func ControlPlaneIdentity(rootNamespace string) Identity {
	return Identity{Namespace: rootNamespace, ServiceAccount: "rampartd"}
}

// DefaultRootNamespace is the mesh root namespace when mesh config does not set one.
const DefaultRootNamespace = "rampart-system"
