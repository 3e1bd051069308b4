package jwt

import (
	"errors"
	"fmt"
	"golang.org/x/net/http/httpguts"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/utils/clock"
)

// Defaults for Config and Rule fields left zero.
const (
	DefaultClockSkew          = 60 * time.Second // Envoy's jwt_verify_lib kClockSkewInSecond
	DefaultRefreshInterval    = 20 * time.Minute // istiod's JWKS refresh interval
	DefaultMinRefreshInterval = 5 * time.Second
	DefaultMaxTokenBytes      = 8 << 10
	DefaultTokenCacheSize     = 10000
	DefaultTimeout            = 5 * time.Second // RequestAuthentication jwtRules[].timeout
)

// ErrInvalidConfig is wrapped by every error New returns for a bad Config.
var ErrInvalidConfig = errors.New("invalid jwt config")

// HeaderLocation is a jwtRules[].fromHeaders entry: the token is the value of
// header Name after Prefix (e.g. "Bearer ").
type HeaderLocation struct{ Name, Prefix string }

// ClaimToHeader is a jwtRules[].outputClaimToHeaders entry.
type ClaimToHeader struct{ Header, Claim string }

// Rule is one RequestAuthentication jwtRules entry, after merging all
// RequestAuthentications that apply to the workload.
type Rule struct {
	// Issuer must equal the token's iss. Empty means any issuer and needs JWKSURI.
	Issuer string
	// Audiences, when non-empty, must contain one of the token's aud values (else 403).
	Audiences []string
	// JWKSURI is fetched for keys; JWKS is inline JSON. Neither: OpenID discovery
	// from Issuer.
	JWKSURI string
	JWKS    string

	// Token locations. When all three are empty the defaults apply:
	// "Authorization: Bearer <t>" and "?access_token=<t>".
	FromHeaders []HeaderLocation
	FromParams  []string
	FromCookies []string

	// OutputPayloadToHeader receives base64url(payload) on success.
	OutputPayloadToHeader string
	// OutputClaimToHeaders copy primitive claims (nested via a.b.c) to headers.
	OutputClaimToHeaders []ClaimToHeader
	// ForwardOriginalToken keeps the header that carried the token.
	ForwardOriginalToken bool
	// Timeout bounds one JWKS (and discovery) fetch; default 5s.
	Timeout time.Duration
	// SpaceDelimitedClaims are reported in Result for authorization, which splits
	// them on whitespace; "scope" and "permission" always are.
	SpaceDelimitedClaims []string
}

// Config configures an Authenticator.
type Config struct {
	Rules []Rule

	// ClockSkew is allowed on exp and nbf; default 60s.
	ClockSkew time.Duration
	// RefreshInterval is how often Run refetches every remote JWKS; default 20m.
	RefreshInterval time.Duration
	// MinRefreshInterval rate-limits refetches caused by an unknown kid, per key
	// source, and is the first retry delay after a failed fetch; default 5s.
	MinRefreshInterval time.Duration
	// MaxTokenBytes: longer tokens are invalid (401); default 8 KiB.
	MaxTokenBytes int
	// TokenCacheSize bounds the verified-token cache; default 10000, negative
	// disables it.
	TokenCacheSize int

	// HTTPClient fetches discovery documents and JWKS; default a new http.Client.
	HTTPClient *http.Client
	Clock      clock.WithTicker
	Log        *slog.Logger
	// Metrics receives the package's collectors; nil keeps them unregistered.
	Metrics prometheus.Registerer
}

func (c *Config) setDefaults() {
	if c.ClockSkew == 0 {
		c.ClockSkew = DefaultClockSkew
	}
	if c.RefreshInterval == 0 {
		c.RefreshInterval = DefaultRefreshInterval
	}
	if c.MinRefreshInterval == 0 {
		c.MinRefreshInterval = DefaultMinRefreshInterval
	}
	if c.MaxTokenBytes == 0 {
		c.MaxTokenBytes = DefaultMaxTokenBytes
	}
	if c.TokenCacheSize == 0 {
		c.TokenCacheSize = DefaultTokenCacheSize
	}
	if c.HTTPClient == nil {
		c.HTTPClient = &http.Client{}
	}
	if c.Clock == nil {
		c.Clock = clock.RealClock{}
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
}

func (c *Config) validate() error {
	if c.ClockSkew < 0 || c.RefreshInterval < 0 || c.MinRefreshInterval < 0 || c.MaxTokenBytes < 0 {
		return fmt.Errorf("%w: ClockSkew, RefreshInterval, MinRefreshInterval and MaxTokenBytes must not be negative", ErrInvalidConfig)
	}
	if c.MinRefreshInterval > c.RefreshInterval {
		return fmt.Errorf("%w: MinRefreshInterval %s exceeds RefreshInterval %s", ErrInvalidConfig, c.MinRefreshInterval, c.RefreshInterval)
	}
	for i := range c.Rules {
		if err := c.Rules[i].validate(); err != nil {
			return fmt.Errorf("%w: jwtRules[%d] (issuer %q): %w", ErrInvalidConfig, i, c.Rules[i].Issuer, err)
		}
	}
	return nil
}

func (r *Rule) validate() error {
	switch {
	case r.JWKS != "" && r.JWKSURI != "":
		return errors.New("jwks and jwksUri are both set; set one")
	case r.Issuer == "" && r.JWKSURI == "":
		return errors.New("issuer is empty; an empty issuer (any issuer) needs jwksUri")
	case r.Timeout < 0:
		return errors.New("timeout must not be negative")
	}
	if r.JWKSURI != "" {
		if err := checkHTTPURL(r.JWKSURI); err != nil {
			return fmt.Errorf("jwksUri: %w", err)
		}
	}
	if r.JWKS == "" && r.JWKSURI == "" {
		if err := checkHTTPURL(r.Issuer); err != nil {
			return fmt.Errorf("issuer is used for OpenID discovery (no jwks or jwksUri): %w", err)
		}
	}
	for j, h := range r.FromHeaders {
		if !httpguts.ValidHeaderFieldName(h.Name) {
			return fmt.Errorf("fromHeaders[%d]: %q is not a valid header name", j, h.Name)
		}
	}
	for j, p := range r.FromParams {
		if p == "" {
			return fmt.Errorf("fromParams[%d] is empty", j)
		}
	}
	for j, c := range r.FromCookies {
		if c == "" || strings.ContainsAny(c, "=; \t") {
			return fmt.Errorf("fromCookies[%d]: %q is not a valid cookie name", j, c)
		}
	}
	if r.OutputPayloadToHeader != "" && !httpguts.ValidHeaderFieldName(r.OutputPayloadToHeader) {
		return fmt.Errorf("outputPayloadToHeader: %q is not a valid header name", r.OutputPayloadToHeader)
	}
	for j, ch := range r.OutputClaimToHeaders {
		if !httpguts.ValidHeaderFieldName(ch.Header) {
			return fmt.Errorf("outputClaimToHeaders[%d].header: %q is not a valid header name", j, ch.Header)
		}
		if ch.Claim == "" {
			return fmt.Errorf("outputClaimToHeaders[%d].claim is empty", j)
		}
	}
	return nil
}

func checkHTTPURL(s string) error {
	u, err := url.Parse(s)
	if err != nil {
		return err
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("%q is not an absolute http(s) URL", s)
	}
	return nil
}

// validHeaderValue rejects control characters, so a claim cannot smuggle a line
// break into an upstream header.
func validHeaderValue(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < 0x20 && c != '\t') || c == 0x7f {
			return false
		}
	}
	return true
}
