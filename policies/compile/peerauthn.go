package compile

import (
	"sort"
	"strconv"

	"github.com/rampart-mesh/rampart/policies/source"
	"google.golang.org/protobuf/proto"
	security "istio.io/api/security/v1beta1"
)

// PeerAuthn is a decoded PeerAuthentication.
type PeerAuthn struct {
	Object source.Object
	Spec   *security.PeerAuthentication
}

// DecodePeerAuthentications decodes every PeerAuthentication in objs.
func DecodePeerAuthentications(objs []source.Object, defaultNS string) ([]*PeerAuthn, []Finding) {
	var out []*PeerAuthn
	fs := decodeSpec(objs, "PeerAuthentication", defaultNS, CodePASchema, CodePAUnknownField,
		func() proto.Message { return &security.PeerAuthentication{} },
		func(o source.Object, m proto.Message) {
			out = append(out, &PeerAuthn{Object: o, Spec: m.(*security.PeerAuthentication)})
		})
	return out, fs
}

// mTLS modes after resolution.
const (
	ModeDisable    = "DISABLE"
	ModePermissive = "PERMISSIVE"
	ModeStrict     = "STRICT"
)

// PeerMode is the resolved mTLS mode of a workload port and the policy that set it.
type PeerMode struct {
	Mode   string
	Policy string // "ns/name", "" for the default
}

// ResolvePeerAuthentication applies Istio's precedence for one workload port:
// PERMISSIVE by default, then the mesh policy (root namespace, no selector), the
// namespace policy (no selector), the workload policy (selector), and its
// portLevelMtls; UNSET inherits. Of several policies at one level the oldest
// (creationTimestamp, then name) wins.
func ResolvePeerAuthentication(m Mesh, wl Workload, port int, pas []*PeerAuthn) (PeerMode, []Finding) {
	var fs []Finding
	var mesh, ns, workload []*PeerAuthn
	for _, pa := range pas {
		o := pa.Object
		sel := pa.Spec.GetSelector()
		hasSel := len(sel.GetMatchLabels()) > 0
		if !hasSel && len(pa.Spec.GetPortLevelMtls()) > 0 {
			fs = append(fs, newFinding(o, SeverityError, CodePAPortNoSelect, "spec.portLevelMtls", "portLevelMtls needs a selector; it is ignored"))
		}
		for p := range pa.Spec.GetPortLevelMtls() {
			if p == 0 || p > 65535 {
				fs = append(fs, newFinding(o, SeverityError, CodePABadPort, "spec.portLevelMtls["+strconv.Itoa(int(p))+"]", "port must be 1-65535"))
			}
		}
		switch {
		case o.Namespace == m.RootNamespace && hasSel:
			fs = append(fs, newFinding(o, SeverityWarning, CodePARootSelector, "spec.selector", "PeerAuthentication with a selector in the root namespace is ignored"))
		case o.Namespace == m.RootNamespace:
			mesh = append(mesh, pa)
		case o.Namespace != wl.Namespace:
		case !hasSel:
			ns = append(ns, pa)
		default:
			if attaches(o, sel, 0, m, wl) {
				workload = append(workload, pa)
			}
		}
	}
	res := PeerMode{Mode: ModePermissive}
	for _, level := range [][]*PeerAuthn{mesh, ns, workload} {
		if len(level) == 0 {
			continue
		}
		sort.SliceStable(level, func(i, j int) bool {
			a, b := level[i].Object, level[j].Object
			if !a.CreationTimestamp.Equal(b.CreationTimestamp) {
				return a.CreationTimestamp.Before(b.CreationTimestamp)
			}
			return a.Namespace+"/"+a.Name < b.Namespace+"/"+b.Name
		})
		pa := level[0]
		name := pa.Object.Namespace + "/" + pa.Object.Name
		if mode := modeName(pa.Spec.GetMtls().GetMode()); mode != "" {
			res = PeerMode{Mode: mode, Policy: name}
		}
		if level[0] == first(workload) && len(pa.Spec.GetSelector().GetMatchLabels()) > 0 {
			if pm, ok := pa.Spec.GetPortLevelMtls()[uint32(port)]; ok {
				if mode := modeName(pm.GetMode()); mode != "" {
					res = PeerMode{Mode: mode, Policy: name + " (port " + strconv.Itoa(port) + ")"}
				}
			}
		}
	}
	return res, fs
}

func first(xs []*PeerAuthn) *PeerAuthn {
	if len(xs) == 0 {
		return nil
	}
	return xs[0]
}

func modeName(m security.PeerAuthentication_MutualTLS_Mode) string {
	switch m {
	case security.PeerAuthentication_MutualTLS_DISABLE:
		return ModeDisable
	case security.PeerAuthentication_MutualTLS_PERMISSIVE:
		return ModePermissive
	case security.PeerAuthentication_MutualTLS_STRICT:
		return ModeStrict
	}
	return "" // UNSET: inherit
}

// PeerPolicy is the resolved mTLS mode of a workload: its default and the ports
// whose mode differs. It is what the sidecar's inbound path applies.
type PeerPolicy struct {
	Mode   string            `json:"mode"`
	Policy string            `json:"policy,omitempty"`
	Ports  map[string]string `json:"ports,omitempty"`
}

// ResolvePeerPolicy resolves the workload's default mode and every port a
// portLevelMtls of its policies names.
func ResolvePeerPolicy(m Mesh, wl Workload, pas []*PeerAuthn) (PeerPolicy, []Finding) {
	def, fs := ResolvePeerAuthentication(m, wl, 0, pas)
	out := PeerPolicy{Mode: def.Mode, Policy: def.Policy}
	for _, pa := range pas {
		for port := range pa.Spec.GetPortLevelMtls() {
			pm, _ := ResolvePeerAuthentication(m, wl, int(port), pas)
			if pm.Mode != def.Mode {
				if out.Ports == nil {
					out.Ports = map[string]string{}
				}
				out.Ports[strconv.Itoa(int(port))] = pm.Mode
			}
		}
	}
	return out, fs
}
