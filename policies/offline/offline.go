// Package offline runs, without a mesh, the pipeline a sidecar runs on one
// request: the policies that apply to the workload are validated and compiled, the
// bundle is loaded into the same authz.Engine the sidecar uses, and the request is
// decided. It backs `rampartctl authz compile|check|test` and the conformance
// suite.
package offline

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/rego"
	"github.com/rampart-mesh/rampart/authn"
	"github.com/rampart-mesh/rampart/authn/jwt"
	"github.com/rampart-mesh/rampart/authz"
	"github.com/rampart-mesh/rampart/policies/compile"
	regolib "github.com/rampart-mesh/rampart/policies/rego"
	"github.com/rampart-mesh/rampart/policies/source"
	yamlv3 "go.yaml.in/yaml/v3"
	"sigs.k8s.io/yaml"
)

// RequestSpec is REQ.yaml: one request, every field optional.
type RequestSpec struct {
	Workload struct {
		Namespace string            `json:"namespace"`
		Name      string            `json:"name"`
		Labels    map[string]string `json:"labels"`
		IP        string            `json:"ip"`
	} `json:"workload"`
	Protocol string `json:"protocol"`
	MTLS     *bool  `json:"mtls"`
	Source   struct {
		Principal string `json:"principal"`
		IP        string `json:"ip"`
	} `json:"source"`
	RemoteIP      string         `json:"remoteIp"`
	DestinationIP string         `json:"destinationIp"`
	Port          int            `json:"port"`
	SNI           string         `json:"sni"`
	Method        string         `json:"method"`
	Host          string         `json:"host"`
	Path          string         `json:"path"`
	Headers       map[string]any `json:"headers"`
	Auth          *struct {
		Principal string         `json:"principal"`
		Claims    map[string]any `json:"claims"`
	} `json:"auth"`
	ExtAuthz string `json:"extAuthz"`
	// Body is the request's body, for CUSTOM providers that include it in
	// their check (includeRequestBodyInCheck).
	Body *string `json:"body"`
}

// headerValue is a header's value as REQ.yaml gives it: a string, or a
// whole number or boolean written without quotes. Anything else (no value,
// a map, a list inside the list, a number YAML would rewrite such as 1.10)
// is refused rather than turned into text the request never carried.
func headerValue(v any) (string, error) {
	switch t := v.(type) {
	case string:
		return t, nil
	case bool:
		return strconv.FormatBool(t), nil
	case float64:
		if t == math.Trunc(t) && math.Abs(t) < 1<<53 {
			return strconv.FormatInt(int64(t), 10), nil
		}
		return "", fmt.Errorf("%v is a number YAML may rewrite: quote the value", t)
	case nil:
		return "", errors.New(`no value: write "" for an empty header`)
	default:
		return "", fmt.Errorf("a %T is not a header value: give a string, or a list of strings for a repeated header", v)
	}
}

// DecodeStrict decodes one YAML document into v, refusing unknown and
// duplicate keys and further documents.
func DecodeStrict(data []byte, v any) error {
	if docs := countDocuments(data); docs > 1 {
		return fmt.Errorf("%d YAML documents; want one", docs)
	}
	js, err := yaml.YAMLToJSONStrict(data)
	if err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil && err != io.EOF {
		return fmt.Errorf("%s", strings.TrimPrefix(err.Error(), "json: "))
	}
	return nil
}

// Result is `rampartctl authz check -o json`.
type Result struct {
	Allowed        bool          `json:"allowed"`
	Status         int           `json:"status"`
	Policy         string        `json:"policy"`
	Rule           int           `json:"rule"`
	Reason         string        `json:"reason"`
	DecisionID     string        `json:"decision_id"`
	DryRun         authz.DryRun  `json:"dry_run"`
	Audit          []authz.Match `json:"audit,omitempty"`
	NormalizedPath string        `json:"normalized_path,omitempty"`
	ResponseDetail string        `json:"response_code_details,omitempty"`
	// Stage is what decided: peer (PeerAuthentication), request, custom, policy, error.
	Stage string `json:"stage"`
	// WWWAuthenticate comes with a 401 from request authentication.
	WWWAuthenticate string `json:"wwwAuthenticate,omitempty"`
	// UpstreamHeaders are the request headers the app receives that
	// authentication added, changed or removed.
	UpstreamHeaders UpstreamHeaders `json:"upstreamHeaders"`
	// PeerMode is the workload port's resolved mTLS mode.
	PeerMode string            `json:"peerMode"`
	Findings []compile.Finding `json:"findings"`

	// Input and Bundle are what was evaluated, for tests that re-check the decision.
	Input    ast.Value      `json:"-"`
	Bundle   authz.Bundle   `json:"-"`
	Decision authz.Decision `json:"-"`
	Request  *authz.Request `json:"-"`
}

// Workload returns the workload a request is for, with defaults.
func (r *RequestSpec) workload() compile.Workload {
	wl := compile.Workload{Namespace: r.Workload.Namespace, Name: r.Workload.Name, Labels: r.Workload.Labels}
	if wl.Namespace == "" {
		wl.Namespace = "default"
	}
	if wl.Name == "" {
		wl.Name = wl.Labels["app"]
		if wl.Name == "" {
			wl.Name = "workload"
		}
	}
	return wl
}

// Compile validates and compiles the AuthorizationPolicies in objs for wl.
// Claims the workload's RequestAuthentications mark as space-delimited are split
// for authorization, as Istio does.
func Compile(objs []source.Object, mesh compile.Mesh, wl compile.Workload) (compile.AuthzOutput, []compile.Finding) {
	rules, _ := RequestAuthRules(objs, mesh, wl)
	for _, r := range rules {
		wl.SpaceDelimitedClaims = append(wl.SpaceDelimitedClaims, r.SpaceDelimitedClaims...)
	}
	policies, findings := compile.DecodeAuthorizationPolicies(objs, wl.Namespace)
	out := compile.CompileAuthz(mesh, wl, policies)
	return out, append(findings, out.Findings...)
}

// Bundle builds the authz bundle for compiled output: the generated module plus
// the Rego library.
func Bundle(out compile.AuthzOutput, mesh compile.Mesh, providers map[string]authz.Provider) authz.Bundle {
	mods := regolib.Modules()
	mods["rampart/policy.rego"] = out.Module
	return authz.Bundle{
		Revision:          "offline",
		Modules:           mods,
		Query:             regolib.DecisionQuery,
		PathNormalization: mesh.PathNormalization.Normalization,
		Providers:         providers,
	}
}

// Check decides one request against objs. meshDir resolves relative Rego bundle
// paths in the mesh config.
func Check(ctx context.Context, objs []source.Object, mesh compile.Mesh, meshDir string, req RequestSpec) (Result, error) {
	wl := req.workload()
	out, findings := Compile(objs, mesh, wl)
	providers, err := Providers(ctx, mesh, meshDir, req.ExtAuthz != "deny")
	if err != nil {
		return Result{}, err
	}
	eng := authz.New(authz.Config{})
	bundle := Bundle(out, mesh, providers)
	if err := eng.Load(ctx, bundle); err != nil {
		return Result{}, fmt.Errorf("compiled policy does not load (a bug in the compiler): %w", err)
	}
	ar, err := req.authzRequest()
	if err != nil {
		return Result{}, err
	}
	// PeerAuthentication, at connection accept: STRICT resets plaintext; DISABLE
	// does not terminate mTLS, so no peer identity reaches authorization.
	pas, pf := compile.DecodePeerAuthentications(objs, wl.Namespace)
	peer, rf := compile.ResolvePeerAuthentication(mesh, wl, ar.DestinationPort, pas)
	findings = append(append(append(findings, pf...), rf...), compile.RootNamespaceFindings(objs, mesh)...)
	if findings == nil {
		findings = []compile.Finding{}
	}
	plaintext := req.MTLS != nil && !*req.MTLS
	switch {
	case peer.Mode == compile.ModeStrict && plaintext:
		return Result{
			Allowed: false, Status: 0, Policy: peer.Policy, Rule: -1, Stage: "peer",
			Reason:   fmt.Sprintf("connection reset: mTLS mode STRICT (%s) refuses plaintext", orDefault(peer.Policy)),
			DryRun:   authz.DryRun{Allowed: true, Matches: []authz.Match{}},
			PeerMode: peer.Mode, Findings: findings, Bundle: bundle,
		}, nil
	case peer.Mode == compile.ModeDisable:
		ar.SourcePrincipal = ""
	}
	// RequestAuthentication: a JWT in the request is validated unless the request
	// gives an already-validated identity (auth:), which is then what
	// authentication produced: CUSTOM policies, ahead of it, do not see it.
	if ar.Auth != nil {
		given := ar.Auth
		ar.Auth = nil
		ar = ar.AfterAuthn(given, nil, nil)
	}
	up := UpstreamHeaders{Added: map[string]string{}, Changed: map[string]string{}, Removed: []string{}}
	var jwtFail *jwt.Result
	rules, raf := RequestAuthRules(objs, mesh, wl)
	findings = append(findings, raf...)
	if len(rules) > 0 && req.Auth == nil && ar.Protocol != authz.ProtocolTCP {
		res, err := authenticate(ctx, rules, ar)
		if err != nil {
			return Result{}, err
		}
		if res.Status != 0 {
			jwtFail = &res
		} else {
			up = upstream(ar.Headers, res)
		}
		// What AUDIT, DENY and ALLOW see (CUSTOM sees the request as sent).
		set := make([]authz.Header, len(res.SetHeaders))
		for i, h := range res.SetHeaders {
			set[i] = authz.Header{Name: h.Name, Value: h.Value}
		}
		ar = ar.AfterAuthn(res.Auth, res.RemoveHeaders, set)
	}
	d := eng.Decide(ctx, ar)
	// CUSTOM runs before JWT validation in Istio's filter chain, so its denial
	// wins; otherwise a failed token is 401 (or 403 for its audience).
	if jwtFail != nil && !(d.Stage == "custom" && !d.Allowed) {
		return Result{
			Allowed: false, Status: jwtFail.Status, Rule: -1, Stage: "authn", Reason: jwtFail.Reason,
			WWWAuthenticate: jwtFail.WWWAuthenticate, DecisionID: d.DecisionID,
			DryRun: authz.DryRun{Allowed: true, Matches: []authz.Match{}}, PeerMode: peer.Mode,
			Findings: findings, Bundle: bundle, Decision: d, Request: ar,
		}, nil
	}
	return Result{
		UpstreamHeaders: up,
		PeerMode:        peer.Mode, Stage: d.Stage,
		Allowed: d.Allowed, Status: d.Status, Policy: d.Policy, Rule: d.Rule, Reason: d.Reason,
		DecisionID: d.DecisionID, DryRun: d.DryRun, Audit: d.Audit, NormalizedPath: d.NormalizedPath,
		ResponseDetail: d.ResponseCodeDetail(), Findings: findings,
		Input: d.Document(), Bundle: bundle, Decision: d, Request: ar,
	}, nil
}

// Providers builds the CUSTOM providers of the mesh config: Rego bundles are
// loaded for real; external ext_authz servers are not called offline and answer
// extAllow.
func Providers(ctx context.Context, mesh compile.Mesh, meshDir string, extAllow bool) (map[string]authz.Provider, error) {
	out := map[string]authz.Provider{}
	for _, p := range mesh.ExtensionProviders {
		switch {
		case p.RampartRego != nil:
			loc := p.RampartRego.Bundle
			if !filepath.IsAbs(loc) && meshDir != "" {
				loc = filepath.Join(meshDir, loc)
			}
			rp, err := authz.NewRegoProvider(ctx, authz.RegoProviderConfig{
				Bundle: loc, Query: p.RampartRego.Query, PublicKey: keyPath(p.RampartRego.PublicKey, meshDir), Algorithm: p.RampartRego.Algorithm,
			})
			if err != nil {
				return nil, fmt.Errorf("extension provider %q: %w", p.Name, err)
			}
			out[p.Name] = authz.WithBodyIf(rp, p.RampartRego.IncludeRequestBodyInCheck)
		case p.EnvoyExtAuthzGrpc != nil:
			out[p.Name] = authz.WithBodyIf(authz.StaticProvider{Allow: extAllow}, p.EnvoyExtAuthzGrpc.IncludeRequestBodyInCheck)
		case p.EnvoyExtAuthzHTTP != nil:
			out[p.Name] = authz.WithBodyIf(authz.StaticProvider{Allow: extAllow}, p.EnvoyExtAuthzHTTP.IncludeRequestBodyInCheck)
		}
	}
	return out, nil
}

func keyPath(p, dir string) string {
	if p == "" || filepath.IsAbs(p) || dir == "" {
		return p
	}
	return filepath.Join(dir, p)
}

func (r *RequestSpec) authzRequest() (*authz.Request, error) {
	wl := r.workload()
	ip := r.Workload.IP
	if ip == "" {
		ip = "127.0.0.1"
	}
	ar := &authz.Request{
		ID:              "offline",
		Protocol:        strings.ToLower(r.Protocol),
		SourceIP:        r.Source.IP,
		RemoteIP:        r.RemoteIP,
		DestinationIP:   r.DestinationIP,
		DestinationPort: r.Port,
		SNI:             r.SNI,
		Method:          r.Method,
		Host:            r.Host,
		Path:            r.Path,
		Workload:        authz.Workload{Namespace: wl.Namespace, Name: wl.Name, Labels: wl.Labels},
	}
	switch ar.Protocol {
	case "":
		ar.Protocol = authz.ProtocolHTTP
	case authz.ProtocolHTTP, authz.ProtocolGRPC, authz.ProtocolTCP:
	default:
		return nil, fmt.Errorf("request: protocol %q is not http, grpc or tcp", r.Protocol)
	}
	switch r.ExtAuthz {
	case "", "allow", "deny":
	default:
		return nil, fmt.Errorf("request: extAuthz %q is not allow or deny", r.ExtAuthz)
	}
	for field, v := range map[string]string{"workload.ip": r.Workload.IP, "source.ip": r.Source.IP, "remoteIp": r.RemoteIP, "destinationIp": r.DestinationIP} {
		if v != "" && net.ParseIP(v) == nil {
			return nil, fmt.Errorf("request: %s %q is not an IP address", field, v)
		}
	}
	if ar.SourceIP == "" {
		ar.SourceIP = "127.0.0.1"
	}
	if ar.DestinationIP == "" {
		ar.DestinationIP = ip
	}
	if ar.DestinationPort == 0 {
		ar.DestinationPort = 80
	}
	if ar.Method == "" {
		ar.Method = "GET"
		if ar.Protocol == authz.ProtocolGRPC {
			ar.Method = "POST"
		}
	}
	if ar.Path == "" {
		ar.Path = "/"
	}
	if r.MTLS == nil || *r.MTLS {
		p := r.Source.Principal
		if p != "" && !strings.HasPrefix(p, "spiffe://") {
			p = "spiffe://" + p
		}
		ar.SourcePrincipal = p
	}
	// In name order, so headers whose names differ only in case join in the
	// same order on every run.
	names := make([]string, 0, len(r.Headers))
	for name := range r.Headers {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		vals := []any{r.Headers[name]}
		if list, ok := r.Headers[name].([]any); ok {
			vals = list
		}
		for _, e := range vals {
			v, err := headerValue(e)
			if err != nil {
				return nil, fmt.Errorf("request: headers.%s: %v", name, err)
			}
			ar.Headers = append(ar.Headers, authz.Header{Name: name, Value: v})
		}
	}
	if r.Body != nil {
		ar.Body = &authz.RequestBody{Data: []byte(*r.Body), Complete: true}
	}
	if ar.Host == "" {
		for _, h := range ar.Headers {
			if strings.EqualFold(h.Name, "host") || h.Name == ":authority" {
				ar.Host = h.Value
			}
		}
	}
	if a := r.Auth; a != nil {
		ra := &authn.RequestAuth{Principal: a.Principal, Claims: a.Claims}
		if ra.Claims == nil {
			ra.Claims = map[string]any{}
		}
		ra.Issuer, _ = ra.Claims["iss"].(string)
		ra.Subject, _ = ra.Claims["sub"].(string)
		if i := strings.LastIndex(a.Principal, "/"); i > 0 && ra.Issuer == "" && ra.Subject == "" {
			ra.Issuer, ra.Subject = a.Principal[:i], a.Principal[i+1:]
		}
		if ra.Principal == "" && ra.Issuer != "" && ra.Subject != "" {
			ra.Principal = ra.Issuer + "/" + ra.Subject
		}
		switch aud := ra.Claims["aud"].(type) {
		case string:
			ra.Audiences = []string{aud}
		case []any:
			for _, x := range aud {
				if s, ok := x.(string); ok {
					ra.Audiences = append(ra.Audiences, s)
				}
			}
		}
		ra.Presenter, _ = ra.Claims["azp"].(string)
		ar.Auth = ra
	}
	return ar, nil
}

// ReferenceDecision evaluates the Rego reference decision
// (data.rampart.authz.decision in policies/rego) for an input, so tests can hold
// the engine's Go combination to it.
func ReferenceDecision(ctx context.Context, b authz.Bundle, input ast.Value) (allowed bool, policy string, rule int, err error) {
	opts := []func(*rego.Rego){rego.Query("data.rampart.authz.decision"), rego.ParsedInput(input)}
	for n, src := range b.Modules {
		opts = append(opts, rego.Module(n, src))
	}
	rs, err := rego.New(opts...).Eval(ctx)
	if err != nil {
		return false, "", 0, err
	}
	if len(rs) != 1 {
		return false, "", 0, fmt.Errorf("decision undefined")
	}
	d, ok := rs[0].Expressions[0].Value.(map[string]any)
	if !ok {
		return false, "", 0, fmt.Errorf("decision is %T", rs[0].Expressions[0].Value)
	}
	allowed, _ = d["allowed"].(bool)
	policy, _ = d["policy"].(string)
	if n, ok := d["rule"].(json.Number); ok {
		r, _ := n.Int64()
		rule = int(r)
	}
	return allowed, policy, rule, nil
}

func orDefault(policy string) string {
	if policy == "" {
		return "mesh default"
	}
	return "PeerAuthentication " + policy
}

// UpstreamHeaders describes how authentication changed the request's headers.
type UpstreamHeaders struct {
	Added   map[string]string `json:"added"`
	Changed map[string]string `json:"changed"`
	Removed []string          `json:"removed"`
}

// RequestAuthRules returns the merged JWT rules of the RequestAuthentications
// that apply to wl.
func RequestAuthRules(objs []source.Object, mesh compile.Mesh, wl compile.Workload) ([]jwt.Rule, []compile.Finding) {
	ras, fs := compile.DecodeRequestAuthentications(objs, wl.Namespace)
	rules, rf := compile.JWTRules(mesh, wl, ras)
	return rules, append(fs, rf...)
}

// authenticate validates the request's JWTs with the same authenticator a
// sidecar runs (keys from inline JWKS, jwksUri or discovery, fetched now).
func authenticate(ctx context.Context, rules []jwt.Rule, ar *authz.Request) (jwt.Result, error) {
	a, err := jwt.New(jwt.Config{Rules: rules})
	if err != nil {
		return jwt.Result{}, fmt.Errorf("request authentication: %w", err)
	}
	jr := jwt.Request{Method: ar.Method, Path: ar.Path}
	for _, h := range ar.Headers {
		jr.Headers = append(jr.Headers, jwt.Header{Name: h.Name, Value: h.Value})
	}
	return a.Authenticate(ctx, jr), nil
}

// upstream applies the authentication result's header changes to hs and reports
// them.
func upstream(hs []authz.Header, res jwt.Result) UpstreamHeaders {
	u := UpstreamHeaders{Added: map[string]string{}, Changed: map[string]string{}, Removed: []string{}}
	had := map[string]bool{}
	for _, h := range hs {
		had[strings.ToLower(h.Name)] = true
	}
	removed := map[string]bool{}
	for _, n := range res.RemoveHeaders {
		n = strings.ToLower(n)
		if had[n] {
			removed[n] = true
		}
	}
	for _, h := range res.SetHeaders {
		n := strings.ToLower(h.Name)
		if had[n] {
			u.Changed[n] = h.Value
			delete(removed, n)
		} else {
			u.Added[n] = h.Value
		}
	}
	for n := range removed {
		u.Removed = append(u.Removed, n)
	}
	sort.Strings(u.Removed)
	return u
}

// countDocuments counts the YAML documents in data (0 when it does not
// parse: the decoder reports that).
func countDocuments(data []byte) int {
	dec := yamlv3.NewDecoder(bytes.NewReader(data))
	n := 0
	for {
		var node yamlv3.Node
		if err := dec.Decode(&node); err != nil {
			return n
		}
		if len(node.Content) > 0 {
			n++
		}
	}
}
