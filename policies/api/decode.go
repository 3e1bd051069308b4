package api

import (
	"bytes"
	"errors"
	"fmt"
	"strings"

	kjson "sigs.k8s.io/json"
)

// FieldError is a spec that does not decode: the field (a path such as
// spec.limits[0].rate.requests) and why.
type FieldError struct {
	Path   string
	Reason string
}

func (e *FieldError) Error() string { return e.Path + ": " + e.Reason }

// MaxSpecBytes bounds a spec's JSON; larger ones are refused before decoding.
const MaxSpecBytes = 1 << 20

// DecodeRateLimitPolicySpec decodes a RateLimitPolicy spec strictly, from JSON:
// unknown and duplicate fields, wrong types and trailing data are errors, each a
// *FieldError naming the field. It does not validate values (compile does).
func DecodeRateLimitPolicySpec(data []byte) (*RateLimitPolicySpec, error) {
	spec := &RateLimitPolicySpec{}
	if len(data) > MaxSpecBytes {
		return nil, &FieldError{Path: "spec", Reason: fmt.Sprintf("%d bytes is over the %d-byte limit", len(data), MaxSpecBytes)}
	}
	trimmed := bytes.TrimSpace(data)
	if len(trimmed) == 0 || string(trimmed) == "null" {
		return nil, &FieldError{Path: "spec", Reason: "required: a RateLimitPolicy needs a spec with limits"}
	}
	strict, err := kjson.UnmarshalStrict(trimmed, spec)
	if err != nil {
		return nil, decodeError(err)
	}
	if len(strict) > 0 {
		return nil, decodeError(strict[0])
	}
	return spec, nil
}

// decodeError turns a decoder error into a FieldError with a spec. path.
func decodeError(err error) *FieldError {
	var fe kjson.FieldError
	if errors.As(err, &fe) {
		msg := strings.TrimPrefix(err.Error(), "json: ")
		// "unknown field \"limits[0].rat\"" → path + reason
		if i := strings.Index(msg, "\""); i >= 0 && strings.HasSuffix(msg, "\"") {
			return &FieldError{Path: joinPath("spec", fe.FieldPath()), Reason: strings.TrimSpace(msg[:i])}
		}
		return &FieldError{Path: joinPath("spec", fe.FieldPath()), Reason: msg}
	}
	msg := strings.TrimPrefix(err.Error(), "json: ")
	// Type errors read "cannot unmarshal string into Go struct field RateLimitPolicySpec.limits.rate.requests of type int64".
	const marker = "Go struct field "
	if i := strings.Index(msg, marker); i >= 0 {
		rest := msg[i+len(marker):]
		field, typ, _ := strings.Cut(rest, " of type ")
		if _, f, ok := strings.Cut(field, "."); ok {
			field = f
		}
		what, _, _ := strings.Cut(msg, " into ")
		return &FieldError{Path: joinPath("spec", field), Reason: fmt.Sprintf("%s: want %s", what, jsonType(typ))}
	}
	if strings.Contains(msg, "Go value of type") {
		what, _, _ := strings.Cut(msg, " into ")
		return &FieldError{Path: "spec", Reason: what + ": want an object"}
	}
	return &FieldError{Path: "spec", Reason: msg}
}

func joinPath(base, p string) string {
	if p == "" {
		return base
	}
	return base + "." + p
}

// jsonType names a Go type the way a YAML author thinks of it.
func jsonType(goType string) string {
	switch {
	case strings.HasPrefix(goType, "int"), strings.HasPrefix(goType, "uint"):
		return "an integer"
	case goType == "string":
		return "a string"
	case goType == "bool":
		return "true or false"
	case strings.HasPrefix(goType, "[]"):
		return "a list"
	case strings.HasPrefix(goType, "map["):
		return "a mapping"
	}
	return "an object"
}
