package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// MaxCSRBytes bounds the DER size of a CSR the Authority will parse.
const MaxCSRBytes = 16 << 10

// SignCSR verifies csrDER and signs it into an X.509-SVID for ident. The CSR must
// carry exactly one URI SAN, the identity's SPIFFE ID; nothing else from the CSR is
// copied into the certificate. The control plane's identity is refused
// (ErrReservedIdentity): IssueServingCert alone produces it. ttl 0 means the default; a longer one is capped. It
// returns the chain: the SVID first, then the signing chain up to and including the root.
func (a *Authority) SignCSR(csrDER []byte, ident Identity, ttl time.Duration) ([]*x509.Certificate, error) {
	c, err := a.CheckCSR(csrDER, ident)
	if err != nil {
		return nil, err
	}
	return a.Issue(c, ttl, nil)
}

// CheckedCSR is a certificate request CheckCSR accepted for one identity.
type CheckedCSR struct {
	pub     crypto.PublicKey
	id      spiffeid.ID
	checked time.Duration // time spent checking, counted with the signing time
}

// CheckCSR does every check SignCSR does, without signing. A caller that must
// spend a single-use credential only on a request the CA grants checks first,
// then calls Issue with the spending as its grant.
func (a *Authority) CheckCSR(csrDER []byte, ident Identity) (*CheckedCSR, error) {
	start := a.clock.Now()
	c, err := a.checkCSR(csrDER, ident)
	if err != nil {
		a.metrics.observeSign(err, 0)
		return nil, err
	}
	c.checked = a.clock.Since(start)
	return c, nil
}

// Issue signs a request CheckCSR accepted. ttl is as for SignCSR. grant, if
// not nil, runs once the certificate is signed, and the certificate is
// returned only if grant returns nil: a caller spends a single-use credential
// there, so a signing failure leaves the credential unspent, and a credential
// spent by a concurrent request withholds the certificate. A refusal by grant
// is returned as is and not counted, since the caller knows (and counts) why
// it refused; the signing time excludes grant.
func (a *Authority) Issue(c *CheckedCSR, ttl time.Duration, grant func() error) ([]*x509.Certificate, error) {
	start := a.clock.Now()
	chain, err := a.sign(c.pub, c.id, ttl, nil, nil)
	took := c.checked + a.clock.Since(start)
	if err == nil && grant != nil {
		if err := grant(); err != nil {
			return nil, err
		}
	}
	a.metrics.observeSign(err, took)
	if err != nil {
		return nil, err
	}
	return chain, nil
}

func (a *Authority) checkCSR(csrDER []byte, ident Identity) (*CheckedCSR, error) {
	want, err := ident.ID(a.cfg.TrustDomain)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrIdentityMismatch, err)
	}
	// Agents authenticate rampartd by this identity: a workload holding it could
	// pose as the control plane to every sidecar.
	if ident == ControlPlaneIdentity(a.cfg.RootNamespace) {
		return nil, fmt.Errorf("%s is %w: only rampartd's own serving certificate carries it, never a workload SVID", want, ErrReservedIdentity)
	}
	if len(csrDER) > MaxCSRBytes {
		return nil, fmt.Errorf("%w: %d bytes is over the %d-byte limit", ErrInvalidCSR, len(csrDER), MaxCSRBytes)
	}
	csr, err := x509.ParseCertificateRequest(csrDER)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidCSR, err)
	}
	// The key is checked before the signature: verifying with a huge RSA
	// modulus is what would cost (a 60,000-bit one fits in MaxCSRBytes).
	if err := checkPublicKey(csr.PublicKey); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidCSR, err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("%w: signature: %v", ErrInvalidCSR, err)
	}
	if len(csr.URIs) != 1 {
		return nil, fmt.Errorf("%w: it must carry exactly one URI SAN (the SPIFFE ID), found %d", ErrInvalidCSR, len(csr.URIs))
	}
	got, err := spiffeid.FromURI(csr.URIs[0])
	if err != nil {
		return nil, fmt.Errorf("%w: URI SAN %q is not a SPIFFE ID: %v", ErrInvalidCSR, csr.URIs[0], err)
	}
	if got != want {
		return nil, fmt.Errorf("%w: CSR asks for %s but the credential is for %s", ErrIdentityMismatch, got, want)
	}
	// Checked here too, so a request is not granted (and its credential spent)
	// when signing is bound to fail.
	if err := a.signerUsable(); err != nil {
		return nil, err
	}
	return &CheckedCSR{pub: csr.PublicKey, id: want}, nil
}

// signerUsable fails once any certificate of the signing chain has expired.
func (a *Authority) signerUsable() error {
	now := a.clock.Now()
	for _, c := range a.cur.Load().signer.chain {
		if !c.NotAfter.After(now) {
			return errors.New("the signing CA has expired")
		}
	}
	return nil
}

func (a *Authority) sign(pub crypto.PublicKey, id spiffeid.ID, ttl time.Duration, dns []string, ips []net.IP) ([]*x509.Certificate, error) {
	v := a.cur.Load()
	g := v.signer
	now := a.clock.Now()
	if ttl <= 0 || ttl > a.cfg.SVIDTTL {
		ttl = a.cfg.SVIDTTL
	}
	notAfter := now.Add(ttl)
	for _, c := range g.chain {
		if c.NotAfter.Before(notAfter) {
			notAfter = c.NotAfter // never outlive the signer
		}
	}
	if !notAfter.After(now) {
		return nil, errors.New("the signing CA has expired")
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	_, rsaLeaf := pub.(*rsa.PublicKey)
	f := svidFields{
		serial:    serial,
		notBefore: now.Add(-30 * time.Second), // tolerate small clock skew between hosts
		notAfter:  notAfter,
		pub:       pub,
		rsaLeaf:   rsaLeaf,
		uri:       id.String(),
		dns:       dns,
		ips:       ips,
	}
	leaf, ok, err := signSVID(f, g.chain[0], g.key)
	if !ok {
		leaf, err = createSVID(f, id, g.chain[0], g.key)
	}
	if err != nil {
		return nil, fmt.Errorf("sign svid for %s: %w", id, err)
	}
	return append([]*x509.Certificate{leaf}, g.chain...), nil
}

// createSVID is the general path through crypto/x509, for signers signSVID does
// not handle. It builds the same certificate.
func createSVID(f svidFields, id spiffeid.ID, parent *x509.Certificate, key crypto.Signer) (*x509.Certificate, error) {
	ku := x509.KeyUsageDigitalSignature
	if f.rsaLeaf {
		ku |= x509.KeyUsageKeyEncipherment
	}
	tmpl := &x509.Certificate{
		SerialNumber:          f.serial,
		NotBefore:             f.notBefore,
		NotAfter:              f.notAfter,
		KeyUsage:              ku,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		IsCA:                  false,
		URIs:                  []*url.URL{id.URL()},
		DNSNames:              f.dns,
		IPAddresses:           f.ips,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, f.pub, key)
	if err != nil {
		return nil, err
	}
	return x509.ParseCertificate(der)
}

func checkPublicKey(pub any) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return fmt.Errorf("ECDSA curve %s is not allowed (P-256 or P-384)", k.Curve.Params().Name)
		}
	case *rsa.PublicKey:
		if k.N.BitLen() < 2048 {
			return fmt.Errorf("RSA key of %d bits is too weak (at least 2048)", k.N.BitLen())
		}
		// crypto/tls refuses peers' RSA keys over 8192 bits, and each bit
		// costs the CA time to verify the CSR's signature.
		if k.N.BitLen() > 8192 {
			return fmt.Errorf("RSA key of %d bits is too large (at most 8192)", k.N.BitLen())
		}
	default:
		return fmt.Errorf("public key type %T is not allowed (ECDSA P-256/P-384 or RSA)", pub)
	}
	return nil
}

// IssueServingCert issues rampartd's own serving certificate: an X.509-SVID for
// the control-plane identity with the given DNS and IP SANs besides the SPIFFE ID.
func (a *Authority) IssueServingCert(dns []string, ips []net.IP) (*tls.Certificate, error) {
	key, err := GenerateKey(KeyECDSAP256)
	if err != nil {
		return nil, err
	}
	id, err := ControlPlaneIdentity(a.cfg.RootNamespace).ID(a.cfg.TrustDomain)
	if err != nil {
		return nil, err
	}
	chain, err := a.sign(key.Public(), id, 0, dns, ips)
	if err != nil {
		return nil, err
	}
	cert := &tls.Certificate{PrivateKey: key, Leaf: chain[0]}
	for _, c := range chain[:len(chain)-1] { // peers hold the root already
		cert.Certificate = append(cert.Certificate, c.Raw)
	}
	return cert, nil
}

// MintJWTSVID signs a JWT-SVID for id with the given audiences, using the active
// generation's JWT key, which the bundle publishes under its kid.
func (a *Authority) MintJWTSVID(id spiffeid.ID, audiences []string) (string, time.Time, error) {
	if len(audiences) == 0 {
		return "", time.Time{}, errors.New("a JWT-SVID needs at least one audience")
	}
	if id.TrustDomain() != a.cfg.TrustDomain {
		return "", time.Time{}, fmt.Errorf("%s is not in trust domain %s", id, a.cfg.TrustDomain)
	}
	g := a.cur.Load().signer
	alg := jose.ES256
	if _, ok := g.jwtKey.(*rsa.PrivateKey); ok {
		alg = jose.RS256
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: jose.JSONWebKey{Key: g.jwtKey, KeyID: g.rec.JWTKeyID}},
		(&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		return "", time.Time{}, err
	}
	now := a.clock.Now()
	exp := now.Add(a.cfg.JWTSVIDTTL)
	claims := jwt.Claims{
		Subject:  id.String(),
		Audience: jwt.Audience(audiences),
		IssuedAt: jwt.NewNumericDate(now),
		Expiry:   jwt.NewNumericDate(exp),
	}
	token, err := jwt.Signed(signer).Claims(claims).Serialize()
	if err != nil {
		return "", time.Time{}, fmt.Errorf("sign JWT-SVID for %s: %w", id, err)
	}
	return token, exp, nil
}
