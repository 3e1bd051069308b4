package ca

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"fmt"
	"math/big"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

var (
	oidKeyUsage       = asn1.ObjectIdentifier{2, 5, 29, 15}
	oidSubjectAltName = asn1.ObjectIdentifier{2, 5, 29, 17}
)

func findExtension(c *x509.Certificate, oid asn1.ObjectIdentifier) (critical, ok bool) {
	for _, e := range c.Extensions {
		if e.Id.Equal(oid) {
			return e.Critical, true
		}
	}
	return false, false
}

// TestSignCSRProfile checks an issued SVID against the SPIFFE X.509-SVID standard.
func TestSignCSRProfile(t *testing.T) {
	tests := []struct {
		key    string
		wantKU x509.KeyUsage
	}{
		{key: "p256", wantKU: x509.KeyUsageDigitalSignature},
		{key: "p384", wantKU: x509.KeyUsageDigitalSignature},
		{key: "rsa2048", wantKU: x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment},
	}
	clk := newFakeClock()
	a := newTestAuthority(t, Config{Clock: clk})
	for _, tt := range tests {
		t.Run(tt.key, func(t *testing.T) {
			key := testKey(t, tt.key)
			// Everything besides the URI SAN must be ignored, not copied.
			csr := csrWith(t, key, &x509.CertificateRequest{
				URIs:           parseURIs(t, testID.String()),
				DNSNames:       []string{"evil.example.com"},
				IPAddresses:    []net.IP{net.IPv4(10, 0, 0, 1)},
				EmailAddresses: []string{"a@example.com"},
			})
			chain, err := a.SignCSR(csr, testIdent, 0)
			if err != nil {
				t.Fatalf("SignCSR: %v", err)
			}
			if len(chain) != 2 || !chain[1].Equal(a.SigningRoot()) {
				t.Fatalf("chain has %d certificates, want [leaf, root]", len(chain))
			}
			leaf := chain[0]
			if len(leaf.URIs) != 1 || leaf.URIs[0].String() != testID.String() {
				t.Errorf("URI SANs = %v, want exactly [%s]", leaf.URIs, testID)
			}
			if len(leaf.DNSNames)+len(leaf.IPAddresses)+len(leaf.EmailAddresses) != 0 {
				t.Errorf("CSR SANs were copied: DNS %v IP %v email %v", leaf.DNSNames, leaf.IPAddresses, leaf.EmailAddresses)
			}
			if leaf.IsCA || !leaf.BasicConstraintsValid {
				t.Errorf("IsCA=%v BasicConstraintsValid=%v, want false/true", leaf.IsCA, leaf.BasicConstraintsValid)
			}
			if leaf.KeyUsage != tt.wantKU {
				t.Errorf("KeyUsage = %b, want %b", leaf.KeyUsage, tt.wantKU)
			}
			if crit, ok := findExtension(leaf, oidKeyUsage); !ok || !crit {
				t.Errorf("keyUsage extension present=%v critical=%v, want a critical extension", ok, crit)
			}
			if len(leaf.Subject.Names) == 0 {
				if crit, ok := findExtension(leaf, oidSubjectAltName); !ok || !crit {
					t.Errorf("subject is empty but the SAN extension is not critical (present=%v)", ok)
				}
			}
			wantEKU := []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
			if fmt.Sprint(leaf.ExtKeyUsage) != fmt.Sprint(wantEKU) || len(leaf.UnknownExtKeyUsage) != 0 {
				t.Errorf("ExtKeyUsage = %v, want %v", leaf.ExtKeyUsage, wantEKU)
			}
			if !publicKeyMatches(leaf, key) {
				t.Error("leaf does not carry the CSR's public key")
			}
			id, chains, err := x509svid.Verify(chain, a.Bundle(), x509svid.WithTime(clk.Now()))
			if err != nil {
				t.Fatalf("x509svid.Verify: %v", err)
			}
			if id != testID || len(chains) != 1 {
				t.Errorf("Verify = %s with %d chains, want %s with 1", id, len(chains), testID)
			}
			// Serial numbers must be unique: sign again and compare.
			again, err := a.SignCSR(csr, testIdent, 0)
			if err != nil {
				t.Fatal(err)
			}
			if again[0].SerialNumber.Cmp(leaf.SerialNumber) == 0 {
				t.Error("two SVIDs share a serial number")
			}
		})
	}
}

func TestSignCSROpenSSL(t *testing.T) {
	opensslPath(t)
	a := newTestAuthority(t, Config{})
	chain := signTestSVID(t, a)
	out := opensslVerify(t, a.SigningRoot(), chain)
	if !strings.Contains(out, ": OK") {
		t.Errorf("openssl verify output = %q, want OK", out)
	}
	leafPath := writeFile(t, filepath.Join(t.TempDir(), "leaf.pem"), EncodeCertsPEM(chain[:1]))
	text := runOpenSSL(t, "x509", "-noout", "-text", "-in", leafPath)
	for _, want := range []string{
		"URI:spiffe://example.org/ns/default/sa/web",
		"CA:FALSE",
		"X509v3 Key Usage: critical",
		"Digital Signature",
		"TLS Web Server Authentication, TLS Web Client Authentication",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("openssl x509 -text lacks %q:\n%s", want, text)
		}
	}
	if strings.Contains(text, "Certificate Sign") {
		t.Errorf("leaf may sign certificates:\n%s", text)
	}

	// A root the bundle does not hold must not verify.
	other := newTestAuthority(t, Config{})
	cmd := []string{"verify", "-CAfile", writeFile(t, filepath.Join(t.TempDir(), "other.pem"), EncodeCertsPEM([]*x509.Certificate{other.SigningRoot()})), leafPath}
	if out, err := execOpenSSL(cmd...); err == nil {
		t.Errorf("openssl verified the SVID against an unrelated root:\n%s", out)
	}
}

func TestSignCSRTTL(t *testing.T) {
	const svidTTL = time.Hour
	tests := []struct {
		name    string
		advance time.Duration // clock moves this far past the root's creation before signing
		ttl     time.Duration
		want    time.Duration // wanted NotAfter - now; 0 means "the root's NotAfter"
	}{
		{name: "default", ttl: 0, want: svidTTL},
		{name: "shorter", ttl: 10 * time.Minute, want: 10 * time.Minute},
		{name: "longer is capped", ttl: 5 * time.Hour, want: svidTTL},
		{name: "negative means default", ttl: -time.Minute, want: svidTTL},
		{name: "never past the root", advance: 90 * time.Minute, ttl: 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk := newFakeClock()
			a := newTestAuthority(t, Config{Clock: clk, SVIDTTL: svidTTL, RootTTL: 2 * time.Hour})
			clk.Step(tt.advance)
			now := clk.Now()
			chain, err := a.SignCSR(csrFor(t, testKey(t, "p256"), testID.String()), testIdent, tt.ttl)
			if err != nil {
				t.Fatalf("SignCSR: %v", err)
			}
			leaf := chain[0]
			want := now.Add(tt.want)
			if tt.want == 0 {
				want = a.SigningRoot().NotAfter
			}
			if !leaf.NotAfter.Equal(want) {
				t.Errorf("NotAfter = %s, want %s", leaf.NotAfter, want)
			}
			if !leaf.NotAfter.After(now) || leaf.NotAfter.After(a.SigningRoot().NotAfter) {
				t.Errorf("NotAfter %s outside (now %s, root NotAfter %s]", leaf.NotAfter, now, a.SigningRoot().NotAfter)
			}
			if !leaf.NotBefore.Before(now) || now.Sub(leaf.NotBefore) > time.Minute {
				t.Errorf("NotBefore = %s, want shortly before %s", leaf.NotBefore, now)
			}
		})
	}

	t.Run("expired root", func(t *testing.T) {
		clk := newFakeClock()
		a := newTestAuthority(t, Config{Clock: clk, SVIDTTL: svidTTL, RootTTL: 2 * time.Hour})
		clk.Step(3 * time.Hour)
		_, err := a.SignCSR(csrFor(t, testKey(t, "p256"), testID.String()), testIdent, 0)
		if err == nil || !strings.Contains(err.Error(), "signing CA has expired") {
			t.Fatalf("SignCSR after the root expired = %v, want an expiry error", err)
		}
	})
}

func TestSignCSRRejects(t *testing.T) {
	a := newTestAuthority(t, Config{})
	p256 := testKey(t, "p256")
	valid := csrFor(t, p256, testID.String())
	badSig := append([]byte(nil), valid...)
	badSig[len(badSig)-3] ^= 0xff // inside the signature BIT STRING

	// A well-formed CSR over the size limit: a valid one padded with DNS names.
	var names []string
	for i := 0; len(strings.Join(names, "")) < MaxCSRBytes; i++ {
		names = append(names, fmt.Sprintf("host-%05d.example.com", i))
	}
	oversized := csrWith(t, p256, &x509.CertificateRequest{URIs: parseURIs(t, testID.String()), DNSNames: names})
	if _, err := x509.ParseCertificateRequest(oversized); err != nil || len(oversized) <= MaxCSRBytes {
		t.Fatalf("oversized fixture: %d bytes, parse error %v", len(oversized), err)
	}

	tests := []struct {
		name    string
		csr     []byte
		ident   Identity
		wantErr error
		wantMsg string
	}{
		{name: "garbage DER", csr: []byte("not a CSR"), wantErr: ErrInvalidCSR},
		{name: "empty", csr: nil, wantErr: ErrInvalidCSR},
		{name: "trailing data", csr: append(append([]byte(nil), valid...), 0, 0), wantErr: ErrInvalidCSR},
		{name: "bad signature", csr: badSig, wantErr: ErrInvalidCSR, wantMsg: "signature"},
		{name: "no URI SAN", csr: csrFor(t, p256), wantErr: ErrInvalidCSR, wantMsg: "found 0"},
		{name: "two URI SANs", csr: csrFor(t, p256, testID.String(), "spiffe://example.org/ns/default/sa/other"), wantErr: ErrInvalidCSR, wantMsg: "found 2"},
		{name: "URI SAN not SPIFFE", csr: csrFor(t, p256, "https://example.org/ns/default/sa/web"), wantErr: ErrInvalidCSR, wantMsg: "not a SPIFFE ID"},
		{name: "other identity", csr: csrFor(t, p256, "spiffe://example.org/ns/default/sa/admin"), wantErr: ErrIdentityMismatch, wantMsg: "spiffe://example.org/ns/default/sa/admin but the credential is for spiffe://example.org/ns/default/sa/web"},
		{name: "other namespace", csr: csrFor(t, p256, "spiffe://example.org/ns/kube-system/sa/web"), wantErr: ErrIdentityMismatch},
		{name: "other trust domain", csr: csrFor(t, p256, "spiffe://evil.org/ns/default/sa/web"), wantErr: ErrIdentityMismatch},
		{name: "path prefix", csr: csrFor(t, p256, "spiffe://example.org/ns/default/sa/web/extra"), wantErr: ErrIdentityMismatch},
		{name: "invalid credential identity", csr: valid, ident: Identity{Namespace: "Default", ServiceAccount: "web"}, wantErr: ErrIdentityMismatch},
		{name: "RSA 1024", csr: csrFor(t, testKey(t, "rsa1024"), testID.String()), wantErr: ErrInvalidCSR, wantMsg: "1024 bits is too weak"},
		{name: "P-224", csr: csrFor(t, testKey(t, "p224"), testID.String()), wantErr: ErrInvalidCSR, wantMsg: "P-224 is not allowed"},
		// Refused on its size before its (junk) signature costs a verification.
		{name: "RSA 60000 bits", csr: hugeRSACSR(t, 60000), wantErr: ErrInvalidCSR, wantMsg: "60000 bits is too large"},
		{name: "oversized", csr: oversized, wantErr: ErrInvalidCSR, wantMsg: "limit"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ident := tt.ident
			if ident == (Identity{}) {
				ident = testIdent
			}
			chain, err := a.SignCSR(tt.csr, ident, 0)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("SignCSR() error = %v, want %v", err, tt.wantErr)
			}
			if chain != nil {
				t.Errorf("SignCSR() returned %d certificates with an error", len(chain))
			}
			if tt.wantMsg != "" && !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("error %q does not mention %q", err, tt.wantMsg)
			}
		})
	}

	// The fixture the rejections are built from is itself acceptable, so the
	// cases above fail for the reason they name.
	if _, err := a.SignCSR(valid, testIdent, 0); err != nil {
		t.Fatalf("valid CSR rejected: %v", err)
	}
}

// The control plane's identity is rampartd's alone: agents authenticate rampartd
// by it, so no CSR gets it, whatever credential it came with. Only the identity
// in the Authority's own root namespace is reserved.
func TestSignCSRRefusesControlPlaneIdentity(t *testing.T) {
	tests := []struct {
		name          string
		rootNamespace string
		ident         Identity
		wantErr       error
	}{
		{name: "default root namespace", ident: ControlPlaneIdentity(DefaultRootNamespace), wantErr: ErrReservedIdentity},
		{name: "configured root namespace", rootNamespace: "mesh-root", ident: ControlPlaneIdentity("mesh-root"), wantErr: ErrReservedIdentity},
		{name: "rampartd in another namespace", rootNamespace: "mesh-root", ident: ControlPlaneIdentity(DefaultRootNamespace)},
		{name: "another service account in the root namespace", ident: Identity{Namespace: DefaultRootNamespace, ServiceAccount: "rampartd-helper"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := newTestAuthority(t, Config{RootNamespace: tt.rootNamespace})
			id, err := tt.ident.ID(testTD)
			if err != nil {
				t.Fatal(err)
			}
			chain, err := a.SignCSR(csrFor(t, testKey(t, "p256"), id.String()), tt.ident, 0)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("SignCSR(%s) error = %v, want %v", id, err, tt.wantErr)
			}
			if tt.wantErr == nil {
				return
			}
			if chain != nil {
				t.Errorf("SignCSR() returned %d certificates with an error", len(chain))
			}
			if !strings.Contains(err.Error(), id.String()) {
				t.Errorf("error %q does not name %s", err, id)
			}
			// rampartd's serving certificate is still issued.
			if _, err := a.IssueServingCert(nil, nil); err != nil {
				t.Errorf("IssueServingCert: %v", err)
			}
		})
	}
}

func TestIssueServingCert(t *testing.T) {
	clk := newFakeClock()
	a := newTestAuthority(t, Config{Clock: clk, RootNamespace: "mesh-root"})
	cert, err := a.IssueServingCert([]string{"rampart.local"}, []net.IP{net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	leaf := cert.Leaf
	wantID := spiffeid.RequireFromString("spiffe://example.org/ns/mesh-root/sa/rampartd")
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != wantID.String() {
		t.Errorf("URIs = %v, want [%s]", leaf.URIs, wantID)
	}
	if fmt.Sprint(leaf.DNSNames) != "[rampart.local]" || len(leaf.IPAddresses) != 1 || !leaf.IPAddresses[0].Equal(net.IPv4(127, 0, 0, 1)) {
		t.Errorf("DNS %v IP %v, want [rampart.local] [127.0.0.1]", leaf.DNSNames, leaf.IPAddresses)
	}
	if len(cert.Certificate) != 1 {
		t.Errorf("TLS chain has %d certificates, want the leaf only (peers hold the root)", len(cert.Certificate))
	}
	if err := leaf.VerifyHostname("rampart.local"); err != nil {
		t.Error(err)
	}
	if id, _, err := x509svid.ParseAndVerify(cert.Certificate, a.Bundle(), x509svid.WithTime(clk.Now())); err != nil || id != wantID {
		t.Errorf("ParseAndVerify = %s, %v; want %s", id, err, wantID)
	}
}

// hugeRSACSR is a CSR for a random RSA modulus of the given size with a junk
// signature (no such key is generated): what a client could send to make the
// CA verify a signature with a huge key.
func hugeRSACSR(t *testing.T, bits int) []byte {
	t.Helper()
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), uint(bits)))
	if err != nil {
		t.Fatal(err)
	}
	n.SetBit(n, bits-1, 1)
	n.SetBit(n, 0, 1)
	spki, err := x509.MarshalPKIXPublicKey(&rsa.PublicKey{N: n, E: 65537})
	if err != nil {
		t.Fatal(err)
	}
	sig := make([]byte, (bits+7)/8)
	var b cryptobyte.Builder
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
			b.AddASN1Int64(0)
			b.AddASN1(cbasn1.SEQUENCE, func(*cryptobyte.Builder) {})
			b.AddBytes(spki)
			b.AddASN1(cbasn1.Tag(0).Constructed().ContextSpecific(), func(*cryptobyte.Builder) {})
		})
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
			b.AddASN1ObjectIdentifier(asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 11})
			b.AddASN1NULL()
		})
		b.AddASN1BitString(sig)
	})
	return b.BytesOrPanic()
}

// Issue runs its grant (a caller spending a single-use credential) only after
// the certificate is signed, and returns the certificate only if the grant
// succeeds; a refused grant is the caller's to count, a signing failure the
// Authority's.
func TestIssueGrant(t *testing.T) {
	errSpent := errors.New("token already used")
	tests := []struct {
		name        string
		expire      bool  // the signing root expires between CheckCSR and Issue
		grantErr    error // what the grant returns
		wantGranted bool  // the grant ran
		wantErr     string
		wantCounts  map[string]float64
	}{
		{name: "signed and granted", wantGranted: true, wantCounts: map[string]float64{"success": 1, "error": 0}},
		{name: "grant refused", grantErr: errSpent, wantGranted: true, wantErr: errSpent.Error(), wantCounts: map[string]float64{"success": 0, "error": 0}},
		{name: "signing failed", expire: true, wantErr: "signing CA has expired", wantCounts: map[string]float64{"success": 0, "error": 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk := newFakeClock()
			a := newTestAuthority(t, Config{Clock: clk, SVIDTTL: time.Hour, RootTTL: 2 * time.Hour})
			checked, err := a.CheckCSR(csrFor(t, testKey(t, "p256"), testID.String()), testIdent)
			if err != nil {
				t.Fatal(err)
			}
			if tt.expire {
				clk.Step(3 * time.Hour)
			}
			granted := false
			chain, err := a.Issue(checked, 0, func() error {
				granted = true
				return tt.grantErr
			})
			if granted != tt.wantGranted {
				t.Errorf("grant ran: %v, want %v", granted, tt.wantGranted)
			}
			switch {
			case tt.wantErr == "" && (err != nil || len(chain) == 0):
				t.Fatalf("Issue() = %d certificates, %v; want a chain", len(chain), err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("Issue() error = %v, want one containing %q", err, tt.wantErr)
			case tt.wantErr != "" && len(chain) != 0:
				t.Errorf("Issue() returned %d certificates with an error", len(chain))
			}
			if tt.grantErr != nil && !errors.Is(err, tt.grantErr) {
				t.Errorf("Issue() error = %v, want the grant's %v", err, tt.grantErr)
			}
			for result, want := range tt.wantCounts {
				if got := testutil.ToFloat64(a.metrics.issued.WithLabelValues(result)); got != want {
					t.Errorf("issued{%s} = %v, want %v", result, got, want)
				}
			}
		})
	}
}
