package ca

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func encTestCA(t *testing.T, kt KeyType, withSKID bool) (*x509.Certificate, crypto.Signer) {
	t.Helper()
	key, err := GenerateKey(kt)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(7),
		Subject:               pkix.Name{Organization: []string{"example.org"}, CommonName: "test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(100 * 365 * 24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	if !withSKID {
		tmpl.SubjectKeyId = nil
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	if !withSKID {
		c.SubjectKeyId = nil // as a parent without the extension
	}
	return c, key
}

// The hand-rolled encoder must write exactly what crypto/x509 writes for the same
// SVID, for every shape the CA produces.
func TestEncodeSVIDMatchesCreateCertificate(t *testing.T) {
	id := spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/web")
	ecLeaf, _ := GenerateKey(KeyECDSAP256)
	rsaLeaf, _ := GenerateKey(KeyRSA2048)
	now := time.Date(2026, 11, 22, 1, 2, 3, 456, time.UTC)
	for _, tc := range []struct {
		name     string
		parentKT KeyType
		skid     bool
		leaf     crypto.Signer
		notAfter time.Time
		dns      []string
		ips      []net.IP
	}{
		{name: "p256 root, p256 leaf", parentKT: KeyECDSAP256, skid: true, leaf: ecLeaf, notAfter: now.Add(time.Hour)},
		{name: "p256 root, rsa leaf", parentKT: KeyECDSAP256, skid: true, leaf: rsaLeaf, notAfter: now.Add(time.Hour)},
		{name: "rsa root, p256 leaf", parentKT: KeyRSA2048, skid: true, leaf: ecLeaf, notAfter: now.Add(time.Hour)},
		{name: "parent without SKID", parentKT: KeyECDSAP256, skid: false, leaf: ecLeaf, notAfter: now.Add(time.Hour)},
		{name: "dns and ip SANs", parentKT: KeyECDSAP256, skid: true, leaf: ecLeaf, notAfter: now.Add(time.Hour),
			dns: []string{"localhost", "rampartd.rampart-system.svc"}, ips: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}},
		{name: "GeneralizedTime after 2049", parentKT: KeyECDSAP256, skid: true, leaf: ecLeaf, notAfter: time.Date(2051, 1, 1, 0, 0, 0, 0, time.UTC)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			parent, key := encTestCA(t, tc.parentKT, tc.skid)
			f := svidFields{
				serial:    new(big.Int).Lsh(big.NewInt(0xdeadbeef), 90),
				notBefore: now.Add(-30 * time.Second),
				notAfter:  tc.notAfter,
				pub:       tc.leaf.Public(),
				rsaLeaf:   tc.leaf == rsaLeaf,
				uri:       id.String(),
				dns:       tc.dns,
				ips:       tc.ips,
			}
			want, err := createSVID(f, id, parent, key)
			if err != nil {
				t.Fatal(err)
			}
			got, ok, err := signSVID(f, parent, key)
			if err != nil || !ok {
				t.Fatalf("signSVID: ok=%v err=%v", ok, err)
			}
			if !bytes.Equal(got.RawTBSCertificate, want.RawTBSCertificate) {
				t.Fatalf("TBS differs from crypto/x509's:\n got %x\nwant %x", got.RawTBSCertificate, want.RawTBSCertificate)
			}
			if err := got.CheckSignatureFrom(parent); err != nil {
				t.Fatalf("signature does not verify: %v", err)
			}
		})
	}
}

// A signer the encoder does not handle falls back to crypto/x509.
func TestSignSVIDDeclinesUnknownSigner(t *testing.T) {
	_, key := encTestCA(t, KeyECDSAP256, true)
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := signSVID(svidFields{pub: key.Public()}, &x509.Certificate{}, p384); ok {
		t.Fatal("signSVID claimed a P-384 signer; it must fall back to x509.CreateCertificate")
	}
}
