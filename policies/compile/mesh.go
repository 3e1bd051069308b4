package compile

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/rampart-mesh/rampart/authz"
	"google.golang.org/protobuf/encoding/protojson"
	meshconfig "istio.io/api/mesh/v1alpha1"
	"sigs.k8s.io/yaml"
)

// Mesh is the subset of Istio's MeshConfig that policy compilation reads, plus
// Rampart's in-process Rego extension provider.
type Mesh struct {
	RootNamespace      string              `json:"rootNamespace,omitempty"`
	TrustDomain        string              `json:"trustDomain,omitempty"`
	TrustDomainAliases []string            `json:"trustDomainAliases,omitempty"`
	PathNormalization  *PathNormalization  `json:"pathNormalization,omitempty"`
	ExtensionProviders []ExtensionProvider `json:"extensionProviders,omitempty"`
	// H2UpgradePolicy is MeshConfig's h2UpgradePolicy: UPGRADE sends HTTP/1.1
	// between sidecars as multiplexed HTTP/2; DO_NOT_UPGRADE (the default, as
	// Istio's) keeps HTTP/1.1. A DestinationRule's connectionPool.http
	// h2UpgradePolicy overrides it per destination.
	H2UpgradePolicy string `json:"h2UpgradePolicy,omitempty"`
}

// PathNormalization is MeshConfig.pathNormalization.
type PathNormalization struct {
	Normalization string `json:"normalization,omitempty"`
}

// ExtensionProvider is one MeshConfig.extensionProviders entry. Only the
// authorization kinds are interpreted; others (tracing, logging) are accepted and
// ignored.
type ExtensionProvider struct {
	Name              string        `json:"name"`
	EnvoyExtAuthzGrpc *ExtAuthzGRPC `json:"envoyExtAuthzGrpc,omitempty"`
	EnvoyExtAuthzHTTP *ExtAuthzHTTP `json:"envoyExtAuthzHttp,omitempty"`
	RampartRego       *RegoProvider `json:"rampartRego,omitempty"`
}

// ExtAuthzGRPC is an external Envoy ext_authz gRPC server.
type ExtAuthzGRPC struct {
	Service       string `json:"service"`
	Port          int    `json:"port"`
	Timeout       string `json:"timeout,omitempty"`
	FailOpen      bool   `json:"failOpen,omitempty"`
	StatusOnError string `json:"statusOnError,omitempty"`
	// IncludeRequestBodyInCheck sends the request body with each check.
	IncludeRequestBodyInCheck *authz.BodyConfig `json:"includeRequestBodyInCheck,omitempty"`
}

// Host is the server's hostname: Service without the namespace Istio's
// [<Namespace>/]<Hostname> form may give it.
func (g ExtAuthzGRPC) Host() string {
	if _, host, ok := strings.Cut(g.Service, "/"); ok {
		return host
	}
	return g.Service
}

// ExtAuthzHTTP is an external Envoy ext_authz HTTP server.
type ExtAuthzHTTP struct {
	Service                         string            `json:"service"`
	Port                            int               `json:"port"`
	Timeout                         string            `json:"timeout,omitempty"`
	FailOpen                        bool              `json:"failOpen,omitempty"`
	StatusOnError                   string            `json:"statusOnError,omitempty"`
	PathPrefix                      string            `json:"pathPrefix,omitempty"`
	IncludeRequestHeadersInCheck    []string          `json:"includeRequestHeadersInCheck,omitempty"`
	IncludeAdditionalHeadersInCheck map[string]string `json:"includeAdditionalHeadersInCheck,omitempty"`
	HeadersToUpstreamOnAllow        []string          `json:"headersToUpstreamOnAllow,omitempty"`
	HeadersToDownstreamOnAllow      []string          `json:"headersToDownstreamOnAllow,omitempty"`
	HeadersToDownstreamOnDeny       []string          `json:"headersToDownstreamOnDeny,omitempty"`
	IncludeRequestBodyInCheck       *authz.BodyConfig `json:"includeRequestBodyInCheck,omitempty"`
}

// Host is the server's hostname: Service without the namespace Istio's
// [<Namespace>/]<Hostname> form may give it.
func (h ExtAuthzHTTP) Host() string {
	if _, host, ok := strings.Cut(h.Service, "/"); ok {
		return host
	}
	return h.Service
}

// RegoProvider evaluates a user OPA bundle in process.
type RegoProvider struct {
	// Bundle is a directory or .tar.gz in OPA's bundle format.
	Bundle string `json:"bundle"`
	// Query is the decision path, default envoy/authz/allow (opa-envoy-plugin's).
	Query string `json:"query,omitempty"`
	// PublicKey, if set, is a PEM file (or HMAC secret file) that must have signed the bundle.
	PublicKey string `json:"publicKey,omitempty"`
	// Algorithm of the signing key, default RS256.
	Algorithm string `json:"algorithm,omitempty"`
	// IncludeRequestBodyInCheck puts the request body in the input
	// (attributes.request.http.body or raw_body, parsed_body for JSON), as
	// Envoy's ext_authz with_request_body does for opa-envoy-plugin.
	IncludeRequestBodyInCheck *authz.BodyConfig `json:"includeRequestBodyInCheck,omitempty"`
}

// Defaults.
const (
	DefaultRootNamespace = "rampart-system"
	DefaultTrustDomain   = "cluster.local"
	DefaultRegoQuery     = "envoy/authz/allow"
)

// Normalization modes (MeshConfig.pathNormalization.normalization).
var normalizations = []string{"NONE", "BASE", "MERGE_SLASHES", "DECODE_AND_MERGE_SLASHES", "DEFAULT"}

// ParseMesh decodes a MeshConfig YAML with Istio's own MeshConfig type, strictly
// (an unknown field is an error, as istiod would report), and fills defaults.
// Rampart's rampartRego provider kind is taken out before Istio's decoder sees it.
func ParseMesh(data []byte) (Mesh, error) {
	var m Mesh
	js, err := yaml.YAMLToJSON(data)
	if err != nil {
		return m, fmt.Errorf("mesh config: %w", err)
	}
	trimmed := bytes.TrimSpace(js)
	if len(trimmed) == 0 || string(trimmed) == "null" {
		return m.WithDefaults()
	}
	var doc map[string]json.RawMessage
	if err := json.Unmarshal(js, &doc); err != nil {
		return m, fmt.Errorf("mesh config: want a mapping: %w", err)
	}
	rego := map[string]*RegoProvider{}
	if raw, ok := doc["extensionProviders"]; ok {
		var provs []map[string]json.RawMessage
		if err := json.Unmarshal(raw, &provs); err != nil {
			return m, fmt.Errorf("mesh config: extensionProviders: %w", err)
		}
		for i, p := range provs {
			r, ok := p["rampartRego"]
			if !ok {
				continue
			}
			var name string
			_ = json.Unmarshal(p["name"], &name)
			rp := &RegoProvider{}
			dec := json.NewDecoder(bytes.NewReader(r))
			dec.DisallowUnknownFields()
			if err := dec.Decode(rp); err != nil {
				return m, fmt.Errorf("mesh config: extensionProviders[%d].rampartRego: %s", i, strings.TrimPrefix(err.Error(), "json: "))
			}
			rego[name] = rp
			delete(p, "rampartRego")
		}
		doc["extensionProviders"], _ = json.Marshal(provs)
		js, _ = json.Marshal(doc)
	}
	var mc meshconfig.MeshConfig
	if err := protojson.Unmarshal(js, &mc); err != nil {
		return m, fmt.Errorf("mesh config: %v", err)
	}
	m.RootNamespace = mc.GetRootNamespace()
	m.TrustDomain = mc.GetTrustDomain()
	m.TrustDomainAliases = mc.GetTrustDomainAliases()
	m.H2UpgradePolicy = mc.GetH2UpgradePolicy().String()
	if pn := mc.GetPathNormalization(); pn != nil {
		m.PathNormalization = &PathNormalization{Normalization: pn.GetNormalization().String()}
	}
	for i, p := range mc.GetExtensionProviders() {
		ep := ExtensionProvider{Name: p.GetName(), RampartRego: rego[p.GetName()]}
		if g := p.GetEnvoyExtAuthzGrpc(); g != nil {
			ep.EnvoyExtAuthzGrpc = &ExtAuthzGRPC{Service: g.GetService(), Port: int(g.GetPort()), FailOpen: g.GetFailOpen(), StatusOnError: g.GetStatusOnError()}
			if b := g.GetIncludeRequestBodyInCheck(); b != nil {
				bc := &authz.BodyConfig{MaxRequestBytes: int(b.GetMaxRequestBytes()), AllowPartialMessage: b.GetAllowPartialMessage(), PackAsBytes: b.GetPackAsBytes()}
				if err := bc.Check(); err != nil {
					return m, fmt.Errorf("mesh config: extensionProviders[%d] (%s): envoyExtAuthzGrpc.%v", i, p.GetName(), err)
				}
				ep.EnvoyExtAuthzGrpc.IncludeRequestBodyInCheck = bc
			}
			if g.GetTimeout() != nil {
				ep.EnvoyExtAuthzGrpc.Timeout = g.GetTimeout().AsDuration().String()
			}
		}
		if h := p.GetEnvoyExtAuthzHttp(); h != nil {
			ep.EnvoyExtAuthzHTTP = &ExtAuthzHTTP{Service: h.GetService(), Port: int(h.GetPort()), FailOpen: h.GetFailOpen(), StatusOnError: h.GetStatusOnError(), PathPrefix: h.GetPathPrefix(),
				//lint:ignore SA1019 includeHeadersInCheck is Istio's deprecated name for includeRequestHeadersInCheck, still in configs
				IncludeRequestHeadersInCheck:    append(slices.Clone(h.GetIncludeRequestHeadersInCheck()), h.GetIncludeHeadersInCheck()...),
				IncludeAdditionalHeadersInCheck: h.GetIncludeAdditionalHeadersInCheck(),
				HeadersToUpstreamOnAllow:        h.GetHeadersToUpstreamOnAllow(),
				HeadersToDownstreamOnAllow:      h.GetHeadersToDownstreamOnAllow(),
				HeadersToDownstreamOnDeny:       h.GetHeadersToDownstreamOnDeny(),
			}
			if b := h.GetIncludeRequestBodyInCheck(); b != nil {
				bc := &authz.BodyConfig{MaxRequestBytes: int(b.GetMaxRequestBytes()), AllowPartialMessage: b.GetAllowPartialMessage(), PackAsBytes: b.GetPackAsBytes()}
				if err := bc.Check(); err != nil {
					return m, fmt.Errorf("mesh config: extensionProviders[%d] (%s): envoyExtAuthzHttp.%v", i, p.GetName(), err)
				}
				ep.EnvoyExtAuthzHTTP.IncludeRequestBodyInCheck = bc
			}
			if h.GetTimeout() != nil {
				ep.EnvoyExtAuthzHTTP.Timeout = h.GetTimeout().AsDuration().String()
			}
		}
		m.ExtensionProviders = append(m.ExtensionProviders, ep)
	}
	return m.WithDefaults()
}

// WithDefaults fills unset fields and validates the values compilation uses.
func (m Mesh) WithDefaults() (Mesh, error) {
	if m.RootNamespace == "" {
		m.RootNamespace = DefaultRootNamespace
	}
	if m.TrustDomain == "" {
		m.TrustDomain = DefaultTrustDomain
	}
	if m.PathNormalization == nil || m.PathNormalization.Normalization == "" || m.PathNormalization.Normalization == "DEFAULT" {
		m.PathNormalization = &PathNormalization{Normalization: "BASE"}
	}
	switch m.H2UpgradePolicy {
	case "", "DO_NOT_UPGRADE", "UPGRADE":
	default:
		return m, fmt.Errorf("mesh config: h2UpgradePolicy %q is not UPGRADE or DO_NOT_UPGRADE", m.H2UpgradePolicy)
	}
	ok := false
	for _, n := range normalizations {
		ok = ok || n == m.PathNormalization.Normalization
	}
	if !ok {
		return m, fmt.Errorf("mesh config: pathNormalization.normalization %q is not one of %s", m.PathNormalization.Normalization, strings.Join(normalizations, ", "))
	}
	seen := map[string]bool{}
	for i, p := range m.ExtensionProviders {
		if p.Name == "" {
			return m, fmt.Errorf("mesh config: extensionProviders[%d]: name is required", i)
		}
		if seen[p.Name] {
			return m, fmt.Errorf("mesh config: extensionProviders[%d]: duplicate name %q", i, p.Name)
		}
		seen[p.Name] = true
		if r := p.RampartRego; r != nil {
			if r.Bundle == "" {
				return m, fmt.Errorf("mesh config: extensionProviders[%d] (%s): rampartRego.bundle is required", i, p.Name)
			}
			if r.Query == "" {
				r.Query = DefaultRegoQuery
			}
			if b := r.IncludeRequestBodyInCheck; b != nil {
				if err := b.Check(); err != nil {
					return m, fmt.Errorf("mesh config: extensionProviders[%d] (%s): rampartRego.%v", i, p.Name, err)
				}
			}
		}
		if g := p.EnvoyExtAuthzGrpc; g != nil {
			if _, err := authz.ParseStatusOnError(g.StatusOnError); err != nil {
				return m, fmt.Errorf("mesh config: extensionProviders[%d] (%s): envoyExtAuthzGrpc.statusOnError: %v", i, p.Name, err)
			}
			if ns, host, ok := strings.Cut(g.Service, "/"); ok && (ns == "" || host == "" || strings.Contains(host, "/")) {
				return m, fmt.Errorf("mesh config: extensionProviders[%d] (%s): envoyExtAuthzGrpc.service %q: want [<Namespace>/]<Hostname>", i, p.Name, g.Service)
			}
		}
		if h := p.EnvoyExtAuthzHTTP; h != nil {
			if _, err := authz.ParseStatusOnError(h.StatusOnError); err != nil {
				return m, fmt.Errorf("mesh config: extensionProviders[%d] (%s): envoyExtAuthzHttp.statusOnError: %v", i, p.Name, err)
			}
			if ns, host, ok := strings.Cut(h.Service, "/"); ok && (ns == "" || host == "" || strings.Contains(host, "/")) {
				return m, fmt.Errorf("mesh config: extensionProviders[%d] (%s): envoyExtAuthzHttp.service %q: want [<Namespace>/]<Hostname>", i, p.Name, h.Service)
			}
			if h.PathPrefix != "" && (!strings.HasPrefix(h.PathPrefix, "/") || strings.HasPrefix(h.PathPrefix, "//") ||
				strings.ContainsFunc(h.PathPrefix, func(r rune) bool { return r <= ' ' || r == 0x7f || r == '?' || r == '#' })) {
				return m, fmt.Errorf("mesh config: extensionProviders[%d] (%s): envoyExtAuthzHttp.pathPrefix %q: want a path starting with one /, without spaces, control characters, ? or #", i, p.Name, h.PathPrefix)
			}
			for k, v := range h.IncludeAdditionalHeadersInCheck {
				if err := authz.CheckProviderHeader(strings.ToLower(k), v); err != nil {
					return m, fmt.Errorf("mesh config: extensionProviders[%d] (%s): envoyExtAuthzHttp.includeAdditionalHeadersInCheck: %v", i, p.Name, err)
				}
			}
		}
		for _, t := range []string{timeoutOf(p)} {
			if t != "" {
				if _, err := time.ParseDuration(t); err != nil {
					return m, fmt.Errorf("mesh config: extensionProviders[%d] (%s): timeout %q: %v", i, p.Name, t, err)
				}
			}
		}
	}
	return m, nil
}

func timeoutOf(p ExtensionProvider) string {
	switch {
	case p.EnvoyExtAuthzGrpc != nil:
		return p.EnvoyExtAuthzGrpc.Timeout
	case p.EnvoyExtAuthzHTTP != nil:
		return p.EnvoyExtAuthzHTTP.Timeout
	}
	return ""
}

// Provider returns the authorization provider called name, if the mesh defines one.
func (m Mesh) Provider(name string) (ExtensionProvider, bool) {
	for _, p := range m.ExtensionProviders {
		if p.Name == name && (p.EnvoyExtAuthzGrpc != nil || p.EnvoyExtAuthzHTTP != nil || p.RampartRego != nil) {
			return p, true
		}
	}
	return ExtensionProvider{}, false
}

// TrustDomains returns the trust domain followed by its aliases.
func (m Mesh) TrustDomains() []string {
	return append([]string{m.TrustDomain}, m.TrustDomainAliases...)
}
