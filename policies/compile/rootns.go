package compile

import "github.com/rampart-mesh/rampart/policies/source"

// CodeIstioRootNamespace warns that a security policy sits in istio-system,
// Istio's default root namespace, while the mesh's root namespace is another.
const CodeIstioRootNamespace = "SEC-ISTIO-ROOT-NAMESPACE"

// istioRootNamespace is where Istio's mesh-wide security policies live by default.
const istioRootNamespace = "istio-system"

// RootNamespaceFindings warns about every AuthorizationPolicy,
// RequestAuthentication and PeerAuthentication in istio-system when the mesh's
// root namespace is not istio-system (Rampart's default is rampart-system):
// written for Istio, such a policy is meant mesh-wide, but here it applies
// only to workloads in istio-system. A mesh-wide STRICT PeerAuthentication
// would silently stay PERMISSIVE everywhere else.
func RootNamespaceFindings(objs []source.Object, m Mesh) []Finding {
	if m.RootNamespace == istioRootNamespace {
		return nil
	}
	var fs []Finding
	for _, o := range objs {
		if o.Group() != "security.istio.io" || o.Namespace != istioRootNamespace {
			continue
		}
		switch o.Kind {
		case "AuthorizationPolicy", "RequestAuthentication", "PeerAuthentication":
			fs = append(fs, newFinding(o, SeverityWarning, CodeIstioRootNamespace, "metadata.namespace",
				"%s is Istio's default root namespace, but this mesh's root namespace is %q: the policy applies only to workloads in %s, not mesh-wide; move it to %s, or set rootNamespace: %s in the mesh config",
				istioRootNamespace, m.RootNamespace, istioRootNamespace, m.RootNamespace, istioRootNamespace))
		}
	}
	return fs
}
