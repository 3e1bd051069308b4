package authz

import (
	"net/url"
	"strings"

	"github.com/rampart-mesh/rampart/authn"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Protocols of a request.
const (
	ProtocolHTTP = "http"
	ProtocolGRPC = "grpc"
	ProtocolTCP  = "tcp"
)

// Header is one request header; a name may repeat.
type Header struct{ Name, Value string }

// Workload is the workload the sidecar protects.
type Workload struct {
	Namespace string
	Name      string
	Labels    map[string]string
}

// Request is what the sidecar knows about one inbound request (or, for TCP, one
// connection) when it asks for a decision.
type Request struct {
	ID       string // x-request-id
	Protocol string // http, grpc or tcp
	// SourcePrincipal is the peer's SPIFFE ID from its verified certificate; empty
	// on plaintext.
	SourcePrincipal string
	SourceIP        string
	SourcePort      int
	RemoteIP        string // original client IP; defaults to SourceIP
	DestinationIP   string
	DestinationPort int
	SNI             string
	Method          string
	Host            string
	Path            string // raw, as received, with the query
	Scheme          string
	Headers         []Header
	// Auth is the validated JWT, if request authentication produced one.
	Auth     *authn.RequestAuth
	Workload Workload
}

// headerMap joins repeated headers with "," under lower-case names, as Envoy's
// ext_authz request does.
func headerMap(hs []Header) map[string]any {
	m := make(map[string]any, len(hs))
	for _, h := range hs {
		n := strings.ToLower(h.Name)
		if prev, ok := m[n]; ok {
			m[n] = prev.(string) + "," + h.Value
		} else {
			m[n] = h.Value
		}
	}
	return m
}

// input builds the document policies see: opa-envoy-plugin's (protojson of an
// ext_authz CheckRequest plus parsed_path and parsed_query) and Rampart's own
// "rampart" object, which compiled Istio policies read.
func (r *Request) input(path, query string) map[string]any {
	l7 := r.Protocol != ProtocolTCP
	remote := r.RemoteIP
	if remote == "" {
		remote = r.SourceIP
	}
	src := map[string]any{"principal": r.SourcePrincipal, "namespace": "", "identity": "", "trust_domain": "", "ip": r.SourceIP}
	if id, err := spiffeid.FromString(r.SourcePrincipal); err == nil {
		src["trust_domain"] = id.TrustDomain().Name()
		parts := strings.Split(strings.TrimPrefix(id.Path(), "/"), "/")
		for i := 0; i+1 < len(parts); i += 2 {
			if parts[i] == "ns" {
				src["namespace"] = parts[i+1]
			}
		}
		if len(parts) == 4 && parts[0] == "ns" && parts[2] == "sa" {
			src["identity"] = parts[1] + "/" + parts[3]
		}
	}
	labels := make(map[string]any, len(r.Workload.Labels))
	for k, v := range r.Workload.Labels {
		labels[k] = v
	}
	rampart := map[string]any{
		"protocol":    r.Protocol,
		"l7":          l7,
		"mtls":        r.SourcePrincipal != "",
		"source":      src,
		"remote_ip":   remote,
		"destination": map[string]any{"ip": r.DestinationIP, "port": r.DestinationPort},
		"sni":         r.SNI,
		"workload":    map[string]any{"namespace": r.Workload.Namespace, "name": r.Workload.Name, "labels": labels},
	}
	attrs := map[string]any{
		"source":      map[string]any{"address": socketAddress(r.SourceIP, r.SourcePort), "principal": r.SourcePrincipal},
		"destination": map[string]any{"address": socketAddress(r.DestinationIP, r.DestinationPort)},
	}
	if r.SNI != "" {
		attrs["tlsSession"] = map[string]any{"sni": r.SNI}
	}
	in := map[string]any{
		"attributes": attrs,
		"version":    map[string]any{"encoding": "protojson", "ext_authz": "v3"},
		"rampart":    rampart,
	}
	if l7 {
		headers := headerMap(r.Headers)
		host := r.Host
		if host == "" {
			if h, ok := headers[":authority"].(string); ok {
				host = h
			} else if h, ok := headers["host"].(string); ok {
				host = h
			}
		}
		rampart["request"] = map[string]any{"method": r.Method, "host": strings.ToLower(host), "path": path}
		scheme := r.Scheme
		if scheme == "" {
			scheme = "http"
		}
		protocol := "HTTP/1.1"
		if r.Protocol == ProtocolGRPC {
			protocol = "HTTP/2"
		}
		attrs["request"] = map[string]any{"http": map[string]any{
			"id": r.ID, "method": r.Method, "host": host, "path": r.Path, "scheme": scheme,
			"protocol": protocol, "headers": headers,
		}}
		in["parsed_path"] = parsedPath(path)
		in["parsed_query"] = parsedQuery(query)
		in["truncated_body"] = false
	}
	if a := r.Auth; a != nil {
		auds := make([]any, len(a.Audiences))
		for i, x := range a.Audiences {
			auds[i] = x
		}
		claims := a.Claims
		if claims == nil {
			claims = map[string]any{}
		}
		rampart["auth"] = map[string]any{
			"principal": a.Principal, "issuer": a.Issuer, "subject": a.Subject,
			"audiences": auds, "presenter": a.Presenter, "claims": claims,
		}
	}
	return in
}

func socketAddress(ip string, port int) map[string]any {
	return map[string]any{"socketAddress": map[string]any{"address": ip, "portValue": port}}
}

// parsedPath is opa-envoy-plugin's parsed_path: the path's segments, decoded.
func parsedPath(p string) []any {
	p = strings.TrimPrefix(p, "/")
	if p == "" {
		return []any{""}
	}
	segs := strings.Split(p, "/")
	out := make([]any, len(segs))
	for i, s := range segs {
		if d, err := url.PathUnescape(s); err == nil {
			s = d
		}
		out[i] = s
	}
	return out
}

// parsedQuery is opa-envoy-plugin's parsed_query: each parameter's values.
func parsedQuery(q string) map[string]any {
	out := map[string]any{}
	vals, err := url.ParseQuery(q)
	if err != nil {
		return out
	}
	for k, vs := range vals {
		arr := make([]any, len(vs))
		for i, v := range vs {
			arr[i] = v
		}
		out[k] = arr
	}
	return out
}

// validMethod: Envoy refuses a method that is not an upper-case token.
func validMethod(m string) bool {
	if m == "" {
		return false
	}
	for i := 0; i < len(m); i++ {
		c := m[i]
		if !('A' <= c && c <= 'Z' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

func validHeaderName(n string) bool {
	if n == "" {
		return false
	}
	for i := 0; i < len(n); i++ {
		if c := n[i]; c <= ' ' || c == 0x7f || c == ':' && i > 0 {
			return false
		}
	}
	return true
}
