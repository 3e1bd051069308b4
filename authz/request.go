package authz

import (
	"net/url"
	"strings"
	"sync"

	"github.com/open-policy-agent/opa/v1/ast"
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
	// Body is the start of the request's body, for CUSTOM providers that
	// include it in their check; or ReadBody reads it, when the first such
	// provider is asked (the sidecar's way: only requests those providers
	// check wait for their body). With neither, the request has no body.
	Body     *RequestBody
	ReadBody BodyReader
	// Auth is the validated JWT, if request authentication produced one.
	Auth     *authn.RequestAuth
	Workload Workload
	// BeforeAuthn, when set, is this request as the client sent it, before
	// request authentication: what CUSTOM policies and their providers see,
	// since Istio runs ext_authz ahead of jwt_authn. The request itself, with
	// authentication's header changes applied and Auth set, is what AUDIT, DENY
	// and ALLOW policies see. AfterAuthn builds it.
	BeforeAuthn *Request
	// authnRemove and authnSet are the header changes AfterAuthn made, so
	// they can be made again after a CUSTOM provider changes the headers.
	authnRemove []string
	authnSet    []Header
	// providerPath, set for a CUSTOM provider's call, is the :path Envoy
	// hands ext_authz: the normalized path with the query.
	providerPath string
	// checkBody, set for the call of a CUSTOM provider that includes the
	// body, is the body that call carries.
	checkBody *checkBody
}

// AfterAuthn returns r as authorization's AUDIT, DENY and ALLOW policies see it
// after request authentication (Envoy's jwt_authn runs before its RBAC
// filters): Auth set, every header named in remove dropped (names in any
// case), then set added in place of any header of the same name. So a client
// cannot forge a header that authentication writes (outputClaimToHeaders,
// outputPayloadToHeader), and a token header authentication removes is not
// there for policies to read. The result keeps r as its BeforeAuthn. With
// nothing to change, r itself is returned.
func (r *Request) AfterAuthn(auth *authn.RequestAuth, remove []string, set []Header) *Request {
	if auth == nil && len(remove) == 0 && len(set) == 0 {
		return r
	}
	out := *r
	out.BeforeAuthn, out.Auth = r, auth
	out.authnRemove, out.authnSet = remove, set
	out.Headers = make([]Header, 0, len(r.Headers)+len(set))
	for _, h := range r.Headers {
		if !namedIn(h.Name, remove) && !setIn(h.Name, set) {
			out.Headers = append(out.Headers, h)
		}
	}
	out.Headers = append(out.Headers, set...)
	return &out
}

func namedIn(name string, names []string) bool {
	for _, n := range names {
		if strings.EqualFold(n, name) {
			return true
		}
	}
	return false
}

func setIn(name string, set []Header) bool {
	for _, h := range set {
		if strings.EqualFold(h.Name, name) {
			return true
		}
	}
	return false
}

// headerObject joins repeated headers with "," under lower-case names, as Envoy's
// ext_authz request does.
func headerObject(hs []Header) ast.Object {
	names := make([]string, 0, len(hs))
	vals := make(map[string]string, len(hs))
	for _, h := range hs {
		n := strings.ToLower(h.Name)
		if prev, ok := vals[n]; ok {
			vals[n] = prev + "," + h.Value
		} else {
			vals[n] = h.Value
			names = append(names, n)
		}
	}
	items := make([][2]*ast.Term, len(names))
	for i, n := range names {
		items[i] = item(n, str(vals[n]))
	}
	return ast.NewObject(items...)
}

func str(s string) *ast.Term { return ast.StringTerm(s) }

func item(k string, v *ast.Term) [2]*ast.Term { return ast.Item(ast.StringTerm(k), v) }

func obj(items ...[2]*ast.Term) *ast.Term { return ast.NewTerm(ast.NewObject(items...)) }

// versionTerm is the same for every request; OPA never modifies input values.
var versionTerm = obj(item("encoding", str("protojson")), item("ext_authz", str("v3")))

// fastInput builds only what compiled policies read, as analyze found it: the
// fields of input.rampart, and those request headers the bundle names (all of
// them if it reads one the analysis cannot name). This is the per-request path;
// the key of the verdict cache (reads.key) must cover everything it builds.
func (r *Request) fastInput(path string, rd *reads, cc *connItemsCache) ast.Value {
	rampart := cc.get(r)
	if r.Protocol == ProtocolTCP {
		return ast.NewObject(item("rampart", obj(r.appendAuth(rampart)...)))
	}
	rampart = append(rampart, item("request", obj(item("method", str(r.Method)), item("host", str(strings.ToLower(r.fastHost()))), item("path", str(path)))))
	rampart = r.appendAuth(rampart)
	if !rd.allHeaders && len(rd.headers) == 0 {
		return ast.NewObject(item("rampart", obj(rampart...)))
	}
	var headers ast.Object
	if rd.allHeaders {
		headers = headerObject(r.withPseudo(path))
	} else {
		var sel []Header
		for _, h := range r.withPseudo(path) {
			if rd.headers[strings.ToLower(h.Name)] {
				sel = append(sel, h)
			}
		}
		headers = headerObject(sel)
	}
	return ast.NewObject(item("attributes", obj(item("request", obj(item("http", obj(item("headers", ast.NewTerm(headers)))))))), item("rampart", obj(rampart...)))
}

// fastHost is the request's host: Host, else the :authority or host header.
func (r *Request) fastHost() string {
	if r.Host != "" {
		return r.Host
	}
	for _, k := range []string{":authority", "host"} {
		for _, h := range r.Headers {
			if strings.EqualFold(h.Name, k) {
				return h.Value
			}
		}
	}
	return ""
}

// rampartItems is input.rampart without the request and auth objects; with
// workload, it has the workload too (the full document's; compiled policies
// resolve selectors at compile time and never read it).
func (r *Request) rampartItems(workload bool) [][2]*ast.Term {
	l7 := r.Protocol != ProtocolTCP
	remote := r.RemoteIP
	if remote == "" {
		remote = r.SourceIP
	}
	ns, identity, td := "", "", ""
	if id, err := spiffeid.FromString(r.SourcePrincipal); err == nil {
		td = id.TrustDomain().Name()
		ns, identity = peerNamespace(strings.Split(strings.TrimPrefix(id.Path(), "/"), "/"))
	}
	rampart := []([2]*ast.Term){
		item("protocol", str(r.Protocol)),
		item("l7", ast.BooleanTerm(l7)),
		item("mtls", ast.BooleanTerm(r.SourcePrincipal != "")),
		item("source", obj(item("principal", str(r.SourcePrincipal)), item("namespace", str(ns)), item("identity", str(identity)),
			item("trust_domain", str(td)), item("ip", str(r.SourceIP)))),
		item("remote_ip", str(remote)),
		item("destination", obj(item("ip", str(r.DestinationIP)), item("port", ast.IntNumberTerm(r.DestinationPort)))),
		item("sni", str(r.SNI)),
	}
	if workload {
		labels := make([][2]*ast.Term, 0, len(r.Workload.Labels))
		for k, v := range r.Workload.Labels {
			labels = append(labels, item(k, str(v)))
		}
		rampart = append(rampart, item("workload", obj(item("namespace", str(r.Workload.Namespace)), item("name", str(r.Workload.Name)), item("labels", obj(labels...)))))
	}
	return rampart
}

// input builds the full document, directly as an OPA value: the
// opa-envoy-plugin input (protojson of an ext_authz CheckRequest plus
// parsed_path and parsed_query) and Rampart's own "rampart" object, which
// compiled Istio policies read. CUSTOM Rego providers and the decision log get
// it.
func (r *Request) input(path, query string) ast.Value {
	l7 := r.Protocol != ProtocolTCP
	rampart := r.rampartItems(true)
	attrs := []([2]*ast.Term){
		item("source", obj(item("address", socketAddress(r.SourceIP, r.SourcePort)), item("principal", str(r.SourcePrincipal)))),
		item("destination", obj(item("address", socketAddress(r.DestinationIP, r.DestinationPort)))),
	}
	if r.SNI != "" {
		attrs = append(attrs, item("tlsSession", obj(item("sni", str(r.SNI)))))
	}
	top := []([2]*ast.Term){item("version", versionTerm)}
	if l7 {
		host := r.fastHost()
		headers := headerObject(r.checkBody.withPartialHeader(r.withPseudo(path)))
		// Envoy hands ext_authz the path after normalization, with the query.
		full := r.pathWithQuery(path, query)
		rampart = append(rampart, item("request", obj(item("method", str(r.Method)), item("host", str(strings.ToLower(host))), item("path", str(path)))))
		scheme := r.Scheme
		if scheme == "" {
			scheme = "http"
		}
		protocol := "HTTP/1.1"
		if r.Protocol == ProtocolGRPC {
			protocol = "HTTP/2"
		}
		http := append([][2]*ast.Term{
			item("id", str(r.ID)), item("method", str(r.Method)), item("host", str(host)), item("path", str(full)),
			item("scheme", str(scheme)), item("protocol", str(protocol)), item("headers", ast.NewTerm(headers)),
		}, r.checkBody.bodyItems()...)
		attrs = append(attrs, item("request", obj(item("http", obj(http...)))))
		pp, pq := parsedPathAndQuery(full)
		// A body that does not parse fails the provider's check before
		// this document is built (Engine.Decide); here it is null.
		pb, truncated, err := r.parsedBody(r.checkBody)
		if err != nil {
			pb = ast.NullTerm()
		}
		top = append(top, item("parsed_path", pp), item("parsed_query", pq), item("parsed_body", pb), item("truncated_body", ast.BooleanTerm(truncated)))
	}
	rampart = r.appendAuth(rampart)
	top = append(top, item("attributes", obj(attrs...)), item("rampart", obj(rampart...)))
	return ast.NewObject(top...)
}

// peerNamespace reads a peer's SPIFFE ID path (its segments) as Istio's
// regular expressions do: the namespace is the segment after the first "ns"
// that has another segment after it (namespaces: ".*/ns/<ns>/.*"), and the
// service account the segment after the first "sa" past it
// (serviceAccounts: "spiffe://.+/ns/<ns>/(.+/|)sa/<sa>(/.+)?"), so
// "ns/foo/cluster/c1/sa/bar" and "x/ns/foo/sa/bar/pod/p" are foo's bar too.
// identity is "ns/sa", or "" without a service account.
func peerNamespace(parts []string) (ns, identity string) {
	for i := 0; i+2 < len(parts); i++ {
		if parts[i] != "ns" {
			continue
		}
		ns = parts[i+1]
		for j := i + 2; j+1 < len(parts); j++ {
			if parts[j] == "sa" && parts[j+1] != "" {
				return ns, ns + "/" + parts[j+1]
			}
		}
		return ns, ""
	}
	return "", ""
}

// withPseudo is the request's headers as Envoy's header map holds them, which
// its RBAC header matchers and ext_authz see: the pseudo-headers :authority,
// :method and :path (the normalized path, with the query) first, then the
// rest; pseudo-headers the request lists itself are replaced.
func (r *Request) withPseudo(path string) []Header {
	p := path
	if _, q, ok := strings.Cut(r.Path, "?"); ok {
		p += "?" + q
	}
	hs := make([]Header, 0, len(r.Headers)+3)
	hs = append(hs, Header{Name: ":authority", Value: r.fastHost()}, Header{Name: ":method", Value: r.Method}, Header{Name: ":path", Value: p})
	for _, h := range r.Headers {
		if !strings.HasPrefix(h.Name, ":") {
			hs = append(hs, h)
		}
	}
	return hs
}

// appendAuth adds the validated JWT, if any, to the rampart object's items.
func (r *Request) appendAuth(rampart [][2]*ast.Term) [][2]*ast.Term {
	a := r.Auth
	if a == nil {
		return rampart
	}
	auds := make([]*ast.Term, len(a.Audiences))
	for i, x := range a.Audiences {
		auds[i] = str(x)
	}
	claims := ast.NewTerm(ast.NewObject())
	if a.Claims != nil {
		if v, err := ast.InterfaceToValue(a.Claims); err == nil {
			claims = ast.NewTerm(v)
		}
	}
	return append(rampart, item("auth", obj(item("principal", str(a.Principal)), item("issuer", str(a.Issuer)), item("subject", str(a.Subject)),
		item("audiences", ast.ArrayTerm(auds...)), item("presenter", str(a.Presenter)), item("claims", claims))))
}

func socketAddress(ip string, port int) *ast.Term {
	return obj(item("socketAddress", obj(item("address", str(ip)), item("portValue", ast.IntNumberTerm(port)))))
}

// pathWithQuery is the :path Envoy hands ext_authz: path (normalized) with
// the request's query, if it has one.
func (r *Request) pathWithQuery(path, query string) string {
	if strings.Contains(r.Path, "?") {
		return path + "?" + query
	}
	return path
}

// parsedPathAndQuery is opa-envoy-plugin's parsed_path and parsed_query, as
// its getParsedPathAndQuery computes them from the :path: url.Parse, then the
// decoded path without its leading slashes split at '/', and every valid
// query parameter's values. A path url.Parse refuses (opa-envoy-plugin
// fails the request; RegoProvider denies it) gets its segments decoded one
// by one, for the decision log.
func parsedPathAndQuery(full string) (path, query *ast.Term) {
	u, err := url.Parse(full)
	if err != nil {
		p, q, _ := strings.Cut(full, "?")
		return parsedPath(p), parsedQuery(q)
	}
	segs := strings.Split(strings.TrimLeft(u.Path, "/"), "/")
	out := make([]*ast.Term, len(segs))
	for i, s := range segs {
		out[i] = str(s)
	}
	return ast.ArrayTerm(out...), queryTerm(u.Query())
}

// parsedPath is the path's segments, each decoded on its own.
func parsedPath(p string) *ast.Term {
	segs := strings.Split(strings.TrimLeft(p, "/"), "/")
	out := make([]*ast.Term, len(segs))
	for i, s := range segs {
		if d, err := url.PathUnescape(s); err == nil {
			s = d
		}
		out[i] = str(s)
	}
	return ast.ArrayTerm(out...)
}

// parsedQuery is each query parameter's values. Like url.URL.Query (what
// opa-envoy-plugin uses), it keeps every parameter that parses and drops the
// others.
func parsedQuery(q string) *ast.Term {
	vals, _ := url.ParseQuery(q)
	return queryTerm(vals)
}

func queryTerm(vals url.Values) *ast.Term {
	items := make([][2]*ast.Term, 0, len(vals))
	for k, vs := range vals {
		arr := make([]*ast.Term, len(vs))
		for i, v := range vs {
			arr[i] = str(v)
		}
		items = append(items, item(k, ast.ArrayTerm(arr...)))
	}
	return obj(items...)
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

// connKey is what input.rampart holds of a request's connection (its peer,
// addresses and protocol): the same for every request on a connection.
type connKey struct {
	protocol, principal, sourceIP, remoteIP, destinationIP, sni string
	destinationPort                                             int
}

// connItemsCache keeps input.rampart's connection items (built from the peer
// principal, which is parsed for them) by connKey, so that the requests of a
// connection share them. The terms are never changed once built; evaluation
// only reads its input.
type connItemsCache struct {
	mu sync.Mutex
	m  map[connKey][][2]*ast.Term
}

// maxConnItems bounds connItemsCache; past it, it starts again.
const maxConnItems = 4096

// get returns a new slice (the caller appends to it) of r's connection items.
func (c *connItemsCache) get(r *Request) [][2]*ast.Term {
	if c == nil {
		return r.rampartItems(false)
	}
	k := connKey{r.Protocol, r.SourcePrincipal, r.SourceIP, r.RemoteIP, r.DestinationIP, r.SNI, r.DestinationPort}
	c.mu.Lock()
	items, ok := c.m[k]
	c.mu.Unlock()
	if !ok {
		items = r.rampartItems(false)
		c.mu.Lock()
		if c.m == nil || len(c.m) >= maxConnItems {
			c.m = make(map[connKey][][2]*ast.Term)
		}
		c.m[k] = items
		c.mu.Unlock()
	}
	out := make([][2]*ast.Term, len(items), len(items)+4)
	copy(out, items)
	return out
}
