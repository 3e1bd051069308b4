package authz

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/metrics"
	"github.com/open-policy-agent/opa/v1/rego"
	"github.com/rampart-mesh/rampart/internal/opacancel"
	"github.com/rampart-mesh/rampart/internal/uuid"
)

// Bundle is what the engine evaluates: Rego modules (the compiled policies and
// the library) and the query whose value is the decision.
type Bundle struct {
	Revision string
	Modules  map[string]string // file name → source
	Query    string
	// PathNormalization is the mesh's mode (NONE, BASE, MERGE_SLASHES,
	// DECODE_AND_MERGE_SLASHES); default BASE.
	PathNormalization string
	// Providers are the CUSTOM providers by name.
	Providers map[string]Provider
}

// Config configures an Engine.
type Config struct {
	Log *slog.Logger
	// CacheSize bounds the verdicts remembered per bundle (by everything the
	// compiled policy can read of a request; see reads). 0 means the default,
	// 8192; negative turns the cache off.
	CacheSize int
}

// Engine decides requests with the current bundle. Load swaps bundles atomically:
// a request sees the old bundle or the new one, never a mix.
type Engine struct {
	log          *slog.Logger
	cacheSize    int
	hits, misses atomic.Uint64
	cur          atomic.Pointer[prepared]
}

type prepared struct {
	bundle              Bundle
	query               rego.PreparedEvalQuery
	allowPolicies       int // enforced ALLOW policies on the workload
	dryRunAllowPolicies int
	custom              bool  // the bundle has CUSTOM policies
	reads               reads // what the modules read from the input
	// bodyLimit is the largest maxRequestBytes of the bundle's providers
	// that include the body: how much of it is read for any of them.
	bodyLimit int
	// cache remembers verdicts by everything the fast-path input holds; nil
	// when the modules are not deterministic.
	cache *verdictCache
	// conns keeps the fast-path input's connection items.
	conns connItemsCache
}

// MatchesQuery is evaluated per request: every rule that matched, tagged with
// its action.
const MatchesQuery = "data.rampart.policy.hits"

// ErrNoBundle means no bundle has been loaded; every request is denied.
var ErrNoBundle = errors.New("no authorization bundle loaded")

// New returns an Engine with no bundle: until Load succeeds it denies everything.
func New(cfg Config) *Engine {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.CacheSize == 0 {
		cfg.CacheSize = defaultCacheSize
	}
	return &Engine{log: cfg.Log.With("component", "authz"), cacheSize: cfg.CacheSize}
}

// Prepare compiles b (with OPA's strict checks) without installing it.
func Prepare(ctx context.Context, b Bundle) (*prepared, error) {
	c, err := compile(b.Modules, true)
	if err != nil {
		return nil, fmt.Errorf("bundle %q: %w", b.Revision, err)
	}
	// The rule dependency graph orders the modules' compilation; compiling
	// and evaluating queries never reads it, and at 10,000 policies it holds
	// about 4 MB. Dropped before the query is prepared: the query compiler
	// works on a copy of the compiler, which would keep it.
	c.Graph = nil
	pq, err := rego.New(rego.Query(MatchesQuery), rego.Compiler(c)).PrepareForEval(ctx)
	if err != nil {
		return nil, fmt.Errorf("prepare bundle %q: %w", b.Revision, err)
	}
	b.Modules = nil // compiled now; the source is not needed again
	p := &prepared{bundle: b, query: pq, reads: analyze(c), custom: hasCustom(c)}
	for _, prov := range b.Providers {
		if bc, ok := bodyConfig(prov); ok {
			p.bodyLimit = max(p.bodyLimit, bc.MaxRequestBytes)
		}
	}
	// The policy sets are constant for a bundle: count them once.
	for _, q := range []struct {
		q   string
		dst *int
	}{{"count(data.rampart.policy.allow_policies)", &p.allowPolicies}, {"count(data.rampart.policy.dry_run_allow_policies)", &p.dryRunAllowPolicies}} {
		rs, err := rego.New(rego.Query(q.q), rego.Compiler(c)).Eval(ctx)
		if err != nil || len(rs) != 1 {
			return nil, fmt.Errorf("bundle %q: %s: %v", b.Revision, q.q, err)
		}
		n, _ := rs[0].Expressions[0].Value.(json.Number).Int64()
		*q.dst = int(n)
	}
	return p, nil
}

func compileModules(modules map[string]string) (*ast.Compiler, error) {
	return compile(modules, false)
}

// compile parses and compiles modules with OPA's strict checks. lean compiles
// for evaluation: every node of a rule shares the rule's location before the
// compiler copies the rules into its modules, indexes and rule tree, so none
// of those copies keeps a location per term or the parser's copy of the
// source. A bundle that fails to compile that way is compiled again with full
// locations, so its errors point at the exact term.
func compile(modules map[string]string, lean bool) (*ast.Compiler, error) {
	parsed := make(map[string]*ast.Module, len(modules))
	own := stringOwner{}
	for n, src := range modules {
		m, err := ast.ParseModuleWithOpts(n, src, ast.ParserOptions{RegoVersion: ast.RegoV1})
		if err != nil {
			return nil, err
		}
		if lean {
			leanModule(m)
			own.module(m)
		}
		parsed[n] = m
	}
	c := ast.NewCompiler().WithStrict(true).WithEnablePrintStatements(false)
	if c.Compile(parsed); c.Failed() {
		if lean {
			return compile(modules, false)
		}
		return nil, c.Errors
	}
	for _, m := range c.Modules {
		leanModule(m)
	}
	return c, nil
}

// stringOwner gives a parsed module's names and strings their own memory,
// one copy per distinct value. The parser's come as slices of its copy of the
// whole source, so any one of them kept the source alive for the life of
// the bundle (3.6 MB at 10,000 policies), and equal ones ("input", "GET")
// were stored once per use.
type stringOwner map[string]string

func (o stringOwner) own(s string) string {
	if v, ok := o[s]; ok {
		return v
	}
	v := strings.Clone(s)
	o[v] = v
	return v
}

func (o stringOwner) term(t *ast.Term) {
	switch v := t.Value.(type) {
	case ast.String:
		t.Value = ast.String(o.own(string(v)))
	case ast.Var:
		t.Value = ast.Var(o.own(string(v)))
	case ast.Number:
		t.Value = ast.Number(o.own(string(v)))
	}
}

func (o stringOwner) module(m *ast.Module) {
	ast.NewGenericVisitor(func(x any) bool {
		switch n := x.(type) {
		case *ast.Term:
			o.term(n)
		case *ast.Head:
			n.Name = ast.Var(o.own(string(n.Name)))
			// The visitor does not walk a head's reference.
			for _, t := range n.Reference {
				ast.WalkTerms(t, func(t *ast.Term) bool {
					o.term(t)
					return false
				})
			}
		case *ast.Import:
			n.Alias = ast.Var(o.own(string(n.Alias)))
		}
		return false
	}).Walk(m)
}

// leanModule drops a module's comments (evaluation never reads them) and
// gives each rule, and the package and imports, one location without text.
func leanModule(m *ast.Module) {
	m.Comments = nil
	if m.Package != nil && m.Package.Location != nil {
		l := *m.Package.Location
		l.Text = nil
		loc := &l
		m.Package.Location = loc
		for _, t := range m.Package.Path {
			t.Location = loc
		}
		for _, imp := range m.Imports {
			imp.Location = loc
			ast.WalkTerms(imp, func(t *ast.Term) bool {
				t.Location = loc
				return false
			})
		}
	}
	for _, r := range m.Rules {
		shareLocation(r)
	}
}

// shareLocation points every node of a compiled rule at the rule's own
// location. The parser gives each term its own (row, column, text); kept for
// the life of a bundle they were a third of a large bundle's memory, and an
// evaluation error naming the rule is as useful to an operator.
func shareLocation(r *ast.Rule) {
	if r.Location == nil {
		return
	}
	// Without its text: the text is a slice of the parser's copy of the
	// whole source, which it would keep alive.
	l := *r.Location
	l.Text = nil
	loc := &l
	r.Location = loc
	ast.NewGenericVisitor(func(x any) bool {
		switch n := x.(type) {
		case *ast.Rule: // the rule itself and its else branches
			n.Location = loc
		case *ast.Term:
			n.Location = loc
		case *ast.Expr:
			n.Location = loc
		case *ast.Head:
			n.Location = loc
			// The visitor does not walk a head's reference (p.q[x]); its
			// terms kept their own locations and, through their text, the
			// parser's copy of the whole source.
			for _, t := range n.Reference {
				ast.WalkTerms(t, func(t *ast.Term) bool {
					t.Location = loc
					return false
				})
			}
		case *ast.With:
			n.Location = loc
		case *ast.SomeDecl:
			n.Location = loc
		case *ast.Every:
			n.Location = loc
		}
		return false
	}).Walk(r)
}

// Load compiles b and, if it compiles, makes it current. On error the previous
// bundle stays in force.
func (e *Engine) Load(ctx context.Context, b Bundle) error {
	p, err := Prepare(ctx, b)
	if err != nil {
		return err
	}
	if p.reads.deterministic && e.cacheSize > 0 {
		p.cache = newVerdictCache(e.cacheSize, &e.hits, &e.misses)
	}
	e.cur.Store(p)
	e.log.Info("authorization bundle loaded", "revision", b.Revision, "modules", len(b.Modules))
	return nil
}

// Revision returns the current bundle's revision, "" before the first Load.
func (e *Engine) Revision() string {
	if p := e.cur.Load(); p != nil {
		return p.bundle.Revision
	}
	return ""
}

// Decide runs the pipeline for one request: request sanity checks and path
// normalization (400 on failure), the compiled policy, and the CUSTOM providers
// its matches select. Any evaluation failure denies.
func (e *Engine) Decide(ctx context.Context, r *Request) Decision {
	d := Decision{DecisionID: uuid.New(), Rule: -1, DryRun: DryRun{Allowed: true, Matches: []Match{}}}
	p := e.cur.Load()
	if p == nil {
		d.Stage = "error"
		return d.deny(r, 403, "", -1, "error: "+ErrNoBundle.Error())
	}
	d.Revision = p.bundle.Revision
	path, query := "", ""
	if r.Protocol != ProtocolTCP {
		d.Stage = "request"
		if !validMethod(r.Method) {
			return d.deny(r, 400, "", -1, fmt.Sprintf("bad request: method %q", r.Method))
		}
		for _, v := range []*Request{r, r.BeforeAuthn} {
			if v == nil {
				continue
			}
			for _, h := range v.Headers {
				if !validHeaderName(h.Name) {
					return d.deny(r, 400, "", -1, fmt.Sprintf("bad request: header name %q", h.Name))
				}
			}
		}
		var err error
		if path, query, err = NormalizePath(r.Path, p.bundle.PathNormalization); err != nil {
			return d.deny(r, 400, "", -1, fmt.Sprintf("bad request: path %q: %v", pathForLog(r.Path), err))
		}
		d.NormalizedPath = path
	}
	d.req, d.query = r, query
	d.Stage = "error"
	res, err := e.result(ctx, p, r, path)
	if err != nil {
		e.log.Error("authorization evaluation failed; denying", "err", err, "request_id", r.ID)
		return d.deny(r, 403, "", -1, "error: "+err.Error())
	}
	d.Stage = "custom"
	d.DryRun = res.DryRun
	d.Audit = res.Audit
	// CUSTOM policies see the request as the client sent it: Istio's ext_authz
	// filter runs before jwt_authn, so neither the token's identity nor the
	// headers authentication sets or strips are there yet.
	pre, custom, preRes := r, res.Custom, res
	if r.BeforeAuthn != nil && p.custom {
		pre = r.BeforeAuthn
		pres, err := e.result(ctx, p, pre, path)
		if err != nil {
			e.log.Error("authorization evaluation failed; denying", "err", err, "request_id", r.ID)
			return d.deny(r, 403, "", -1, "error: "+err.Error())
		}
		custom, preRes = pres.Custom, pres
		d.DryRun = customDryRunFrom(res.DryRun, pres.DryRun)
	}
	// CUSTOM first: a provider that says no denies, whatever DENY and ALLOW
	// say. Each provider the matching rules name is asked once, as Envoy's
	// ext_authz filter asks once per request.
	var (
		full    ast.Value
		changes ProviderResult
		asked   = map[string]bool{}
	)
	for _, m := range custom {
		if asked[m.Provider] {
			continue
		}
		asked[m.Provider] = true
		prov, ok := p.bundle.Providers[m.Provider]
		if !ok {
			return d.deny(r, 403, m.Policy, m.Rule, fmt.Sprintf("denied: CUSTOM policy %s names provider %q, which is not configured", m.Policy, m.Provider))
		}
		// The provider sees the path as Envoy hands it to ext_authz:
		// normalized, with the query; and the body if it includes it.
		pc := *pre
		pc.providerPath = pre.pathWithQuery(path, query)
		doc := full
		if bc, ok := bodyConfig(prov); ok && pre.Protocol != ProtocolTCP {
			body, err := pre.readBody(p.bodyLimit)
			if err != nil {
				d.Stage = "request"
				return d.deny(r, 400, "", -1, "bad request: reading the body for CUSTOM policy "+m.Policy+": "+err.Error())
			}
			cb, tooLarge := bodyFor(body, bc)
			if tooLarge {
				d.Body = "Payload Too Large"
				return d.deny(r, 413, m.Policy, m.Rule, fmt.Sprintf("denied by CUSTOM policy %s rules[%d]: the request body is longer than provider %s takes (includeRequestBodyInCheck.maxRequestBytes %d, allowPartialMessage off)", m.Policy, m.Rule, m.Provider, bc.MaxRequestBytes))
			}
			pc.checkBody = cb
			dp := d
			dp.req = &pc
			doc = dp.Document()
		} else if full == nil {
			dp := d
			dp.req = pre
			full = dp.Document()
			doc = full
		}
		out := prov.Check(ctx, &pc, doc).normalized()
		if err := out.check(); err != nil {
			return d.deny(r, 403, m.Policy, m.Rule, fmt.Sprintf("denied by CUSTOM policy %s rules[%d]: provider %s error: %v", m.Policy, m.Rule, m.Provider, err))
		}
		if !out.Allowed {
			status := out.Status
			if status == 0 {
				status = 403
			}
			// The denying provider's response headers go on the denial
			// (an HTTP ext_authz server's headers with several values);
			// those of providers that allowed do not.
			d.Headers, d.Body = out.Headers, out.Body
			d.AppendHeaders, d.RemoveHeaders, d.ResponseHeaders = nil, nil, out.ResponseHeaders
			return d.deny(r, status, m.Policy, m.Rule, fmt.Sprintf("denied by CUSTOM policy %s rules[%d] (provider %s): %s", m.Policy, m.Rule, m.Provider, out.Reason))
		}
		changes = changes.merge(out)
	}
	d.Headers, d.AppendHeaders, d.RemoveHeaders, d.ResponseHeaders = changes.Headers, changes.AppendHeaders, changes.RemoveHeaders, changes.ResponseHeaders
	// Envoy runs RBAC after ext_authz: AUDIT, DENY and ALLOW see the request
	// with the providers' header changes, and authentication's after them
	// (jwt_authn, too, runs after ext_authz).
	if changes.changesRequest() {
		post := changes.applyTo(pre)
		if r.BeforeAuthn != nil {
			auth := r.Auth
			// jwt_authn runs on the provider's headers: a provider that
			// changed the token's header (Authorization, or the one
			// authentication took the token from) leaves the identity
			// authentication took from the client's token behind. A token
			// the provider put there is not verified here, so the request
			// goes on with no identity (fails closed where Envoy would
			// verify it).
			if auth != nil && changes.touches(append([]string{"authorization"}, r.authnRemove...)) {
				auth = nil
			}
			post = post.AfterAuthn(auth, r.authnRemove, r.authnSet)
		}
		res2, err := e.result(ctx, p, post, path)
		if err != nil {
			e.log.Error("authorization evaluation failed; denying", "err", err, "request_id", r.ID)
			return d.deny(r, 403, "", -1, "error: "+err.Error())
		}
		res = res2
		d.Audit = res2.Audit
		d.DryRun = customDryRunFrom(res2.DryRun, preRes.DryRun)
	}
	d.Stage = "policy"
	if !res.Allowed {
		// The request does not go on, so the providers' request header
		// changes do not apply; their response headers still go on the
		// denial, as ext_authz adds them to any response.
		d.Headers, d.AppendHeaders, d.RemoveHeaders = nil, nil, nil
		return d.deny(r, 403, res.Policy, res.Rule, res.Reason)
	}
	d.Allowed, d.Policy, d.Rule, d.Reason = true, res.Policy, res.Rule, res.Reason
	d.Status = 200
	if r.Protocol == ProtocolTCP {
		d.Status = 0
	}
	return d
}

// result is the verdict of the policies for r before CUSTOM providers run,
// from the verdict cache when the bundle has answered the same input before.
func (e *Engine) result(ctx context.Context, p *prepared, r *Request, path string) (*result, error) {
	// The same input gets the same verdict from the same bundle: a request that
	// looks, to the policy, like one already decided is not evaluated again.
	var key cacheKey
	if p.cache != nil {
		key = cacheKey{s: p.reads.key(r, path), auth: r.Auth}
		if res := p.cache.get(key); res != nil {
			return res, nil
		}
	}
	ms, err := e.eval(ctx, p, r.fastInput(path, &p.reads, &p.conns))
	if err != nil {
		return nil, err
	}
	v := p.verdict(ms)
	if p.cache != nil {
		p.cache.put(key, &v)
	}
	return &v, nil
}

// customDryRunFrom is post's dry-run result with its CUSTOM matches taken from
// pre, the request before authentication, which is what CUSTOM policies see.
// CUSTOM matches do not change what the dry-run policies would have decided.
func customDryRunFrom(post, pre DryRun) DryRun {
	out := DryRun{Allowed: post.Allowed, Matches: []Match{}}
	for _, m := range post.Matches {
		if m.action != "custom" {
			out.Matches = append(out.Matches, m)
		}
	}
	for _, m := range pre.Matches {
		if m.action == "custom" {
			out.Matches = append(out.Matches, m)
		}
	}
	sortMatches(out.Matches)
	return out
}

// hasCustom reports whether a compiled bundle has CUSTOM policy rules: a hits
// rule whose action is "custom" or not a constant.
func hasCustom(c *ast.Compiler) bool {
	for _, m := range c.Modules {
		if m.Package == nil || m.Package.Path.String() != "data.rampart.policy" {
			continue
		}
		for _, r := range m.Rules {
			if r.Head == nil || r.Head.Ref().String() != "hits" {
				continue
			}
			var action *ast.Term
			if k := r.Head.Key; k != nil {
				switch v := k.Value.(type) {
				case *ast.Array:
					if v.Len() > 0 {
						action = v.Elem(0)
					}
				case ast.Object:
					action = v.Get(ast.InternedTerm("action"))
				}
			}
			if action == nil {
				return true
			}
			if s, ok := action.Value.(ast.String); !ok || s == "custom" {
				return true
			}
		}
	}
	return false
}

// noMetrics: OPA otherwise makes and times a metrics set for every evaluation.
var noMetrics = metrics.NoOp()

func (e *Engine) eval(ctx context.Context, p *prepared, v ast.Value) (matchSets, error) {
	// Keep the result as an AST value: converting it to Go maps and back costs more
	// than the evaluation.
	cancel, release := opacancel.Option(ctx)
	defer release()
	rs, err := p.query.Eval(ctx, rego.EvalParsedInput(v), cancel, rego.EvalMetrics(noMetrics), rego.EvalGenerateJSON(func(t *ast.Term, _ *rego.EvalContext) (any, error) {
		return t.Value, nil
	}))
	if err != nil {
		return matchSets{}, err
	}
	if len(rs) != 1 || len(rs[0].Expressions) != 1 {
		return matchSets{}, fmt.Errorf("hits is undefined")
	}
	val, ok := rs[0].Expressions[0].Value.(ast.Value)
	if !ok {
		return matchSets{}, fmt.Errorf("hits has type %T", rs[0].Expressions[0].Value)
	}
	return parseMatches(val)
}

// CheckStrict compiles modules with OPA's strict checks and reports the errors.
func CheckStrict(modules map[string]string) error {
	_, err := compileModules(modules)
	return err
}

// pathForLog is a raw request path as a reason may quote it (the reason goes
// to the sidecar's log and the decision log): without its query or fragment,
// where credentials travel (?access_token=...), and at most 128 bytes.
func pathForLog(p string) string {
	if i := strings.IndexAny(p, "?#"); i >= 0 {
		p = p[:i] + "…"
	}
	if len(p) > 128 {
		p = p[:128] + "…"
	}
	return p
}
