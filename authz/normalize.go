package authz

import (
	"errors"
	"strings"
)

// Path normalization modes, Istio's MeshConfig.pathNormalization.
const (
	NormalizeNone                  = "NONE"
	NormalizeBase                  = "BASE"
	NormalizeMergeSlashes          = "MERGE_SLASHES"
	NormalizeDecodeAndMergeSlashes = "DECODE_AND_MERGE_SLASHES"
)

// ErrBadPath means the path cannot be made safe; the request gets 400, as in Envoy.
var ErrBadPath = errors.New("invalid request path")

// NormalizePath splits raw into path and query and normalizes the path the way
// Istio configures Envoy for mode:
//
//	NONE                      nothing
//	BASE                      decode %-encoded unreserved characters, '\' → '/',
//	                          remove dot segments (RFC 3986 5.2.4); %2F and %5C stay encoded
//	MERGE_SLASHES             BASE, then '//' → '/'
//	DECODE_AND_MERGE_SLASHES  %2F → '/' and %5C → '\' first, then MERGE_SLASHES
//
// A NUL (raw or %00), a fragment, or a path that does not start with '/' is ErrBadPath.
func NormalizePath(raw, mode string) (path, query string, err error) {
	path, query, _ = strings.Cut(raw, "?")
	if mode == "" {
		mode = NormalizeBase
	}
	if strings.ContainsRune(path, '#') || strings.ContainsRune(path, 0) {
		return "", "", ErrBadPath
	}
	if !strings.HasPrefix(path, "/") {
		if path == "*" { // OPTIONS *
			return path, query, nil
		}
		return "", "", ErrBadPath
	}
	if mode == NormalizeNone {
		return path, query, nil
	}
	if mode == NormalizeDecodeAndMergeSlashes {
		path = replaceEncoded(path, map[string]string{"2f": "/", "5c": `\`})
	}
	path, err = decodeUnreserved(path)
	if err != nil {
		return "", "", err
	}
	path = strings.ReplaceAll(path, `\`, "/")
	path = removeDotSegments(path)
	if mode == NormalizeMergeSlashes || mode == NormalizeDecodeAndMergeSlashes {
		for strings.Contains(path, "//") {
			path = strings.ReplaceAll(path, "//", "/")
		}
	}
	return path, query, nil
}

func replaceEncoded(s string, m map[string]string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '%' && i+2 < len(s) {
			if r, ok := m[strings.ToLower(s[i+1:i+3])]; ok {
				b.WriteString(r)
				i += 2
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// decodeUnreserved decodes %XX where XX is an unreserved character (ALPHA, DIGIT,
// '-', '.', '_', '~') and upper-cases the hex of the others. %00 is refused.
//
// A '%' that does not start an escape is kept, but if a decoded character lands
// within two places of it ("%%34%31" would become "%41") it is written as "%25",
// as Chromium's URL canonicalizer (which Envoy uses) does: otherwise the policy
// would see "%41" while a backend that decodes once sees "A", and the result
// would change if normalized again.
func decodeUnreserved(s string) (string, error) {
	if !strings.Contains(s, "%") {
		return s, nil
	}
	out := make([]byte, 0, len(s)+4)
	lastInvalid := -1 // index in out of the last '%' that did not start an escape
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != '%' {
			out = append(out, c)
			continue
		}
		if i+2 >= len(s) || !isHex(s[i+1]) || !isHex(s[i+2]) {
			lastInvalid = len(out)
			out = append(out, '%')
			continue
		}
		v := unhex(s[i+1])<<4 | unhex(s[i+2])
		if v == 0 {
			return "", ErrBadPath
		}
		if isUnreserved(v) {
			out = append(out, v)
			if lastInvalid >= 0 && lastInvalid >= len(out)-3 {
				out = append(out[:lastInvalid+1], append([]byte("25"), out[lastInvalid+1:]...)...)
				lastInvalid = -1
			}
		} else {
			out = append(out, '%', upperHex(s[i+1]), upperHex(s[i+2]))
		}
		i += 2
	}
	return string(out), nil
}

func upperHex(c byte) byte {
	if 'a' <= c && c <= 'f' {
		return c - 'a' + 'A'
	}
	return c
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case '0' <= c && c <= '9':
		return c - '0'
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10
	}
	return c - 'A' + 10
}

func isUnreserved(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '.' || c == '_' || c == '~'
}

// removeDotSegments is RFC 3986 section 5.2.4 on an absolute path.
func removeDotSegments(in string) string {
	if !strings.Contains(in, ".") {
		return in
	}
	var out []string
	segs := strings.Split(in, "/")[1:]
	for i, seg := range segs {
		last := i == len(segs)-1
		switch seg {
		case ".":
			if last {
				out = append(out, "")
			}
		case "..":
			if len(out) > 0 {
				out = out[:len(out)-1]
			}
			if last {
				out = append(out, "")
			}
		default:
			out = append(out, seg)
		}
	}
	return "/" + strings.Join(out, "/")
}
