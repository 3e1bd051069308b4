package decisionlog

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"
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

// minSecretLen is the shortest credential (a secret header's value, or its part
// after the scheme) that is also redacted where it is quoted elsewhere in the
// event; shorter ones would redact ordinary words.
const minSecretLen = 8

// maskBuiltin applies the masks that need no policy to everything in e that a
// request or a CUSTOM provider can fill: the credential headers of the request
// (input) and of a provider's result (result.headers) become Redacted; then, in
// input and result, member names as well as values, and in the mesh reason and
// request ID, every quotation of those credentials becomes Redacted and the
// signature of every JWT-looking string is redacted. Member names that are not
// valid UTF-8 are escaped (escapeKey) so that no two encode alike. Each change
// is recorded in e.Masked by its JSON pointer (the new name for a renamed
// member). e.Input and e.Result are private generic JSON values.
func maskBuiltin(e *Event) {
	first := len(e.Masked)
	var secrets []string
	for _, h := range []struct {
		doc  any
		path []string
	}{
		{e.Input, []string{"input", "attributes", "request", "http", "headers"}},
		{e.Result, []string{"result", "headers"}},
	} {
		m, ok := lookup(h.doc, h.path[1:]...).(map[string]any)
		if !ok {
			continue
		}
		for k, v := range m {
			s, isString := v.(string)
			if !isString || !secretHeaders[strings.ToLower(k)] {
				continue
			}
			secrets = appendSecrets(secrets, s)
			m[k] = Redacted
			e.Masked = append(e.Masked, pointer(append(slices.Clip(h.path), k)))
		}
	}
	// A provider's header changes as lists ({"name", "value"} objects, in
	// result.append_headers or result.response_headers).
	if res, ok := e.Result.(map[string]any); ok {
		for k, v := range res {
			list, ok := v.([]any)
			if !ok || !strings.HasSuffix(k, "headers") {
				continue
			}
			for i, h := range list {
				secrets = maskHeaderEntry(h, []string{"result", k, strconv.Itoa(i)}, secrets, &e.Masked)
			}
		}
	}
	r := redactor{secrets: secrets, masked: &e.Masked}
	path := make([]string, 1, 16)
	if e.Input != nil {
		path[0] = "input"
		e.Input = r.walk(e.Input, path)
	}
	if e.Result != nil {
		path[0] = "result"
		e.Result = r.walk(e.Result, path)
	}
	for _, f := range []struct {
		s    *string
		name string
	}{{&e.Rampart.Reason, "reason"}, {&e.Rampart.RequestID, "request_id"}} {
		if s, ok := r.redact(*f.s); ok {
			*f.s = s
			e.Masked = append(e.Masked, "/rampart/"+f.name)
		}
	}
	// Maps are walked in no particular order; sorting the pointers keeps the
	// record deterministic.
	slices.Sort(e.Masked[first:])
	e.Masked = slices.Compact(e.Masked)
}

// maskHeaderEntry redacts the value of h, a {"name", "value"} object (either
// case), if it names a credential header, and returns secrets with the value.
func maskHeaderEntry(h any, path, secrets []string, masked *[]string) []string {
	m, ok := h.(map[string]any)
	if !ok {
		return secrets
	}
	var name string
	for _, k := range []string{"name", "Name"} {
		if n, ok := m[k].(string); ok {
			name = n
		}
	}
	if !secretHeaders[strings.ToLower(name)] {
		return secrets
	}
	for _, k := range []string{"value", "Value"} {
		if v, ok := m[k].(string); ok {
			secrets = appendSecrets(secrets, v)
			m[k] = Redacted
			*masked = append(*masked, pointer(append(path, k)))
		}
	}
	return secrets
}

// appendSecrets adds a credential header's value and, for "Scheme credential",
// the credential, when they are long enough to search for. A JWT is left to
// the signature redaction, which keeps its header and claims readable.
func appendSecrets(secrets []string, v string) []string {
	add := func(s string) {
		s = strings.TrimSpace(s)
		if _, isJWT := redactJWTString(s); len(s) >= minSecretLen && !isJWT {
			secrets = append(secrets, s)
		}
	}
	add(v)
	if _, cred, ok := strings.Cut(strings.TrimSpace(v), " "); ok {
		add(cred)
	}
	return secrets
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

// redactor redacts quoted credentials and JWT signatures in a document.
type redactor struct {
	secrets []string
	masked  *[]string
}

// redact replaces each quoted credential and each JWT signature in s by
// Redacted.
func (r redactor) redact(s string) (string, bool) {
	changed := false
	for _, sec := range r.secrets {
		if strings.Contains(s, sec) {
			s, changed = strings.ReplaceAll(s, sec, Redacted), true
		}
	}
	if out, ok := redactJWTString(s); ok {
		s, changed = out, true
	}
	return s, changed
}

// walk redacts v's strings and member names, appending the pointer of every
// string or member it changed to masked, and returns v.
func (r redactor) walk(v any, path []string) any {
	switch n := v.(type) {
	case string:
		if s, ok := r.redact(n); ok {
			*r.masked = append(*r.masked, pointer(path))
			return s
		}
	case map[string]any:
		r.renameKeys(n, path)
		for k, c := range n {
			n[k] = r.walk(c, append(path, k))
		}
	case []any:
		for i, c := range n {
			n[i] = r.walk(c, append(path, strconv.Itoa(i)))
		}
	}
	return v
}

// renameKeys gives every member of m whose name holds a credential, a JWT
// signature or invalid UTF-8 its redacted or escaped name. A new name that is
// taken gets a "#N" suffix: two members never collapse into one, nor encode as
// duplicate names.
func (r redactor) renameKeys(m map[string]any, path []string) {
	var old []string
	for k := range m {
		if nk, _ := r.key(k); nk != k {
			old = append(old, k)
		}
	}
	if len(old) == 0 {
		return
	}
	slices.Sort(old)
	vals := make([]any, len(old))
	for i, k := range old {
		vals[i] = m[k]
		delete(m, k)
	}
	for i, k := range old {
		nk, redacted := r.key(k)
		if _, taken := m[nk]; taken {
			for j := 2; ; j++ {
				if _, taken := m[nk+"#"+strconv.Itoa(j)]; !taken {
					nk += "#" + strconv.Itoa(j)
					break
				}
			}
		}
		m[nk] = vals[i]
		if redacted {
			*r.masked = append(*r.masked, pointer(append(path, nk)))
		}
	}
}

// key returns the name a member named k gets, and whether a secret was
// redacted from it.
func (r redactor) key(k string) (string, bool) {
	s, redacted := r.redact(k)
	return escapeKey(s), redacted
}

// escapeKey makes a member name that is not valid UTF-8 valid, reversibly:
// each invalid byte becomes \xHH and each backslash \\ (as text, before JSON
// quoting). Valid names are returned unchanged. encoding/json would turn every
// invalid byte into U+FFFD, so "role\xff" and "role\xfe" would become the same
// name.
func escapeKey(k string) string {
	if utf8.ValidString(k) {
		return k
	}
	var b strings.Builder
	for i := 0; i < len(k); {
		r, size := utf8.DecodeRuneInString(k[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			b.WriteString(`\x`)
			b.WriteByte(hexDigits[k[i]>>4])
			b.WriteByte(hexDigits[k[i]&0xf])
		case r == '\\':
			b.WriteString(`\\`)
		default:
			b.WriteString(k[i : i+size])
		}
		i += size
	}
	return b.String()
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
