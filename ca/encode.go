package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"
	"math/big"
	"net"
	"time"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

// This file encodes X.509-SVIDs directly instead of through x509.CreateCertificate.
//
// Why: CreateCertificate verifies every signature it makes, to catch faulty
// hardware signers. With software keys that check is a second ECDSA verification
// per SVID, a third of the CA's CPU on the signing path (see make bench). The
// encoder writes exactly the bytes CreateCertificate writes for an SVID template;
// TestEncodeSVIDMatchesCreateCertificate compares the two byte for byte, and every
// result is parsed back with x509.ParseCertificate before it is returned. Signers
// it does not know (other curves, Ed25519) take CreateCertificate's path.

var (
	oidSigECDSAWithSHA256 = asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 2}
	oidSigSHA256WithRSA   = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 11}
	oidExtKeyUsage        = asn1.ObjectIdentifier{2, 5, 29, 15}
	oidExtExtKeyUsage     = asn1.ObjectIdentifier{2, 5, 29, 37}
	oidExtBasicConstr     = asn1.ObjectIdentifier{2, 5, 29, 19}
	oidExtAuthorityKeyID  = asn1.ObjectIdentifier{2, 5, 29, 35}
	oidExtSAN             = asn1.ObjectIdentifier{2, 5, 29, 17}
	oidEKUServerAuth      = asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 3, 1}
	oidEKUClientAuth      = asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 3, 2}
)

// svidFields is everything that varies between SVIDs.
type svidFields struct {
	serial              *big.Int
	notBefore, notAfter time.Time
	pub                 crypto.PublicKey
	rsaLeaf             bool // leaf key is RSA: keyEncipherment too
	uri                 string
	dns                 []string
	ips                 []net.IP
}

// signSVID encodes and signs an SVID with parent/key. ok is false when the signer
// is not one this encoder handles; the caller then uses x509.CreateCertificate.
func signSVID(f svidFields, parent *x509.Certificate, key crypto.Signer) (cert *x509.Certificate, ok bool, err error) {
	var sigOID asn1.ObjectIdentifier
	var rsaSig bool
	switch k := key.Public().(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() {
			return nil, false, nil
		}
		sigOID = oidSigECDSAWithSHA256
	case *rsa.PublicKey:
		sigOID, rsaSig = oidSigSHA256WithRSA, true
	default:
		return nil, false, nil
	}
	tbs, err := encodeTBS(f, parent, sigOID, rsaSig)
	if err != nil {
		return nil, true, err
	}
	digest := sha256.Sum256(tbs)
	sig, err := key.Sign(rand.Reader, digest[:], crypto.SHA256)
	if err != nil {
		return nil, true, err
	}
	var b cryptobyte.Builder
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddBytes(tbs)
		addAlgorithm(b, sigOID, rsaSig)
		b.AddASN1BitString(sig)
	})
	der, err := b.Bytes()
	if err != nil {
		return nil, true, err
	}
	cert, err = x509.ParseCertificate(der)
	return cert, true, err
}

func addAlgorithm(b *cryptobyte.Builder, oid asn1.ObjectIdentifier, nullParams bool) {
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1ObjectIdentifier(oid)
		if nullParams {
			b.AddASN1NULL()
		}
	})
}

func encodeTBS(f svidFields, parent *x509.Certificate, sigOID asn1.ObjectIdentifier, rsaSig bool) ([]byte, error) {
	spki, err := x509.MarshalPKIXPublicKey(f.pub)
	if err != nil {
		return nil, err
	}
	var b cryptobyte.Builder
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1(cbasn1.Tag(0).Constructed().ContextSpecific(), func(b *cryptobyte.Builder) { b.AddASN1Int64(2) })
		b.AddASN1BigInt(f.serial)
		addAlgorithm(b, sigOID, rsaSig)
		b.AddBytes(parent.RawSubject)
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
			addTime(b, f.notBefore)
			addTime(b, f.notAfter)
		})
		b.AddASN1(cbasn1.SEQUENCE, func(*cryptobyte.Builder) {}) // empty subject: the SAN carries the identity
		b.AddBytes(spki)
		b.AddASN1(cbasn1.Tag(3).Constructed().ContextSpecific(), func(b *cryptobyte.Builder) {
			b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
				// Same order as crypto/x509: key usage, EKU, basic constraints, AKID, SAN.
				ku := byte(0x80) // digitalSignature
				unused := byte(7)
				if f.rsaLeaf {
					ku, unused = 0xa0, 5 // + keyEncipherment
				}
				addExtension(b, oidExtKeyUsage, true, func(b *cryptobyte.Builder) {
					b.AddASN1(cbasn1.BIT_STRING, func(b *cryptobyte.Builder) { b.AddUint8(unused); b.AddUint8(ku) })
				})
				addExtension(b, oidExtExtKeyUsage, false, func(b *cryptobyte.Builder) {
					b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
						b.AddASN1ObjectIdentifier(oidEKUServerAuth)
						b.AddASN1ObjectIdentifier(oidEKUClientAuth)
					})
				})
				addExtension(b, oidExtBasicConstr, true, func(b *cryptobyte.Builder) {
					b.AddASN1(cbasn1.SEQUENCE, func(*cryptobyte.Builder) {}) // CA=false, the default
				})
				if len(parent.SubjectKeyId) > 0 {
					addExtension(b, oidExtAuthorityKeyID, false, func(b *cryptobyte.Builder) {
						b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
							b.AddASN1(cbasn1.Tag(0).ContextSpecific(), func(b *cryptobyte.Builder) { b.AddBytes(parent.SubjectKeyId) })
						})
					})
				}
				addExtension(b, oidExtSAN, true, func(b *cryptobyte.Builder) {
					b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
						for _, d := range f.dns {
							b.AddASN1(cbasn1.Tag(2).ContextSpecific(), func(b *cryptobyte.Builder) { b.AddBytes([]byte(d)) })
						}
						for _, ip := range f.ips {
							if v4 := ip.To4(); v4 != nil {
								ip = v4
							}
							b.AddASN1(cbasn1.Tag(7).ContextSpecific(), func(b *cryptobyte.Builder) { b.AddBytes(ip) })
						}
						b.AddASN1(cbasn1.Tag(6).ContextSpecific(), func(b *cryptobyte.Builder) { b.AddBytes([]byte(f.uri)) })
					})
				})
			})
		})
	})
	return b.Bytes()
}

func addExtension(b *cryptobyte.Builder, oid asn1.ObjectIdentifier, critical bool, value func(*cryptobyte.Builder)) {
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1ObjectIdentifier(oid)
		if critical {
			b.AddASN1Boolean(true)
		}
		b.AddASN1(cbasn1.OCTET_STRING, value)
	})
}

// addTime writes UTCTime for 1950–2049 and GeneralizedTime otherwise (RFC 5280 4.1.2.5).
func addTime(b *cryptobyte.Builder, t time.Time) {
	t = t.UTC().Truncate(time.Second)
	if y := t.Year(); y >= 1950 && y < 2050 {
		b.AddASN1UTCTime(t)
		return
	}
	b.AddASN1GeneralizedTime(t)
}
