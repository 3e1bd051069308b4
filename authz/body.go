package authz

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/url"
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

// RequestBody is the start of an HTTP request's body, as a CUSTOM provider
// that includes the body in its check gets it.
type RequestBody struct {
	// Data is the body's first bytes.
	Data []byte
	// Complete is true when Data is the whole body.
	Complete bool
}

// BodyReader reads up to limit bytes of a request's body (it may read one
// more, to know whether that is all) for the decision, leaving the body
// whole for whoever reads it next.
type BodyReader func(limit int) (*RequestBody, error)

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

// readBody is r's body, read through r.ReadBody (up to limit bytes) the first
// time a provider needs it, and kept in r.Body. A request with neither has no
// body.
func (r *Request) readBody(limit int) (*RequestBody, error) {
	if r.Body == nil && r.ReadBody != nil {
		b, err := r.ReadBody(limit)
		if err != nil {
			return nil, err
		}
		r.Body, r.ReadBody = b, nil
	}
	if r.Body == nil {
		return &RequestBody{Complete: true}, nil
	}
	return r.Body, nil
}

// bodyFor is the part of body a provider configured with cfg gets; tooLarge
// means the body is longer than the provider may take, and the request gets
// 413 (Envoy answers so before asking the server).
func bodyFor(body *RequestBody, cfg BodyConfig) (cb *checkBody, tooLarge bool) {
	cb = &checkBody{cfg: cfg, data: body.Data, partial: !body.Complete}
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

// withPartialHeader sets x-envoy-auth-partial-body on a check that carries
// the body, dropping the client's own, as Envoy does whether or not partial
// bodies are allowed.
func (cb *checkBody) withPartialHeader(hs []Header) []Header {
	if cb == nil {
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

// parsedBody is opa-envoy-plugin's parsed_body and truncated_body for the
// body a check carries (as text or as raw_body alike), by the request's
// content-type (repeated headers joined with ",", as the provider sees
// them): JSON parsed; an application/x-www-form-urlencoded body as a map of
// value lists; multipart/form-data as a map of each field's values, a part
// of type application/json parsed; null for anything else and for an empty
// body. A body shorter than the request's content-length is truncated and
// not parsed. A body that does not parse is an error, as it is for
// opa-envoy-plugin, and the provider's check fails.
func (r *Request) parsedBody(cb *checkBody) (*ast.Term, bool, error) {
	if cb == nil {
		return ast.NullTerm(), false, nil
	}
	var ct, cl []string
	for _, h := range r.Headers {
		switch strings.ToLower(h.Name) {
		case "content-type":
			ct = append(ct, h.Value)
		case "content-length":
			cl = append(cl, h.Value)
		}
	}
	contentType := strings.Join(ct, ",")
	kind := ""
	for _, k := range []string{"application/json", "application/x-www-form-urlencoded", "multipart/form-data"} {
		if strings.Contains(contentType, k) {
			kind = k
			break
		}
	}
	if kind == "" || len(cb.data) == 0 {
		return ast.NullTerm(), false, nil
	}
	if len(cl) > 0 {
		n, err := strconv.ParseInt(strings.Join(cl, ","), 10, 64)
		if err != nil {
			return nil, false, fmt.Errorf("parsed_body: content-length %q: %w", strings.Join(cl, ","), err)
		}
		if n != -1 && n > int64(len(cb.data)) {
			return ast.NullTerm(), true, nil
		}
	}
	var v any
	switch kind {
	case "application/json":
		if err := util.UnmarshalJSON(cb.data, &v); err != nil {
			return nil, false, fmt.Errorf("parsed_body: the JSON body does not parse: %w", err)
		}
	case "application/x-www-form-urlencoded":
		q, err := url.ParseQuery(string(cb.data))
		if err != nil {
			return nil, false, fmt.Errorf("parsed_body: the form body does not parse: %w", err)
		}
		v = map[string][]string(q)
	default:
		var err error
		if v, err = multipartValues(contentType, cb.data); err != nil {
			return nil, false, fmt.Errorf("parsed_body: the multipart body does not parse: %w", err)
		}
	}
	t, err := ast.InterfaceToValue(v)
	if err != nil {
		return nil, false, fmt.Errorf("parsed_body: %w", err)
	}
	return ast.NewTerm(t), false, nil
}

// multipartValues is a multipart/form-data body's fields, each a list of its
// values: text, or parsed JSON for a part of type application/json. Parts
// without a form name are skipped; nil without a boundary.
func multipartValues(contentType string, data []byte) (any, error) {
	_, params, err := mime.ParseMediaType(contentType)
	if err != nil {
		return nil, err
	}
	boundary, ok := params["boundary"]
	if !ok {
		return nil, nil
	}
	values := map[string][]any{}
	mr := multipart.NewReader(bytes.NewReader(data), boundary)
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			return values, nil
		}
		if err != nil {
			return nil, err
		}
		name := p.FormName()
		if name == "" {
			continue
		}
		b, err := io.ReadAll(p)
		if err != nil {
			return nil, err
		}
		if strings.Contains(p.Header.Get("Content-Type"), "application/json") {
			var j any
			if err := util.UnmarshalJSON(b, &j); err != nil {
				return nil, err
			}
			values[name] = append(values[name], j)
		} else {
			values[name] = append(values[name], string(b))
		}
	}
}
