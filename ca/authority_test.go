package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"math/big"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"k8s.io/utils/clock"
	clocktesting "k8s.io/utils/clock/testing"
)

// Shared test fixtures and helpers for package ca.

var (
	testTD    = spiffeid.RequireTrustDomainFromString("example.org")
	testIdent = Identity{Namespace: "default", ServiceAccount: "web"}
	testID    = spiffeid.RequireFromString("spiffe://example.org/ns/default/sa/web")
)

// testStart is a second-aligned instant near the real time, so certificates a fake
// clock stamps are also valid for tools (openssl) that use the wall clock.
func testStart() time.Time { return time.Now().UTC().Truncate(time.Second) }

func newFakeClock() *clocktesting.FakeClock { return clocktesting.NewFakeClock(testStart()) }

// newTestAuthority builds and loads an Authority; zero fields get test defaults
// (a temp state dir, trust domain example.org, a fake clock).
func newTestAuthority(t testing.TB, cfg Config) *Authority {
	t.Helper()
	if cfg.StateDir == "" {
		cfg.StateDir = t.TempDir()
	}
	if cfg.TrustDomain.IsZero() {
		cfg.TrustDomain = testTD
	}
	if cfg.Clock == nil {
		cfg.Clock = newFakeClock()
	}
	a, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if err := a.Load(); err != nil {
		t.Fatalf("Load: %v", err)
	}
	t.Cleanup(func() { a.Close() })
	return a
}

// Keys are cached per type: RSA generation is slow and the tests only need a few.
var (
	keyMu    sync.Mutex
	keyCache = map[string]crypto.Signer{}
)

func testKey(t testing.TB, kind string) crypto.Signer {
	t.Helper()
	keyMu.Lock()
	defer keyMu.Unlock()
	if k, ok := keyCache[kind]; ok {
		return k
	}
	var (
		k   crypto.Signer
		err error
	)
	switch kind {
	case "p256", "p256-b", "p256-c":
		k, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case "p384":
		k, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	case "p224":
		k, err = ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	case "rsa1024":
		k, err = rsa.GenerateKey(rand.Reader, 1024)
	case "rsa2048":
		k, err = rsa.GenerateKey(rand.Reader, 2048)
	default:
		t.Fatalf("unknown test key %q", kind)
	}
	if err != nil {
		t.Fatalf("generate %s key: %v", kind, err)
	}
	keyCache[kind] = k
	return k
}

// csrFor returns a DER CSR signed by key carrying the given URI SANs.
func csrFor(t testing.TB, key crypto.Signer, uris ...string) []byte {
	t.Helper()
	return csrWith(t, key, &x509.CertificateRequest{URIs: parseURIs(t, uris...)})
}

func csrWith(t testing.TB, key crypto.Signer, tmpl *x509.CertificateRequest) []byte {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatalf("create CSR: %v", err)
	}
	return der
}

func parseURIs(t testing.TB, uris ...string) []*url.URL {
	t.Helper()
	var out []*url.URL
	for _, s := range uris {
		u, err := url.Parse(s)
		if err != nil {
			t.Fatalf("parse %q: %v", s, err)
		}
		out = append(out, u)
	}
	return out
}

// signTestSVID signs an SVID for testIdent and fails the test on error.
func signTestSVID(t testing.TB, a *Authority) []*x509.Certificate {
	t.Helper()
	chain, err := a.SignCSR(csrFor(t, testKey(t, "p256"), testID.String()), testIdent, 0)
	if err != nil {
		t.Fatalf("SignCSR: %v", err)
	}
	return chain
}

func writeFile(t testing.TB, path string, data []byte) string {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// opensslPath returns the openssl binary or skips the test.
func opensslPath(t testing.TB) string {
	t.Helper()
	p, err := exec.LookPath("openssl")
	if err != nil {
		t.Skip("openssl not in PATH")
	}
	return p
}

func runOpenSSL(t testing.TB, args ...string) string {
	t.Helper()
	out, err := exec.Command(opensslPath(t), args...).CombinedOutput()
	if err != nil {
		t.Fatalf("openssl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// opensslVerify runs `openssl verify -CAfile root.pem -untrusted chain.pem leaf.pem`
// with chain[0] as the leaf and the rest of chain as untrusted certificates, and
// returns its output.
func opensslVerify(t testing.TB, root *x509.Certificate, chain []*x509.Certificate) string {
	t.Helper()
	opensslPath(t)
	dir := t.TempDir()
	return runOpenSSL(t, "verify",
		"-CAfile", writeFile(t, filepath.Join(dir, "root.pem"), EncodeCertsPEM([]*x509.Certificate{root})),
		"-untrusted", writeFile(t, filepath.Join(dir, "chain.pem"), EncodeCertsPEM(chain[1:])),
		writeFile(t, filepath.Join(dir, "leaf.pem"), EncodeCertsPEM(chain[:1])))
}

func execOpenSSL(args ...string) (string, error) {
	out, err := exec.Command("openssl", args...).CombinedOutput()
	return string(out), err
}

func TestNewValidatesConfig(t *testing.T) {
	tests := []struct {
		name    string
		cfg     Config
		wantErr string
	}{
		{name: "no state dir", cfg: Config{}, wantErr: "StateDir is required"},
		{name: "unknown key type", cfg: Config{StateDir: "x", KeyType: "dsa-1024"}, wantErr: `unknown key type "dsa-1024"`},
		{name: "negative SVID TTL", cfg: Config{StateDir: "x", SVIDTTL: -time.Second}, wantErr: "SVIDTTL must be positive"},
		{name: "negative propagation delay", cfg: Config{StateDir: "x", PropagationDelay: -time.Second}, wantErr: "PropagationDelay must be positive"},
		{name: "negative retire margin", cfg: Config{StateDir: "x", RetireMargin: -time.Hour}, wantErr: "RetireMargin must be positive"},
		{name: "SVID TTL not below root TTL", cfg: Config{StateDir: "x", RootTTL: time.Hour, SVIDTTL: time.Hour}, wantErr: "must be shorter than the root TTL"},
		{name: "defaults", cfg: Config{StateDir: "x"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, err := New(tt.cfg)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("New() error = %v, want it to contain %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("New: %v", err)
			}
			if got := a.TrustDomain().Name(); got != "cluster.local" {
				t.Errorf("default trust domain = %q, want cluster.local", got)
			}
			if a.cfg.KeyType != KeyECDSAP256 || a.SVIDTTL() != time.Hour || a.cfg.JWTSVIDTTL != 5*time.Minute ||
				a.cfg.RefreshHint != 5*time.Minute || a.cfg.PropagationDelay != 10*time.Minute || a.cfg.RetireMargin != time.Minute ||
				a.cfg.RootNamespace != DefaultRootNamespace {
				t.Errorf("defaults = %+v", a.cfg)
			}
		})
	}
}

func TestLoadCreatesRoot(t *testing.T) {
	tests := []struct {
		keyType KeyType
		check   func(t *testing.T, pub crypto.PublicKey)
	}{
		{keyType: "", check: func(t *testing.T, pub crypto.PublicKey) {
			k, ok := pub.(*ecdsa.PublicKey)
			if !ok || k.Curve != elliptic.P256() {
				t.Errorf("root key = %T, want ECDSA P-256", pub)
			}
		}},
		{keyType: KeyRSA2048, check: func(t *testing.T, pub crypto.PublicKey) {
			if k, ok := pub.(*rsa.PublicKey); !ok || k.N.BitLen() != 2048 {
				t.Errorf("root key = %T, want RSA 2048", pub)
			}
		}},
		{keyType: KeyRSA3072, check: func(t *testing.T, pub crypto.PublicKey) {
			if k, ok := pub.(*rsa.PublicKey); !ok || k.N.BitLen() != 3072 {
				t.Errorf("root key = %T, want RSA 3072", pub)
			}
		}},
	}
	for _, tt := range tests {
		name := string(tt.keyType)
		if name == "" {
			name = "default"
		}
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			clk := newFakeClock()
			a := newTestAuthority(t, Config{StateDir: dir, KeyType: tt.keyType, Clock: clk, RootTTL: 48 * time.Hour})

			roots := a.Roots()
			if len(roots) != 1 {
				t.Fatalf("Roots() has %d certificates, want 1", len(roots))
			}
			root := roots[0]
			tt.check(t, root.PublicKey)
			if !root.IsCA || !root.BasicConstraintsValid || root.KeyUsage&x509.KeyUsageCertSign == 0 {
				t.Errorf("root is not a CA: IsCA=%v KeyUsage=%b", root.IsCA, root.KeyUsage)
			}
			if err := root.CheckSignatureFrom(root); err != nil {
				t.Errorf("root is not self-signed: %v", err)
			}
			if len(root.URIs) != 1 || root.URIs[0].String() != "spiffe://example.org" {
				t.Errorf("root URIs = %v, want [spiffe://example.org]", root.URIs)
			}
			if want := clk.Now().Add(48 * time.Hour); !root.NotAfter.Equal(want) {
				t.Errorf("root NotAfter = %s, want %s (RootTTL)", root.NotAfter, want)
			}
			if !a.SigningRoot().Equal(root) {
				t.Error("SigningRoot() is not the only root")
			}
			// The root signs SVIDs that verify, with SHA-256 for either key type.
			chain := signTestSVID(t, a)
			if err := chain[0].CheckSignatureFrom(root); err != nil {
				t.Errorf("SVID signature does not verify with the root: %v", err)
			}
			if _, _, err := x509svid.Verify(chain, a.Bundle(), x509svid.WithTime(clk.Now())); err != nil {
				t.Errorf("x509svid.Verify: %v", err)
			}
			if alg := chain[0].SignatureAlgorithm; alg != x509.ECDSAWithSHA256 && alg != x509.SHA256WithRSA {
				t.Errorf("SVID signature algorithm = %s, want SHA-256 based", alg)
			}
			if _, err := exec.LookPath("openssl"); err == nil {
				if out := opensslVerify(t, root, chain); !strings.Contains(out, ": OK") {
					t.Errorf("openssl verify = %q", out)
				}
			}

			caDir := filepath.Join(dir, "ca")
			for _, f := range []string{"gen-1.key", "gen-1-jwt.key"} {
				fi, err := os.Stat(filepath.Join(caDir, f))
				if err != nil {
					t.Fatal(err)
				}
				if fi.Mode().Perm() != 0o600 {
					t.Errorf("%s mode = %v, want 0600", f, fi.Mode().Perm())
				}
			}
			if fi, err := os.Stat(caDir); err != nil || fi.Mode().Perm() != 0o700 {
				t.Errorf("ca dir mode = %v (%v), want 0700", fi.Mode().Perm(), err)
			}
			rootBefore := a.Status().Roots[0]
			jwtBefore := a.Bundle().JWTAuthorities()

			if err := a.Close(); err != nil {
				t.Fatalf("Close: %v", err)
			}
			b := newTestAuthority(t, Config{StateDir: dir, KeyType: tt.keyType, Clock: clk, RootTTL: 48 * time.Hour})
			if got := b.Roots(); len(got) != 1 || string(got[0].Raw) != string(root.Raw) {
				t.Error("second Authority on the same directory did not reuse the root")
			}
			if got := b.Status().Roots[0]; got != rootBefore {
				t.Errorf("root status after restart = %+v, want %+v", got, rootBefore)
			}
			jwtAfter := b.Bundle().JWTAuthorities()
			if len(jwtAfter) != 1 || len(jwtBefore) != 1 {
				t.Fatalf("JWT authorities: before %d, after %d, want 1 each", len(jwtBefore), len(jwtAfter))
			}
			for kid := range jwtBefore {
				if _, ok := jwtAfter[kid]; !ok {
					t.Errorf("JWT key %s not reused after restart", kid)
				}
			}
			if seq, _ := b.Bundle().SequenceNumber(); seq != 1 {
				t.Errorf("bundle sequence after restart = %d, want 1", seq)
			}
		})
	}
}

func TestLoadStateDirInUse(t *testing.T) {
	dir := t.TempDir()
	first := newTestAuthority(t, Config{StateDir: dir})

	second, err := New(Config{StateDir: dir, TrustDomain: testTD})
	if err != nil {
		t.Fatal(err)
	}
	if err := second.Load(); !errors.Is(err, ErrStateDirInUse) {
		t.Fatalf("second Load() = %v, want ErrStateDirInUse", err)
	}
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	if err := second.Load(); err != nil {
		t.Fatalf("Load after the first Authority closed: %v", err)
	}
	defer second.Close()
	if string(second.SigningRoot().Raw) != string(first.SigningRoot().Raw) {
		t.Error("Authority loaded after Close uses a different root")
	}
}

func TestLoadRejectsBadState(t *testing.T) {
	tests := []struct {
		name    string
		break_  func(t *testing.T, caDir string)
		td      string
		wantErr string
	}{
		{
			name:    "other trust domain",
			break_:  func(*testing.T, string) {},
			td:      "other.org",
			wantErr: `belongs to trust domain "example.org", not "other.org"`,
		},
		{
			name: "garbage state file",
			break_: func(t *testing.T, caDir string) {
				writeFile(t, filepath.Join(caDir, "state.json"), []byte("{not json"))
			},
			wantErr: "state.json",
		},
		{
			name: "future state version",
			break_: func(t *testing.T, caDir string) {
				writeFile(t, filepath.Join(caDir, "state.json"), []byte(`{"version": 7}`))
			},
			wantErr: "unsupported state version 7",
		},
		{
			name: "key replaced",
			break_: func(t *testing.T, caDir string) {
				pemBytes, err := EncodeKeyPEM(testKey(t, "p256"))
				if err != nil {
					t.Fatal(err)
				}
				writeFile(t, filepath.Join(caDir, "gen-1.key"), pemBytes)
			},
			wantErr: "generation 1: key gen-1.key does not match certificate gen-1.pem",
		},
		{
			name: "key missing",
			break_: func(t *testing.T, caDir string) {
				if err := os.Remove(filepath.Join(caDir, "gen-1.key")); err != nil {
					t.Fatal(err)
				}
			},
			wantErr: "generation 1 key",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			a := newTestAuthority(t, Config{StateDir: dir})
			a.Close()
			tt.break_(t, filepath.Join(dir, "ca"))

			td := testTD
			if tt.td != "" {
				td = spiffeid.RequireTrustDomainFromString(tt.td)
			}
			b, err := New(Config{StateDir: dir, TrustDomain: td})
			if err != nil {
				t.Fatal(err)
			}
			err = b.Load()
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Load() = %v, want an error containing %q", err, tt.wantErr)
			}
			// A failed Load must not keep the directory locked: rampartd retries
			// with a fixed configuration, and rampartctl reads beside it.
			c, err := New(Config{StateDir: dir, TrustDomain: td})
			if err != nil {
				t.Fatal(err)
			}
			if err := c.Load(); errors.Is(err, ErrStateDirInUse) {
				t.Fatalf("after a failed Load the directory is still locked: %v", err)
			}
			c.Close()
		})
	}
}

func TestBundleDocument(t *testing.T) {
	a := newTestAuthority(t, Config{RefreshHint: 90 * time.Second})
	data, err := a.Bundle().Marshal()
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Keys []struct {
			Use string   `json:"use"`
			Kid string   `json:"kid"`
			X5c []string `json:"x5c"`
			Kty string   `json:"kty"`
		} `json:"keys"`
		Sequence    *uint64 `json:"spiffe_sequence"`
		RefreshHint *int64  `json:"spiffe_refresh_hint"`
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		t.Fatalf("bundle is not JSON: %v\n%s", err, data)
	}
	var x509Keys, jwtKeys int
	for _, k := range doc.Keys {
		switch k.Use {
		case "x509-svid":
			x509Keys++
			if len(k.X5c) != 1 {
				t.Errorf("x509-svid key has %d x5c entries, want 1", len(k.X5c))
				continue
			}
			if want := a.SigningRoot().Raw; string(mustB64(t, k.X5c[0])) != string(want) {
				t.Error("x509-svid key's x5c is not the root")
			}
		case "jwt-svid":
			jwtKeys++
			if want := a.st.Generations[0].JWTKeyID; k.Kid == "" || k.Kid != want {
				t.Errorf("jwt-svid kid = %q, want %q", k.Kid, want)
			}
			if k.Kty != "EC" {
				t.Errorf("jwt-svid kty = %q, want EC", k.Kty)
			}
		default:
			t.Errorf("unexpected key use %q", k.Use)
		}
	}
	if x509Keys != 1 || jwtKeys != 1 {
		t.Errorf("bundle has %d x509-svid and %d jwt-svid keys, want 1 and 1:\n%s", x509Keys, jwtKeys, data)
	}
	if doc.Sequence == nil || *doc.Sequence != 1 {
		t.Errorf("spiffe_sequence = %v, want 1", doc.Sequence)
	}
	if doc.RefreshHint == nil || *doc.RefreshHint != 90 {
		t.Errorf("spiffe_refresh_hint = %v, want 90", doc.RefreshHint)
	}
}

func mustB64(t *testing.T, s string) []byte {
	t.Helper()
	var b []byte
	if err := json.Unmarshal([]byte(`"`+s+`"`), &b); err != nil { // []byte decodes from std base64
		t.Fatalf("x5c entry is not base64: %v", err)
	}
	return b
}

func TestMintJWTSVID(t *testing.T) {
	// go-jose validates expiry against time.Now, so this test uses the real clock.
	a := newTestAuthority(t, Config{Clock: clock.RealClock{}, JWTSVIDTTL: 2 * time.Minute})

	t.Run("valid", func(t *testing.T) {
		before := time.Now()
		token, exp, err := a.MintJWTSVID(testID, []string{"spiffe://example.org/ns/db/sa/pg", "aud2"})
		if err != nil {
			t.Fatalf("MintJWTSVID: %v", err)
		}
		svid, err := jwtsvid.ParseAndValidate(token, a.Bundle(), []string{"aud2"})
		if err != nil {
			t.Fatalf("ParseAndValidate: %v", err)
		}
		if svid.ID != testID {
			t.Errorf("subject = %s, want %s", svid.ID, testID)
		}
		if len(svid.Audience) != 2 {
			t.Errorf("audience = %v, want both", svid.Audience)
		}
		if !svid.Expiry.Equal(exp.Truncate(time.Second)) {
			t.Errorf("token exp = %s, returned expiry %s", svid.Expiry, exp)
		}
		if d := exp.Sub(before); d < 2*time.Minute-time.Second || d > 2*time.Minute+5*time.Second {
			t.Errorf("expiry is %s after minting, want the 2m JWT-SVID TTL", d)
		}
		if _, err := jwtsvid.ParseAndValidate(token, a.Bundle(), []string{"someone-else"}); err == nil {
			t.Error("token validated for an audience it was not minted for")
		}
	})

	t.Run("rejected", func(t *testing.T) {
		tests := []struct {
			name    string
			id      spiffeid.ID
			aud     []string
			wantErr string
		}{
			{name: "no audience", id: testID, wantErr: "at least one audience"},
			{name: "foreign trust domain", id: spiffeid.RequireFromString("spiffe://evil.org/ns/default/sa/web"), aud: []string{"x"}, wantErr: "not in trust domain example.org"},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				tok, _, err := a.MintJWTSVID(tt.id, tt.aud)
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || tok != "" {
					t.Fatalf("MintJWTSVID() = %q, %v; want error containing %q", tok, err, tt.wantErr)
				}
			})
		}
	})
}

// certTemplate returns a CA or leaf template for the bring-your-own-CA tests.
func certTemplate(cn string, isCA bool, notAfter time.Time) *x509.Certificate {
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              notAfter,
		BasicConstraintsValid: true,
		IsCA:                  isCA,
		KeyUsage:              x509.KeyUsageDigitalSignature,
	}
	if isCA {
		tmpl.KeyUsage |= x509.KeyUsageCertSign | x509.KeyUsageCRLSign
	}
	return tmpl
}

func createCert(t testing.TB, tmpl, parent *x509.Certificate, pub crypto.PublicKey, parentKey crypto.Signer) *x509.Certificate {
	t.Helper()
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, parentKey)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func keyPEM(t testing.TB, k crypto.Signer) []byte {
	t.Helper()
	b, err := EncodeKeyPEM(k)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// externalPKI is an operator's PKI: a root and an intermediate that signs for Rampart.
type externalPKI struct {
	root, inter       *x509.Certificate
	rootKey, interKey crypto.Signer
}

func newExternalPKI(t testing.TB) externalPKI {
	t.Helper()
	rootKey, interKey := testKey(t, "p256-b"), testKey(t, "p384")
	root := certTemplate("Operator Root", true, time.Now().Add(10*365*24*time.Hour))
	root = createCert(t, root, root, rootKey.Public(), rootKey)
	inter := createCert(t, certTemplate("Operator Intermediate for Rampart", true, time.Now().Add(365*24*time.Hour)), root, interKey.Public(), rootKey)
	return externalPKI{root: root, inter: inter, rootKey: rootKey, interKey: interKey}
}

func TestExternalCA(t *testing.T) {
	pki := newExternalPKI(t)
	certs := func(cs ...*x509.Certificate) []byte { return EncodeCertsPEM(cs) }

	tests := []struct {
		name      string
		cert      []byte
		chain     []byte // ChainFile content; nil means no chain file
		key       []byte
		wantChain []*x509.Certificate // signing chain after the leaf
	}{
		{name: "chain file", cert: certs(pki.inter), chain: certs(pki.root), key: keyPEM(t, pki.interKey), wantChain: []*x509.Certificate{pki.inter, pki.root}},
		{name: "chain in the certificate file", cert: certs(pki.inter, pki.root), key: keyPEM(t, pki.interKey), wantChain: []*x509.Certificate{pki.inter, pki.root}},
		{name: "root signs directly", cert: certs(pki.root), key: keyPEM(t, pki.rootKey), wantChain: []*x509.Certificate{pki.root}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			files := t.TempDir()
			ext := &ExternalCA{
				CertFile: writeFile(t, filepath.Join(files, "ca.pem"), tt.cert),
				KeyFile:  writeFile(t, filepath.Join(files, "ca.key"), tt.key),
			}
			if tt.chain != nil {
				ext.ChainFile = writeFile(t, filepath.Join(files, "chain.pem"), tt.chain)
			}
			stateDir := t.TempDir()
			clk := newFakeClock()
			a := newTestAuthority(t, Config{StateDir: stateDir, External: ext, Clock: clk})

			chain := signTestSVID(t, a)
			if len(chain) != 1+len(tt.wantChain) {
				t.Fatalf("SignCSR returned %d certificates, want %d", len(chain), 1+len(tt.wantChain))
			}
			for i, want := range tt.wantChain {
				if !chain[i+1].Equal(want) {
					t.Errorf("chain[%d] = %s, want %s", i+1, chain[i+1].Subject, want.Subject)
				}
			}
			if err := chain[0].CheckSignatureFrom(tt.wantChain[0]); err != nil {
				t.Errorf("leaf is not signed by the operator's signing certificate: %v", err)
			}
			if roots := a.Roots(); len(roots) != 1 || !roots[0].Equal(pki.root) {
				t.Errorf("bundle roots = %d certificates, want the operator's root only", len(roots))
			}
			if id, _, err := x509svid.Verify(chain, a.Bundle(), x509svid.WithTime(clk.Now())); err != nil || id != testID {
				t.Errorf("x509svid.Verify = %s, %v; want %s", id, err, testID)
			}
			if out := opensslVerify(t, pki.root, chain); !strings.Contains(out, ": OK") {
				t.Errorf("openssl verify = %q, want OK", out)
			}

			if _, err := a.Rotate(); !errors.Is(err, ErrExternalCA) {
				t.Errorf("Rotate() = %v, want ErrExternalCA", err)
			}
			st, err := ReadStatus(stateDir)
			if err != nil || !st.External || st.Phase != PhaseIdle || len(st.Roots) != 1 {
				t.Errorf("ReadStatus = %+v, %v; want one external generation, Idle", st, err)
			}
			// Tools read the operator's root from the public copy of the chain.
			if roots, err := ReadRoots(stateDir); err != nil || len(roots) != 1 || !roots[0].Equal(pki.root) {
				t.Errorf("ReadRoots = %d roots, %v; want the operator's root", len(roots), err)
			}
			if st.Roots[0].Subject != pki.root.Subject.String() {
				t.Errorf("status root subject = %q, want %q", st.Roots[0].Subject, pki.root.Subject)
			}

			// A restart with the same operator CA keeps the JWT key and bundle sequence.
			jwtBefore := a.st.Generations[0].JWTKeyID
			a.Close()
			b := newTestAuthority(t, Config{StateDir: stateDir, External: ext, Clock: clk})
			if got := b.st.Generations; len(got) != 1 || got[0].JWTKeyID != jwtBefore {
				t.Errorf("after restart generations = %+v, want the same JWT key %s", got, jwtBefore)
			}
			if seq, _ := b.Bundle().SequenceNumber(); seq != 1 {
				t.Errorf("bundle sequence after restart = %d, want 1", seq)
			}
		})
	}
}

func TestExternalCARejected(t *testing.T) {
	pki := newExternalPKI(t)
	otherKey := testKey(t, "p256-c")
	leafTmpl := certTemplate("not a CA", false, time.Now().Add(time.Hour))
	notCA := createCert(t, leafTmpl, pki.root, otherKey.Public(), pki.rootKey)
	noCertSignTmpl := certTemplate("CA without keyCertSign", true, time.Now().Add(time.Hour))
	noCertSignTmpl.KeyUsage = x509.KeyUsageDigitalSignature
	noCertSign := createCert(t, noCertSignTmpl, pki.root, otherKey.Public(), pki.rootKey)
	expiredTmpl := certTemplate("expired intermediate", true, time.Now().Add(-time.Minute))
	expired := createCert(t, expiredTmpl, pki.root, otherKey.Public(), pki.rootKey)
	strangerTmpl := certTemplate("Stranger Root", true, time.Now().Add(time.Hour))
	stranger := createCert(t, strangerTmpl, strangerTmpl, otherKey.Public(), otherKey)

	certs := func(cs ...*x509.Certificate) []byte { return EncodeCertsPEM(cs) }
	tests := []struct {
		name    string
		cert    []byte
		chain   []byte
		key     []byte
		wantErr string
	}{
		{name: "not a CA", cert: certs(notCA), chain: certs(pki.root), key: keyPEM(t, otherKey), wantErr: "is not a CA"},
		{name: "no keyCertSign", cert: certs(noCertSign), chain: certs(pki.root), key: keyPEM(t, otherKey), wantErr: "lacks the keyCertSign key usage"},
		{name: "mismatched key", cert: certs(pki.inter), chain: certs(pki.root), key: keyPEM(t, otherKey), wantErr: "private key does not match"},
		{name: "no self-signed root", cert: certs(pki.inter), key: keyPEM(t, pki.interKey), wantErr: "must end with a self-signed root"},
		{name: "wrong issuer", cert: certs(pki.inter), chain: certs(stranger), key: keyPEM(t, pki.interKey), wantErr: "is not signed by the next one"},
		{name: "expired", cert: certs(expired), chain: certs(pki.root), key: keyPEM(t, otherKey), wantErr: "expired at"},
		{name: "no certificate", cert: []byte("hello"), key: keyPEM(t, pki.interKey), wantErr: "no PEM certificate found"},
		{name: "no key", cert: certs(pki.inter), chain: certs(pki.root), key: certs(pki.root), wantErr: "no PEM private key found"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			files := t.TempDir()
			ext := &ExternalCA{
				CertFile: writeFile(t, filepath.Join(files, "ca.pem"), tt.cert),
				KeyFile:  writeFile(t, filepath.Join(files, "ca.key"), tt.key),
			}
			if tt.chain != nil {
				ext.ChainFile = writeFile(t, filepath.Join(files, "chain.pem"), tt.chain)
			}
			a, err := New(Config{StateDir: t.TempDir(), TrustDomain: testTD, External: ext, Clock: newFakeClock()})
			if err != nil {
				t.Fatal(err)
			}
			defer a.Close()
			err = a.Load()
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Load() = %v, want an error containing %q", err, tt.wantErr)
			}
		})
	}
}

// The state directory records the root namespace rampartd last started with,
// for rampartctl token create; a state directory from before the record has
// none until rampartd starts on it again.
func TestStateRecordsRootNamespace(t *testing.T) {
	dir := t.TempDir()
	load := func(rootNS string) {
		t.Helper()
		a := newTestAuthority(t, Config{StateDir: dir, RootNamespace: rootNS})
		if err := a.Close(); err != nil {
			t.Fatal(err)
		}
	}
	read := func() string {
		t.Helper()
		got, err := ReadRootNamespace(dir)
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	if _, err := ReadRootNamespace(dir); !errors.Is(err, ErrNoState) {
		t.Fatalf("ReadRootNamespace before the first start = %v, want %v", err, ErrNoState)
	}
	load("")
	if got := read(); got != DefaultRootNamespace {
		t.Errorf("after a start with the default: %q, want %q", got, DefaultRootNamespace)
	}
	load("mesh-root")
	if got := read(); got != "mesh-root" {
		t.Errorf("after a start with mesh-root: %q, want mesh-root", got)
	}

	// An older state file: the field is absent.
	path := filepath.Join(dir, "ca", "state.json")
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var st map[string]any
	if err := json.Unmarshal(data, &st); err != nil {
		t.Fatal(err)
	}
	delete(st, "root_namespace")
	if data, err = json.Marshal(st); err != nil {
		t.Fatal(err)
	}
	writeFile(t, path, data)
	if got := read(); got != "" {
		t.Errorf("from a state file without the record: %q, want \"\"", got)
	}
	load("mesh-root")
	if got := read(); got != "mesh-root" {
		t.Errorf("after a start on the older state: %q, want mesh-root", got)
	}
}
