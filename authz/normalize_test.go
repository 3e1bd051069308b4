package authz

import (
	"errors"
	"testing"
)

// TestNormalizePath pins Istio's meshConfig.pathNormalization modes as Envoy
// applies them (istio.io normalization reference; semantics §1.6).
func TestNormalizePath(t *testing.T) {
	tests := []struct {
		name      string
		raw, mode string
		wantPath  string
		wantQuery string
		wantErr   error
	}{
		// NONE: the path as received, only split from the query.
		{name: "none keeps dot segments", raw: "/a/./b/../c", mode: NormalizeNone, wantPath: "/a/./b/../c"},
		{name: "none keeps backslash and escapes", raw: `/a\b%2e%41`, mode: NormalizeNone, wantPath: `/a\b%2e%41`},
		{name: "none splits query", raw: "/a?b=c", mode: NormalizeNone, wantPath: "/a", wantQuery: "b=c"},
		{name: "none refuses fragment", raw: "/a#frag", mode: NormalizeNone, wantErr: ErrBadPath},

		// BASE (also the default for "").
		{name: "default mode is base", raw: "/a/../b", mode: "", wantPath: "/b"},
		{name: "base plain path unchanged", raw: "/status/200", mode: NormalizeBase, wantPath: "/status/200"},
		{name: "base dot segment", raw: "/a/./b", mode: NormalizeBase, wantPath: "/a/b"},
		{name: "base dot dot segment", raw: "/a/b/../c", mode: NormalizeBase, wantPath: "/a/c"},
		{name: "base dot dot above root", raw: "/../../a", mode: NormalizeBase, wantPath: "/a"},
		{name: "base trailing dot keeps slash", raw: "/a/b/.", mode: NormalizeBase, wantPath: "/a/b/"},
		{name: "base trailing dot dot keeps slash", raw: "/a/b/..", mode: NormalizeBase, wantPath: "/a/"},
		{name: "base only dot dot", raw: "/..", mode: NormalizeBase, wantPath: "/"},
		{name: "base dots inside names stay", raw: "/.a/..b/.../c.", mode: NormalizeBase, wantPath: "/.a/..b/.../c."},
		{name: "base keeps double slash", raw: "/a//b", mode: NormalizeBase, wantPath: "/a//b"},
		{name: "base dot dot removes empty segment", raw: "/a//../b", mode: NormalizeBase, wantPath: "/a/b"},
		{name: "base backslash is slash", raw: `/a\b`, mode: NormalizeBase, wantPath: "/a/b"},
		{name: "base backslash dot dot", raw: `/admin\..\public`, mode: NormalizeBase, wantPath: "/public"},
		{name: "base encoded dot lower", raw: "/a/%2e%2e/b", mode: NormalizeBase, wantPath: "/b"},
		{name: "base encoded dot upper", raw: "/a/%2E%2E/b", mode: NormalizeBase, wantPath: "/b"},
		{name: "base encoded single dot", raw: "/a/%2E/b", mode: NormalizeBase, wantPath: "/a/b"},
		{name: "base encoded letter", raw: "/%41dmin", mode: NormalizeBase, wantPath: "/Admin"},
		{name: "base encoded lower letter", raw: "/%61dmin", mode: NormalizeBase, wantPath: "/admin"},
		{name: "base encoded unreserved marks", raw: "/%2d%5f%7e%30", mode: NormalizeBase, wantPath: "/-_~0"},
		{name: "base keeps encoded slash as written", raw: "/a%2fb", mode: NormalizeBase, wantPath: "/a%2fb"},
		{name: "base keeps encoded backslash as written", raw: "/a%5cb%5C", mode: NormalizeBase, wantPath: "/a%5cb%5C"},
		{name: "base encoded slash does not make a dot segment", raw: "/a/..%2fb", mode: NormalizeBase, wantPath: "/a/..%2fb"},
		{name: "base keeps other reserved escapes as written", raw: "/a%20b%3f", mode: NormalizeBase, wantPath: "/a%20b%3f"},
		{name: "base incomplete escape kept", raw: "/a%2", mode: NormalizeBase, wantPath: "/a%2"},
		{name: "base invalid escape kept", raw: "/a%zz", mode: NormalizeBase, wantPath: "/a%zz"},
		{name: "base double encoding is not decoded twice", raw: "/%2541dmin", mode: NormalizeBase, wantPath: "/%2541dmin"},
		{name: "base escape built from a stray percent is escaped", raw: "/%%36%31dmin", mode: NormalizeBase, wantPath: "/%2561dmin"},
		{name: "base stray percent before one decoded char", raw: "/%6%31dmin", mode: NormalizeBase, wantPath: "/%2561dmin"},
		{name: "base stray percent far from decoded char", raw: "/%zz%41", mode: NormalizeBase, wantPath: "/%zzA"},
		{name: "base encoded nul", raw: "/a%00b", mode: NormalizeBase, wantErr: ErrBadPath},

		// BASE writes escapes the way Envoy's normalize_path (Chromium's
		// canonicalizer, source/common/chromium_url/url_canon_path.cc DoPartialPath)
		// does: escapes it does not decode are copied exactly, hex case included.
		{name: "base keeps lower-case escape of slash in a segment", raw: "/files/a%2fb", mode: NormalizeBase, wantPath: "/files/a%2fb"},
		{name: "base keeps upper-case escape of slash", raw: "/files/a%2Fb", mode: NormalizeBase, wantPath: "/files/a%2Fb"},
		{name: "base keeps mixed-case hex", raw: "/%2F%2f%5c%5C%3a%3A%7c%7C", mode: NormalizeBase, wantPath: "/%2F%2f%5c%5C%3a%3A%7c%7C"},
		{name: "base keeps escapes of non-ascii bytes as written", raw: "/caf%c3%a9", mode: NormalizeBase, wantPath: "/caf%c3%a9"},
		{name: "base keeps escaped percent", raw: "/100%25", mode: NormalizeBase, wantPath: "/100%25"},
		{name: "base decodes unreserved next to kept escapes", raw: "/%2f%61%2F%5a", mode: NormalizeBase, wantPath: "/%2fa%2FZ"},
		// Raw bytes kPathCharLookup marks ESCAPE become %XX with upper-case hex.
		{name: "base escapes raw pipe", raw: "/a|b", mode: NormalizeBase, wantPath: "/a%7Cb"},
		{name: "base escapes raw unsafe ascii", raw: "/\"<>^`{|} x", mode: NormalizeBase, wantPath: "/%22%3C%3E%5E%60%7B%7C%7D%20x"},
		{name: "base escapes raw control bytes and del", raw: "/a\x01\t\x1f\x7fb", mode: NormalizeBase, wantPath: "/a%01%09%1F%7Fb"},
		{name: "base escapes raw non-ascii bytes", raw: "/caf\u00e9/\xff", mode: NormalizeBase, wantPath: "/caf%C3%A9/%FF"},
		{name: "base passes raw reserved characters", raw: "/!$&'()*+,;=:@[]", mode: NormalizeBase, wantPath: "/!$&'()*+,;=:@[]"},
		{name: "base escaped raw byte is stable", raw: "/a%7Cb", mode: NormalizeBase, wantPath: "/a%7Cb"},
		{name: "base escapes raw bytes before dot segments", raw: "/a|/../b|", mode: NormalizeBase, wantPath: "/b%7C"},
		// A stray '%' becomes "%25" only if a decoded character completes a valid
		// escape with it (CheckForNestedEscapes).
		{name: "base stray percent before decoded non-hex stays", raw: "/%%7a", mode: NormalizeBase, wantPath: "/%z"},
		{name: "base stray percent before decoded hex at end stays", raw: "/%%41", mode: NormalizeBase, wantPath: "/%A"},
		{name: "base stray percent before decoded hex and non-hex stays", raw: "/%%41z", mode: NormalizeBase, wantPath: "/%Az"},
		{name: "base stray percent before decoded hex and hex is escaped", raw: "/%%41b", mode: NormalizeBase, wantPath: "/%25Ab"},
		{name: "base stray percent, non-hex, decoded hex stays", raw: "/%z%41", mode: NormalizeBase, wantPath: "/%zA"},
		{name: "base stray percent before decoded dot stays", raw: "/%%2e1", mode: NormalizeBase, wantPath: "/%.1"},
		{name: "base stray percent before escaped raw byte stays", raw: "/%|", mode: NormalizeBase, wantPath: "/%%7C"},
		{name: "base nested escape of nul is escaped", raw: "/%%30%30", mode: NormalizeBase, wantPath: "/%2500"},
		{name: "none keeps raw bytes", raw: "/a|b\xff", mode: NormalizeNone, wantPath: "/a|b\xff"},
		{name: "base raw nul", raw: "/a\x00b", mode: NormalizeBase, wantErr: ErrBadPath},
		{name: "base fragment", raw: "/a#b", mode: NormalizeBase, wantErr: ErrBadPath},
		{name: "base query split off and left alone", raw: "/a/../b?x=/../%41", mode: NormalizeBase, wantPath: "/b", wantQuery: "x=/../%41"},
		{name: "base query with dots does not touch path", raw: "/a?../b", mode: NormalizeBase, wantPath: "/a", wantQuery: "../b"},
		{name: "base empty query", raw: "/a?", mode: NormalizeBase, wantPath: "/a"},
		{name: "base asterisk form", raw: "*", mode: NormalizeBase, wantPath: "*"},
		{name: "base relative path", raw: "a/b", mode: NormalizeBase, wantErr: ErrBadPath},
		{name: "base empty path", raw: "", mode: NormalizeBase, wantErr: ErrBadPath},
		{name: "base only query", raw: "?a=b", mode: NormalizeBase, wantErr: ErrBadPath},

		// MERGE_SLASHES: BASE, then '//' → '/'.
		{name: "merge slashes", raw: "//a///b//", mode: NormalizeMergeSlashes, wantPath: "/a/b/"},
		{name: "merge after dot segments", raw: "/a//..//b", mode: NormalizeMergeSlashes, wantPath: "/a/b"},
		{name: "merge backslashes", raw: `/a\\b`, mode: NormalizeMergeSlashes, wantPath: "/a/b"},
		{name: "merge keeps encoded slash as written", raw: "/a%2f%2Fb", mode: NormalizeMergeSlashes, wantPath: "/a%2f%2Fb"},
		{name: "merge escapes raw pipe", raw: "//a|b", mode: NormalizeMergeSlashes, wantPath: "/a%7Cb"},
		{name: "merge decodes unreserved", raw: "//%41", mode: NormalizeMergeSlashes, wantPath: "/A"},
		{name: "merge encoded nul", raw: "/%00", mode: NormalizeMergeSlashes, wantErr: ErrBadPath},

		// DECODE_AND_MERGE_SLASHES: %2F and %5C decoded first.
		{name: "decode encoded slash", raw: "/a%2fb%2Fc", mode: NormalizeDecodeAndMergeSlashes, wantPath: "/a/b/c"},
		{name: "decode encoded backslash", raw: "/a%5cb%5Cc", mode: NormalizeDecodeAndMergeSlashes, wantPath: "/a/b/c"},
		{name: "decode then dot segments", raw: "/admin%2f..%2fpublic", mode: NormalizeDecodeAndMergeSlashes, wantPath: "/public"},
		{name: "decode then merge", raw: "/a%2f%2f%2fb", mode: NormalizeDecodeAndMergeSlashes, wantPath: "/a/b"},
		{name: "decode encoded dots and slashes", raw: "/a/%2e%2e%2fb", mode: NormalizeDecodeAndMergeSlashes, wantPath: "/b"},
		{name: "decode does not double-decode percent", raw: "/a%252fb", mode: NormalizeDecodeAndMergeSlashes, wantPath: "/a%252fb"},
		{name: "decode stray percent before encoded slash", raw: "/a%2%66b", mode: NormalizeDecodeAndMergeSlashes, wantPath: "/a%252fb"},
		{name: "decode encoded nul", raw: "/a%2f%00", mode: NormalizeDecodeAndMergeSlashes, wantErr: ErrBadPath},
		{name: "decode fragment", raw: "/a%2f#b", mode: NormalizeDecodeAndMergeSlashes, wantErr: ErrBadPath},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path, query, err := NormalizePath(tt.raw, tt.mode)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("NormalizePath(%q, %q) = %q, %q, %v; want error %v", tt.raw, tt.mode, path, query, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("NormalizePath(%q, %q): %v", tt.raw, tt.mode, err)
			}
			if path != tt.wantPath || query != tt.wantQuery {
				t.Errorf("NormalizePath(%q, %q) = %q, %q; want %q, %q", tt.raw, tt.mode, path, query, tt.wantPath, tt.wantQuery)
			}
		})
	}
}
