package authz

import (
	"errors"
	"strings"
	"testing"
)

// FuzzNormalizePath: for any raw path and mode NormalizePath never panics, fails
// only with ErrBadPath, and what it returns is safe to match policies on: an
// absolute path (or "*") without dot segments, NUL or a raw byte Envoy escapes,
// stable under BASE normalization, and without "//" in the merging modes.
func FuzzNormalizePath(f *testing.F) {
	modes := []string{NormalizeNone, NormalizeBase, NormalizeMergeSlashes, NormalizeDecodeAndMergeSlashes, ""}
	for _, s := range []string{
		"/", "*", "", "/a/b/../c", "/a/./b/.", `/a\b\..\c`, "/%2e%2E/a", "/a%2fb%5C", "/%41%7e%2d",
		"/a%00", "/a?x=1#f", "/a#f", "//a//b/", "/a%2Fb%5c/../c", "/a/../../..", "/%%34%31", "/%2",
		"/%zz%2f", "/.a/..b/...", "/a//..//b", "/%6%31dmin", "/a%2%66b", "/..%2f..%5c", "/%2e%2e%2f",
		"/a/%2e%2e%5c%2e%2e/b", "/\\..\\..", "/a/..?/../",
		"/a|b", "/%%41", "/%%41b", "/%z%41", "/caf\xc3\xa9", "/\x01\x7f\xff", "/%2f%2F%5c%5C", "/\"<>^`{|}",
	} {
		for i := range modes {
			f.Add(s, uint8(i))
		}
	}
	f.Fuzz(func(t *testing.T, raw string, m uint8) {
		mode := modes[int(m)%len(modes)]
		path, query, err := NormalizePath(raw, mode)
		if err != nil {
			if !errors.Is(err, ErrBadPath) {
				t.Fatalf("NormalizePath(%q, %q): error %v is not ErrBadPath", raw, mode, err)
			}
			if path != "" || query != "" {
				t.Fatalf("NormalizePath(%q, %q) = %q, %q with error %v", raw, mode, path, query, err)
			}
			return
		}
		if wantPath, wantQuery, _ := strings.Cut(raw, "?"); mode == NormalizeNone && (path != wantPath || query != wantQuery) {
			t.Fatalf("NormalizePath(%q, NONE) = %q, %q; want %q, %q", raw, path, query, wantPath, wantQuery)
		}
		if _, q, _ := strings.Cut(raw, "?"); query != q {
			t.Fatalf("NormalizePath(%q, %q): query %q, want %q", raw, mode, query, q)
		}
		if strings.ContainsRune(path, 0) {
			t.Fatalf("NormalizePath(%q, %q) = %q contains NUL", raw, mode, path)
		}
		if path == "*" {
			return
		}
		if !strings.HasPrefix(path, "/") {
			t.Fatalf("NormalizePath(%q, %q) = %q does not start with /", raw, mode, path)
		}
		if mode == NormalizeNone {
			return
		}
		if strings.Contains(path, "/./") || strings.Contains(path, "/../") || strings.HasSuffix(path, "/.") || strings.HasSuffix(path, "/..") {
			t.Fatalf("NormalizePath(%q, %q) = %q has a dot segment", raw, mode, path)
		}
		if strings.Contains(path, `\`) {
			t.Fatalf("NormalizePath(%q, %q) = %q has a backslash", raw, mode, path)
		}
		// Envoy's canonicalizer (chromium_url kPathCharLookup) writes these as %XX.
		if i := strings.IndexFunc(path, func(r rune) bool { return r <= ' ' || r >= 0x7f || strings.ContainsRune("\"<>^`{|}", r) }); i >= 0 {
			t.Fatalf("NormalizePath(%q, %q) = %q has a byte Envoy escapes at %d", raw, mode, path, i)
		}
		if (mode == NormalizeMergeSlashes || mode == NormalizeDecodeAndMergeSlashes) && strings.Contains(path, "//") {
			t.Fatalf("NormalizePath(%q, %q) = %q has //", raw, mode, path)
		}
		// What the policy saw is what the backend gets: normalizing it again
		// must not change it, or a second hop would see another path.
		again, q2, err := NormalizePath(path, NormalizeBase)
		if err != nil || again != path || q2 != "" {
			t.Fatalf("NormalizePath(%q, %q) = %q, but BASE of that is %q, %q, %v", raw, mode, path, again, q2, err)
		}
		if mode != NormalizeBase && mode != "" {
			again, _, err := NormalizePath(path, mode)
			if err != nil || again != path {
				t.Fatalf("NormalizePath(%q, %q) = %q, but normalizing it again gives %q, %v", raw, mode, path, again, err)
			}
		}
	})
}
