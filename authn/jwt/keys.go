package jwt

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	jose "github.com/go-jose/go-jose/v4"
	"golang.org/x/time/rate"
	"k8s.io/utils/clock"
)

// minRSABits: shorter RSA keys in a JWKS are ignored.
const minRSABits = 2048

// maxJWKSBytes bounds a fetched JWKS document.
const maxJWKSBytes = 1 << 20

// allowedAlgs are the only JWS algorithms a token may use: asymmetric ones.
// "none" and HS* are never accepted, whatever the keys say.
var allowedAlgs = []jose.SignatureAlgorithm{
	jose.RS256, jose.RS384, jose.RS512,
	jose.PS256, jose.PS384, jose.PS512,
	jose.ES256, jose.ES384, jose.ES512,
	jose.EdDSA,
}

var (
	errRateLimited = errors.New("jwks refresh rate-limited")
	errNoUsableKey = errors.New("jwks has no usable keys")
)

// publicKey is one usable JWK.
type publicKey struct {
	kid  string
	key  crypto.PublicKey
	algs []jose.SignatureAlgorithm
}

// keySnapshot is an immutable key set. gen changes only when the keys change,
// so cached tokens are re-verified after a rotation and not after every refresh.
type keySnapshot struct {
	keys        []publicKey
	fingerprint string
	gen         uint64
}

// candidates are the keys that may have signed a token with kid and alg: as in
// jwt_verify_lib, a token without kid tries every key, and a key without kid
// matches any token kid.
func (s *keySnapshot) candidates(kid string, alg jose.SignatureAlgorithm, out []publicKey) []publicKey {
	if s == nil {
		return out
	}
	for _, k := range s.keys {
		if kid != "" && k.kid != "" && k.kid != kid {
			continue
		}
		if slices.Contains(k.algs, alg) {
			out = append(out, k)
		}
	}
	return out
}

// keySource is where one or more rules get keys: inline JSON, a jwksUri, or the
// jwks_uri of the issuer's OpenID discovery document.
type keySource struct {
	label     string // metric label: the issuer, or the jwksUri for an any-issuer rule
	issuer    string
	uri       string // configured jwksUri
	discovery bool
	inline    bool
	timeout   time.Duration

	client  *http.Client
	clock   clock.PassiveClock
	log     *slog.Logger
	m       *metrics
	limiter *rate.Limiter // on-demand refreshes (unknown kid)

	snap atomic.Pointer[keySnapshot]

	mu         sync.Mutex
	inflight   *fetchCall
	discovered string // jwks_uri from discovery; cleared after a failed fetch
}

type fetchCall struct {
	done chan struct{}
	snap *keySnapshot
	err  error
}

func (s *keySource) current() *keySnapshot { return s.snap.Load() }

// refreshOnDemand refetches because a token needs a key the snapshot lacks. It
// joins a fetch already in flight; otherwise it is rate-limited. The fetch is
// not cancelled with ctx: a client going away must not count as the issuer
// failing. The timeout still bounds it.
func (s *keySource) refreshOnDemand(ctx context.Context) (*keySnapshot, error) {
	if s.inline {
		return s.current(), errNoUsableKey
	}
	s.mu.Lock()
	if c := s.inflight; c != nil {
		s.mu.Unlock()
		return s.wait(ctx, c)
	}
	if !s.limiter.AllowN(s.clock.Now(), 1) {
		s.mu.Unlock()
		return s.current(), errRateLimited
	}
	c := s.startLocked()
	s.mu.Unlock()
	return s.finish(context.WithoutCancel(ctx), c)
}

// refresh fetches now (Run's periodic refresh), joining a fetch in flight.
func (s *keySource) refresh(ctx context.Context) (*keySnapshot, error) {
	s.mu.Lock()
	if c := s.inflight; c != nil {
		s.mu.Unlock()
		return s.wait(ctx, c)
	}
	c := s.startLocked()
	s.mu.Unlock()
	return s.finish(ctx, c)
}

func (s *keySource) startLocked() *fetchCall {
	c := &fetchCall{done: make(chan struct{})}
	s.inflight = c
	return c
}

func (s *keySource) wait(ctx context.Context, c *fetchCall) (*keySnapshot, error) {
	select {
	case <-c.done:
		return c.snap, c.err
	case <-ctx.Done():
		return s.current(), ctx.Err()
	}
}

func (s *keySource) finish(ctx context.Context, c *fetchCall) (*keySnapshot, error) {
	c.snap, c.err = s.fetch(ctx)
	s.mu.Lock()
	s.inflight = nil
	s.mu.Unlock()
	close(c.done)
	return c.snap, c.err
}

// fetch gets the key set, publishes it if usable and returns the snapshot in
// force afterwards: the new one, or on failure the last good one (maybe nil).
func (s *keySource) fetch(ctx context.Context) (*keySnapshot, error) {
	fctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	keys, err := s.fetchKeys(fctx)
	if err != nil {
		if ctx.Err() != nil { // shutting down: not the issuer's fault
			return s.current(), ctx.Err()
		}
		s.mu.Lock()
		s.discovered = "" // the jwks_uri may have moved; rediscover next time
		s.mu.Unlock()
		s.m.fetches.WithLabelValues(s.label, "error").Inc()
		s.m.up.WithLabelValues(s.label).Set(0)
		s.log.Warn("jwks fetch failed; keeping the last good keys", "issuer", s.label, "cached_keys", len(s.current().keysOrNil()), "err", err)
		return s.current(), err
	}
	snap := s.publish(keys)
	s.m.fetches.WithLabelValues(s.label, "success").Inc()
	s.m.up.WithLabelValues(s.label).Set(1)
	s.m.lastSuccess.WithLabelValues(s.label).Set(float64(s.clock.Now().UnixNano()) / 1e9)
	return snap, nil
}

func (s *keySnapshot) keysOrNil() []publicKey {
	if s == nil {
		return nil
	}
	return s.keys
}

// publish installs keys, keeping the generation when nothing changed.
func (s *keySource) publish(keys []publicKey) *keySnapshot {
	fp := fingerprint(keys)
	for {
		old := s.snap.Load()
		if old != nil && old.fingerprint == fp {
			return old
		}
		next := &keySnapshot{keys: keys, fingerprint: fp, gen: 1}
		if old != nil {
			next.gen = old.gen + 1
		}
		if s.snap.CompareAndSwap(old, next) {
			s.log.Info("jwks keys updated", "issuer", s.label, "keys", len(keys), "generation", next.gen)
			return next
		}
	}
}

func (s *keySource) fetchKeys(ctx context.Context) ([]publicKey, error) {
	uri := s.uri
	if s.discovery {
		var err error
		if uri, err = s.discover(ctx); err != nil {
			return nil, err
		}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, uri, nil)
	if err != nil {
		return nil, fmt.Errorf("jwks request %s: %w", uri, err)
	}
	req.Header.Set("Accept", "application/json")
	resp, err := s.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("get jwks %s: %w", uri, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxJWKSBytes+1))
	if err != nil {
		return nil, fmt.Errorf("read jwks %s: %w", uri, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("get jwks %s: status %s", uri, resp.Status)
	}
	if len(body) > maxJWKSBytes {
		return nil, fmt.Errorf("jwks %s is larger than %d bytes", uri, maxJWKSBytes)
	}
	keys, ignored, err := parseJWKS(body)
	for _, why := range ignored {
		s.log.Warn("jwks key ignored", "issuer", s.label, "jwks_uri", uri, "reason", why)
	}
	if err != nil {
		return nil, fmt.Errorf("jwks %s: %w", uri, err)
	}
	return keys, nil
}

// discover returns the issuer's jwks_uri, from go-oidc's discovery (which also
// checks the document names the same issuer).
func (s *keySource) discover(ctx context.Context) (string, error) {
	s.mu.Lock()
	uri := s.discovered
	s.mu.Unlock()
	if uri != "" {
		return uri, nil
	}
	p, err := oidc.NewProvider(oidc.ClientContext(ctx, s.client), s.issuer)
	if err != nil {
		return "", fmt.Errorf("openid discovery for %s: %w", s.issuer, err)
	}
	var doc struct {
		JWKSURI string `json:"jwks_uri"`
	}
	if err := p.Claims(&doc); err != nil {
		return "", fmt.Errorf("openid discovery for %s: %w", s.issuer, err)
	}
	if err := checkHTTPURL(doc.JWKSURI); err != nil {
		return "", fmt.Errorf("openid discovery for %s: jwks_uri: %w", s.issuer, err)
	}
	s.mu.Lock()
	s.discovered = doc.JWKSURI
	s.mu.Unlock()
	return doc.JWKSURI, nil
}

// parseJWKS decodes a JWK Set with go-jose one key at a time, so that one key
// of an unsupported type or a weak one is skipped (reported in ignored) rather
// than failing the set. A set with no usable key is an error.
// CheckJWKS says why an inline JWK Set has no key the authenticator can use,
// or nil when it has one. A rule with such a set still loads (as in Envoy):
// every token it would verify gets 401.
func CheckJWKS(jwks string) error {
	_, _, err := parseJWKS([]byte(jwks))
	return err
}

func parseJWKS(data []byte) (keys []publicKey, ignored []string, err error) {
	var set struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(data, &set); err != nil {
		return nil, nil, fmt.Errorf("not a JWK Set: %w", err)
	}
	for i, raw := range set.Keys {
		var jwk jose.JSONWebKey
		if err := jwk.UnmarshalJSON(raw); err != nil {
			ignored = append(ignored, fmt.Sprintf("key %d: %v", i, err))
			continue
		}
		k, why := usableKey(jwk)
		if why != "" {
			ignored = append(ignored, fmt.Sprintf("key %d (kid %q): %s", i, jwk.KeyID, why))
			continue
		}
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		if len(ignored) > 0 {
			return nil, ignored, fmt.Errorf("%w (%s)", errNoUsableKey, strings.Join(ignored, "; "))
		}
		return nil, nil, errNoUsableKey
	}
	return keys, ignored, nil
}

// usableKey derives the algorithms a JWK may verify from its type and curve,
// narrowed by its alg when set. Private halves are dropped; symmetric keys,
// encryption keys and RSA keys under 2048 bits are refused.
func usableKey(jwk jose.JSONWebKey) (publicKey, string) {
	if jwk.Use != "" && jwk.Use != "sig" {
		return publicKey{}, fmt.Sprintf("use %q is not \"sig\"", jwk.Use)
	}
	pub := jwk.Public()
	if !pub.Valid() {
		return publicKey{}, "not an asymmetric public key (symmetric keys are never accepted)"
	}
	var algs []jose.SignatureAlgorithm
	switch k := pub.Key.(type) {
	case *rsa.PublicKey:
		if n := k.N.BitLen(); n < minRSABits {
			return publicKey{}, fmt.Sprintf("RSA key has %d bits; at least %d are required", n, minRSABits)
		}
		algs = []jose.SignatureAlgorithm{jose.RS256, jose.RS384, jose.RS512, jose.PS256, jose.PS384, jose.PS512}
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256():
			algs = []jose.SignatureAlgorithm{jose.ES256}
		case elliptic.P384():
			algs = []jose.SignatureAlgorithm{jose.ES384}
		case elliptic.P521():
			algs = []jose.SignatureAlgorithm{jose.ES512}
		default:
			return publicKey{}, "unsupported EC curve"
		}
	case ed25519.PublicKey:
		algs = []jose.SignatureAlgorithm{jose.EdDSA}
	default:
		return publicKey{}, fmt.Sprintf("unsupported key type %T", pub.Key)
	}
	if jwk.Algorithm != "" {
		a := jose.SignatureAlgorithm(jwk.Algorithm)
		if !slices.Contains(algs, a) {
			return publicKey{}, fmt.Sprintf("alg %q does not fit the key type", jwk.Algorithm)
		}
		algs = []jose.SignatureAlgorithm{a}
	}
	return publicKey{kid: jwk.KeyID, key: pub.Key, algs: algs}, ""
}

// fingerprint identifies a key set by kid, algorithms and RFC 7638 thumbprint.
func fingerprint(keys []publicKey) string {
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		jwk := jose.JSONWebKey{Key: k.key}
		tp, err := jwk.Thumbprint(crypto.SHA256)
		if err != nil {
			tp = []byte(fmt.Sprintf("%p", k.key))
		}
		algs := make([]string, len(k.algs))
		for i, a := range k.algs {
			algs[i] = string(a)
		}
		parts = append(parts, k.kid+"|"+strings.Join(algs, ",")+"|"+base64.RawURLEncoding.EncodeToString(tp))
	}
	sort.Strings(parts)
	return strings.Join(parts, "\n")
}

// run refreshes the source until ctx ends: every interval after a success, and
// after a failure from minInterval doubling up to interval.
func (s *keySource) run(ctx context.Context, clk clock.WithTicker, interval, minInterval time.Duration) {
	backoff := minInterval
	for {
		_, err := s.refresh(ctx)
		if ctx.Err() != nil {
			return
		}
		next := interval
		if err != nil {
			next, backoff = backoff, min(2*backoff, interval)
		} else {
			backoff = minInterval
		}
		t := clk.NewTimer(next)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C():
		}
	}
}
