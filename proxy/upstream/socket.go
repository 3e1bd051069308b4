package upstream

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"

	"github.com/rampart-mesh/rampart/internal/regfile"
	"github.com/rampart-mesh/rampart/proxy/route"
)

// Istio's SDS secret names: the workload's certificate and the mesh roots,
// which this sidecar holds as its SVID and trust bundle. Istio names files it
// wants loaded "file-cert:CERT~KEY" and "file-root:CA".
const (
	sdsDefault  = "default"
	sdsRootCA   = "ROOTCA"
	sdsFileCert = "file-cert:"
	sdsFileRoot = "file-root:"
)

type verifyMode int

const (
	verifyX509   verifyMode = iota // a chain to roots (system roots when nil)
	verifySPIFFE                   // an SVID chaining to the trust bundle
	verifyNone                     // trust_chain_verification ACCEPT_UNTRUSTED
)

// socket is one transport socket of a cluster: plaintext or TLS.
type socket struct {
	tls      bool
	svidCert bool // present the sidecar's SVID (mesh mTLS)
	certs    []tls.Certificate
	verify   verifyMode
	roots    *x509.CertPool
	sans     []sanMatcher
	sni      string
	alpn     []string
	minVer   uint16
	maxVer   uint16
}

// mesh reports whether this is Istio mesh mTLS: the SVID, verified by SPIFFE.
func (s *socket) mesh() bool { return s.tls && s.svidCert && s.verify == verifySPIFFE }

var plaintext = &socket{}

func (m *Manager) parseSocket(ts *corev3.TransportSocket) (*socket, error) {
	if ts == nil {
		return plaintext, nil
	}
	tc := ts.GetTypedConfig()
	if tc == nil {
		switch ts.GetName() {
		case "envoy.transport_sockets.raw_buffer", "raw_buffer":
			return plaintext, nil
		}
		return nil, fmt.Errorf("%q has no typed_config", ts.GetName())
	}
	switch tc.MessageName() {
	case "envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer":
		return plaintext, nil
	case "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext":
		var utc tlsv3.UpstreamTlsContext
		if err := tc.UnmarshalTo(&utc); err != nil {
			return nil, fmt.Errorf("typed_config: %w", err)
		}
		if err := utc.Validate(); err != nil {
			return nil, fmt.Errorf("typed_config: %w", err)
		}
		return parseTLS(&utc)
	}
	return nil, fmt.Errorf("%q (%s) is not supported: use envoy.transport_sockets.tls or raw_buffer", ts.GetName(), tc.GetTypeUrl())
}

func parseTLS(utc *tlsv3.UpstreamTlsContext) (*socket, error) {
	s := &socket{tls: true, sni: utc.GetSni(), minVer: tls.VersionTLS12}
	ctc := utc.GetCommonTlsContext()
	s.alpn = ctc.GetAlpnProtocols()
	if p := ctc.GetTlsParams(); p != nil {
		var err error
		if s.minVer, err = tlsVersion(p.GetTlsMinimumProtocolVersion(), tls.VersionTLS12); err != nil {
			return nil, fmt.Errorf("common_tls_context.tls_params.tls_minimum_protocol_version: %w", err)
		}
		if s.maxVer, err = tlsVersion(p.GetTlsMaximumProtocolVersion(), 0); err != nil {
			return nil, fmt.Errorf("common_tls_context.tls_params.tls_maximum_protocol_version: %w", err)
		}
		if s.maxVer != 0 && s.maxVer < s.minVer {
			return nil, errors.New("common_tls_context.tls_params: the maximum TLS version is below the minimum")
		}
	}

	// The client certificate.
	for i, tc := range ctc.GetTlsCertificates() {
		cert, err := loadKeyPair(tc.GetCertificateChain(), tc.GetPrivateKey())
		if err != nil {
			return nil, fmt.Errorf("common_tls_context.tls_certificates[%d]: %w", i, err)
		}
		s.certs = append(s.certs, cert)
	}
	for i, sds := range ctc.GetTlsCertificateSdsSecretConfigs() {
		field := fmt.Sprintf("common_tls_context.tls_certificate_sds_secret_configs[%d]", i)
		name := sds.GetName()
		switch {
		case name == sdsDefault:
			s.svidCert = true
		case strings.HasPrefix(name, sdsFileCert):
			certFile, keyFile, ok := strings.Cut(strings.TrimPrefix(name, sdsFileCert), "~")
			if !ok {
				return nil, fmt.Errorf("%s: %q is not file-cert:CERT~KEY", field, name)
			}
			cert, err := loadKeyPairFiles(certFile, keyFile)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", field, err)
			}
			s.certs = append(s.certs, cert)
		default:
			return nil, fmt.Errorf("%s: secret %q cannot be resolved by the sidecar (it knows %q, its SVID, and file-cert:CERT~KEY)", field, name, sdsDefault)
		}
	}
	//lint:ignore SA1019 a deprecated provider set must be refused, not ignored.
	if ctc.GetTlsCertificateProviderInstance() != nil || ctc.GetTlsCertificateCertificateProvider() != nil || ctc.GetTlsCertificateCertificateProviderInstance() != nil {
		return nil, errors.New("common_tls_context: certificate providers are not supported (use SDS secret \"default\")")
	}
	if s.svidCert && len(s.certs) > 0 {
		return nil, errors.New("common_tls_context: both the SVID (SDS \"default\") and other certificates are configured; pick one")
	}

	// The server's verification.
	var vc *tlsv3.CertificateValidationContext
	switch v := ctc.GetValidationContextType().(type) {
	case nil:
	case *tlsv3.CommonTlsContext_ValidationContext:
		vc = v.ValidationContext
	case *tlsv3.CommonTlsContext_ValidationContextSdsSecretConfig:
		if err := s.rootsFromSDS(v.ValidationContextSdsSecretConfig.GetName(), "common_tls_context.validation_context_sds_secret_config"); err != nil {
			return nil, err
		}
	case *tlsv3.CommonTlsContext_CombinedValidationContext:
		cvc := v.CombinedValidationContext
		vc = cvc.GetDefaultValidationContext()
		//lint:ignore SA1019 a deprecated provider set must be refused, not ignored.
		if cvc.GetValidationContextCertificateProviderInstance() != nil || cvc.GetValidationContextCertificateProvider() != nil {
			return nil, errors.New("common_tls_context.combined_validation_context: certificate providers are not supported (use SDS secret \"ROOTCA\")")
		}
		if sds := cvc.GetValidationContextSdsSecretConfig(); sds != nil {
			if err := s.rootsFromSDS(sds.GetName(), "common_tls_context.combined_validation_context.validation_context_sds_secret_config"); err != nil {
				return nil, err
			}
		}
	default:
		return nil, errors.New("common_tls_context: certificate providers are not supported (use SDS secret \"ROOTCA\")")
	}
	if vc != nil {
		field := "common_tls_context.validation_context"
		if ca := vc.GetTrustedCa(); ca != nil && s.verify != verifySPIFFE {
			pem, err := readDataSource(ca)
			if err != nil {
				return nil, fmt.Errorf("%s.trusted_ca: %w", field, err)
			}
			s.roots = x509.NewCertPool()
			if !s.roots.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("%s.trusted_ca: no PEM certificate in it", field)
			}
		}
		for i, sm := range vc.GetMatchTypedSubjectAltNames() {
			m, err := newSANMatcher(sm.GetSanType(), sm.GetMatcher())
			if err != nil {
				return nil, fmt.Errorf("%s.match_typed_subject_alt_names[%d]: %w", field, i, err)
			}
			s.sans = append(s.sans, m)
		}
		//lint:ignore SA1019 Envoy still honours this deprecated field, so the sidecar must too.
		for i, sm := range vc.GetMatchSubjectAltNames() {
			m, err := newSANMatcher(tlsv3.SubjectAltNameMatcher_SAN_TYPE_UNSPECIFIED, sm)
			if err != nil {
				return nil, fmt.Errorf("%s.match_subject_alt_names[%d]: %w", field, i, err)
			}
			s.sans = append(s.sans, m)
		}
		if vc.GetTrustChainVerification() == tlsv3.CertificateValidationContext_ACCEPT_UNTRUSTED {
			// Istio's insecureSkipVerify, for TLS origination to servers
			// outside the mesh. Mesh mTLS is never left unverified.
			if s.verify == verifySPIFFE || s.svidCert {
				return nil, fmt.Errorf("%s.trust_chain_verification: ACCEPT_UNTRUSTED cannot be used with mesh mTLS (SDS %q or %q)", field, sdsDefault, sdsRootCA)
			}
			s.verify = verifyNone
		}
		if vc.GetCustomValidatorConfig() != nil {
			return nil, fmt.Errorf("%s.custom_validator_config: not supported", field)
		}
	}
	return s, nil
}

func (s *socket) rootsFromSDS(name, field string) error {
	switch {
	case name == sdsRootCA:
		s.verify = verifySPIFFE
	case strings.HasPrefix(name, sdsFileRoot):
		pem, err := readFile(strings.TrimPrefix(name, sdsFileRoot))
		if err != nil {
			return fmt.Errorf("%s: %w", field, err)
		}
		s.roots = x509.NewCertPool()
		if !s.roots.AppendCertsFromPEM(pem) {
			return fmt.Errorf("%s: no PEM certificate in %s", field, strings.TrimPrefix(name, sdsFileRoot))
		}
	default:
		return fmt.Errorf("%s: secret %q cannot be resolved by the sidecar (it knows %q, its trust bundle, and file-root:CA)", field, name, sdsRootCA)
	}
	return nil
}

func tlsVersion(v tlsv3.TlsParameters_TlsProtocol, auto uint16) (uint16, error) {
	switch v {
	case tlsv3.TlsParameters_TLS_AUTO:
		return auto, nil
	case tlsv3.TlsParameters_TLSv1_0:
		return tls.VersionTLS10, nil
	case tlsv3.TlsParameters_TLSv1_1:
		return tls.VersionTLS11, nil
	case tlsv3.TlsParameters_TLSv1_2:
		return tls.VersionTLS12, nil
	case tlsv3.TlsParameters_TLSv1_3:
		return tls.VersionTLS13, nil
	}
	return 0, fmt.Errorf("unknown TLS version %v", v)
}

func readDataSource(ds *corev3.DataSource) ([]byte, error) {
	switch v := ds.GetSpecifier().(type) {
	case *corev3.DataSource_Filename:
		return readFile(v.Filename)
	case *corev3.DataSource_InlineBytes:
		return v.InlineBytes, nil
	case *corev3.DataSource_InlineString:
		return []byte(v.InlineString), nil
	case *corev3.DataSource_EnvironmentVariable:
		return nil, errors.New("environment_variable data sources are not supported (use a file)")
	}
	return nil, errors.New("empty data source")
}

// maxDataSourceSize bounds a certificate, key or CA file: PEM bundles are
// kilobytes, and anything larger is a mistake or an attack.
const maxDataSourceSize = 1 << 20

// readFile reads a certificate, key or CA file named by configuration. It runs
// on the xDS goroutine, so it must neither block nor read without end:
// regfile opens it without blocking (a FIFO would otherwise wait for a
// writer), and it must be a regular file of at most maxDataSourceSize bytes.
func readFile(name string) ([]byte, error) {
	b, err := regfile.Read(name, maxDataSourceSize, nil)
	if errors.Is(err, regfile.ErrNotRegular) || errors.Is(err, regfile.ErrTooLarge) {
		return nil, fmt.Errorf("%w: point it at a PEM file", err)
	}
	return b, err
}

// loadKeyPairFiles is tls.LoadX509KeyPair through readFile.
func loadKeyPairFiles(certFile, keyFile string) (tls.Certificate, error) {
	c, err := readFile(certFile)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("certificate: %w", err)
	}
	k, err := readFile(keyFile)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("private key: %w", err)
	}
	return tls.X509KeyPair(c, k)
}

func loadKeyPair(chain, key *corev3.DataSource) (tls.Certificate, error) {
	c, err := readDataSource(chain)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("certificate_chain: %w", err)
	}
	k, err := readDataSource(key)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("private_key: %w", err)
	}
	return tls.X509KeyPair(c, k)
}

// sanMatcher is one subject-alt-name matcher; typ UNSPECIFIED matches any
// SAN type (the deprecated match_subject_alt_names).
type sanMatcher struct {
	typ tlsv3.SubjectAltNameMatcher_SanType
	m   route.StringMatcher
}

func newSANMatcher(typ tlsv3.SubjectAltNameMatcher_SanType, sm *matcherv3.StringMatcher) (sanMatcher, error) {
	if typ == tlsv3.SubjectAltNameMatcher_OTHER_NAME {
		return sanMatcher{}, errors.New("san_type OTHER_NAME is not supported")
	}
	m, err := route.NewStringMatcher(sm)
	return sanMatcher{typ: typ, m: m}, err
}

func (sm sanMatcher) matches(cert *x509.Certificate) bool {
	anyType := sm.typ == tlsv3.SubjectAltNameMatcher_SAN_TYPE_UNSPECIFIED
	if anyType || sm.typ == tlsv3.SubjectAltNameMatcher_URI {
		for _, u := range cert.URIs {
			if sm.m.Match(u.String()) {
				return true
			}
		}
	}
	if anyType || sm.typ == tlsv3.SubjectAltNameMatcher_DNS {
		for _, d := range cert.DNSNames {
			if sm.m.Match(d) || matchWildcardDNS(&sm.m, d) {
				return true
			}
		}
	}
	if anyType || sm.typ == tlsv3.SubjectAltNameMatcher_EMAIL {
		for _, e := range cert.EmailAddresses {
			if sm.m.Match(e) {
				return true
			}
		}
	}
	if anyType || sm.typ == tlsv3.SubjectAltNameMatcher_IP_ADDRESS {
		for _, ip := range cert.IPAddresses {
			if sm.m.Match(ip.String()) {
				return true
			}
		}
	}
	return false
}

func matchAnySAN(sans []sanMatcher, cert *x509.Certificate) bool {
	return slices.ContainsFunc(sans, func(m sanMatcher) bool { return m.matches(cert) })
}

// matchWildcardDNS lets a certificate's "*.example.com" satisfy an exact
// matcher for "api.example.com" (one label), as Envoy does for DNS SANs.
func matchWildcardDNS(m *route.StringMatcher, certName string) bool {
	rest, ok := strings.CutPrefix(certName, "*.")
	want, exact := m.Exact()
	if !exact || !ok {
		return false
	}
	label, domain, ok := strings.Cut(want, ".")
	return ok && label != "" && strings.EqualFold(domain, rest)
}

// tlsConfig builds the client configuration for s. alpn is what to offer;
// name is the SNI to send and the name to verify the certificate against.
func (m *Manager) tlsConfig(s *socket, alpn []string, name serverName) *tls.Config {
	c := &tls.Config{
		ServerName: name.sni,
		NextProtos: alpn,
		MinVersion: s.minVer,
		MaxVersion: s.maxVer,
	}
	switch {
	case s.svidCert:
		c.GetClientCertificate = tlsconfig.GetClientCertificate(m.cfg.SVID)
	case len(s.certs) > 0:
		c.Certificates = s.certs
	}
	// Verification is ours (go-spiffe's for SPIFFE), so the standard
	// hostname check is off; verifyX509 redoes it against the name.
	c.InsecureSkipVerify = true
	switch s.verify {
	case verifySPIFFE:
		c.VerifyPeerCertificate = tlsconfig.VerifyPeerCertificate(m.cfg.Bundle, m.authorizer(s))
	case verifyX509:
		c.VerifyConnection = func(cs tls.ConnectionState) error { return s.verifyX509(cs, name.verify) }
	}
	return c
}

// needsName reports whether a connection over s must have a server name to
// verify: the chain is verified, and no SAN matcher says whose it must be.
func (s *socket) needsName() bool {
	return s.tls && s.verify == verifyX509 && len(s.sans) == 0
}

// authorizer checks a verified peer SVID against the socket's SAN matchers,
// or, with none, against the trust domain.
func (m *Manager) authorizer(s *socket) tlsconfig.Authorizer {
	if len(s.sans) > 0 {
		return func(id spiffeid.ID, chains [][]*x509.Certificate) error {
			if len(chains) > 0 && len(chains[0]) > 0 && matchAnySAN(s.sans, chains[0][0]) {
				return nil
			}
			return fmt.Errorf("peer %s matches none of the %d subject alt names the cluster allows", id, len(s.sans))
		}
	}
	return func(id spiffeid.ID, _ [][]*x509.Certificate) error {
		td := m.cfg.TrustDomain
		if td.IsZero() {
			svid, err := m.cfg.SVID.GetX509SVID()
			if err != nil {
				return fmt.Errorf("own SVID for the trust domain: %w", err)
			}
			td = svid.ID.TrustDomain()
		}
		if !id.MemberOf(td) {
			return fmt.Errorf("peer %s is not in trust domain %s", id, td)
		}
		return nil
	}
}

// verifyX509 verifies the server's chain to the roots (the system's when
// none are configured), then its name: the SAN matchers when there are any,
// otherwise name (the SNI, or the request's host under auto_sni and
// auto_san_validation). Envoy skips the name check when no SAN matcher is
// configured; checking the SNI is the safer reading, and with no name at all
// the connection is refused: a chain to a public root alone proves nothing
// about who the server is.
func (s *socket) verifyX509(cs tls.ConnectionState, name string) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("server sent no certificate")
	}
	leaf := cs.PeerCertificates[0]
	opts := x509.VerifyOptions{Roots: s.roots, Intermediates: x509.NewCertPool()}
	for _, c := range cs.PeerCertificates[1:] {
		opts.Intermediates.AddCert(c)
	}
	if _, err := leaf.Verify(opts); err != nil {
		return err
	}
	if len(s.sans) > 0 {
		if !matchAnySAN(s.sans, leaf) {
			return fmt.Errorf("server certificate matches none of the %d subject alt names the cluster allows", len(s.sans))
		}
		return nil
	}
	if name == "" {
		return errNoServerName(false)
	}
	return leaf.VerifyHostname(name)
}

// alpnFor is what to offer for protocol p: the configured list (Istio's
// "istio-peer-exchange" and "istio" are harmless), made to agree with what the
// transport will speak, so that a server never picks a protocol the pool
// cannot use.
func alpnFor(configured []string, p protocol) []string {
	var out []string
	for _, a := range configured {
		switch {
		case a == "h2" && p == protoHTTP1, a == "http/1.1" && p == protoHTTP2:
			continue
		}
		out = append(out, a)
	}
	switch p {
	case protoHTTP1:
		if !slices.Contains(out, "http/1.1") {
			out = append(out, "http/1.1")
		}
	case protoHTTP2:
		if !slices.Contains(out, "h2") {
			out = append(out, "h2")
		}
	case protoAuto:
		for _, a := range []string{"h2", "http/1.1"} {
			if !slices.Contains(out, a) {
				out = append(out, a)
			}
		}
	}
	return out
}
