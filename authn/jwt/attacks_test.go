package jwt

import (
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"go.yaml.in/yaml/v3"
)

type attackCase struct {
	Name         string `yaml:"name"`
	Description  string `yaml:"description"`
	Build        string `yaml:"build"`
	ExpectStatus int    `yaml:"expectStatus"`
	ExpectReason string `yaml:"expectReason"`
}

// attackFixture is what a builder may use: the issuer's real keys, an
// attacker's keys and the weak issuer's 1024-bit key.
type attackFixture struct {
	t            *testing.T
	iss          string
	k1, e1       *signingKey // published by the issuer
	attacker     *signingKey // RSA, never published
	attackerEC   *signingKey
	weak         *signingKey
	validClaims  map[string]any
	validK1Token string
}

func req(hs ...Header) Request { return Request{Method: "GET", Path: "/orders", Headers: hs} }

func authz(tok string) Header { return Header{"Authorization", "Bearer " + tok} }

func b64(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }

func mustJSON(t *testing.T, v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

var attackBuilders = map[string]func(f *attackFixture) Request{
	"alg_none": func(f *attackFixture) Request {
		return req(authz(b64(`{"alg":"none","typ":"JWT"}`) + "." + base64.RawURLEncoding.EncodeToString(mustJSON(f.t, f.validClaims)) + "."))
	},
	"alg_none_capitalised": func(f *attackFixture) Request {
		return req(authz(b64(`{"alg":"None","kid":"k1"}`) + "." + base64.RawURLEncoding.EncodeToString(mustJSON(f.t, f.validClaims)) + "."))
	},
	"hs256_rsa_public_key_as_secret": func(f *attackFixture) Request {
		der, err := x509.MarshalPKIXPublicKey(f.k1.priv.Public())
		if err != nil {
			f.t.Fatal(err)
		}
		secret := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
		return req(authz(signRaw(f.t, jose.HS256, secret, "k1", mustJSON(f.t, f.validClaims), nil)))
	},
	"es256_with_rsa_kid": func(f *attackFixture) Request {
		return req(authz(sign(f.t, f.attackerEC, "k1", f.validClaims)))
	},
	"expired": func(f *attackFixture) Request {
		return req(authz(sign(f.t, f.k1, "k1", claims(f.iss, "iat", t0.Add(-3*time.Hour).Unix(), "exp", t0.Add(-2*time.Hour).Unix()))))
	},
	"not_yet_valid": func(f *attackFixture) Request {
		return req(authz(sign(f.t, f.k1, "k1", claims(f.iss, "nbf", t0.Add(10*time.Minute).Unix()))))
	},
	"wrong_audience": func(f *attackFixture) Request {
		return req(authz(sign(f.t, f.k1, "k1", claims(f.iss, "aud", []string{"billing", "payroll"}))))
	},
	"wrong_issuer": func(f *attackFixture) Request {
		return req(authz(sign(f.t, f.k1, "k1", claims("https://evil.example"))))
	},
	"other_rules_issuer_in_authorization": func(f *attackFixture) Request {
		return req(authz(sign(f.t, f.weak, "weak", claims("https://weak.example"))))
	},
	"unknown_kid": func(f *attackFixture) Request {
		return req(authz(sign(f.t, f.attacker, "attacker", f.validClaims)))
	},
	"missing_kid_multiple_keys": func(f *attackFixture) Request {
		return req(authz(sign(f.t, f.attacker, "", f.validClaims)))
	},
	"real_kid_attacker_signature": func(f *attackFixture) Request {
		return req(authz(sign(f.t, f.attacker, "k1", f.validClaims)))
	},
	"embedded_jwk": func(f *attackFixture) Request {
		opts := (&jose.SignerOptions{EmbedJWK: true}).WithType("JWT")
		s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.RS256, Key: f.attacker.priv}, opts)
		if err != nil {
			f.t.Fatal(err)
		}
		jws, err := s.Sign(mustJSON(f.t, f.validClaims))
		if err != nil {
			f.t.Fatal(err)
		}
		tok, err := jws.CompactSerialize()
		if err != nil {
			f.t.Fatal(err)
		}
		return req(authz(tok))
	},
	"tampered_payload": func(f *attackFixture) Request {
		parts := strings.Split(f.validK1Token, ".")
		parts[1] = base64.RawURLEncoding.EncodeToString(mustJSON(f.t, claims(f.iss, "sub", "admin")))
		return req(authz(strings.Join(parts, ".")))
	},
	"stripped_signature": func(f *attackFixture) Request {
		return req(authz(f.validK1Token[:strings.LastIndexByte(f.validK1Token, '.')+1]))
	},
	"query_param_when_only_headers": func(f *attackFixture) Request {
		return Request{Method: "GET", Path: "/orders?access_token=" + url.QueryEscape(f.validK1Token)}
	},
	"cookie_not_configured": func(f *attackFixture) Request {
		return req(Header{"Cookie", "access_token=" + f.validK1Token + "; session=" + f.validK1Token})
	},
	"oversized": func(f *attackFixture) Request {
		return req(authz(sign(f.t, f.k1, "k1", claims(f.iss, "pad", strings.Repeat("A", 8<<10)))))
	},
	"two_authorization_headers": func(f *attackFixture) Request {
		return req(authz(f.validK1Token), authz(sign(f.t, f.e1, "e1", claims(f.iss, "sub", "bob"))))
	},
	"valid_plus_forged_second_location": func(f *attackFixture) Request {
		return req(authz(f.validK1Token), Header{"x-weak-token", sign(f.t, f.attacker, "weak", claims("https://weak.example"))})
	},
	"weak_rsa_key": func(f *attackFixture) Request {
		return req(Header{"X-Weak-Token", sign(f.t, f.weak, "weak", claims("https://weak.example"))})
	},
	"two_segments": func(f *attackFixture) Request {
		return req(authz(f.validK1Token[:strings.LastIndexByte(f.validK1Token, '.')]))
	},
	"four_segments": func(f *attackFixture) Request {
		return req(authz(f.validK1Token + "." + b64("extra")))
	},
	"garbage_base64": func(f *attackFixture) Request {
		return req(Header{"x-weak-token", "e$J!.p@y*.s~g"})
	},
	"payload_array": func(f *attackFixture) Request {
		return req(authz(signRaw(f.t, jose.RS256, f.k1.priv, "k1", []byte(`["iss","sub"]`), nil)))
	},
	"json_serialization": func(f *attackFixture) Request {
		s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.RS256, Key: f.k1.priv}, (&jose.SignerOptions{}).WithHeader("kid", "k1"))
		if err != nil {
			f.t.Fatal(err)
		}
		jws, err := s.Sign(mustJSON(f.t, f.validClaims))
		if err != nil {
			f.t.Fatal(err)
		}
		return req(authz(jws.FullSerialize()))
	},
	"unknown_crit": func(f *attackFixture) Request {
		return req(authz(signRaw(f.t, jose.RS256, f.k1.priv, "k1", mustJSON(f.t, f.validClaims),
			map[jose.HeaderKey]any{"crit": []string{"x-rampart-unknown"}, "x-rampart-unknown": true})))
	},
	"sub_number": func(f *attackFixture) Request {
		return req(authz(sign(f.t, f.k1, "k1", claims(f.iss, "sub", 42))))
	},
	"iss_list": func(f *attackFixture) Request {
		return req(authz(sign(f.t, f.k1, "k1", claims(f.iss, "iss", []string{f.iss}))))
	},
	"bearer_only": func(f *attackFixture) Request {
		return req(Header{"Authorization", "Bearer  !!"})
	},
	"empty_weak_header": func(f *attackFixture) Request {
		return req(Header{"x-weak-token", ""})
	},
}

func newAttackEnv(t *testing.T) (*env, *attackFixture) {
	f := &attackFixture{
		t:          t,
		k1:         keyRS("k1", rsa1),
		e1:         keyES("e1", ec1),
		attacker:   keyRS("attacker", rsaAttacker),
		attackerEC: keyES("attacker-ec", ecAttacker),
		weak:       keyRS("weak", rsaWeak),
	}
	is := newIssuer(t, f.k1, keyRS("k2", rsa2), f.e1)
	is.setDoc("weak-jwks", jwksJSON(t, f.weak.jwk()))
	f.iss = is.URL
	f.validClaims = claims(is.URL)
	f.validK1Token = sign(t, f.k1, "k1", f.validClaims)
	e := newEnv(t, Config{Rules: []Rule{
		{Issuer: is.URL, Audiences: []string{"rampart"}, FromHeaders: []HeaderLocation{{"Authorization", "Bearer "}}},
		{Issuer: "https://weak.example", JWKSURI: is.URL + "/doc/weak-jwks", FromHeaders: []HeaderLocation{{"x-weak-token", ""}}},
	}})
	e.run(t)
	eventually(t, "keys from discovery", func() bool { return e.up(is.URL) == 1 })
	eventually(t, "weak jwks refused", func() bool { return e.fetches("https://weak.example", "error") >= 1 })
	return e, f
}

func TestAttacks(t *testing.T) {
	raw, err := os.ReadFile("testdata/attacks.yaml")
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(strings.NewReader(string(raw)))
	dec.KnownFields(true)
	var cases []attackCase
	if err := dec.Decode(&cases); err != nil {
		t.Fatalf("testdata/attacks.yaml: %v", err)
	}
	e, f := newAttackEnv(t)

	// The fixture accepts a good token, so each attack fails for its own reason.
	t.Run("control", func(t *testing.T) {
		res := e.auth(t, req(authz(f.validK1Token)))
		if res.Status != 0 || res.Auth == nil || res.Auth.Principal != f.iss+"/alice" {
			t.Fatalf("valid token: status %d (%s) auth %+v", res.Status, res.Reason, res.Auth)
		}
	})
	seen := map[string]bool{}
	for _, c := range cases {
		t.Run(c.Name, func(t *testing.T) {
			if seen[c.Name] {
				t.Fatalf("duplicate case name %q", c.Name)
			}
			seen[c.Name] = true
			build, ok := attackBuilders[c.Build]
			if !ok {
				t.Fatalf("no builder %q", c.Build)
			}
			f.t = t
			res := e.auth(t, build(f))
			t.Logf("status %d, reason %q", res.Status, res.Reason)
			if res.Status != c.ExpectStatus {
				t.Errorf("status %d (%s), want %d", res.Status, res.Reason, c.ExpectStatus)
			}
			if res.Auth != nil {
				t.Errorf("attack produced a principal %q", res.Auth.Principal)
			}
			if !strings.Contains(res.Reason, c.ExpectReason) {
				t.Errorf("reason %q, want it to contain %q", res.Reason, c.ExpectReason)
			}
			if c.ExpectStatus != 0 && res.WWWAuthenticate == "" {
				t.Error("no WWW-Authenticate with a denial")
			}
		})
	}
	for name := range attackBuilders {
		used := false
		for _, c := range cases {
			used = used || c.Build == name
		}
		if !used {
			t.Errorf("builder %q is not used by any case", name)
		}
	}
}
