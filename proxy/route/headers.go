package route

import (
	"errors"
	"fmt"
	"net/http"
	"net/textproto"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
)

// headerOps is one level's request_headers_to_add/_remove (or the response
// pair): a compiled Envoy HeaderParser.
type headerOps struct {
	remove []string // canonical keys
	add    []headerOp
}

type headerOp struct {
	key    string // canonical key
	value  string
	action corev3.HeaderValueOption_HeaderAppendAction
}

// apply does what Envoy's HeaderParser does: remove first, then decide every
// addition against the headers as they are after removal, then overwrite,
// then append. It never stores a slice of its own in h.
func (o *headerOps) apply(h http.Header) {
	if o == nil {
		return
	}
	for _, k := range o.remove {
		delete(h, k)
	}
	if len(o.add) == 0 {
		return
	}
	var small [16]bool
	fire := small[:0]
	if len(o.add) > len(small) {
		fire = make([]bool, 0, len(o.add))
	}
	for _, op := range o.add {
		_, exists := h[op.key]
		exists = exists && len(h[op.key]) > 0
		switch op.action {
		case corev3.HeaderValueOption_ADD_IF_ABSENT:
			fire = append(fire, !exists)
		case corev3.HeaderValueOption_OVERWRITE_IF_EXISTS:
			fire = append(fire, exists)
		default:
			fire = append(fire, true)
		}
	}
	for i, op := range o.add {
		if fire[i] && isOverwrite(op.action) {
			h[op.key] = []string{op.value}
		}
	}
	for i, op := range o.add {
		if fire[i] && !isOverwrite(op.action) {
			old := h[op.key]
			h[op.key] = append(old[:len(old):len(old)], op.value)
		}
	}
}

func isOverwrite(a corev3.HeaderValueOption_HeaderAppendAction) bool {
	return a == corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD || a == corev3.HeaderValueOption_OVERWRITE_IF_EXISTS
}

// compileHeaderOps compiles one level's additions and removals. field is the
// prefix of the field names ("request" or "response"); nil means nothing to do.
func compileHeaderOps(at loc, prefix, field string, add []*corev3.HeaderValueOption, remove []string) (*headerOps, error) {
	if len(add) == 0 && len(remove) == 0 {
		return nil, nil
	}
	o := &headerOps{}
	for i, name := range remove {
		f := fmt.Sprintf("%s%s_headers_to_remove[%d]", prefix, field, i)
		if err := checkHeaderName(name); err != nil {
			return nil, at.err(f, err)
		}
		if !modifiable(name) {
			return nil, at.errf(f, "%q: :-prefixed and host headers may not be removed", name)
		}
		o.remove = append(o.remove, textproto.CanonicalMIMEHeaderKey(name))
	}
	for i, hv := range add {
		f := fmt.Sprintf("%s%s_headers_to_add[%d]", prefix, field, i)
		op, keep, err := compileHeaderOp(hv)
		if err != nil {
			return nil, at.err(f, err)
		}
		if keep {
			o.add = append(o.add, op)
		}
	}
	return o, nil
}

// compileHeaderOp compiles one HeaderValueOption; keep is false for an
// addition Envoy would never make (an empty value without keep_empty_value).
func compileHeaderOp(hv *corev3.HeaderValueOption) (op headerOp, keep bool, err error) {
	h := hv.GetHeader()
	if h == nil {
		return op, false, errors.New("header is missing")
	}
	key := h.GetKey()
	if err := checkHeaderName(key); err != nil {
		return op, false, fmt.Errorf("header.key: %w", err)
	}
	if !modifiable(key) {
		return op, false, fmt.Errorf("header.key %q: :-prefixed and host headers may not be modified (use the route's host_rewrite or path rewrite)", key)
	}
	if h.GetValue() != "" && len(h.GetRawValue()) > 0 {
		return op, false, errors.New("header: only one of value and raw_value may be set")
	}
	raw := h.GetValue()
	if len(h.GetRawValue()) > 0 {
		raw = string(h.GetRawValue())
	}
	value, err := literalHeaderValue(raw)
	if err != nil {
		return op, false, fmt.Errorf("header.value: %w", err)
	}
	if strings.ContainsAny(value, "\r\n\x00") {
		return op, false, fmt.Errorf("header.value %q: CR, LF and NUL are not allowed", value)
	}
	action := hv.GetAppendAction()
	//lint:ignore SA1019 Envoy still honours this deprecated field, so the sidecar must too.
	if legacy := hv.GetAppend(); legacy != nil {
		if action != corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD {
			return op, false, errors.New("both append and append_action are set; use only append_action")
		}
		if !legacy.GetValue() {
			action = corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD
		}
	}
	if _, ok := corev3.HeaderValueOption_HeaderAppendAction_name[int32(action)]; !ok {
		return op, false, fmt.Errorf("append_action: unknown value %d", action)
	}
	op = headerOp{key: textproto.CanonicalMIMEHeaderKey(key), value: value, action: action}
	return op, value != "" || hv.GetKeepEmptyValue(), nil
}

// literalHeaderValue resolves Envoy's header value format for values without
// commands: "%%" is a literal "%". A command (%REQ(x)%, %UPSTREAM_METADATA...%)
// needs per-request context this package does not have, so it is refused.
func literalHeaderValue(v string) (string, error) {
	if !strings.Contains(v, "%") {
		return v, nil
	}
	var b strings.Builder
	for i := 0; i < len(v); i++ {
		if v[i] != '%' {
			b.WriteByte(v[i])
			continue
		}
		if i+1 < len(v) && v[i+1] == '%' {
			b.WriteByte('%')
			i++
			continue
		}
		end := strings.IndexByte(v[i+1:], '%')
		if end < 0 {
			return "", fmt.Errorf("%q: unterminated %% (write a literal %% as %%%%)", v)
		}
		return "", fmt.Errorf("%q: formatter command %s: %w (write a literal %% as %%%%)", v, v[i:i+end+2], ErrUnsupported)
	}
	return b.String(), nil
}

func modifiable(name string) bool {
	return !strings.HasPrefix(name, ":") && !strings.EqualFold(name, "host")
}

// checkHeaderName accepts an HTTP field name (an RFC 9110 token), or a
// pseudo-header name.
func checkHeaderName(name string) error {
	n := strings.TrimPrefix(name, ":")
	if n == "" {
		return fmt.Errorf("header name %q is empty", name)
	}
	for i := 0; i < len(n); i++ {
		if !isTokenChar(n[i]) {
			return fmt.Errorf("header name %q: byte %q is not allowed in a header name", name, n[i])
		}
	}
	return nil
}

func isTokenChar(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}
