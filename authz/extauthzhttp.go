package authz

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
)

// ExtAuthzHTTPConfig configures an external Envoy ext_authz HTTP CUSTOM
// provider (Istio's envoyExtAuthzHttp): the check is an HTTP request to the
// server with the original method and path, and 200 allows.
type ExtAuthzHTTPConfig struct {
	// Target is the server's host:port (plaintext HTTP, as Istio's sample).
	Target string
	// PathPrefix goes before the request's path: "/check" and "/admin" ask
	// "/check/admin".
	PathPrefix string
	// Timeout of one check; default 600 s (Istio's default).
	Timeout time.Duration
	// FailOpen allows requests when the server cannot be reached, times out
	// or answers 5xx.
	FailOpen bool
	// StatusOnError is the HTTP status of a request denied because the check
	// failed; default 403.
	StatusOnError int
	// IncludeRequestHeadersInCheck are the client's headers sent with the
	// check besides Host, Method, Path and Content-Length: exact names,
	// "prefix*" or "*suffix", case-insensitively.
	IncludeRequestHeadersInCheck []string
	// IncludeAdditionalHeadersInCheck are fixed headers sent with the check;
	// they replace a client header of the same name.
	IncludeAdditionalHeadersInCheck map[string]string
	// HeadersToUpstreamOnAllow are the server's response headers (same
	// patterns) that replace the request's before it goes to the app, on 200.
	HeadersToUpstreamOnAllow []string
	// HeadersToDownstreamOnAllow are the server's response headers that go
	// on the response the client gets, on 200.
	HeadersToDownstreamOnAllow []string
	// HeadersToDownstreamOnDeny are the server's response headers the client
	// gets with a denial; empty means all of them but Host.
	HeadersToDownstreamOnDeny []string
	// Client sends the checks; nil uses a plain http.Client.
	Client *http.Client
}

// ExtAuthzHTTPProvider asks an Envoy ext_authz HTTP server.
type ExtAuthzHTTPProvider struct {
	cfg ExtAuthzHTTPConfig
}

// maxCheckResponseBody bounds what is read of the server's answer: the body
// of a denial goes to the client.
const maxCheckResponseBody = 64 << 10

// NewExtAuthzHTTPProvider validates cfg.
func NewExtAuthzHTTPProvider(cfg ExtAuthzHTTPConfig) (*ExtAuthzHTTPProvider, error) {
	if cfg.Target == "" || strings.Contains(cfg.Target, "/") {
		return nil, fmt.Errorf("ext_authz HTTP provider: target %q: want host:port", cfg.Target)
	}
	if cfg.PathPrefix != "" && (!strings.HasPrefix(cfg.PathPrefix, "/") || strings.HasPrefix(cfg.PathPrefix, "//") ||
		strings.ContainsFunc(cfg.PathPrefix, func(r rune) bool { return r <= ' ' || r == 0x7f || r == '?' || r == '#' })) {
		return nil, fmt.Errorf("ext_authz HTTP provider: pathPrefix %q: want a path starting with one /, without spaces, control characters, ? or #", cfg.PathPrefix)
	}
	for k, v := range cfg.IncludeAdditionalHeadersInCheck {
		if err := checkProviderHeader(k, v); err != nil {
			return nil, fmt.Errorf("ext_authz HTTP provider: includeAdditionalHeadersInCheck: %w", err)
		}
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 600 * time.Second
	}
	if cfg.StatusOnError == 0 {
		cfg.StatusOnError = 403
	}
	if cfg.Client == nil {
		cfg.Client = &http.Client{
			Transport:     &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 16, IdleConnTimeout: 90 * time.Second},
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		}
	}
	return &ExtAuthzHTTPProvider{cfg: cfg}, nil
}

// headerMatch reports whether name matches one of Istio's header patterns:
// exact, "prefix*" or "*suffix", case-insensitively.
func headerMatch(name string, patterns []string) bool {
	n := strings.ToLower(name)
	for _, p := range patterns {
		p = strings.ToLower(p)
		switch {
		case p == "*":
			// Istio documents no presence match here; "*" matches nothing.
		case strings.HasSuffix(p, "*"):
			if strings.HasPrefix(n, strings.TrimSuffix(p, "*")) {
				return true
			}
		case strings.HasPrefix(p, "*"):
			if strings.HasSuffix(n, strings.TrimPrefix(p, "*")) {
				return true
			}
		case n == p:
			return true
		}
	}
	return false
}

// Check implements Provider. A server that cannot be reached, times out or
// answers 5xx denies with StatusOnError unless FailOpen.
func (p *ExtAuthzHTTPProvider) Check(ctx context.Context, req *Request, _ ast.Value) ProviderResult {
	ctx, cancel := context.WithTimeout(ctx, p.cfg.Timeout)
	defer cancel()
	path := req.providerPath
	if path == "" {
		path = req.Path
	}
	var body io.Reader
	var n int64
	if cb := req.checkBody; cb != nil {
		body, n = bytes.NewReader(cb.data), int64(len(cb.data))
	}
	method := req.Method
	if method == "" {
		method = http.MethodGet
	}
	hr, err := http.NewRequestWithContext(ctx, method, "http://"+p.cfg.Target+"/", body)
	if err != nil {
		return p.failed("ext_authz HTTP check: " + err.Error())
	}
	// The path goes as it is (normalized, with its query), behind the
	// prefix, in origin form: as an opaque URL a path starting "//" would
	// be sent as an absolute URL naming a host the client chose.
	target, query, _ := strings.Cut(p.cfg.PathPrefix+path, "?")
	hr.URL.Path, hr.URL.RawPath, hr.URL.RawQuery = target, target, query
	if unescaped, err := url.PathUnescape(target); err == nil {
		hr.URL.Path = unescaped
	}
	if hr.URL.EscapedPath() != target {
		return p.failed(fmt.Sprintf("ext_authz HTTP check: path %q cannot be sent as it is", target))
	}
	hr.Host = req.fastHost()
	hr.ContentLength = n
	if n == 0 {
		hr.Body = http.NoBody
	}
	for _, h := range req.checkBody.withPartialHeader(req.Headers) {
		if headerMatch(h.Name, p.cfg.IncludeRequestHeadersInCheck) || strings.EqualFold(h.Name, partialHeader) && req.checkBody != nil {
			hr.Header.Add(h.Name, h.Value)
		}
	}
	for k, v := range p.cfg.IncludeAdditionalHeadersInCheck {
		hr.Header.Set(k, v)
	}
	hr.Header.Del("Content-Length")
	resp, err := p.cfg.Client.Do(hr)
	if err != nil {
		return p.failedOrOpen("ext_authz HTTP check failed: " + err.Error())
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 500 {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxCheckResponseBody))
		return p.failedOrOpen(fmt.Sprintf("ext_authz HTTP server answered %d", resp.StatusCode))
	}
	if resp.StatusCode == http.StatusOK {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxCheckResponseBody))
		res := ProviderResult{Allowed: true, Reason: "allowed by ext_authz (HTTP)", Headers: map[string]string{}}
		for k, vs := range resp.Header {
			if len(vs) == 0 {
				continue
			}
			if headerMatch(k, p.cfg.HeadersToUpstreamOnAllow) {
				res.Headers[strings.ToLower(k)] = strings.Join(vs, ",")
			}
			if headerMatch(k, p.cfg.HeadersToDownstreamOnAllow) {
				res.ResponseHeaders = append(res.ResponseHeaders, responseValues(k, vs)...)
			}
		}
		return res
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxCheckResponseBody))
	if err != nil {
		return p.failedOrOpen("ext_authz HTTP check: reading the answer: " + err.Error())
	}
	status := resp.StatusCode
	if !ValidStatus(status) {
		return p.failed(fmt.Sprintf("ext_authz HTTP server denied with status %d, which Envoy does not support", status))
	}
	res := ProviderResult{Status: status, Reason: fmt.Sprintf("denied by ext_authz (HTTP %d)", status), Body: string(b), Headers: map[string]string{}}
	always := []string{"path", "status", "www-authenticate", "location"}
	for k, vs := range resp.Header {
		lk := strings.ToLower(k)
		if len(vs) == 0 || lk == "host" || lk == "content-length" || lk == "transfer-encoding" || lk == "connection" || lk == "date" {
			continue
		}
		if len(p.cfg.HeadersToDownstreamOnDeny) == 0 || headerMatch(lk, p.cfg.HeadersToDownstreamOnDeny) || headerMatch(lk, always) {
			if len(vs) > 1 {
				// Each value its own line (Set-Cookie cannot be joined).
				res.ResponseHeaders = append(res.ResponseHeaders, responseValues(lk, vs)...)
			} else {
				res.Headers[lk] = vs[0]
			}
		}
	}
	return res
}

// responseValues are the response header operations that give the client
// every value of a header on its own line (Set-Cookie cannot be joined with
// commas): the first replaces the response's header, the rest are added.
func responseValues(name string, vs []string) []ResponseHeader {
	out := make([]ResponseHeader, len(vs))
	for i, v := range vs {
		out[i] = ResponseHeader{Name: strings.ToLower(name), Value: v, Append: i > 0}
	}
	return out
}

func (p *ExtAuthzHTTPProvider) failedOrOpen(reason string) ProviderResult {
	if p.cfg.FailOpen {
		return ProviderResult{Allowed: true, Reason: reason + "; fail-open"}
	}
	return p.failed(reason)
}

// failed is the denial of a request the server could not decide.
func (p *ExtAuthzHTTPProvider) failed(reason string) ProviderResult {
	status := p.cfg.StatusOnError
	if !ValidStatus(status) {
		status = 403
	}
	return ProviderResult{Status: status, Reason: reason}
}
