package main

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spf13/cobra"
)

func newJWTCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "jwt",
		Short: "Mint test JWTs and print the JWKS that verifies them",
		Long: `Tools for RequestAuthentication with a local key: 'jwt jwks' prints the
public JWKS to put in a RequestAuthentication's jwks field, and 'jwt mint' signs
a token with the private key. The Bookinfo example ships a demo key (never use it
for anything real):

  rampartctl jwt mint --key deploy/examples/bookinfo/demo-jwt/key.pem --subject alice`,
	}
	var keyFile, kid string
	loadKey := func() (crypto.Signer, jose.SignatureAlgorithm, error) {
		data, err := os.ReadFile(keyFile)
		if err != nil {
			return nil, "", fmt.Errorf("--key: %w", err)
		}
		block, _ := pem.Decode(data)
		if block == nil {
			return nil, "", fmt.Errorf("--key %s: no PEM block", keyFile)
		}
		var key any
		switch block.Type {
		case "EC PRIVATE KEY":
			key, err = x509.ParseECPrivateKey(block.Bytes)
		case "RSA PRIVATE KEY":
			key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
		default:
			key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
		}
		if err != nil {
			return nil, "", fmt.Errorf("--key %s: %w", keyFile, err)
		}
		switch k := key.(type) {
		case *ecdsa.PrivateKey:
			switch k.Curve.Params().BitSize {
			case 256:
				return k, jose.ES256, nil
			case 384:
				return k, jose.ES384, nil
			}
			return nil, "", fmt.Errorf("--key %s: unsupported curve %s", keyFile, k.Curve.Params().Name)
		case *rsa.PrivateKey:
			if k.N.BitLen() < 2048 {
				return nil, "", fmt.Errorf("--key %s: RSA keys under 2048 bits are refused", keyFile)
			}
			return k, jose.RS256, nil
		}
		return nil, "", fmt.Errorf("--key %s: want an EC or RSA private key", keyFile)
	}
	var (
		issuer, subject string
		audiences       []string
		claims          []string
		ttl             time.Duration
	)
	mint := &cobra.Command{
		Use:   "mint",
		Short: "Print a signed JWT",
		Example: `  rampartctl jwt mint --key deploy/examples/bookinfo/demo-jwt/key.pem --subject alice
  curl -H "Authorization: Bearer $(rampartctl jwt mint --key ... --subject alice)" http://127.0.10.100:8080/api/v1/products`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			key, alg, err := loadKey()
			if err != nil {
				return err
			}
			opts := (&jose.SignerOptions{}).WithType("JWT")
			if kid != "" {
				opts = opts.WithHeader("kid", kid)
			}
			sig, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: key}, opts)
			if err != nil {
				return err
			}
			now := time.Now()
			std := jwt.Claims{Issuer: issuer, Subject: subject, Audience: audiences, IssuedAt: jwt.NewNumericDate(now),
				NotBefore: jwt.NewNumericDate(now.Add(-time.Minute)), Expiry: jwt.NewNumericDate(now.Add(ttl))}
			extra := map[string]any{}
			for _, c := range claims {
				k, v, ok := strings.Cut(c, "=")
				if !ok || k == "" {
					return fmt.Errorf("--claim %q: want name=value (value may be JSON)", c)
				}
				var jv any
				if json.Unmarshal([]byte(v), &jv) != nil {
					jv = v
				}
				extra[k] = jv
			}
			tok, err := jwt.Signed(sig).Claims(std).Claims(extra).Serialize()
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), tok)
			return nil
		},
	}
	mf := mint.Flags()
	mf.StringVar(&issuer, "issuer", "demo@rampart.local", "iss claim (must match the RequestAuthentication's issuer)")
	mf.StringVar(&subject, "subject", "", "sub claim (the request principal is ISSUER/SUBJECT)")
	mf.StringArrayVar(&audiences, "audience", nil, "aud claim (repeatable)")
	mf.StringArrayVar(&claims, "claim", nil, "an extra claim name=value; a JSON value (e.g. groups=[\"a\",\"b\"]) is kept as JSON")
	mf.DurationVar(&ttl, "ttl", time.Hour, "lifetime")
	jwks := &cobra.Command{
		Use:   "jwks",
		Short: "Print the public JWKS of --key (for a RequestAuthentication's jwks field)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			key, alg, err := loadKey()
			if err != nil {
				return err
			}
			set := jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: key.Public(), KeyID: kid, Algorithm: string(alg), Use: "sig"}}}
			out, err := json.Marshal(set)
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), string(out))
			return nil
		},
	}
	for _, c := range []*cobra.Command{mint, jwks} {
		c.Flags().StringVar(&keyFile, "key", "", "PEM private key (EC P-256/P-384 or RSA ≥ 2048)")
		c.Flags().StringVar(&kid, "kid", "demo", "key id in the token header and the JWKS")
		cmd.AddCommand(c)
	}
	return cmd
}
