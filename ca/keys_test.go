package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseKeyType(t *testing.T) {
	tests := []struct {
		in      string
		want    KeyType
		wantErr string
	}{
		{in: "ecdsa-p256", want: KeyECDSAP256},
		{in: "rsa-2048", want: KeyRSA2048},
		{in: "rsa-3072", want: KeyRSA3072},
		{in: "RSA-2048", wantErr: `unknown key type "RSA-2048" (valid: ecdsa-p256, rsa-2048, rsa-3072)`},
		{in: "", wantErr: "unknown key type"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseKeyType(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseKeyType(%q) = %q, %v; want error %q", tt.in, got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ParseKeyType(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
			}
		})
	}
}

func TestParseKeyPEM(t *testing.T) {
	ec := testKey(t, "p256").(*ecdsa.PrivateKey)
	rk := testKey(t, "rsa2048").(*rsa.PrivateKey)
	block := func(typ string, der []byte) []byte { return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}) }
	sec1, err := x509.MarshalECPrivateKey(ec)
	if err != nil {
		t.Fatal(err)
	}
	pkcs8, err := EncodeKeyPEM(rk)
	if err != nil {
		t.Fatal(err)
	}
	cert := EncodeCertsPEM([]*x509.Certificate{newTestAuthority(t, Config{}).SigningRoot()})

	tests := []struct {
		name    string
		data    []byte
		want    crypto.PublicKey
		wantErr string
	}{
		{name: "PKCS#8", data: pkcs8, want: rk.Public()},
		{name: "PKCS#1", data: block("RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(rk)), want: rk.Public()},
		{name: "SEC 1", data: block("EC PRIVATE KEY", sec1), want: ec.Public()},
		{name: "after a certificate", data: append(append([]byte(nil), cert...), block("EC PRIVATE KEY", sec1)...), want: ec.Public()},
		{name: "no key", data: cert, wantErr: "no PEM private key found"},
		{name: "not PEM", data: []byte("hello"), wantErr: "no PEM private key found"},
		{name: "corrupt", data: block("EC PRIVATE KEY", []byte{1, 2, 3}), wantErr: "parse EC PRIVATE KEY"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k, err := ParseKeyPEM(tt.data)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseKeyPEM() = %v, want error %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !k.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(tt.want) {
				t.Error("parsed key is not the encoded key")
			}
		})
	}
}

func TestParseCertsPEM(t *testing.T) {
	a, b := newTestAuthority(t, Config{}).SigningRoot(), newTestAuthority(t, Config{}).SigningRoot()
	keyBlock := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte{1}})
	tests := []struct {
		name    string
		data    []byte
		want    []*x509.Certificate
		wantErr string
	}{
		{name: "two in order", data: EncodeCertsPEM([]*x509.Certificate{a, b}), want: []*x509.Certificate{a, b}},
		{name: "other blocks skipped", data: append(append([]byte(nil), keyBlock...), EncodeCertsPEM([]*x509.Certificate{b})...), want: []*x509.Certificate{b}},
		{name: "none", data: keyBlock, wantErr: "no PEM certificate found"},
		{name: "corrupt second", data: append(EncodeCertsPEM([]*x509.Certificate{a}), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{1}})...), wantErr: "parse certificate 2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseCertsPEM(tt.data)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseCertsPEM() = %v, want error %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || !sameCerts(got, tt.want) {
				t.Fatalf("ParseCertsPEM() = %v, %v; want %v", subjects(got), err, subjects(tt.want))
			}
		})
	}
}

func TestWriteFileAtomic(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "f")
	for i, content := range []string{"first", "second"} {
		perm := []os.FileMode{0o600, 0o644}[i]
		if err := WriteFileAtomic(path, []byte(content), perm); err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(path)
		if err != nil || string(got) != content {
			t.Errorf("content = %q, %v; want %q", got, err, content)
		}
		if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != perm {
			t.Errorf("mode = %v, want %v", fi.Mode().Perm(), perm)
		}
	}
	entries, err := os.ReadDir(dir)
	if err != nil || len(entries) != 1 {
		t.Errorf("directory holds %d entries (%v), want only the file: no temporary leftovers", len(entries), err)
	}
	if err := WriteFileAtomic(filepath.Join(dir, "missing", "f"), nil, 0o600); err == nil {
		t.Error("WriteFileAtomic into a missing directory succeeded")
	}
}
