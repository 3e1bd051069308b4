package xds

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/rampart-mesh/rampart/authz"
	"github.com/rampart-mesh/rampart/policies/compile"
	"github.com/rampart-mesh/rampart/policies/registry"
	"github.com/rampart-mesh/rampart/policies/source"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	networking "istio.io/api/networking/v1alpha3"
)

// loaded is one configuration version as reload accepted it.
type loaded struct {
	objs []source.Object
	net  *compile.Networking
	// providers summarizes the CUSTOM providers' Rego bundles on disk: they
	// come from mesh config, not objects, but every bundle carries them.
	providers string
}

// scope is the set of workloads a configuration change can affect: every
// workload, the workloads of some namespaces, or workloads (in any namespace)
// whose labels a selector matches. A workload outside it compiles to exactly
// what it compiled to before the change.
type scope struct {
	all        string // why every workload is affected; "" if not
	namespaces map[string]bool
	selectors  []map[string]string // never empty: an empty selector is everything
}

func (sc *scope) everything(why string) {
	if sc.all == "" {
		sc.all = why
	}
}

func (sc *scope) namespace(ns string) {
	if sc.namespaces == nil {
		sc.namespaces = map[string]bool{}
	}
	sc.namespaces[ns] = true
}

// selector adds the workloads whose labels carry every key and value of sel.
// An empty selector adds every workload, why says whose it is: a Gateway
// with none applies to every gateway proxy, as Istio's, and compile cannot
// tell a gateway proxy from a sidecar.
func (sc *scope) selector(sel map[string]string, why string) {
	if len(sel) == 0 {
		sc.everything(why + " has no selector")
		return
	}
	sc.selectors = append(sc.selectors, sel)
}

// affects reports whether wl's compiled output may differ after the change.
func (sc *scope) affects(wl compile.Workload) bool {
	if sc.all != "" || sc.namespaces[wl.Namespace] {
		return true
	}
	for _, sel := range sc.selectors {
		if registry.Matches(sel, wl.Labels) {
			return true
		}
	}
	return false
}

// String is the scope for logs.
func (sc *scope) String() string {
	if sc.all != "" {
		return "all (" + sc.all + ")"
	}
	var parts []string
	if len(sc.namespaces) > 0 {
		ns := make([]string, 0, len(sc.namespaces))
		for n := range sc.namespaces {
			ns = append(ns, n)
		}
		sort.Strings(ns)
		parts = append(parts, "namespaces "+strings.Join(ns, ","))
	}
	if len(sc.selectors) > 0 {
		parts = append(parts, fmt.Sprintf("%d gateway selectors", len(sc.selectors)))
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, "; ")
}

// exportedTo adds the namespaces an object in ns with this exportTo is visible
// in (compile's visibility rule: empty or "*" is every namespace, "." its own,
// "~" none, anything else that namespace).
func (sc *scope) exportedTo(exportTo []string, ns, what string) {
	if len(exportTo) == 0 || slices.Contains(exportTo, "*") {
		sc.everything(what + " is visible in every namespace")
		return
	}
	for _, e := range exportTo {
		switch e {
		case ".":
			sc.namespace(ns)
		case "~":
		default:
			sc.namespace(e)
		}
	}
}

// changeScope works out which workloads the change from prev to next can
// affect, following what policies/xds.Compile and compile.CompileOutbound read
// for one workload. What it cannot classify affects every workload: a proxy
// must never keep stale configuration.
func changeScope(mesh compile.Mesh, prev, next loaded) *scope {
	sc := &scope{}
	if prev.net == nil || next.net == nil {
		sc.everything("first load")
		return sc
	}
	if prev.providers != next.providers {
		sc.everything("CUSTOM provider bundles changed")
		return sc
	}
	root := mesh.RootNamespace
	if root == "" {
		root = compile.DefaultRootNamespace
	}
	for _, ch := range changedObjects(prev.objs, next.objs) {
		o := ch.any()
		name := o.Kind + " " + o.Namespace + "/" + o.Name
		switch group, kind := o.Group(), o.Kind; {
		case group == "security.istio.io" && (kind == "AuthorizationPolicy" || kind == "RequestAuthentication"),
			group == "policy.rampart.dev" && kind == "RateLimitPolicy":
			// Root-namespace policies apply everywhere, others in their namespace
			// (a RateLimitPolicy's targetRefs name ServiceEntries of its own).
			if o.Namespace == root {
				sc.everything(name + " is in the root namespace")
				continue
			}
			sc.namespace(o.Namespace)
		case group == "security.istio.io" && kind == "PeerAuthentication":
			if o.Namespace == root {
				sc.everything(name + " is in the root namespace")
				continue
			}
			// Its workloads' inbound modes, and (auto mTLS) every client that can
			// see a service with a mesh endpoint in the namespace: a DISABLE port
			// is sent plaintext.
			sc.namespace(o.Namespace)
			for _, n := range []*compile.Networking{prev.net, next.net} {
				for _, svc := range n.Registry.Services {
					for _, ep := range n.Registry.EndpointsOf(svc) {
						if ep.Mesh && ep.Object.Namespace == o.Namespace {
							sc.exportedTo(svc.ExportTo, svc.Namespace, name+" serves Service "+svc.Host+", which")
							break
						}
					}
				}
			}
		case group == "networking.istio.io" && kind == "VirtualService":
			for _, v := range ch.versions() {
				spec := &networking.VirtualService{}
				if err := decode(v, spec); err != nil {
					sc.everything(name + " does not decode")
					break
				}
				sc.exportedTo(spec.GetExportTo(), v.Namespace, name)
				// Gateways take the VirtualServices bound to them whatever their exportTo.
				for _, gw := range spec.GetGateways() {
					full := compile.ResolveGateway(gw, v.Namespace)
					if full == compile.MeshGateway {
						continue
					}
					for _, n := range []*compile.Networking{prev.net, next.net} {
						for _, g := range n.Gateways {
							if g.Object.Namespace+"/"+g.Object.Name == full {
								sc.selector(g.Spec.GetSelector(), name+" is bound to Gateway "+full+", which")
							}
						}
					}
				}
			}
		case group == "networking.istio.io" && kind == "DestinationRule":
			for _, v := range ch.versions() {
				spec := &networking.DestinationRule{}
				if err := decode(v, spec); err != nil {
					sc.everything(name + " does not decode")
					break
				}
				sc.exportedTo(spec.GetExportTo(), v.Namespace, name)
			}
		case group == "networking.istio.io" && kind == "Sidecar":
			// A Sidecar scopes its namespace's proxies; the root namespace's is
			// the default for every namespace without one.
			if o.Namespace == root {
				sc.everything(name + " is in the root namespace")
				continue
			}
			sc.namespace(o.Namespace)
		case group == "networking.istio.io" && kind == "Gateway":
			for _, v := range ch.versions() {
				spec := &networking.Gateway{}
				if err := decode(v, spec); err != nil {
					sc.everything(name + " does not decode")
					break
				}
				sc.selector(spec.GetSelector(), name)
			}
		case group == "networking.istio.io" && (kind == "ServiceEntry" || kind == "WorkloadEntry"):
			// Compared below as the services and endpoints they make, together
			// with Kubernetes' Services, EndpointSlices and Pods.
			if kind == "ServiceEntry" {
				// A RateLimitPolicy's targetRefs follow the workloadSelector of a
				// ServiceEntry in the policy's own namespace, whatever its exportTo.
				for _, v := range ch.versions() {
					sc.namespace(v.Namespace)
				}
			}
		default:
			sc.everything(name + " is a kind whose effect is not classified")
		}
		if sc.all != "" {
			return sc
		}
	}
	registryScope(sc, prev.net.Registry, next.net.Registry)
	return sc
}

// registryScope adds the workloads that can see a service that changed: its
// host, ports, resolution, exportTo, or any endpoint (ServiceEntry,
// WorkloadEntry, Kubernetes Service, EndpointSlice or Pod).
func registryScope(sc *scope, prev, next *registry.Registry) {
	type version struct {
		svc    *registry.Service
		digest string
	}
	index := func(r *registry.Registry) (map[string][]version, map[string]int) {
		out, hosts := map[string][]version{}, map[string]int{}
		for _, s := range r.Services {
			k := s.Namespace + "/" + s.Name + "/" + s.Host
			svc := *s
			svc.Object = content(svc.Object)
			eps := slices.Clone(r.EndpointsOf(s))
			for i := range eps {
				eps[i].Object = content(eps[i].Object)
			}
			out[k] = append(out[k], version{s, digest(struct {
				Service   registry.Service
				Endpoints []registry.Endpoint
			}{svc, eps})})
			hosts[s.Host]++
		}
		for k := range out {
			sort.Slice(out[k], func(i, j int) bool { return out[k][i].digest < out[k][j].digest })
		}
		return out, hosts
	}
	before, beforeHosts := index(prev)
	after, afterHosts := index(next)
	changed := func(k string, vs []version, other map[string][]version) {
		o := other[k]
		same := len(o) == len(vs)
		for i := 0; same && i < len(vs); i++ {
			same = vs[i].digest == o[i].digest
		}
		if same {
			return
		}
		for _, v := range append(append([]version(nil), vs...), o...) {
			// Two services with one host: which one a host resolves to can change
			// for workloads that see only the other one.
			if beforeHosts[v.svc.Host] > 1 || afterHosts[v.svc.Host] > 1 {
				sc.everything("Service " + v.svc.Host + " shares its host with another service")
				return
			}
			sc.exportedTo(v.svc.ExportTo, v.svc.Namespace, "Service "+v.svc.Host)
		}
	}
	for k, vs := range before {
		changed(k, vs, after)
	}
	for k, vs := range after {
		if _, ok := before[k]; !ok {
			changed(k, vs, before)
		}
	}
}

// change is one object identity (group, kind, namespace, name) whose content
// differs: created, edited or deleted.
type change struct {
	prev, next []source.Object
}

func (c change) any() source.Object {
	if len(c.next) > 0 {
		return c.next[0]
	}
	return c.prev[0]
}

func (c change) versions() []source.Object {
	return append(append([]source.Object(nil), c.prev...), c.next...)
}

// changedObjects compares two object sets by identity and content (spec and
// metadata; not the file and line it was read from, which only error messages
// name, so an edit above an object in the same file does not change it).
func changedObjects(prev, next []source.Object) []change {
	type entry struct {
		objs    []source.Object
		digests []string
	}
	index := func(objs []source.Object) map[string]*entry {
		out := map[string]*entry{}
		for _, o := range objs {
			k := o.Group() + "/" + o.Kind + "/" + o.Namespace + "/" + o.Name
			e := out[k]
			if e == nil {
				e = &entry{}
				out[k] = e
			}
			e.objs = append(e.objs, o)
			e.digests = append(e.digests, digest(content(o)))
		}
		for _, e := range out {
			sort.Strings(e.digests)
		}
		return out
	}
	before, after := index(prev), index(next)
	var out []change
	for k, b := range before {
		a := after[k]
		if a == nil {
			out = append(out, change{prev: b.objs})
			continue
		}
		if !slices.Equal(a.digests, b.digests) {
			out = append(out, change{prev: b.objs, next: a.objs})
		}
	}
	for k, a := range after {
		if before[k] == nil {
			out = append(out, change{next: a.objs})
		}
	}
	// A stable order keeps the logged reason the same for the same change.
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i].any(), out[j].any()
		return a.Kind+"/"+a.Namespace+"/"+a.Name < b.Kind+"/"+b.Namespace+"/"+b.Name
	})
	return out
}

// content is o without where it was read from.
func content(o source.Object) source.Object {
	o.File, o.Line, o.Lines = "", 0, nil
	return o
}

func decode(o source.Object, m proto.Message) error {
	if len(o.Spec) == 0 || string(o.Spec) == "null" {
		return nil
	}
	return protojson.Unmarshal(o.Spec, m)
}

// digest identifies a value's content.
func digest(v any) string {
	js, err := json.Marshal(v)
	if err != nil {
		js = fmt.Appendf(nil, "%#v", v)
	}
	h := sha256.Sum256(js)
	return hex.EncodeToString(h[:])
}

// providersDigest summarizes the mesh's rampartRego bundles as Compile will
// load them; a bundle that does not load is summarized by its error.
func providersDigest(mesh compile.Mesh) string {
	h := sha256.New()
	for _, p := range mesh.ExtensionProviders {
		r := p.RampartRego
		if r == nil {
			continue
		}
		data, err := authz.BundleTarball(r.Bundle, r.PublicKey, r.Algorithm)
		if err != nil {
			fmt.Fprintf(h, "%s\x00error\x00%s\x00", p.Name, err)
			continue
		}
		fmt.Fprintf(h, "%s\x00%d\x00", p.Name, len(data))
		h.Write(data)
	}
	return hex.EncodeToString(h.Sum(nil))
}
