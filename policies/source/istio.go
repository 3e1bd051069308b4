package source

import (
	"fmt"
	"slices"
	"strings"
)

// istioKinds are the kinds of Istio's security and networking groups, each
// with the versions Istio serves it at: what the API server would accept.
var istioKinds = map[string]map[string][]string{
	"security.istio.io": {
		"AuthorizationPolicy":   {"v1", "v1beta1"},
		"PeerAuthentication":    {"v1", "v1beta1"},
		"RequestAuthentication": {"v1", "v1beta1"},
	},
	"networking.istio.io": {
		"DestinationRule": {"v1", "v1beta1", "v1alpha3"},
		"EnvoyFilter":     {"v1alpha3"},
		"Gateway":         {"v1", "v1beta1", "v1alpha3"},
		"ProxyConfig":     {"v1beta1"},
		"ServiceEntry":    {"v1", "v1beta1", "v1alpha3"},
		"Sidecar":         {"v1", "v1beta1", "v1alpha3"},
		"VirtualService":  {"v1", "v1beta1", "v1alpha3"},
		"WorkloadEntry":   {"v1", "v1beta1", "v1alpha3"},
		"WorkloadGroup":   {"v1", "v1beta1", "v1alpha3"},
	},
}

// checkIstioKind refuses an object the API server would refuse in Istio's
// groups: a kind the group does not have (a misspelt kind, "kind:
// authorizationpolicy", would otherwise be read as nothing and the policy
// silently not apply), a version it is not served at, a group spelt in
// another case or an apiVersion without a version.
func checkIstioKind(file string, o Object) error {
	where := fmt.Sprintf("%s %s", o.Kind, o.Name)
	if o.Namespace != "" {
		where = fmt.Sprintf("%s %s/%s", o.Kind, o.Namespace, o.Name)
	}
	group, version, hasVersion := strings.Cut(o.APIVersion, "/")
	for g, kinds := range istioKinds {
		if !strings.EqualFold(group, g) {
			continue
		}
		if group != g {
			return fmt.Errorf("%s:%d: %s: apiVersion %q: the group is %s, in lower case", file, o.Line, where, o.APIVersion, g)
		}
		if !hasVersion || version == "" {
			return fmt.Errorf("%s:%d: %s: apiVersion %q has no version: want %s/v1", file, o.Line, where, o.APIVersion, g)
		}
		versions, ok := kinds[o.Kind]
		if !ok {
			known := make([]string, 0, len(kinds))
			for k := range kinds {
				known = append(known, k)
			}
			slices.Sort(known)
			return fmt.Errorf("%s:%d: %s: %s has no kind %q (known: %s)", file, o.Line, where, g, o.Kind, strings.Join(known, ", "))
		}
		if !slices.Contains(versions, version) {
			return fmt.Errorf("%s:%d: %s: apiVersion %q: %s is served at %s/%s", file, o.Line, where, o.APIVersion, o.Kind, g, strings.Join(versions, ", "+g+"/"))
		}
	}
	return nil
}
