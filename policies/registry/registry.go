// Package registry is the service registry the routing compiler reads: services
// with their hosts and ports, and the workloads behind them. In the local mesh it
// is built from Istio's own non-Kubernetes registry, ServiceEntry and
// WorkloadEntry; Kubernetes Services and EndpointSlices map onto the same types.
//
// It is control plane: it must not import proxy/..., ca/agent or ca/workloadapi.
package registry

import (
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"

	"github.com/rampart-mesh/rampart/policies/source"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	networking "istio.io/api/networking/v1alpha3"
)

// DefaultDomain is the cluster domain short names expand under.
const DefaultDomain = "cluster.local"

// Service is one host of a ServiceEntry (a ServiceEntry with several hosts
// yields one Service per host, as Istio does).
type Service struct {
	Host      string // a fully qualified name (or a wildcard for external services)
	Namespace string
	Name      string // the ServiceEntry's name
	Ports     []Port
	// Internal is MESH_INTERNAL (the default): endpoints run sidecars.
	Internal   bool
	Resolution string // STATIC, DNS, DNS_ROUND_ROBIN or NONE
	// Selector selects WorkloadEntries in Namespace; nil when the service lists
	// its endpoints inline.
	Selector  map[string]string
	Endpoints []Endpoint // inline endpoints (spec.endpoints)
	ExportTo  []string
	// SubjectAltNames the server certificates must carry (spec.subjectAltNames).
	SubjectAltNames []string
	Object          source.Object
}

// Port is a service port.
type Port struct {
	Number     uint32
	Name       string
	Protocol   string // upper case: HTTP, HTTP2, GRPC, TCP, TLS, HTTPS, ...
	TargetPort uint32
	// Unnamed: neither a protocol nor a name Istio reads one from. Istio
	// detects such a port's protocol per connection; its Protocol here is TCP.
	Unnamed bool
}

// Endpoint is one address serving a service.
type Endpoint struct {
	Address        string
	Ports          map[string]uint32 // by port name
	Labels         map[string]string
	ServiceAccount string
	Weight         uint32
	Locality       string
	// Mesh says the endpoint runs a sidecar (its traffic is mTLS).
	Mesh   bool
	Object source.Object // the WorkloadEntry (zero for inline endpoints)
}

// Issue is an object the registry could not use.
type Issue struct {
	Object  source.Object
	Field   string
	Message string
}

func (i Issue) String() string {
	return fmt.Sprintf("%s: %s: %s", i.Object.Where(), i.Field, i.Message)
}

// Registry is an immutable view of services and workloads.
type Registry struct {
	Services  []*Service
	Workloads []Endpoint // every WorkloadEntry
	Domain    string
}

// TLSModeLabel is Istio's label for whether a workload serves mTLS; a
// WorkloadEntry labelled "disabled" is outside the mesh.
const TLSModeLabel = "security.istio.io/tlsMode"

// Build reads every ServiceEntry and WorkloadEntry in objs. Objects without a
// namespace belong to defaultNS. Objects it cannot use are reported and left out.
func Build(objs []source.Object, defaultNS, domain string) (*Registry, []Issue) {
	if domain == "" {
		domain = DefaultDomain
	}
	r := &Registry{Domain: domain}
	var issues []Issue
	for _, o := range objs {
		if o.Group() != "networking.istio.io" {
			continue
		}
		if o.Namespace == "" {
			o.Namespace = defaultNS
		}
		switch o.Kind {
		case "WorkloadEntry":
			we := &networking.WorkloadEntry{}
			if err := unmarshal(o, we); err != nil {
				issues = append(issues, Issue{o, "spec", err.Error()})
				continue
			}
			ep, iss := endpointOf(o, we, true)
			issues = append(issues, iss...)
			if iss == nil {
				r.Workloads = append(r.Workloads, ep)
			}
		case "ServiceEntry":
			se := &networking.ServiceEntry{}
			if err := unmarshal(o, se); err != nil {
				issues = append(issues, Issue{o, "spec", err.Error()})
				continue
			}
			svcs, iss := servicesOf(o, se, domain)
			issues = append(issues, iss...)
			r.Services = append(r.Services, svcs...)
		}
	}
	sort.SliceStable(r.Services, func(i, j int) bool { return r.Services[i].Host < r.Services[j].Host })
	return r, issues
}

func unmarshal(o source.Object, m proto.Message) error {
	if len(o.Spec) == 0 || string(o.Spec) == "null" {
		return nil
	}
	return protojson.Unmarshal(o.Spec, m)
}

func endpointOf(o source.Object, we *networking.WorkloadEntry, fromObject bool) (Endpoint, []Issue) {
	ep := Endpoint{
		Address: we.GetAddress(), Ports: we.GetPorts(), ServiceAccount: we.GetServiceAccount(),
		Weight: we.GetWeight(), Locality: we.GetLocality(), Labels: map[string]string{}, Mesh: fromObject,
	}
	if fromObject {
		ep.Object = o
		for k, v := range o.Labels {
			ep.Labels[k] = v
		}
	}
	for k, v := range we.GetLabels() {
		ep.Labels[k] = v
	}
	if ep.Labels[TLSModeLabel] == "disabled" {
		ep.Mesh = false
	}
	if ep.ServiceAccount == "" {
		ep.ServiceAccount = "default"
	}
	if ep.Address == "" {
		return ep, []Issue{{o, "spec.address", "an address is required"}}
	}
	return ep, nil
}

func servicesOf(o source.Object, se *networking.ServiceEntry, domain string) ([]*Service, []Issue) {
	var issues []Issue
	if len(se.GetHosts()) == 0 {
		issues = append(issues, Issue{o, "spec.hosts", "at least one host is required"})
	}
	var ports []Port
	seen := map[uint32]bool{}
	for i, p := range se.GetPorts() {
		field := fmt.Sprintf("spec.ports[%d]", i)
		switch {
		case p.GetNumber() == 0 || p.GetNumber() > 65535:
			issues = append(issues, Issue{o, field + ".number", fmt.Sprintf("%d is not a port", p.GetNumber())})
			continue
		case seen[p.GetNumber()]:
			issues = append(issues, Issue{o, field + ".number", fmt.Sprintf("port %d is listed twice", p.GetNumber())})
			continue
		case p.GetName() == "":
			issues = append(issues, Issue{o, field + ".name", "a port name is required"})
			continue
		}
		seen[p.GetNumber()] = true
		proto, unnamed := strings.ToUpper(p.GetProtocol()), false
		if proto == "" {
			proto, unnamed = protocolFromName(p.GetName())
		}
		ports = append(ports, Port{Number: p.GetNumber(), Name: p.GetName(), Protocol: proto, TargetPort: p.GetTargetPort(), Unnamed: unnamed})
	}
	res := se.GetResolution().String()
	var eps []Endpoint
	for i, we := range se.GetEndpoints() {
		ep, iss := endpointOf(o, we, false)
		for j := range iss {
			iss[j].Field = fmt.Sprintf("spec.endpoints[%d].address", i)
		}
		issues = append(issues, iss...)
		if iss == nil {
			if res == "STATIC" {
				if _, err := netip.ParseAddr(ep.Address); err != nil && !strings.HasPrefix(ep.Address, "unix://") {
					issues = append(issues, Issue{o, fmt.Sprintf("spec.endpoints[%d].address", i), fmt.Sprintf("%q is not an IP address (resolution STATIC)", ep.Address)})
					continue
				}
			}
			eps = append(eps, ep)
		}
	}
	if se.GetWorkloadSelector() != nil && len(se.GetEndpoints()) > 0 {
		issues = append(issues, Issue{o, "spec.workloadSelector", "workloadSelector and endpoints cannot both be set"})
	}
	if len(issues) > 0 {
		return nil, issues
	}
	var out []*Service
	for _, h := range se.GetHosts() {
		s := &Service{
			Host: strings.ToLower(h), Namespace: o.Namespace, Name: o.Name, Ports: ports,
			Internal: se.GetLocation() != networking.ServiceEntry_MESH_EXTERNAL, Resolution: res,
			Endpoints: eps, ExportTo: se.GetExportTo(), SubjectAltNames: se.GetSubjectAltNames(), Object: o,
		}
		if ws := se.GetWorkloadSelector(); ws != nil {
			s.Selector = ws.GetLabels()
			if s.Selector == nil {
				s.Selector = map[string]string{}
			}
		}
		// Inline endpoints of an internal service run sidecars only if they say so.
		for i := range s.Endpoints {
			s.Endpoints[i].Mesh = s.Internal && s.Endpoints[i].Labels[TLSModeLabel] == "istio"
		}
		out = append(out, s)
	}
	return out, nil
}

// protocolFromName applies Istio's port naming convention: <protocol>[-<suffix>].
func protocolFromName(name string) (protocol string, unnamed bool) {
	p := strings.ToUpper(name)
	if i := strings.IndexByte(p, '-'); i >= 0 {
		p = p[:i]
	}
	switch p {
	case "HTTP", "HTTP2", "GRPC", "GRPC-WEB", "HTTPS", "TLS", "TCP", "MONGO", "MYSQL", "REDIS", "UDP":
		return p, false
	case "HTTP1":
		return "HTTP", false
	}
	// Istio detects the protocol of such a port. The outbound side treats it as
	// TCP (an HTTP request still reaches the destination, without L7 routing);
	// the inbound side detects it per connection (Port.Unnamed).
	return "TCP", true
}

// IsHTTP says whether a protocol is routed at layer 7.
func IsHTTP(protocol string) bool {
	switch protocol {
	case "HTTP", "HTTP2", "GRPC", "GRPC-WEB":
		return true
	}
	return false
}

// EndpointsOf returns the endpoints serving s: its inline endpoints, or the
// WorkloadEntries in its namespace its selector matches.
func (r *Registry) EndpointsOf(s *Service) []Endpoint {
	if s.Selector == nil {
		return s.Endpoints
	}
	var out []Endpoint
	for _, w := range r.Workloads {
		if w.Object.Namespace == s.Namespace && matches(s.Selector, w.Labels) {
			out = append(out, w)
		}
	}
	return out
}

// Service finds the service with this exact host.
func (r *Registry) Service(host string) *Service {
	host = strings.ToLower(host)
	i := sort.Search(len(r.Services), func(i int) bool { return r.Services[i].Host >= host })
	if i < len(r.Services) && r.Services[i].Host == host {
		return r.Services[i]
	}
	return nil
}

// VisibleTo lists the services a workload in namespace ns may see, by their
// exportTo ("*" or empty: everywhere; ".": their own namespace; a namespace name).
func (r *Registry) VisibleTo(ns string) []*Service {
	var out []*Service
	for _, s := range r.Services {
		if len(s.ExportTo) == 0 || slices.Contains(s.ExportTo, "*") ||
			(slices.Contains(s.ExportTo, ".") && s.Namespace == ns) || slices.Contains(s.ExportTo, ns) {
			out = append(out, s)
		}
	}
	return out
}

// Resolve turns a host as written in a VirtualService or DestinationRule in
// namespace ns into a fully qualified name: a short name ("reviews") becomes
// "reviews.<ns>.svc.<domain>"; a name with dots is taken as written.
func (r *Registry) Resolve(host, ns string) string {
	host = strings.ToLower(host)
	if host == "*" || strings.Contains(host, ".") {
		return host
	}
	return host + "." + ns + ".svc." + r.Domain
}

// Aliases lists the names a workload in namespace ns may use for a service host:
// the host itself, and for hosts under svc.<domain>, the shorter forms Kubernetes
// DNS answers to from that namespace.
func (r *Registry) Aliases(host, ns string) []string {
	out := []string{host}
	suffix := ".svc." + r.Domain
	if !strings.HasSuffix(host, suffix) {
		return out
	}
	base := strings.TrimSuffix(host, suffix) // name.namespace
	out = append(out, base+".svc", base)
	if name, svcNS, ok := strings.Cut(base, "."); ok && svcNS == ns {
		out = append(out, name)
	}
	return out
}

// Matches reports whether labels carry every key and value of selector.
func matches(selector, labels map[string]string) bool {
	for k, v := range selector {
		if got, ok := labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// Matches is matches for callers outside the package.
func Matches(selector, labels map[string]string) bool { return matches(selector, labels) }
