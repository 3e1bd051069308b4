package jwt

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/rampart-mesh/rampart/authn"
	"golang.org/x/time/rate"
	"k8s.io/utils/clock"
)

// Header is one request header; a name may repeat.
type Header struct{ Name, Value string }

// Request is what authentication needs of an inbound HTTP request.
type Request struct {
	Method  string
	Path    string // raw, with the query
	Headers []Header
}

// Result is the outcome of Authenticate.
type Result struct {
	// Status is 0 to pass the request on, 401 for an invalid token, 403 for a
	// token whose audience is not allowed.
	Status int
	// Reason says why, for logs and the local reply body; it never echoes the token.
	Reason string
	// WWWAuthenticate is set with 401 and 403, as Envoy does:
	// `Bearer realm="<scheme>://<host><path>", error="invalid_token"`.
	WWWAuthenticate string
	// Auth is the validated identity; nil when no token was presented or on
	// failure. It is shared by requests presenting the same token: read only.
	Auth *authn.RequestAuth
	// RemoveHeaders (lower-case) must be removed from the request before it goes
	// upstream: every outputPayloadToHeader/outputClaimToHeaders header (always,
	// so a client cannot forge them) and, after success, the headers that carried
	// tokens unless forwardOriginalToken. Read only.
	RemoveHeaders []string
	// SetHeaders are added after the removals: the outputs of the rules that
	// accepted the tokens.
	SetHeaders []Header
	// SpaceDelimitedClaims names the claims of Auth that authorization splits on
	// whitespace: "scope", "permission" and the accepting rule's own. Claims are
	// not modified here.
	SpaceDelimitedClaims []string
}

// Authenticator validates JWTs per a merged set of RequestAuthentication rules.
// Authenticate is safe for concurrent use.
type Authenticator struct {
	rules    []*rule
	sources  []*keySource
	ext      *extractor
	sanitize []string
	cache    *tokenCache

	clock      clock.WithTicker
	log        *slog.Logger
	m          *metrics
	skew       int64 // seconds
	maxToken   int
	refresh    time.Duration
	minRefresh time.Duration

	// sigChecks counts signature verifications, for tests of the cache.
	sigChecks atomic.Uint64
}

type rule struct {
	Rule
	idx       int
	src       *keySource
	audiences map[string]bool
	spaceDel  []string
}

// New validates cfg, fills defaults and builds an Authenticator. It parses
// inline JWKS but does no network I/O and starts nothing: remote keys are
// fetched by Run, or on the first token that needs them.
func New(cfg Config) (*Authenticator, error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	m, err := newMetrics(cfg.Metrics)
	if err != nil {
		return nil, err
	}
	a := &Authenticator{
		ext:        newExtractor(cfg.Rules),
		cache:      newTokenCache(cfg.TokenCacheSize),
		clock:      cfg.Clock,
		log:        cfg.Log.With("component", "jwt"),
		m:          m,
		skew:       int64(cfg.ClockSkew / time.Second),
		maxToken:   cfg.MaxTokenBytes,
		refresh:    cfg.RefreshInterval,
		minRefresh: cfg.MinRefreshInterval,
	}
	sources := map[string]*keySource{}
	seen := map[string]bool{}
	for i, r := range cfg.Rules {
		r := rule{Rule: r, idx: i, audiences: map[string]bool{}}
		if r.Timeout == 0 {
			r.Timeout = DefaultTimeout
		}
		for _, aud := range r.Audiences {
			r.audiences[aud] = true
		}
		r.spaceDel = []string{"scope", "permission"}
		for _, c := range r.SpaceDelimitedClaims {
			if !slices.Contains(r.spaceDel, c) {
				r.spaceDel = append(r.spaceDel, c)
			}
		}
		src, err := a.sourceFor(&r.Rule, i, sources, cfg)
		if err != nil {
			return nil, fmt.Errorf("%w: jwtRules[%d] (issuer %q): jwks: %w", ErrInvalidConfig, i, r.Issuer, err)
		}
		r.src = src
		for _, h := range append([]string{r.OutputPayloadToHeader}, outputHeaders(r.OutputClaimToHeaders)...) {
			if h = strings.ToLower(h); h != "" && !seen[h] {
				seen[h] = true
				a.sanitize = append(a.sanitize, h)
			}
		}
		a.rules = append(a.rules, &r)
	}
	slices.Sort(a.sanitize)
	a.sanitize = slices.Clip(a.sanitize)
	return a, nil
}

func outputHeaders(cs []ClaimToHeader) []string {
	out := make([]string, len(cs))
	for i, c := range cs {
		out[i] = c.Header
	}
	return out
}

// sourceFor returns the key source of rule r, sharing remote sources between
// rules with the same jwksUri, or the same issuer under discovery.
func (a *Authenticator) sourceFor(r *Rule, i int, shared map[string]*keySource, cfg Config) (*keySource, error) {
	label := r.Issuer
	if label == "" {
		label = r.JWKSURI
	}
	s := &keySource{
		label: label, issuer: r.Issuer, uri: r.JWKSURI, timeout: r.Timeout,
		client: cfg.HTTPClient, clock: cfg.Clock, log: a.log, m: a.m,
		limiter: rate.NewLimiter(rate.Every(cfg.MinRefreshInterval), 1),
	}
	switch {
	case r.JWKS != "":
		keys, ignored, err := parseJWKS([]byte(r.JWKS))
		for _, why := range ignored {
			a.log.Warn("inline jwks key ignored", "rule", i, "issuer", label, "reason", why)
		}
		up := 1.0
		if err != nil {
			// As Envoy does with an inline JWKS it cannot use (and Istio
			// accepts the policy): the rule stands with no keys, so every
			// token it would verify gets 401 and requests without one pass.
			a.log.Warn("inline jwks unusable; every token for this rule is rejected", "rule", i, "issuer", label, "err", err)
			keys, up = nil, 0
		}
		s.inline = true
		s.publish(keys)
		a.m.up.WithLabelValues(label).Set(up)
		a.sources = append(a.sources, s)
		return s, nil
	case r.JWKSURI != "":
	default:
		s.discovery = true
	}
	key := "uri " + r.JWKSURI
	if s.discovery {
		key = "discovery " + r.Issuer
	}
	if old := shared[key]; old != nil {
		old.timeout = max(old.timeout, r.Timeout)
		return old, nil
	}
	shared[key] = s
	a.sources = append(a.sources, s)
	return s, nil
}

// Run fetches every remote key set now and then every RefreshInterval (sooner
// after a failure) until ctx ends. A failed fetch keeps the last good keys and
// sets rampart_jwks_issuer_up to 0. It returns nil when ctx is cancelled.
func (a *Authenticator) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	for _, s := range a.sources {
		if s.inline {
			continue
		}
		wg.Go(func() { s.run(ctx, a.clock, a.refresh, a.minRefresh) })
	}
	<-ctx.Done()
	wg.Wait()
	return nil
}

// Authenticate validates the tokens r carries. No token: Status 0 and no Auth.
// Every token found must be valid for a rule naming its location and issuer;
// Auth is the identity of the first (headers, then params, then cookies).
func (a *Authenticator) Authenticate(ctx context.Context, r Request) Result {
	res := Result{RemoveHeaders: a.sanitize}
	if isCORSPreflight(r) {
		// A preflight carries no credentials (CORS spec); Envoy bypasses it.
		a.m.noToken.Inc()
		return res
	}
	var buf [4]token
	toks, dupLoc, err := a.ext.extract(r, buf[:0])
	if err != nil {
		return a.fail(r, http.StatusUnauthorized, fmt.Sprintf("jwt is invalid: %v (%s)", err, dupLoc))
	}
	if len(toks) == 0 {
		a.m.noToken.Inc()
		return res
	}
	var (
		failStatus int
		failReason string
	)
	for _, t := range toks {
		o := a.verify(ctx, t)
		if o.status != 0 {
			// Any invalid token is 401 even when another is only 403.
			if failStatus == 0 || o.status == http.StatusUnauthorized {
				failStatus, failReason = o.status, o.reason
			}
			if o.status == http.StatusUnauthorized {
				break
			}
			continue
		}
		if failStatus != 0 {
			continue
		}
		if res.Auth == nil {
			res.Auth = o.entry.auth
			res.SpaceDelimitedClaims = a.rules[o.entry.rule].spaceDel
		}
		res.SetHeaders = append(res.SetHeaders, o.entry.set...)
		if rl := a.rules[o.entry.rule]; !rl.ForwardOriginalToken && t.loc.kind == locHeader && !slices.Contains(res.RemoveHeaders, t.loc.name) {
			res.RemoveHeaders = append(res.RemoveHeaders, t.loc.name)
		}
	}
	if failStatus != 0 {
		return a.fail(r, failStatus, failReason)
	}
	a.m.valid.Inc()
	return res
}

func (a *Authenticator) fail(r Request, status int, reason string) Result {
	if status == http.StatusForbidden {
		a.m.audience.Inc()
	} else {
		a.m.invalid.Inc()
	}
	return Result{
		Status:          status,
		Reason:          reason,
		WWWAuthenticate: `Bearer realm="` + realm(r) + `", error="invalid_token"`,
	}
}

type outcome struct {
	status int
	reason string
	entry  *cacheEntry
}

func invalid(format string, args ...any) outcome {
	return outcome{status: http.StatusUnauthorized, reason: "jwt is invalid: " + fmt.Sprintf(format, args...)}
}

// verify checks one token in Envoy's order (format and claim types, issuer
// allowed at the location, exp/nbf) and then, differently, the signature
// before the audience: a forged token is 401 whatever its aud says.
func (a *Authenticator) verify(ctx context.Context, t token) outcome {
	if len(t.raw) > a.maxToken {
		return invalid("longer than %d bytes", a.maxToken)
	}
	now := a.clock.Now().Unix()
	// The token's bytes, read in place: this runs on every request, and a
	// copy of a kilobyte token per request is the bulk of what it allocates.
	key := sha256.Sum256(unsafe.Slice(unsafe.StringData(t.raw), len(t.raw)))
	if e := a.cache.get(key); e != nil {
		if slices.Contains(t.loc.rules, e.rule) && e.gen == a.rules[e.rule].src.current().gen && t.loc.allows(e.auth.Issuer) {
			if o, ok := a.checkTime(e.hasExp, e.exp, e.hasNbf, e.nbf, now); !ok {
				a.cache.del(key)
				return o
			}
			a.m.cacheHit.Inc()
			return outcome{entry: e}
		}
	}
	a.m.cacheMiss.Inc()

	if strings.Count(t.raw, ".") != 2 {
		return invalid("not in the form header.payload.signature")
	}
	jws, err := jose.ParseSignedCompact(t.raw, allowedAlgs)
	if err != nil {
		a.log.Debug("jwt parse failed", "location", t.loc.String(), "err", err)
		return invalid("malformed, or its alg is not allowed (allowed: RS*, PS*, ES*, EdDSA)")
	}
	hdr := jws.Signatures[0].Header
	payload := jws.UnsafePayloadWithoutVerification()
	claims, err := decodeClaims(payload)
	if err != nil {
		return invalid("payload: %v", err)
	}
	std, err := standardClaims(claims)
	if err != nil {
		return invalid("%v", err)
	}
	if !t.loc.allows(std.iss) {
		return invalid("issuer is not configured for %s", t.loc)
	}
	if o, ok := a.checkTime(std.hasExp, std.exp, std.hasNbf, std.nbf, now); !ok {
		return o
	}

	// Rules naming this location with this exact issuer first, then any-issuer
	// rules; the first that accepts wins. 403 only if no rule accepted and some
	// rule verified the signature but refused the audience.
	best := invalid("issuer is not configured for %s", t.loc)
	for pass := 0; pass < 2; pass++ {
		for _, ri := range t.loc.rules {
			rl := a.rules[ri]
			if (pass == 0 && (rl.Issuer == "" || rl.Issuer != std.iss)) || (pass == 1 && rl.Issuer != "") {
				continue
			}
			o := a.verifyWith(ctx, rl, t, jws, hdr, claims, &std, payload, key, now)
			if o.status == 0 {
				return o
			}
			if o.status == http.StatusForbidden || best.status != http.StatusForbidden {
				best = o
			}
		}
	}
	return best
}

func (a *Authenticator) verifyWith(ctx context.Context, rl *rule, t token, jws *jose.JSONWebSignature, hdr jose.Header,
	claims map[string]any, std *stdClaims, payload []byte, key [32]byte, now int64) outcome {
	snap := rl.src.current()
	cands := snap.candidates(hdr.KeyID, jose.SignatureAlgorithm(hdr.Algorithm), nil)
	if len(cands) == 0 {
		// Unknown kid (or no keys yet): the issuer may have rotated. Refetch,
		// rate-limited per source, and look again.
		// The fetch error is logged by the source; the reason stays short.
		snap, _ = rl.src.refreshOnDemand(ctx)
		cands = snap.candidates(hdr.KeyID, jose.SignatureAlgorithm(hdr.Algorithm), nil)
		if len(cands) == 0 {
			switch {
			case len(snap.keysOrNil()) == 0:
				return invalid("no keys for issuer %q (jwks unavailable)", rl.src.label)
			case hdr.KeyID != "":
				return invalid("no key with kid %q and alg %s", hdr.KeyID, hdr.Algorithm)
			default:
				return invalid("no key for alg %s", hdr.Algorithm)
			}
		}
	}
	// go-jose checks the signature, and refuses unknown crit headers, against
	// each candidate key in turn, as jwt_verify_lib tries every key that
	// matches kid and alg. Not go-oidc's IDTokenVerifier: it decodes the claims
	// into a struct, and encoding/json matches keys case-insensitively, so a
	// token's "ISS", "AUD" or "EXP" would be taken for, or fail in place of,
	// the iss, aud or exp that Envoy reads.
	verified := false
	for _, c := range cands {
		a.sigChecks.Add(1)
		if _, err := jws.Verify(c.key); err == nil {
			verified = true
			break
		}
	}
	if !verified {
		return invalid("signature verification failed")
	}
	if len(rl.audiences) > 0 && !slices.ContainsFunc(std.aud, func(s string) bool { return rl.audiences[s] }) {
		return outcome{status: http.StatusForbidden, reason: "jwt audiences are not allowed"}
	}
	presenter, _ := claims["azp"].(string)
	auth := &authn.RequestAuth{
		Principal: std.iss + "/" + std.sub,
		Issuer:    std.iss,
		Subject:   std.sub,
		Audiences: std.aud,
		Presenter: presenter,
		Claims:    claims,
	}
	e := &cacheEntry{
		rule: rl.idx, gen: snap.gen,
		exp: std.exp, hasExp: std.hasExp, nbf: std.nbf, hasNbf: std.hasNbf,
		auth: auth,
		set:  outputs(rl, payload, claims),
	}
	a.cache.put(key, e, now)
	return outcome{entry: e}
}

// checkTime is jwt_verify_lib's verifyTimeConstraint in whole seconds.
func (a *Authenticator) checkTime(hasExp bool, exp int64, hasNbf bool, nbf int64, now int64) (outcome, bool) {
	if hasNbf && now+a.skew < nbf {
		return invalid("not yet valid (nbf)"), false
	}
	if hasExp && now > exp+a.skew {
		return invalid("expired"), false
	}
	return outcome{}, true
}

// decodeClaims decodes the payload keeping numbers as json.Number, so large
// integers survive and authorization sees the token's own digits.
func decodeClaims(payload []byte) (map[string]any, error) {
	dec := json.NewDecoder(bytes.NewReader(payload))
	dec.UseNumber()
	var claims map[string]any
	if err := dec.Decode(&claims); err != nil {
		return nil, errors.New("not a JSON object")
	}
	if claims == nil {
		return nil, errors.New("not a JSON object")
	}
	if dec.More() {
		return nil, errors.New("trailing data after the JSON object")
	}
	return claims, nil
}

// stdClaims are the registered claims jwt_verify_lib parses, read from the
// payload's exact keys only: "SUB", "Sub" or "ſub" are ordinary claims, never
// the subject (encoding/json into a struct would fold them onto sub).
type stdClaims struct {
	iss, sub       string
	aud            []string // a string aud as a one-element list; nil if absent
	exp, nbf       int64
	hasExp, hasNbf bool
}

// standardClaims checks the types jwt_verify_lib checks, so a token Envoy
// rejects as malformed is 401 here too: iss, sub and jti strings, aud a string
// or a list of strings, exp, nbf and iat non-negative numbers, each only when
// present.
func standardClaims(claims map[string]any) (stdClaims, error) {
	var c stdClaims
	var err error
	for _, s := range []struct {
		name string
		dst  *string
	}{{"iss", &c.iss}, {"sub", &c.sub}, {"jti", new(string)}} {
		if v, ok := claims[s.name]; ok {
			if *s.dst, ok = v.(string); !ok {
				return c, fmt.Errorf("%s is not a string", s.name)
			}
		}
	}
	switch v := claims["aud"].(type) {
	case nil:
		if _, ok := claims["aud"]; ok {
			return c, errors.New("aud is not a string or a list of strings")
		}
	case string:
		c.aud = []string{v}
	case []any:
		c.aud = make([]string, len(v))
		for i, e := range v {
			s, ok := e.(string)
			if !ok {
				return c, fmt.Errorf("aud[%d] is not a string", i)
			}
			c.aud[i] = s
		}
	default:
		return c, errors.New("aud is not a string or a list of strings")
	}
	if c.exp, c.hasExp, err = numericDate(claims, "exp"); err != nil {
		return c, err
	}
	if c.nbf, c.hasNbf, err = numericDate(claims, "nbf"); err != nil {
		return c, err
	}
	if _, _, err = numericDate(claims, "iat"); err != nil {
		return c, err
	}
	return c, nil
}

// numericDate reads an optional NumericDate claim in whole seconds.
func numericDate(claims map[string]any, name string) (int64, bool, error) {
	v, ok := claims[name]
	if !ok {
		return 0, false, nil
	}
	n, ok := v.(json.Number)
	if !ok {
		return 0, false, fmt.Errorf("%s is not a number", name)
	}
	i, err := n.Int64()
	if err != nil {
		f, ferr := n.Float64()
		if ferr != nil || f > 1e18 {
			return 0, false, fmt.Errorf("%s is out of range", name)
		}
		i = int64(f)
	}
	// jwt_verify_lib reads these as unsigned integers: a negative one is malformed.
	if i < 0 {
		return 0, false, fmt.Errorf("%s is out of range", name)
	}
	return i, true, nil
}

// outputs are the headers a rule sets for a verified token.
func outputs(rl *rule, payload []byte, claims map[string]any) []Header {
	var out []Header
	if rl.OutputPayloadToHeader != "" {
		out = append(out, Header{Name: strings.ToLower(rl.OutputPayloadToHeader), Value: base64.RawURLEncoding.EncodeToString(payload)})
	}
	for _, ch := range rl.OutputClaimToHeaders {
		if v, ok := claimString(claims, ch.Claim); ok && v != "" && validHeaderValue(v) {
			out = append(out, Header{Name: strings.ToLower(ch.Header), Value: v})
		}
	}
	return out
}

// claimString renders a primitive claim (path a.b.c) as Envoy's claim_to_headers
// does: strings as is, booleans true/false, non-negative integral numbers as
// integers and other numbers with six decimals (std::to_string).
func claimString(claims map[string]any, path string) (string, bool) {
	var v any = claims
	for part := range strings.SplitSeq(path, ".") {
		m, ok := v.(map[string]any)
		if !ok {
			return "", false
		}
		if v, ok = m[part]; !ok {
			return "", false
		}
	}
	switch x := v.(type) {
	case string:
		return x, true
	case bool:
		return strconv.FormatBool(x), true
	case json.Number:
		f, err := x.Float64()
		if err != nil {
			return "", false
		}
		if f >= 0 && f < 1<<64 && f == float64(uint64(f)) {
			if u, err := strconv.ParseUint(string(x), 10, 64); err == nil {
				return strconv.FormatUint(u, 10), true
			}
			return strconv.FormatUint(uint64(f), 10), true
		}
		return strconv.FormatFloat(f, 'f', 6, 64), true
	}
	return "", false
}

func isCORSPreflight(r Request) bool {
	return r.Method == http.MethodOptions && headerValue(r.Headers, "origin") != "" &&
		headerValue(r.Headers, "access-control-request-method") != ""
}

func headerValue(hs []Header, name string) string {
	for _, h := range hs {
		if strings.EqualFold(h.Name, name) {
			return h.Value
		}
	}
	return ""
}

// realm is Envoy's buildOriginalUri: scheme://host/path without the query,
// the path cut at 256 bytes, made safe for a quoted-string.
func realm(r Request) string {
	scheme := headerValue(r.Headers, "x-forwarded-proto")
	if scheme == "" {
		scheme = "http"
	}
	host := headerValue(r.Headers, ":authority")
	if host == "" {
		host = headerValue(r.Headers, "host")
	}
	path, _, _ := strings.Cut(r.Path, "?")
	if len(path) > 256 {
		path = path[:256]
	}
	var b strings.Builder
	for _, s := range []string{scheme, "://", host, path} {
		for i := 0; i < len(s); i++ {
			switch c := s[i]; {
			case c == '"':
				b.WriteString("%22")
			case c == '\\':
				b.WriteString("%5C")
			case c < 0x20 || c == 0x7f:
			default:
				b.WriteByte(c)
			}
		}
	}
	return b.String()
}
