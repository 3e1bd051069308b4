package main

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// peerName is the name in the reference pairs' server certificate, checked by
// the client side of each pair.
const peerName = "peer.bench.test"

// pkiFiles are the PEM files of the reference pairs' mTLS: one CA, a server
// certificate for proxy B and a client certificate for proxy A, ECDSA P-256
// like Rampart's SVIDs.
type pkiFiles struct {
	CA                    string
	ServerCert, ServerKey string
	ClientCert, ClientKey string
	ServerPEM, ClientPEM  string // certificate and key in one file (HAProxy's crt)
}

func writePKI(dir string) (pkiFiles, error) {
	f := pkiFiles{
		CA:         filepath.Join(dir, "ca.crt"),
		ServerCert: filepath.Join(dir, "server.crt"), ServerKey: filepath.Join(dir, "server.key"),
		ClientCert: filepath.Join(dir, "client.crt"), ClientKey: filepath.Join(dir, "client.key"),
		ServerPEM: filepath.Join(dir, "server.pem"), ClientPEM: filepath.Join(dir, "client.pem"),
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return f, err
	}
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return f, err
	}
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "hop bench CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	if err != nil {
		return f, err
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return f, err
	}
	if err := writePEM(f.CA, pemBlock("CERTIFICATE", caDER)); err != nil {
		return f, err
	}
	for i, leaf := range []struct {
		cn             string
		eku            x509.ExtKeyUsage
		cert, key, all string
	}{
		{peerName, x509.ExtKeyUsageServerAuth, f.ServerCert, f.ServerKey, f.ServerPEM},
		{"client.bench.test", x509.ExtKeyUsageClientAuth, f.ClientCert, f.ClientKey, f.ClientPEM},
	} {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return f, err
		}
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(int64(i + 2)), Subject: pkix.Name{CommonName: leaf.cn},
			NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{leaf.eku},
			DNSNames: []string{leaf.cn}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, key.Public(), caKey)
		if err != nil {
			return f, err
		}
		keyDER, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return f, err
		}
		certPEM, keyPEM := pemBlock("CERTIFICATE", der), pemBlock("PRIVATE KEY", keyDER)
		for _, w := range []struct {
			path string
			data []byte
		}{{leaf.cert, certPEM}, {leaf.key, keyPEM}, {leaf.all, append(append([]byte{}, certPEM...), keyPEM...)}} {
			if err := writePEM(w.path, w.data); err != nil {
				return f, err
			}
		}
	}
	return f, nil
}

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

func writePEM(path string, data []byte) error {
	if err := os.WriteFile(path, data, 0o600); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// jwtIssuer is the issuer of the benchmark's end-user token.
const (
	jwtIssuer  = "https://issuer.bench.rampart.test"
	jwtSubject = "bench-user"
)

// issuer holds an ES256 key: its public JWKS goes inline into the
// RequestAuthentication, and it signs the token the load generators send.
type issuer struct {
	JWKS  string
	Token string
}

func newIssuer() (issuer, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return issuer{}, err
	}
	pub := jose.JSONWebKey{Key: key.Public(), KeyID: "hop-bench", Algorithm: string(jose.ES256), Use: "sig"}
	jwks, err := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{pub}})
	if err != nil {
		return issuer{}, err
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: jose.JSONWebKey{Key: crypto.Signer(key), KeyID: "hop-bench"}},
		(&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		return issuer{}, err
	}
	now := time.Now()
	tok, err := jwt.Signed(signer).Claims(jwt.Claims{
		Issuer: jwtIssuer, Subject: jwtSubject, Audience: jwt.Audience{"backend"},
		IssuedAt: jwt.NewNumericDate(now), NotBefore: jwt.NewNumericDate(now.Add(-time.Minute)), Expiry: jwt.NewNumericDate(now.Add(2 * time.Hour)),
	}).Serialize()
	if err != nil {
		return issuer{}, err
	}
	return issuer{JWKS: string(jwks), Token: tok}, nil
}
