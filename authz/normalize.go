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
//	BASE                      decode %-encoded unreserved characters and keep every
//	                          other escape as written (%2f stays %2f, %2F stays %2F),
//	                          escape the raw bytes Envoy escapes ('|' → %7C), '\' → '/',
//	                          remove dot segments (RFC 3986 5.2.4)
//	MERGE_SLASHES             BASE, then '//' → '/'
//	DECODE_AND_MERGE_SLASHES  %2F → '/' and %5C → '\' first, then MERGE_SLASHES
//
// BASE is Envoy's normalize_path (Chromium's path canonicalizer, see
// canonicalEscapes); MERGE_SLASHES adds merge_slashes and DECODE_AND_MERGE_SLASHES
// path_with_escaped_slashes_action UNESCAPE_AND_FORWARD, in the order Envoy's
// ConnectionManagerUtility::maybeNormalizePath applies them.
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
	path, err = canonicalEscapes(path)
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

// canonicalEscapes does to escapes and raw bytes what Envoy's normalize_path
// does: Chromium's path canonicalizer, DoPartialPath with kPathCharLookup in
// Envoy's source/common/chromium_url/url_canon_path.cc.
//
//   - %XX of an unreserved character (ALPHA, DIGIT, '-', '.', '_', '~') is decoded;
//   - %00 fails the request (400);
//   - any other valid escape is copied exactly as written, hex case included
//     ("in case the server is sensitive to changing the case of any hex
//     letters"), so %2f stays %2f and %2F stays %2F;
//   - a '%' that does not start an escape is kept;
//   - a raw byte the table marks ESCAPE is written as %XX with upper-case hex
//     (escapeInPath).
//
// If a decoded character completes a valid escape with a '%' that did not start
// one ("%%34%31" would become "%41"), that '%' is written as "%25", as Chromium's
// CheckForNestedEscapes does: otherwise the policy would see "%41" while a
// backend that decodes once sees "A", and normalizing again would change it.
// A '%' that still does not start a valid escape ("%%41" → "%A") is left alone.
func canonicalEscapes(s string) (string, error) {
	clean := true
	for i := 0; i < len(s) && clean; i++ {
		clean = s[i] != '%' && !escapeInPath(s[i])
	}
	if clean {
		return s, nil
	}
	out := make([]byte, 0, len(s)+8)
	lastInvalid := -1 // index in out of the last '%' that did not start an escape
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != '%' {
			if escapeInPath(c) {
				out = append(out, '%', upperHexDigits[c>>4], upperHexDigits[c&0xf])
			} else {
				out = append(out, c)
			}
			continue
		}
		if i+2 >= len(s) || !isHex(s[i+1]) || !isHex(s[i+2]) {
			lastInvalid = len(out)
			out = append(out, '%')
			continue
		}
		v := unhex(s[i+1])<<4 | unhex(s[i+2])
		switch {
		case v == 0:
			return "", ErrBadPath
		case isUnreserved(v):
			out = append(out, v)
			if lastInvalid >= 0 && lastInvalid >= len(out)-3 && nestedEscape(out, lastInvalid, s, i+3) {
				out = append(out[:lastInvalid+1], append([]byte("25"), out[lastInvalid+1:]...)...)
				lastInvalid = -1
			}
		default:
			out = append(out, s[i:i+3]...)
		}
		i += 2
	}
	return string(out), nil
}

// nestedEscape reports whether the '%' at out[pct], which did not start an
// escape in the input, now does: out ends in "%h" and the next input byte
// s[next] is a hex digit, or out ends in "%hh".
func nestedEscape(out []byte, pct int, s string, next int) bool {
	if pct == len(out)-2 {
		return isHex(out[pct+1]) && next < len(s) && isHex(s[next])
	}
	return isHex(out[pct+1]) && isHex(out[pct+2])
}

const upperHexDigits = "0123456789ABCDEF"

// escapeInPath reports whether Chromium's kPathCharLookup marks the raw byte c
// ESCAPE, so that the canonical path has it as %XX: the controls 0x01-0x1F,
// ' ', '"', '<', '>', '^', '`', '{', '|', '}', 0x7F and every byte from 0x80.
// NUL, '#', '%', '?' and '\' are ESCAPE or INVALID there too, but NormalizePath
// refuses, splits off or converts them before this is asked.
func escapeInPath(c byte) bool {
	switch {
	case c == 0 || c == '#' || c == '%' || c == '?' || c == '\\':
		return false
	case c < 0x20 || c >= 0x7f:
		return true
	}
	return strings.IndexByte(" \"<>^`{|}", c) >= 0
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
