package authz

import (
	"encoding/base64"
	"fmt"
	"strconv"
	"strings"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/util"
)

// BodyConfig is a CUSTOM provider's includeRequestBodyInCheck (Istio's
// envoyExtAuthzGrpc field, Envoy's ext_authz with_request_body): the request
// body, up to MaxRequestBytes, goes in the check.
type BodyConfig struct {
	// MaxRequestBytes is how much of the body is held for the check (more
	// than 0). A longer body is a 413 unless AllowPartialMessage, which sends
	// its first MaxRequestBytes with x-envoy-auth-partial-body: true.
	MaxRequestBytes     int  `json:"maxRequestBytes"`
	AllowPartialMessage bool `json:"allowPartialMessage,omitempty"`
	// PackAsBytes sends the body as raw_body (bytes) instead of body (text).
	PackAsBytes bool `json:"packAsBytes,omitempty"`
}

// Check validates c.
func (c BodyConfig) Check() error {
	if c.MaxRequestBytes <= 0 || int64(c.MaxRequestBytes) > 1<<32-1 {
		return fmt.Errorf("includeRequestBodyInCheck.maxRequestBytes %d: want 1 to 4294967295 bytes (Envoy's max_request_bytes must be above 0)", c.MaxRequestBytes)
	}
	return nil
}

// RequestBody is the start of an HTTP request's body, read before the
// decision for CUSTOM providers that include it (Engine.BodyLimit says how
// much to read).
type RequestBody struct {
	// Data is the body's first bytes.
	Data []byte
	// Complete is true when Data is the whole body.
	Complete bool
}

// WithBody wraps p so that its checks carry the request body as cfg says.
func WithBody(p Provider, cfg BodyConfig) Provider { return bodyProvider{p, cfg} }

// WithBodyIf is WithBody when cfg is set, else p itself.
func WithBodyIf(p Provider, cfg *BodyConfig) Provider {
	if cfg == nil {
		return p
	}
	return WithBody(p, *cfg)
}

type bodyProvider struct {
	Provider
	cfg BodyConfig
}

// bodyConfig is the body configuration of a provider WithBody made.
func bodyConfig(p Provider) (BodyConfig, bool) {
	bp, ok := p.(bodyProvider)
	return bp.cfg, ok
}

// checkBody is what one provider's check carries of the request's body.
type checkBody struct {
	data    []byte
	partial bool
	cfg     BodyConfig
}

// bodyFor is the part of r's body a provider configured with cfg gets; tooLarge
// means the body is longer than the provider may take, and the request gets
// 413 (Envoy answers so before asking the server).
func (r *Request) bodyFor(cfg BodyConfig) (cb *checkBody, tooLarge bool) {
	cb = &checkBody{cfg: cfg}
	if r.Body == nil {
		return cb, false
	}
	cb.data = r.Body.Data
	cb.partial = !r.Body.Complete
	if len(cb.data) > cfg.MaxRequestBytes {
		cb.data, cb.partial = cb.data[:cfg.MaxRequestBytes], true
	}
	return cb, cb.partial && !cfg.AllowPartialMessage
}

// partialHeader is the header Envoy adds to the check when partial bodies are
// allowed.
const partialHeader = "x-envoy-auth-partial-body"

// bodyItems are the http attributes that carry the body: body as text or
// raw_body as base64 (protojson's bytes), as Envoy's CheckRequest has them.
func (cb *checkBody) bodyItems() [][2]*ast.Term {
	if cb == nil {
		return nil
	}
	if cb.cfg.PackAsBytes {
		return [][2]*ast.Term{item("raw_body", str(base64.StdEncoding.EncodeToString(cb.data)))}
	}
	return [][2]*ast.Term{item("body", str(string(cb.data)))}
}

// withPartialHeader adds x-envoy-auth-partial-body when the provider allows
// partial bodies, replacing one the client sent.
func (cb *checkBody) withPartialHeader(hs []Header) []Header {
	if cb == nil || !cb.cfg.AllowPartialMessage {
		return hs
	}
	out := make([]Header, 0, len(hs)+1)
	for _, h := range hs {
		if !strings.EqualFold(h.Name, partialHeader) {
			out = append(out, h)
		}
	}
	return append(out, Header{Name: partialHeader, Value: strconv.FormatBool(cb.partial)})
}

// parsedBody is opa-envoy-plugin's parsed_body and truncated_body: a JSON
// body (content-type application/json) parsed, null for anything else; a
// body shorter than its content-length is truncated, and not parsed. A JSON
// body that does not parse is an error, as it is for opa-envoy-plugin, and
// the provider's check fails.
func (r *Request) parsedBody(cb *checkBody) (*ast.Term, bool, error) {
	if cb == nil || cb.cfg.PackAsBytes {
		return ast.NullTerm(), false, nil
	}
	ct := ""
	cl := ""
	for _, h := range r.Headers {
		switch strings.ToLower(h.Name) {
		case "content-type":
			ct = h.Value
		case "content-length":
			cl = h.Value
		}
	}
	if !strings.Contains(ct, "application/json") || len(cb.data) == 0 {
		return ast.NullTerm(), false, nil
	}
	if cl != "" {
		n, err := strconv.ParseInt(cl, 10, 64)
		if err != nil {
			return nil, false, fmt.Errorf("content-length %q: %w", cl, err)
		}
		if n > int64(len(cb.data)) {
			return ast.NullTerm(), true, nil
		}
	}
	if cb.partial {
		return ast.NullTerm(), true, nil
	}
	var v any
	if err := util.UnmarshalJSON(cb.data, &v); err != nil {
		return nil, false, fmt.Errorf("parsed_body: the JSON body does not parse: %w", err)
	}
	t, err := ast.InterfaceToValue(v)
	if err != nil {
		return nil, false, fmt.Errorf("parsed_body: %w", err)
	}
	return ast.NewTerm(t), false, nil
}
