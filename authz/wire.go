package authz

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	xdstype "github.com/cncf/xds/go/xds/type/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
)

// The wire contract for a workload's compiled policy: an xDS ECDS resource (a
// TypedExtensionConfig) named ExtensionName whose typed_config is an
// xds.type.v3.TypedStruct with type URL BundleTypeURL.
const (
	ExtensionName = "rampart.authz"
	BundleTypeURL = "type.rampart.dev/rampart.authz.v1.Bundle"
)

// WireBundle is what the control plane compiles for one workload: the Rego
// modules (policy and library), the RequestAuthentication rules and the
// PeerAuthentication modes.
type WireBundle struct {
	Revision string            `json:"revision"`
	Modules  map[string]string `json:"modules"`
	JWTRules json.RawMessage   `json:"jwtRules"`
	Peer     json.RawMessage   `json:"peer"`
	// Providers are the mesh's Rego CUSTOM providers (rampartRego), by name.
	Providers map[string]WireProvider `json:"providers,omitempty"`
	// RateLimits are the local rate limits (RateLimitPolicy) that apply to the
	// workload, in the order they are checked.
	RateLimits []RateLimit `json:"rateLimits,omitempty"`
	// PathNormalization is the mesh's pathNormalization (NONE, BASE,
	// MERGE_SLASHES, DECODE_AND_MERGE_SLASHES); empty means Istio's default.
	PathNormalization string `json:"pathNormalization,omitempty"`
}

// WireProvider is one Rego CUSTOM provider: its bundle (an OPA bundle
// tarball, its signature already checked by the control plane) and query.
type WireProvider struct {
	Query  string `json:"query,omitempty"`
	Bundle []byte `json:"bundle,omitempty"`
	// ExtAuthzGRPC, instead of a bundle, is an Envoy ext_authz gRPC server
	// (Istio's envoyExtAuthzGrpc provider).
	ExtAuthzGRPC *WireExtAuthz `json:"extAuthzGrpc,omitempty"`
	// ExtAuthzHTTP is an Envoy ext_authz HTTP server (Istio's
	// envoyExtAuthzHttp provider).
	ExtAuthzHTTP *WireExtAuthzHTTP `json:"extAuthzHttp,omitempty"`
	// Body, when set, puts the request body in the provider's checks.
	Body *BodyConfig `json:"body,omitempty"`
}

// WireExtAuthzHTTP is an ext_authz HTTP server to ask, with Istio's
// envoyExtAuthzHttp settings.
type WireExtAuthzHTTP struct {
	Target                          string            `json:"target"` // host:port
	PathPrefix                      string            `json:"pathPrefix,omitempty"`
	Timeout                         string            `json:"timeout,omitempty"`
	FailOpen                        bool              `json:"failOpen,omitempty"`
	StatusOnError                   int               `json:"statusOnError,omitempty"`
	IncludeRequestHeadersInCheck    []string          `json:"includeRequestHeadersInCheck,omitempty"`
	IncludeAdditionalHeadersInCheck map[string]string `json:"includeAdditionalHeadersInCheck,omitempty"`
	HeadersToUpstreamOnAllow        []string          `json:"headersToUpstreamOnAllow,omitempty"`
	HeadersToDownstreamOnAllow      []string          `json:"headersToDownstreamOnAllow,omitempty"`
	HeadersToDownstreamOnDeny       []string          `json:"headersToDownstreamOnDeny,omitempty"`
}

// WireExtAuthz is an ext_authz gRPC server to ask.
type WireExtAuthz struct {
	Target        string `json:"target"` // host:port
	Timeout       string `json:"timeout,omitempty"`
	FailOpen      bool   `json:"failOpen,omitempty"`
	StatusOnError int    `json:"statusOnError,omitempty"`
}

// extAuthzConns are the connections to ext_authz servers, by target, shared
// by every bundle that names them (a new bundle does not redial).
var extAuthzConns sync.Map // string → *grpc.ClientConn

// LoadProviders builds the providers b carries; an error names the provider.
func (b WireBundle) LoadProviders(ctx context.Context) (map[string]Provider, error) {
	if len(b.Providers) == 0 {
		return nil, nil
	}
	out := make(map[string]Provider, len(b.Providers))
	for name, p := range b.Providers {
		if p.Body != nil {
			if err := p.Body.Check(); err != nil {
				return nil, fmt.Errorf("provider %s: %w", name, err)
			}
		}
		if x := p.ExtAuthzHTTP; x != nil {
			timeout, err := wireTimeout(x.Timeout)
			if err != nil {
				return nil, fmt.Errorf("provider %s: %w", name, err)
			}
			hp, err := NewExtAuthzHTTPProvider(ExtAuthzHTTPConfig{Target: x.Target, PathPrefix: x.PathPrefix, Timeout: timeout, FailOpen: x.FailOpen,
				StatusOnError: x.StatusOnError, IncludeRequestHeadersInCheck: x.IncludeRequestHeadersInCheck, IncludeAdditionalHeadersInCheck: x.IncludeAdditionalHeadersInCheck,
				HeadersToUpstreamOnAllow: x.HeadersToUpstreamOnAllow, HeadersToDownstreamOnAllow: x.HeadersToDownstreamOnAllow, HeadersToDownstreamOnDeny: x.HeadersToDownstreamOnDeny})
			if err != nil {
				return nil, fmt.Errorf("provider %s: %w", name, err)
			}
			out[name] = WithBodyIf(hp, p.Body)
			continue
		}
		if x := p.ExtAuthzGRPC; x != nil {
			timeout, err := wireTimeout(x.Timeout)
			if err != nil {
				return nil, fmt.Errorf("provider %s: %w", name, err)
			}
			// Istio's service is [<Namespace>/]<Hostname>; the control plane
			// drops the namespace. A target that still has one would never
			// resolve, and with failOpen allow everything.
			if strings.Contains(x.Target, "/") {
				return nil, fmt.Errorf("provider %s: target %q: want host:port, without a namespace", name, x.Target)
			}
			conn, ok := extAuthzConns.Load(x.Target)
			if !ok {
				c, err := grpc.NewClient(x.Target, grpc.WithTransportCredentials(insecure.NewCredentials()))
				if err != nil {
					return nil, fmt.Errorf("provider %s: %w", name, err)
				}
				conn, _ = extAuthzConns.LoadOrStore(x.Target, c)
			}
			ep, err := NewExtAuthzProvider(ExtAuthzConfig{Conn: conn.(*grpc.ClientConn), Timeout: timeout, FailOpen: x.FailOpen, StatusOnError: x.StatusOnError})
			if err != nil {
				return nil, fmt.Errorf("provider %s: %w", name, err)
			}
			out[name] = WithBodyIf(ep, p.Body)
			continue
		}
		rp, err := NewRegoProviderFromTarball(ctx, name, p.Query, p.Bundle)
		if err != nil {
			return nil, err
		}
		out[name] = WithBodyIf(rp, p.Body)
	}
	return out, nil
}

// wireTimeout reads a provider's timeout ("" means the provider's default).
func wireTimeout(s string) (time.Duration, error) {
	if s == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("timeout %q: %w", s, err)
	}
	return d, nil
}

// Extension encodes b as the ECDS resource.
func (b WireBundle) Extension() (*corev3.TypedExtensionConfig, error) {
	js, err := json.Marshal(b)
	if err != nil {
		return nil, err
	}
	var m map[string]any
	if err := json.Unmarshal(js, &m); err != nil {
		return nil, err
	}
	st, err := structpb.NewStruct(m)
	if err != nil {
		return nil, err
	}
	any, err := anypb.New(&xdstype.TypedStruct{TypeUrl: BundleTypeURL, Value: st})
	if err != nil {
		return nil, err
	}
	return &corev3.TypedExtensionConfig{Name: ExtensionName, TypedConfig: any}, nil
}

// WireBundleFrom decodes an ECDS resource. Anything that is not exactly the
// expected shape is an error, and nothing of it is used.
func WireBundleFrom(res *anypb.Any) (WireBundle, error) {
	var b WireBundle
	var ext corev3.TypedExtensionConfig
	if err := res.UnmarshalTo(&ext); err != nil {
		return b, fmt.Errorf("resource is not a TypedExtensionConfig: %w", err)
	}
	if ext.GetName() != ExtensionName {
		return b, fmt.Errorf("extension %q, want %q", ext.GetName(), ExtensionName)
	}
	var ts xdstype.TypedStruct
	if ext.GetTypedConfig() == nil {
		return b, errors.New("extension has no typed_config")
	}
	if err := ext.GetTypedConfig().UnmarshalTo(&ts); err != nil {
		return b, fmt.Errorf("typed_config is not a TypedStruct: %w", err)
	}
	if ts.GetTypeUrl() != BundleTypeURL {
		return b, fmt.Errorf("typed_config type %q, want %q", ts.GetTypeUrl(), BundleTypeURL)
	}
	js, err := ts.GetValue().MarshalJSON()
	if err != nil {
		return b, err
	}
	if err := DecodeWire(js, &b); err != nil {
		return b, fmt.Errorf("bundle: %w", err)
	}
	if b.Revision == "" || len(b.Modules) == 0 {
		return b, errors.New("bundle without revision or modules")
	}
	return b, nil
}

// Bundle is the engine bundle of a wire bundle.
func (b WireBundle) Bundle() Bundle {
	return Bundle{Revision: b.Revision, Modules: b.Modules, PathNormalization: b.PathNormalization}
}

// DecodeWire decodes a part of the wire bundle strictly: a field this
// sidecar does not know is an error, not skipped. A newer control plane's
// field may carry policy (a provider's body setting, say); enforced without
// it, the bundle would allow more than it says, so the sidecar refuses it
// (NACK) and the last good bundle stays.
func DecodeWire(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		if strings.HasPrefix(err.Error(), "json: unknown field") {
			return fmt.Errorf("%s: this sidecar does not know it (is the control plane newer? upgrade the sidecar)", strings.TrimPrefix(err.Error(), "json: "))
		}
		return err
	}
	if dec.More() {
		return errors.New("data after the JSON value")
	}
	return nil
}
