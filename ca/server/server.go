package server

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/rampart-mesh/rampart/ca"
	"github.com/rampart-mesh/rampart/ca/jointoken"
	workload "github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	istioca "istio.io/api/security/v1alpha1"
	"k8s.io/utils/clock"
)

// Authenticator checks bearer credentials (jointoken.Store implements it).
type Authenticator interface {
	// Authenticate returns the identity token proves, without spending it.
	// As for Consume, an error refusing the credential is one of jointoken's
	// or matches ca.ErrCredentialRefused, and the client is Unauthenticated;
	// any other is a failure to check it (Unavailable: the client retries).
	Authenticate(ctx context.Context, token string) (ca.Identity, error)
	// Consume spends a single-use token. The server calls it only for a request
	// it has checked and signed a certificate for, and sends the certificate
	// only if Consume succeeds, so a refused request or a failed signing leaves
	// the token usable. It fails when the token was spent already: of concurrent
	// requests with one single-use token, at most one gets a certificate. An
	// error that refuses the credential is one of jointoken's (ErrUsed,
	// ErrExpired, ErrUnknown, ErrMalformed) and the client is Unauthenticated;
	// any other is a failure to spend it (Unavailable), and the client may retry.
	Consume(ctx context.Context, token string) error
}

// Config configures a Server.
type Config struct {
	Authority     *ca.Authority
	Authenticator Authenticator
	// Listen is the TCP address, e.g. 127.0.0.1:15012.
	Listen string
	// Listener, if set, is used instead of Listen (tests).
	Listener net.Listener
	// DNSNames and IPs go into the serving certificate besides the SPIFFE ID.
	DNSNames []string
	IPs      []net.IP
	// Register, if set, adds more services to the same gRPC server and TLS port
	// (rampartd's xDS).
	Register func(ctx context.Context, gs *grpc.Server)
	// MaxRequestBytes bounds a request message. Default 64 KiB.
	MaxRequestBytes int
	// Clock decides certificate validity for client SVIDs. Default real time.
	Clock clock.PassiveClock
	Log   *slog.Logger
}

// Server serves the CA over gRPC and TLS.
type Server struct {
	istioca.UnimplementedIstioCertificateServiceServer
	cfg   Config
	log   *slog.Logger
	clock clock.PassiveClock

	mu      sync.Mutex
	serving *tls.Certificate
	signer  *x509.Certificate // root the serving cert chains to, to renew after a switch
	addr    chan net.Addr
}

// New validates cfg. It does no I/O.
func New(cfg Config) (*Server, error) {
	if cfg.Authority == nil {
		return nil, errors.New("ca server: Authority is required")
	}
	if cfg.Authenticator == nil {
		return nil, errors.New("ca server: Authenticator is required")
	}
	if cfg.Listen == "" && cfg.Listener == nil {
		return nil, errors.New("ca server: Listen is required")
	}
	if cfg.MaxRequestBytes == 0 {
		cfg.MaxRequestBytes = 64 << 10
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	if len(cfg.DNSNames) == 0 && len(cfg.IPs) == 0 {
		cfg.DNSNames = []string{"localhost"}
		cfg.IPs = []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
	}
	return &Server{cfg: cfg, log: cfg.Log.With("component", "ca-server"), clock: cfg.Clock, addr: make(chan net.Addr, 1)}, nil
}

// Addr returns the address the server listens on, once it does.
func (s *Server) Addr(ctx context.Context) (net.Addr, error) {
	select {
	case a := <-s.addr:
		s.addr <- a
		return a, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Run serves until ctx ends.
func (s *Server) Run(ctx context.Context) error {
	lis := s.cfg.Listener
	if lis == nil {
		var err error
		if lis, err = net.Listen("tcp", s.cfg.Listen); err != nil {
			return fmt.Errorf("ca server: listen on %s: %w", s.cfg.Listen, err)
		}
	}
	if _, err := s.getCertificate(nil); err != nil {
		lis.Close()
		return fmt.Errorf("ca server: serving certificate: %w", err)
	}
	tlsCfg := &tls.Config{
		MinVersion:            tls.VersionTLS12,
		GetCertificate:        s.getCertificate,
		ClientAuth:            tls.RequestClientCert,
		VerifyPeerCertificate: s.verifyClient,
		NextProtos:            []string{"h2"},
	}
	gs := grpc.NewServer(
		grpc.Creds(credentials.NewTLS(tlsCfg)),
		grpc.MaxRecvMsgSize(s.cfg.MaxRequestBytes),
		grpc.ConnectionTimeout(10*time.Second),
		// Thousands of mostly idle proxy streams: each reads through a small
		// buffer (grpc-go already gives write buffers back after each flush).
		grpc.ReadBufferSize(8<<10),
	)
	istioca.RegisterIstioCertificateServiceServer(gs, s)
	gs.RegisterService(&identityServiceDesc, s)
	if s.cfg.Register != nil {
		s.cfg.Register(ctx, gs)
	}
	s.addr <- lis.Addr()
	s.log.Info("CA serving", "addr", lis.Addr().String(), "trust_domain", s.cfg.Authority.TrustDomain().Name())

	errc := make(chan error, 1)
	go func() { errc <- gs.Serve(lis) }()
	select {
	case err := <-errc:
		return fmt.Errorf("ca server: %w", err)
	case <-ctx.Done():
	}
	stopped := make(chan struct{})
	go func() { gs.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(5 * time.Second):
		gs.Stop()
	}
	return nil
}

// getCertificate returns rampartd's serving SVID, renewing it at half its life or
// when the signing root changes.
func (s *Server) getCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	a := s.cfg.Authority
	roots := a.Roots()
	if c := s.serving; c != nil {
		life := c.Leaf.NotAfter.Sub(c.Leaf.NotBefore)
		fresh := c.Leaf.NotAfter.Sub(s.cfg.Clock.Now()) > life/2
		stillTrusted := false
		for _, r := range roots {
			if r.Equal(s.signer) {
				stillTrusted = true
			}
		}
		if fresh && stillTrusted && s.signerIsActive() {
			return c, nil
		}
	}
	c, err := a.IssueServingCert(s.cfg.DNSNames, s.cfg.IPs)
	if err != nil {
		return nil, err
	}
	s.serving = c
	s.signer = a.SigningRoot()
	return c, nil
}

func (s *Server) signerIsActive() bool {
	return s.cfg.Authority.SigningRoot().Equal(s.signer)
}

// verifyClient checks an optional client certificate: when one is presented it must
// be a valid X.509-SVID from our bundle. Requests without one authenticate with a
// bearer credential instead.
func (s *Server) verifyClient(raw [][]byte, _ [][]*x509.Certificate) error {
	if len(raw) == 0 {
		return nil
	}
	_, err := s.clientID(raw)
	return err
}

func (s *Server) clientID(raw [][]byte) (spiffeid.ID, error) {
	certs := make([]*x509.Certificate, 0, len(raw))
	for _, r := range raw {
		c, err := x509.ParseCertificate(r)
		if err != nil {
			return spiffeid.ID{}, fmt.Errorf("client certificate: %w", err)
		}
		certs = append(certs, c)
	}
	id, _, err := x509svid.Verify(certs, s.cfg.Authority.Bundle(), x509svid.WithTime(s.cfg.Clock.Now()))
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("client certificate: %w", err)
	}
	return id, nil
}

// peerID returns the SPIFFE ID of the caller's client certificate, if it sent one.
func (s *Server) peerID(ctx context.Context) (spiffeid.ID, bool) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return spiffeid.ID{}, false
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(ti.State.PeerCertificates) == 0 {
		return spiffeid.ID{}, false
	}
	raw := make([][]byte, len(ti.State.PeerCertificates))
	for i, c := range ti.State.PeerCertificates {
		raw[i] = c.Raw
	}
	id, err := s.clientID(raw) // re-verified now: the handshake may be older than a rotation
	if err != nil {
		return spiffeid.ID{}, false
	}
	return id, true
}

func peerAddr(ctx context.Context) string {
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		return p.Addr.String()
	}
	return "unknown"
}

// credential is how a caller authenticated: its X.509-SVID, or a bearer token
// that is spent only once its request is granted.
type credential struct {
	via   string // "svid" or "token"
	token string
}

// authenticate establishes the caller's identity: its X.509-SVID if it presented a
// valid one (renewal), else its bearer credential, which it does not spend.
func (s *Server) authenticate(ctx context.Context) (ca.Identity, credential, error) {
	if id, ok := s.peerID(ctx); ok {
		ident, err := ca.IdentityFromID(id)
		if err != nil {
			return ca.Identity{}, credential{}, status.Errorf(codes.PermissionDenied, "client certificate: %v", err)
		}
		return ident, credential{via: "svid"}, nil
	}
	md, _ := metadata.FromIncomingContext(ctx)
	vals := md.Get("authorization")
	if len(vals) == 0 {
		return ca.Identity{}, credential{}, status.Error(codes.Unauthenticated, "no credential: send 'authorization: Bearer <join token>' metadata or a client X.509-SVID")
	}
	if len(vals) > 1 {
		return ca.Identity{}, credential{}, status.Error(codes.Unauthenticated, "more than one authorization header")
	}
	token, ok := strings.CutPrefix(vals[0], "Bearer ")
	if !ok {
		return ca.Identity{}, credential{}, status.Error(codes.Unauthenticated, "authorization metadata must be 'Bearer <token>'")
	}
	token = strings.TrimSpace(token)
	ident, err := s.cfg.Authenticator.Authenticate(ctx, token)
	if err != nil && !refusesCredential(err) {
		// The token store or the API server failed (an unreadable record,
		// TokenReview unreachable or refused by RBAC, too many reviews):
		// nothing was decided about the credential, and the client may
		// retry. What failed is for the operator's log, not the caller.
		s.log.Error("checking a credential failed", "peer", peerAddr(ctx), "err", err)
		return ca.Identity{}, credential{}, status.Error(codes.Unavailable, "checking the credential failed; retry")
	}
	if err != nil {
		return ca.Identity{}, credential{}, status.Errorf(codes.Unauthenticated, "credential rejected: %v", err)
	}
	return ident, credential{via: "token", token: token}, nil
}

// CreateCertificate implements Istio's certificate service.
func (s *Server) CreateCertificate(ctx context.Context, req *istioca.IstioCertificateRequest) (*istioca.IstioCertificateResponse, error) {
	log := s.log.With("peer", peerAddr(ctx))
	block, rest := pem.Decode([]byte(req.GetCsr()))
	if block == nil || block.Type != "CERTIFICATE REQUEST" || len(strings.TrimSpace(string(rest))) > 0 {
		s.cfg.Authority.CountRejected("invalid_csr")
		log.Warn("certificate request refused", "reason", "csr is not one PEM CERTIFICATE REQUEST block")
		return nil, status.Error(codes.InvalidArgument, "csr must be exactly one PEM 'CERTIFICATE REQUEST' block")
	}
	if _, err := x509.ParseCertificateRequest(block.Bytes); err != nil {
		s.cfg.Authority.CountRejected("invalid_csr")
		log.Warn("certificate request refused", "reason", "malformed csr", "err", err)
		return nil, status.Errorf(codes.InvalidArgument, "malformed csr: %v", err)
	}
	if req.GetValidityDuration() < 0 {
		s.cfg.Authority.CountRejected("invalid_request")
		log.Warn("certificate request refused", "reason", "negative validity_duration", "validity_duration", req.GetValidityDuration())
		return nil, status.Error(codes.InvalidArgument, "validity_duration must not be negative")
	}
	ident, cred, err := s.authenticate(ctx)
	if status.Code(err) == codes.Unavailable {
		s.cfg.Authority.CountRejected("error")
		return nil, err
	}
	if err != nil {
		s.cfg.Authority.CountRejected("unauthenticated")
		log.Warn("certificate request refused", "reason", status.Convert(err).Message())
		return nil, err
	}
	log = log.With("identity", ident.String(), "credential", cred.via)
	// The request is checked in full before a single-use token is spent: a
	// sidecar whose CSR is refused corrects it and retries with the same token.
	checked, err := s.cfg.Authority.CheckCSR(block.Bytes, ident)
	switch {
	case errors.Is(err, ca.ErrIdentityMismatch), errors.Is(err, ca.ErrReservedIdentity):
		log.Warn("certificate request refused", "reason", err.Error())
		return nil, status.Error(codes.PermissionDenied, err.Error())
	case errors.Is(err, ca.ErrInvalidCSR):
		log.Warn("certificate request refused", "reason", err.Error())
		return nil, status.Error(codes.InvalidArgument, err.Error())
	case err != nil:
		log.Error("signing failed", "err", err)
		return nil, status.Errorf(codes.Internal, "signing failed: %v", err)
	}
	// A single-use token is spent only once the certificate is signed, and the
	// certificate goes out only if this request spent it: a signing failure
	// leaves the token usable, and of concurrent requests with one token only
	// the one that spends it gets a certificate.
	var consumeErr error
	chain, err := s.cfg.Authority.Issue(checked, requestedTTL(req.GetValidityDuration()), func() error {
		if cred.via == "token" {
			consumeErr = s.cfg.Authenticator.Consume(ctx, cred.token)
		}
		return consumeErr
	})
	switch {
	case consumeErr != nil && refusesCredential(consumeErr):
		s.cfg.Authority.CountRejected("unauthenticated")
		log.Warn("certificate request refused", "reason", "credential rejected: "+consumeErr.Error())
		return nil, status.Errorf(codes.Unauthenticated, "credential rejected: %v", consumeErr)
	case consumeErr != nil:
		// The token store failed (a rename, a read): the token was not
		// spent, and the client may retry with it.
		s.cfg.Authority.CountRejected("error")
		log.Error("spending the credential failed", "err", consumeErr)
		return nil, status.Error(codes.Unavailable, "spending the credential failed; retry")
	case err != nil:
		log.Error("signing failed", "err", err)
		return nil, status.Errorf(codes.Internal, "signing failed: %v", err)
	}
	resp := &istioca.IstioCertificateResponse{}
	for _, c := range chain {
		resp.CertChain = append(resp.CertChain, string(ca.EncodeCertsPEM([]*x509.Certificate{c})))
	}
	log.Info("issued X.509-SVID", "serial", fmt.Sprintf("%x", chain[0].SerialNumber), "not_after", chain[0].NotAfter.UTC().Format(time.RFC3339))
	return resp, nil
}

// refusesCredential tells an Authenticate or Consume error that refuses the
// credential (unknown, malformed, spent, expired; ca.ErrCredentialRefused for
// other authenticators) from a failure of the token store.
func refusesCredential(err error) bool {
	return errors.Is(err, ca.ErrCredentialRefused) || errors.Is(err, jointoken.ErrUsed) || errors.Is(err, jointoken.ErrExpired) ||
		errors.Is(err, jointoken.ErrUnknown) || errors.Is(err, jointoken.ErrMalformed)
}

// requestedTTL converts validity_duration (seconds, not negative) to a TTL. A value
// too large for a time.Duration asks for more than any cap allows; multiplying it
// would wrap around to an arbitrary, possibly tiny, lifetime.
func requestedTTL(seconds int64) time.Duration {
	if seconds > int64(math.MaxInt64/time.Second) {
		return math.MaxInt64
	}
	return time.Duration(seconds) * time.Second
}

func (s *Server) getBundle(context.Context, *emptypb.Empty) (*wrapperspb.BytesValue, error) {
	data, err := s.cfg.Authority.Bundle().Marshal()
	if err != nil {
		return nil, status.Errorf(codes.Internal, "marshal bundle: %v", err)
	}
	return wrapperspb.Bytes(data), nil
}

func (s *Server) mintJWTSVID(ctx context.Context, req *workload.JWTSVIDRequest) (*workload.JWTSVIDResponse, error) {
	id, ok := s.peerID(ctx)
	if !ok {
		return nil, status.Error(codes.Unauthenticated, "a JWT-SVID needs the caller's X.509-SVID as client certificate")
	}
	if req.GetSpiffeId() != "" && req.GetSpiffeId() != id.String() {
		return nil, status.Errorf(codes.PermissionDenied, "caller %s may not ask for a JWT-SVID for %s", id, req.GetSpiffeId())
	}
	if len(req.GetAudience()) == 0 || slices.Contains(req.GetAudience(), "") {
		return nil, status.Error(codes.InvalidArgument, "audience is required, and no audience may be empty")
	}
	token, _, err := s.cfg.Authority.MintJWTSVID(id, req.GetAudience())
	if err != nil {
		return nil, status.Errorf(codes.Internal, "%v", err)
	}
	return &workload.JWTSVIDResponse{Svids: []*workload.JWTSVID{{SpiffeId: id.String(), Svid: token}}}, nil
}

var identityServiceDesc = grpc.ServiceDesc{
	ServiceName: ca.RPCServiceName,
	HandlerType: (*any)(nil),
	Methods: []grpc.MethodDesc{
		{MethodName: "GetBundle", Handler: func(srv any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
			in := new(emptypb.Empty)
			if err := dec(in); err != nil {
				return nil, err
			}
			return srv.(*Server).getBundle(ctx, in)
		}},
		{MethodName: "MintJWTSVID", Handler: func(srv any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
			in := new(workload.JWTSVIDRequest)
			if err := dec(in); err != nil {
				return nil, err
			}
			return srv.(*Server).mintJWTSVID(ctx, in)
		}},
	},
}
