package authz

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/bundle"
	"github.com/open-policy-agent/opa/v1/rego"
	"github.com/rampart-mesh/rampart/internal/opacancel"
)

// RegoProviderConfig configures an in-process Rego CUSTOM provider.
type RegoProviderConfig struct {
	// Bundle is a directory or .tar.gz in OPA's bundle format.
	Bundle string
	// Query is the decision path, e.g. envoy/authz/allow (opa-envoy-plugin's default).
	Query string
	// PublicKey, when set, is a file with the key that must have signed the bundle
	// (PEM public key, or the secret for HS256). Unsigned or tampered bundles are refused.
	PublicKey string
	// Algorithm of the signing key. Default RS256.
	Algorithm string
}

// RegoProvider evaluates a user's OPA bundle, written for opa-envoy-plugin, in
// process. Its decision may be a boolean or an object with allowed, headers,
// body and http_status, as opa-envoy-plugin accepts.
type RegoProvider struct {
	query    rego.PreparedEvalQuery
	revision string
}

// NewRegoProvider loads, verifies and prepares the bundle.
func NewRegoProvider(ctx context.Context, cfg RegoProviderConfig) (*RegoProvider, error) {
	if cfg.Query == "" {
		cfg.Query = "envoy/authz/allow"
	}
	var vc *bundle.VerificationConfig
	if cfg.PublicKey != "" {
		key, err := os.ReadFile(cfg.PublicKey)
		if err != nil {
			return nil, fmt.Errorf("bundle verification key: %w", err)
		}
		alg := cfg.Algorithm
		if alg == "" {
			alg = "RS256"
		}
		vc = bundle.NewVerificationConfig(map[string]*bundle.KeyConfig{
			"rampart": {Key: string(key), Algorithm: alg},
		}, "rampart", "", nil)
	}
	b, err := loadBundle(cfg.Bundle, vc)
	if err != nil {
		return nil, err
	}
	q := "data." + strings.ReplaceAll(strings.Trim(cfg.Query, "/"), "/", ".")
	pq, err := rego.New(rego.Query(q), rego.ParsedBundle("provider", b)).PrepareForEval(ctx)
	if err != nil {
		return nil, fmt.Errorf("bundle %s: %w", cfg.Bundle, err)
	}
	return &RegoProvider{query: pq, revision: b.Manifest.Revision}, nil
}

func loadBundle(path string, vc *bundle.VerificationConfig) (*bundle.Bundle, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("bundle: %w", err)
	}
	var loader bundle.DirectoryLoader
	if fi.IsDir() {
		loader = bundle.NewDirectoryLoader(path)
	} else {
		f, err := os.Open(path)
		if err != nil {
			return nil, fmt.Errorf("bundle: %w", err)
		}
		defer f.Close()
		loader = bundle.NewTarballLoaderWithBaseURL(f, path)
	}
	r := bundle.NewCustomReader(loader)
	if vc != nil {
		r = r.WithBundleVerificationConfig(vc)
	} else {
		r = r.WithSkipBundleVerification(true)
	}
	b, err := r.Read()
	if err != nil {
		return nil, fmt.Errorf("bundle %s: %w", path, err)
	}
	if vc != nil && len(b.Signatures.Signatures) == 0 {
		return nil, errors.New("bundle " + path + " is not signed, but a verification key is configured")
	}
	return &b, nil
}

// Revision is the bundle's .manifest revision.
func (p *RegoProvider) Revision() string { return p.revision }

// Check implements Provider. An error or undefined decision denies.
func (p *RegoProvider) Check(ctx context.Context, req *Request, input ast.Value) ProviderResult {
	cancel, release := opacancel.Option(ctx)
	rs, err := p.query.Eval(ctx, rego.EvalParsedInput(input), cancel)
	release()
	if err != nil {
		return ProviderResult{Reason: "provider error: " + err.Error()}
	}
	if len(rs) == 0 || len(rs[0].Expressions) == 0 {
		return ProviderResult{Reason: "provider decision undefined"}
	}
	switch v := rs[0].Expressions[0].Value.(type) {
	case bool:
		if v {
			return ProviderResult{Allowed: true, Reason: "allowed by provider"}
		}
		return ProviderResult{Reason: "denied by provider"}
	case map[string]any:
		res := ProviderResult{Headers: map[string]string{}}
		res.Allowed, _ = v["allowed"].(bool)
		if hs, ok := v["headers"].(map[string]any); ok {
			for k, x := range hs {
				res.Headers[k] = fmt.Sprint(x)
			}
		}
		if s, ok := v["body"].(string); ok {
			res.Body = s
		}
		if n, ok := v["http_status"]; ok {
			var code int
			_, _ = fmt.Sscan(fmt.Sprint(n), &code)
			res.Status = code
		}
		res.Reason = "denied by provider"
		if res.Allowed {
			res.Reason = "allowed by provider"
		}
		return res
	}
	return ProviderResult{Reason: fmt.Sprintf("provider decision has type %T; want a boolean or an object", rs[0].Expressions[0].Value)}
}

// BundleTarball loads a provider's bundle (a directory or .tar.gz), checks its
// signature when publicKey is set, and returns it as a bundle tarball: how the
// control plane ships a CUSTOM provider's Rego to the sidecars.
func BundleTarball(path, publicKey, algorithm string) ([]byte, error) {
	var vc *bundle.VerificationConfig
	if publicKey != "" {
		key, err := os.ReadFile(publicKey)
		if err != nil {
			return nil, fmt.Errorf("bundle verification key: %w", err)
		}
		if algorithm == "" {
			algorithm = "RS256"
		}
		vc = bundle.NewVerificationConfig(map[string]*bundle.KeyConfig{"rampart": {Key: string(key), Algorithm: algorithm}}, "rampart", "", nil)
	}
	b, err := loadBundle(path, vc)
	if err != nil {
		return nil, err
	}
	b.Signatures = bundle.SignaturesConfig{} // verified here; the sidecar gets it over mTLS
	var buf bytes.Buffer
	if err := bundle.NewWriter(&buf).Write(*b); err != nil {
		return nil, fmt.Errorf("bundle %s: %w", path, err)
	}
	return buf.Bytes(), nil
}

// NewRegoProviderFromTarball builds a provider from a bundle tarball (as
// BundleTarball makes it).
func NewRegoProviderFromTarball(ctx context.Context, name, query string, data []byte) (*RegoProvider, error) {
	if query == "" {
		query = "envoy/authz/allow"
	}
	b, err := bundle.NewCustomReader(bundle.NewTarballLoaderWithBaseURL(bytes.NewReader(data), name)).WithSkipBundleVerification(true).Read()
	if err != nil {
		return nil, fmt.Errorf("provider %s: bundle: %w", name, err)
	}
	q := "data." + strings.ReplaceAll(strings.Trim(query, "/"), "/", ".")
	pq, err := rego.New(rego.Query(q), rego.ParsedBundle("provider", &b)).PrepareForEval(ctx)
	if err != nil {
		return nil, fmt.Errorf("provider %s: %w", name, err)
	}
	return &RegoProvider{query: pq, revision: b.Manifest.Revision}, nil
}
