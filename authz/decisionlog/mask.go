package decisionlog

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// Redacted replaces masked secrets.
const Redacted = "<redacted>"

// Mask operations, as OPA names them.
const (
	opRemove = "remove"
	opUpsert = "upsert"
)

// maskRule is one rule of a mask policy's result, parsed.
type maskRule struct {
	op    string
	path  string   // as written, recorded in erased or masked
	root  string   // "input" or "result"
	parts []string // decoded segments after the root
	value any
}

// parseMaskRules reads the value of data.system.log.mask: a set (an array, once
// out of Rego) of JSON-pointer strings and {"op", "path", "value"} objects. Any
// malformed rule fails the whole set, as in OPA.
func parseMaskRules(v any) ([]maskRule, error) {
	raw, ok := v.([]any)
	if !ok {
		return nil, fmt.Errorf("mask is a %T, want a set of JSON pointers and {op, path, value} objects", v)
	}
	rules := make([]maskRule, 0, len(raw))
	for _, x := range raw {
		var r maskRule
		switch x := x.(type) {
		case string:
			r.op, r.path = opRemove, x
		case map[string]any:
			op, _ := x["op"].(string)
			if op != opRemove && op != opUpsert {
				return nil, fmt.Errorf("mask rule %v: op must be %q or %q", x, opRemove, opUpsert)
			}
			path, _ := x["path"].(string)
			r.op, r.path, r.value = op, path, x["value"]
		default:
			return nil, fmt.Errorf("mask rule %v: want a JSON pointer string or an object, got %T", x, x)
		}
		if err := r.parsePath(); err != nil {
			return nil, err
		}
		rules = append(rules, r)
	}
	return rules, nil
}

func (r *maskRule) parsePath() error {
	if r.path == "" || r.path[0] != '/' {
		return fmt.Errorf("mask path %q: must start with /input or /result", r.path)
	}
	segs := strings.Split(r.path[1:], "/")
	if segs[0] != "input" && segs[0] != "result" {
		return fmt.Errorf("mask path %q: must start with /input or /result", r.path)
	}
	r.root = segs[0]
	r.parts = segs[1:]
	for i, s := range r.parts {
		d, err := unescapePointer(s)
		if err != nil {
			return fmt.Errorf("mask path %q: %w", r.path, err)
		}
		r.parts[i] = d
	}
	return nil
}

// apply runs r on e, whose Input and Result are private generic JSON values.
// A path that does not exist is skipped, as in OPA.
func (r *maskRule) apply(e *Event) {
	doc := &e.Input
	if r.root == "result" {
		doc = &e.Result
	}
	if *doc == nil {
		return
	}
	switch r.op {
	case opRemove:
		if len(r.parts) == 0 {
			*doc = nil
		} else {
			v, ok := removeAt(*doc, r.parts)
			if !ok {
				return
			}
			*doc = v
		}
		e.Erased = append(e.Erased, r.path)
	case opUpsert:
		if len(r.parts) == 0 {
			*doc = r.value
		} else {
			v, ok := upsertAt(*doc, r.parts, r.value)
			if !ok {
				return
			}
			*doc = v
		}
		e.Masked = append(e.Masked, r.path)
	}
}

// removeAt deletes the member or element at parts under node and returns the
// node (a new slice header when an array shrinks).
func removeAt(node any, parts []string) (any, bool) {
	key, rest := parts[0], parts[1:]
	switch n := node.(type) {
	case map[string]any:
		child, ok := n[key]
		if !ok {
			return node, false
		}
		if len(rest) == 0 {
			delete(n, key)
			return n, true
		}
		c, ok := removeAt(child, rest)
		if ok {
			n[key] = c
		}
		return n, ok
	case []any:
		i, ok := index(key, len(n))
		if !ok {
			return node, false
		}
		if len(rest) == 0 {
			return slices.Delete(n, i, i+1), true
		}
		c, ok := removeAt(n[i], rest)
		if ok {
			n[i] = c
		}
		return n, ok
	}
	return node, false
}

// upsertAt sets the member or element at parts under node, creating missing
// objects on the way (array elements must exist).
func upsertAt(node any, parts []string, v any) (any, bool) {
	key, rest := parts[0], parts[1:]
	switch n := node.(type) {
	case map[string]any:
		if len(rest) == 0 {
			n[key] = v
			return n, true
		}
		child, ok := n[key]
		if !ok {
			child = map[string]any{}
		}
		c, ok := upsertAt(child, rest, v)
		if ok {
			n[key] = c
		}
		return n, ok
	case []any:
		i, ok := index(key, len(n))
		if !ok {
			return node, false
		}
		if len(rest) == 0 {
			n[i] = v
			return n, true
		}
		c, ok := upsertAt(n[i], rest, v)
		if ok {
			n[i] = c
		}
		return n, ok
	}
	return node, false
}

func index(s string, n int) (int, bool) {
	i, err := strconv.Atoi(s)
	if err != nil || i < 0 || i >= n || strconv.Itoa(i) != s {
		return 0, false
	}
	return i, true
}

// unescapePointer decodes one RFC 6901 segment.
func unescapePointer(s string) (string, error) {
	if !strings.Contains(s, "~") {
		return s, nil
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '~' {
			b.WriteByte(s[i])
			continue
		}
		if i+1 == len(s) || s[i+1] != '0' && s[i+1] != '1' {
			return "", errors.New(`"~" must be followed by 0 or 1 in a JSON pointer`)
		}
		if s[i+1] == '0' {
			b.WriteByte('~')
		} else {
			b.WriteByte('/')
		}
		i++
	}
	return b.String(), nil
}

var pointerEscaper = strings.NewReplacer("~", "~0", "/", "~1")

func escapePointer(s string) string {
	if !strings.ContainsAny(s, "~/") {
		return s
	}
	return pointerEscaper.Replace(s)
}

// secretHeaders are always replaced by Redacted.
var secretHeaders = map[string]bool{"authorization": true, "proxy-authorization": true}

const headersPointer = "/input/attributes/request/http/headers"

// maskBuiltin applies the masks that need no policy: the credential headers,
// then the signature of every JWT-looking string in input. e.Input is a private
// generic JSON value.
func maskBuiltin(e *Event) {
	if h, ok := lookup(e.Input, "attributes", "request", "http", "headers").(map[string]any); ok {
		for _, k := range sortedKeys(h) {
			if _, isString := h[k].(string); isString && secretHeaders[strings.ToLower(k)] {
				h[k] = Redacted
				e.Masked = append(e.Masked, headersPointer+"/"+escapePointer(k))
			}
		}
	}
	if e.Input != nil {
		// Maps are walked in no particular order; sorting the pointers keeps the
		// record deterministic.
		first := len(e.Masked)
		e.Input = redactJWTs(e.Input, append(make([]string, 0, 16), "input"), &e.Masked)
		slices.Sort(e.Masked[first:])
	}
}

func lookup(v any, path ...string) any {
	for _, k := range path {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[k]
	}
	return v
}

// redactJWTs walks v and redacts JWT signatures in strings, appending the
// pointer of every string it changed to masked.
func redactJWTs(v any, path []string, masked *[]string) any {
	switch n := v.(type) {
	case string:
		if s, ok := redactJWTString(n); ok {
			*masked = append(*masked, pointer(path))
			return s
		}
	case map[string]any:
		for k, c := range n {
			n[k] = redactJWTs(c, append(path, k), masked)
		}
	case []any:
		for i, c := range n {
			n[i] = redactJWTs(c, append(path, strconv.Itoa(i)), masked)
		}
	}
	return v
}

func pointer(path []string) string {
	var b strings.Builder
	for _, p := range path {
		b.WriteByte('/')
		b.WriteString(escapePointer(p))
	}
	return b.String()
}

// redactJWTString replaces the signature of each JWS compact token in s (three
// base64url segments separated by dots, the first decoding to a JSON object
// with "alg") by Redacted.
func redactJWTString(s string) (string, bool) {
	if strings.Count(s, ".") < 2 {
		return s, false
	}
	var b strings.Builder
	last, changed := 0, false
	for i := 0; i < len(s); {
		if !isTokenByte(s[i]) {
			i++
			continue
		}
		j := i
		for j < len(s) && isTokenByte(s[j]) {
			j++
		}
		start, end := i, j
		for start < end && s[start] == '.' {
			start++
		}
		for end > start && s[end-1] == '.' {
			end--
		}
		if sig, ok := jwtSignature(s[start:end]); ok {
			b.WriteString(s[last : start+sig])
			b.WriteString(Redacted)
			last, changed = end, true
		}
		i = j
	}
	if !changed {
		return s, false
	}
	b.WriteString(s[last:])
	return b.String(), true
}

func isTokenByte(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_' || c == '.'
}

// jwtSignature returns the offset of tok's signature if tok is a signed JWT.
func jwtSignature(tok string) (int, bool) {
	h, rest, ok := strings.Cut(tok, ".")
	if !ok || h == "" {
		return 0, false
	}
	p, sig, ok := strings.Cut(rest, ".")
	if !ok || p == "" || sig == "" || strings.Contains(sig, ".") {
		return 0, false
	}
	hdr, err := base64.RawURLEncoding.DecodeString(h)
	if err != nil {
		return 0, false
	}
	var fields map[string]json.RawMessage
	if json.Unmarshal(hdr, &fields) != nil {
		return 0, false
	}
	if _, ok := fields["alg"]; !ok {
		return 0, false
	}
	return len(h) + 1 + len(p) + 1, true
}
