package decisionlog

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"unicode/utf8"
)

// appendEvent appends the JSON encoding of e, byte for byte what encoding/json
// produces for it with HTML escaping off (a test holds the two equal), without
// reflection on the generic input and result documents, which dominate the cost
// of a record.
func appendEvent(b []byte, e *Event) ([]byte, error) {
	var err error
	b = append(b, `{"decision_id":`...)
	b = appendString(b, e.DecisionID)
	b = append(b, `,"labels":`...)
	b = appendStringMap(b, e.Labels)
	if len(e.Bundles) > 0 {
		b = append(b, `,"bundles":{`...)
		for i, k := range sortedKeys(e.Bundles) {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendString(b, k)
			b = append(b, `:{"revision":`...)
			b = appendString(b, e.Bundles[k].Revision)
			b = append(b, '}')
		}
		b = append(b, '}')
	}
	b = append(b, `,"path":`...)
	b = appendString(b, e.Path)
	if e.Input != nil {
		b = append(b, `,"input":`...)
		if b, err = appendValue(b, e.Input); err != nil {
			return nil, fmt.Errorf("input: %w", err)
		}
	}
	if e.Result != nil {
		b = append(b, `,"result":`...)
		if b, err = appendValue(b, e.Result); err != nil {
			return nil, fmt.Errorf("result: %w", err)
		}
	}
	ts, err := e.Timestamp.MarshalJSON()
	if err != nil {
		return nil, fmt.Errorf("timestamp: %w", err)
	}
	b = append(b, `,"timestamp":`...)
	b = append(b, ts...)
	if len(e.Erased) > 0 {
		b = append(b, `,"erased":`...)
		b = appendStrings(b, e.Erased)
	}
	if len(e.Masked) > 0 {
		b = append(b, `,"masked":`...)
		b = appendStrings(b, e.Masked)
	}
	m := &e.Rampart
	b = append(b, `,"rampart":{"source_principal":`...)
	b = appendString(b, m.SourcePrincipal)
	b = append(b, `,"source_workload":`...)
	b = appendString(b, m.SourceWorkload)
	b = append(b, `,"destination_workload":`...)
	b = appendString(b, m.DestinationWorkload)
	b = append(b, `,"destination_principal":`...)
	b = appendString(b, m.DestinationPrincipal)
	b = append(b, `,"policy":`...)
	b = appendString(b, m.Policy)
	b = append(b, `,"rule":`...)
	b = strconv.AppendInt(b, int64(m.Rule), 10)
	b = append(b, `,"allowed":`...)
	b = strconv.AppendBool(b, m.Allowed)
	b = append(b, `,"status":`...)
	b = strconv.AppendInt(b, int64(m.Status), 10)
	b = append(b, `,"dry_run":`...)
	b = strconv.AppendBool(b, m.DryRun)
	b = append(b, `,"reason":`...)
	b = appendString(b, m.Reason)
	b = append(b, `,"request_id":`...)
	b = appendString(b, m.RequestID)
	b = append(b, `},"seq":`...)
	b = strconv.AppendUint(b, e.Seq, 10)
	b = append(b, `,"prev_hash":`...)
	b = appendString(b, e.PrevHash)
	b = append(b, `,"hash":`...)
	b = appendString(b, e.Hash)
	return append(b, '}'), nil
}

// appendValue appends a generic JSON value; other types go through
// encoding/json.
func appendValue(b []byte, v any) ([]byte, error) {
	var err error
	switch x := v.(type) {
	case nil:
		return append(b, "null"...), nil
	case string:
		return appendString(b, x), nil
	case bool:
		return strconv.AppendBool(b, x), nil
	case json.Number:
		if x == "" {
			return append(b, '0'), nil // as encoding/json does
		}
		if !validNumber(string(x)) {
			return nil, fmt.Errorf("invalid number literal %q", x)
		}
		return append(b, x...), nil
	case int:
		return strconv.AppendInt(b, int64(x), 10), nil
	case int64:
		return strconv.AppendInt(b, x, 10), nil
	case map[string]any:
		if x == nil {
			return append(b, "null"...), nil
		}
		b = append(b, '{')
		for i, k := range sortedKeys(x) {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendString(b, k)
			b = append(b, ':')
			if b, err = appendValue(b, x[k]); err != nil {
				return nil, err
			}
		}
		return append(b, '}'), nil
	case []any:
		if x == nil {
			return append(b, "null"...), nil
		}
		b = append(b, '[')
		for i, c := range x {
			if i > 0 {
				b = append(b, ',')
			}
			if b, err = appendValue(b, c); err != nil {
				return nil, err
			}
		}
		return append(b, ']'), nil
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return append(b, bytes.TrimSuffix(buf.Bytes(), []byte("\n"))...), nil
}

func appendStringMap(b []byte, m map[string]string) []byte {
	if m == nil {
		return append(b, "null"...)
	}
	b = append(b, '{')
	for i, k := range sortedKeys(m) {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendString(b, k)
		b = append(b, ':')
		b = appendString(b, m[k])
	}
	return append(b, '}')
}

func appendStrings(b []byte, s []string) []byte {
	b = append(b, '[')
	for i, x := range s {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendString(b, x)
	}
	return append(b, ']')
}

func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

const hexDigits = "0123456789abcdef"

// appendString quotes s as encoding/json does without HTML escaping: control
// characters escaped, invalid UTF-8 replaced by U+FFFD, U+2028 and U+2029
// escaped.
func appendString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '\\', '"':
				b = append(b, '\\', c)
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// validNumber reports whether s is a JSON number literal.
func validNumber(s string) bool {
	i := 0
	if i < len(s) && s[i] == '-' {
		i++
	}
	switch {
	case i < len(s) && s[i] == '0':
		i++
	case i < len(s) && '1' <= s[i] && s[i] <= '9':
		for i < len(s) && '0' <= s[i] && s[i] <= '9' {
			i++
		}
	default:
		return false
	}
	if i < len(s) && s[i] == '.' {
		i++
		if i == len(s) || s[i] < '0' || s[i] > '9' {
			return false
		}
		for i < len(s) && '0' <= s[i] && s[i] <= '9' {
			i++
		}
	}
	if i < len(s) && (s[i] == 'e' || s[i] == 'E') {
		i++
		if i < len(s) && (s[i] == '+' || s[i] == '-') {
			i++
		}
		if i == len(s) || s[i] < '0' || s[i] > '9' {
			return false
		}
		for i < len(s) && '0' <= s[i] && s[i] <= '9' {
			i++
		}
	}
	return i == len(s)
}

var errNotLast = errors.New("encode decision: hash is not the last member")
