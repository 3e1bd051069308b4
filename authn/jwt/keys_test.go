package jwt

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"strings"
	"testing"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/google/go-cmp/cmp"
)

func TestParseJWKS(t *testing.T) {
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	edPub, _, _ := ed25519.GenerateKey(rand.Reader)
	rsaPub := rsa1().Public()
	jwk := func(k jose.JSONWebKey) string {
		b, err := json.Marshal(k)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	rsAll := []jose.SignatureAlgorithm{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}
	for _, tc := range []struct {
		name        string
		keys        []string
		wantAlgs    [][]jose.SignatureAlgorithm // per usable key
		wantIgnored string
		wantErr     string
	}{
		{name: "RSA 2048 without alg", keys: []string{jwk(jose.JSONWebKey{Key: rsaPub, KeyID: "r"})}, wantAlgs: [][]jose.SignatureAlgorithm{rsAll}},
		{name: "RSA with alg RS256", keys: []string{jwk(jose.JSONWebKey{Key: rsaPub, KeyID: "r", Algorithm: "RS256"})}, wantAlgs: [][]jose.SignatureAlgorithm{{"RS256"}}},
		{name: "RSA private key: public half used", keys: []string{jwk(jose.JSONWebKey{Key: rsa1(), KeyID: "r", Algorithm: "PS256"})}, wantAlgs: [][]jose.SignatureAlgorithm{{"PS256"}}},
		{name: "EC P-256", keys: []string{jwk(jose.JSONWebKey{Key: ec1().Public(), KeyID: "e"})}, wantAlgs: [][]jose.SignatureAlgorithm{{"ES256"}}},
		{name: "EC P-384", keys: []string{jwk(jose.JSONWebKey{Key: p384.Public(), KeyID: "e"})}, wantAlgs: [][]jose.SignatureAlgorithm{{"ES384"}}},
		{name: "Ed25519", keys: []string{jwk(jose.JSONWebKey{Key: edPub, KeyID: "o"})}, wantAlgs: [][]jose.SignatureAlgorithm{{"EdDSA"}}},
		{name: "weak RSA ignored, good key kept",
			keys:     []string{jwk(jose.JSONWebKey{Key: rsaWeak().Public(), KeyID: "w"}), jwk(jose.JSONWebKey{Key: ec1().Public(), KeyID: "e"})},
			wantAlgs: [][]jose.SignatureAlgorithm{{"ES256"}}, wantIgnored: "1024 bits"},
		{name: "symmetric key refused", keys: []string{`{"kty":"oct","k":"c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0","kid":"h"}`}, wantErr: "symmetric"},
		{name: "encryption key refused", keys: []string{jwk(jose.JSONWebKey{Key: rsaPub, KeyID: "r", Use: "enc"})}, wantErr: `use "enc"`},
		{name: "alg that does not fit the key", keys: []string{jwk(jose.JSONWebKey{Key: rsaPub, KeyID: "r", Algorithm: "ES256"})}, wantErr: "does not fit"},
		{name: "HS256 alg on an RSA key", keys: []string{jwk(jose.JSONWebKey{Key: rsaPub, KeyID: "r", Algorithm: "HS256"})}, wantErr: "does not fit"},
		{name: "unknown kty skipped", keys: []string{`{"kty":"XYZ","kid":"u"}`, jwk(jose.JSONWebKey{Key: edPub})}, wantAlgs: [][]jose.SignatureAlgorithm{{"EdDSA"}}, wantIgnored: "key 0"},
		{name: "no keys", keys: nil, wantErr: "no usable keys"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			doc := `{"keys":[` + strings.Join(tc.keys, ",") + `]}`
			keys, ignored, err := parseJWKS([]byte(doc))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err %v, want one mentioning %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got [][]jose.SignatureAlgorithm
			for _, k := range keys {
				got = append(got, k.algs)
			}
			if diff := cmp.Diff(tc.wantAlgs, got); diff != "" {
				t.Errorf("algs (-want +got):\n%s", diff)
			}
			if j := strings.Join(ignored, ";"); (tc.wantIgnored == "") != (j == "") || !strings.Contains(j, tc.wantIgnored) {
				t.Errorf("ignored %q, want %q", j, tc.wantIgnored)
			}
		})
	}
}

// A token without kid is tried against every key with its alg (jwt_verify_lib).
func TestMissingKidTriesEveryKey(t *testing.T) {
	k1, k2 := keyRS("k1", rsa1), keyRS("k2", rsa2)
	e := newEnv(t, Config{Rules: []Rule{inlineRule(t, issA, k1, k2, keyES("e1", ec1))}})
	res := e.auth(t, bearer(sign(t, k2, "", claims(issA))))
	if res.Status != 0 || res.Auth == nil {
		t.Fatalf("status %d (%s), want a principal", res.Status, res.Reason)
	}
	if got := e.a.sigChecks.Load(); got != 2 {
		t.Errorf("%d signature checks, want 2 (both RSA keys, not the EC one)", got)
	}
}

// A key without kid matches any token kid.
func TestKeyWithoutKid(t *testing.T) {
	k := keyES("", ec1)
	e := newEnv(t, Config{Rules: []Rule{inlineRule(t, issA, k)}})
	if res := e.auth(t, bearer(sign(t, k, "some-kid", claims(issA)))); res.Status != 0 {
		t.Fatalf("status %d (%s), want 0", res.Status, res.Reason)
	}
}

// Refetching identical keys keeps the generation, so cached tokens stay cached.
func TestPublishKeepsGeneration(t *testing.T) {
	k := keyES("e1", ec1)
	is := newIssuer(t, k)
	e := newEnv(t, Config{Rules: []Rule{{Issuer: is.URL}}})
	tok := sign(t, k, "e1", claims(is.URL))
	e.auth(t, bearer(tok))
	src := e.a.rules[0].src
	gen := src.current().gen
	if _, err := src.refresh(t.Context()); err != nil {
		t.Fatal(err)
	}
	if src.current().gen != gen {
		t.Errorf("generation %d after an identical refetch, want %d", src.current().gen, gen)
	}
	e.auth(t, bearer(tok))
	if got := e.a.sigChecks.Load(); got != 1 {
		t.Errorf("%d signature checks, want 1 (cache survives an identical refetch)", got)
	}
}
