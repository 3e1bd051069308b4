package authz

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"sort"
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
// request_headers_to_remove, response_headers_to_add, body, http_status and
// dynamic_metadata, as opa-envoy-plugin accepts.
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
	// opa-envoy-plugin fails a request whose :path url.Parse refuses.
	if path, ok := inputPath(input); ok {
		if _, err := url.Parse(path); err != nil {
			return ProviderResult{Reason: "provider error: path: " + err.Error()}
		}
	}
	// ... and one whose JSON body does not parse (parsed_body).
	if req != nil && req.checkBody != nil {
		if _, _, err := req.parsedBody(req.checkBody); err != nil {
			return ProviderResult{Reason: "provider error: " + err.Error()}
		}
	}
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
		res, err := decisionResult(v)
		if err != nil {
			return ProviderResult{Reason: "provider error: " + err.Error()}
		}
		return res
	}
	return ProviderResult{Reason: fmt.Sprintf("provider decision has type %T; want a boolean or an object", rs[0].Expressions[0].Value)}
}

// decisionResult reads an object decision as opa-envoy-plugin does: allowed;
// for an allowed request, headers (set on the request),
// request_headers_to_remove and response_headers_to_add; for a denial,
// headers, body and http_status; dynamic_metadata, an object, in either
// case (Rampart has no use for it). A field of the wrong type, or an
// http_status Envoy does not support, is an error, which denies.
func decisionResult(v map[string]any) (ProviderResult, error) {
	allowed, ok := v["allowed"].(bool)
	if !ok {
		return ProviderResult{}, fmt.Errorf("decision field allowed is %T; want a boolean", v["allowed"])
	}
	if m, ok := v["dynamic_metadata"]; ok {
		if _, ok := m.(map[string]any); !ok {
			return ProviderResult{}, fmt.Errorf("decision field dynamic_metadata is %T; want an object", m)
		}
	}
	res := ProviderResult{Allowed: allowed, Headers: map[string]string{}, Reason: "denied by provider"}
	if hs, ok := v["headers"]; ok {
		bag, err := headersBag("headers", hs)
		if err != nil {
			return ProviderResult{}, err
		}
		// Envoy sets each in turn: the last value of a name wins.
		for _, h := range bag {
			res.Headers[h.Name] = h.Value
		}
	}
	if allowed {
		res.Reason = "allowed by provider"
		if x, ok := v["request_headers_to_remove"]; ok {
			arr, ok := x.([]any)
			if !ok {
				return ProviderResult{}, fmt.Errorf("decision field request_headers_to_remove is %T; want an array of strings", x)
			}
			for _, n := range arr {
				s, ok := n.(string)
				if !ok {
					return ProviderResult{}, fmt.Errorf("decision field request_headers_to_remove has a %T; want strings", n)
				}
				res.RemoveHeaders = append(res.RemoveHeaders, lower(s))
			}
		}
		if x, ok := v["response_headers_to_add"]; ok {
			bag, err := headersBag("response_headers_to_add", x)
			if err != nil {
				return ProviderResult{}, err
			}
			for _, h := range bag {
				res.ResponseHeaders = append(res.ResponseHeaders, ResponseHeader{Name: h.Name, Value: h.Value})
			}
		}
		for _, f := range []string{"query_parameters_to_set", "query_parameters_to_remove"} {
			if _, ok := v[f]; ok {
				return ProviderResult{}, fmt.Errorf("decision field %s is not supported", f)
			}
		}
		return res, nil
	}
	if b, ok := v["body"]; ok {
		s, ok := b.(string)
		if !ok {
			return ProviderResult{}, fmt.Errorf("decision field body is %T; want a string", b)
		}
		res.Body = s
	}
	if n, ok := v["http_status"]; ok {
		num, ok := n.(json.Number)
		if !ok {
			return ProviderResult{}, fmt.Errorf("decision field http_status is %T; want a number", n)
		}
		code, err := num.Int64()
		if err != nil || !ValidStatus(int(code)) {
			return ProviderResult{}, fmt.Errorf("decision field http_status: invalid HTTP status code %s", num)
		}
		res.Status = int(code)
	}
	return res, nil
}

// headersBag reads a decision's headers as opa-envoy-plugin's
// transformToHTTPHeaderFormat does: an object whose values are strings or
// arrays of strings (the header repeated), or an array of such objects. Names
// are in lower case.
func headersBag(field string, x any) ([]Header, error) {
	var objs []map[string]any
	switch v := x.(type) {
	case map[string]any:
		objs = []map[string]any{v}
	case []any:
		for _, o := range v {
			m, ok := o.(map[string]any)
			if !ok {
				return nil, fmt.Errorf("decision field %s has a %T; want objects", field, o)
			}
			objs = append(objs, m)
		}
	default:
		return nil, fmt.Errorf("decision field %s is %T; want an object or an array of objects", field, x)
	}
	var out []Header
	for _, m := range objs {
		names := make([]string, 0, len(m))
		for k := range m {
			names = append(names, k)
		}
		sort.Strings(names)
		for _, k := range names {
			switch val := m[k].(type) {
			case string:
				out = append(out, Header{Name: lower(k), Value: val})
			case []any:
				for _, e := range val {
					s, ok := e.(string)
					if !ok {
						return nil, fmt.Errorf("decision field %s: header %q has a %T; want strings", field, k, e)
					}
					out = append(out, Header{Name: lower(k), Value: s})
				}
			default:
				return nil, fmt.Errorf("decision field %s: header %q is %T; want a string or an array of strings", field, k, val)
			}
		}
	}
	return out, nil
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

// inputPath is input.attributes.request.http.path.
func inputPath(input ast.Value) (string, bool) {
	t := ast.NewTerm(input)
	for _, k := range []string{"attributes", "request", "http", "path"} {
		o, ok := t.Value.(ast.Object)
		if !ok {
			return "", false
		}
		if t = o.Get(ast.StringTerm(k)); t == nil {
			return "", false
		}
	}
	s, ok := t.Value.(ast.String)
	return string(s), ok
}
