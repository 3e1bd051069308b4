package jwt

import (
	"net/http"
	"strings"
	"testing"
	"time"
)

func FuzzExtract(f *testing.F) {
	f.Add("/?access_token=a.b.c&jwt=x", "Authorization", "Bearer a.b.c", "Cookie", `s="q"; sess=t`)
	f.Add("/?%zz=%&=&&jwt", "x-token", "JWT ", "cookie", ";;=;sess")
	f.Add("?", "AUTHORIZATION", "Bearer", "x-token", "xJWT JWT a")
	ext := newExtractor([]Rule{
		{Issuer: issA},
		{Issuer: issB, FromHeaders: []HeaderLocation{{"x-token", "JWT "}, {"x-raw", ""}}, FromParams: []string{"jwt"}, FromCookies: []string{"sess", "s"}},
	})
	f.Fuzz(func(t *testing.T, path, n1, v1, n2, v2 string) {
		r := Request{Method: "GET", Path: path, Headers: []Header{{n1, v1}, {n2, v2}}}
		toks, dup, err := ext.extract(r, nil)
		if err != nil {
			if dup == nil || dup.kind != locHeader {
				t.Fatalf("error %v without its header location", err)
			}
			return
		}
		for _, tk := range toks {
			if tk.loc == nil {
				t.Fatal("token without location")
			}
			if tk.loc.kind == locHeader && !strings.Contains(v1, tk.raw) && !strings.Contains(v2, tk.raw) {
				t.Fatalf("header token %q is not part of any header value", tk.raw)
			}
		}
		if !strings.Contains(path, "?") && !strings.EqualFold(n1, "cookie") && !strings.EqualFold(n2, "cookie") {
			for _, tk := range toks {
				if tk.loc.kind != locHeader {
					t.Fatalf("%s token without a query or cookie", tk.loc)
				}
			}
		}
	})
}

// FuzzAuthenticate: no string in the Authorization header is ever accepted.
// Seeds are real tokens that must still fail: expired, unsigned, tampered.
func FuzzAuthenticate(f *testing.F) {
	k := keyES("e1", ec1)
	kr := keyRS("k1", rsa1)
	expired := sign(f, k, "e1", claims(issA, "exp", t0.Add(-time.Hour).Unix()))
	f.Add(expired)
	f.Add(sign(f, kr, "k1", claims(issA, "exp", t0.Add(-time.Hour).Unix())))
	f.Add(sign(f, keyES("e1", ecAttacker), "e1", claims(issA)))
	f.Add(expired[:strings.LastIndexByte(expired, '.')+1])
	f.Add(b64(`{"alg":"none"}`) + "." + b64(`{"iss":"`+issA+`","sub":"x"}`) + ".")
	f.Add("")
	f.Add("..")
	f.Add(strings.Repeat("A", 9000))

	cfg := Config{Rules: []Rule{inlineRule(f, issA, k, kr)}}
	a, err := New(cfg)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, tok string) {
		res := a.Authenticate(t.Context(), Request{Method: "GET", Path: "/", Headers: []Header{{"Authorization", "Bearer " + tok}}})
		if res.Auth != nil || res.Status != http.StatusUnauthorized {
			t.Fatalf("token %q: status %d auth %+v, want 401 and no auth", tok, res.Status, res.Auth)
		}
	})
}
