package workloadapi

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	workload "github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
)

// Source is what the server needs from the identity agent.
type Source interface {
	GetX509SVID() (*x509svid.SVID, error)
	Bundle() *spiffebundle.Bundle
	// Updated returns a channel closed at the next SVID or bundle change.
	Updated() <-chan struct{}
	FetchJWTSVID(ctx context.Context, audience []string) (*jwtsvid.SVID, error)
}

// Config configures a Server.
type Config struct {
	Source     Source
	SocketPath string
	// SocketMode is the socket file's permission. Whoever can connect receives the
	// workload's SVID and key. Default 0600 (the sidecar's own user).
	SocketMode os.FileMode
	Log        *slog.Logger
}

// Server is a SPIFFE Workload API endpoint.
type Server struct {
	workload.UnimplementedSpiffeWorkloadAPIServer
	cfg Config
	log *slog.Logger
}

// New validates cfg. It does no I/O.
func New(cfg Config) (*Server, error) {
	if cfg.Source == nil {
		return nil, errors.New("workloadapi: Source is required")
	}
	if cfg.SocketPath == "" {
		return nil, errors.New("workloadapi: SocketPath is required")
	}
	if cfg.SocketMode == 0 {
		cfg.SocketMode = 0o600
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	return &Server{cfg: cfg, log: cfg.Log.With("component", "workload-api")}, nil
}

// Run listens on the socket and serves until ctx ends; it removes the socket on exit.
func (s *Server) Run(ctx context.Context) error {
	path := s.cfg.SocketPath
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("workload API socket directory: %w", err)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return fmt.Errorf("workload API socket %s: a file that is not a socket is in the way", path)
		}
		if c, err := net.Dial("unix", path); err == nil {
			c.Close()
			return fmt.Errorf("workload API socket %s is in use by another process", path)
		}
		_ = os.Remove(path) // stale socket from a previous run
	}
	lis, err := listenPrivate(path, s.cfg.SocketMode)
	if err != nil {
		return err
	}
	gs := grpc.NewServer(
		grpc.UnaryInterceptor(s.unaryGuard),
		grpc.StreamInterceptor(s.streamGuard),
		grpc.MaxRecvMsgSize(64<<10),
		grpc.ConnectionTimeout(5*time.Second),
	)
	workload.RegisterSpiffeWorkloadAPIServer(gs, s)
	pl := newPrefaceListener(lis, s.log)
	errc := make(chan error, 1)
	go func() { errc <- gs.Serve(pl) }()
	s.log.Info("workload API serving", "socket", path)
	select {
	case err := <-errc:
		_ = os.Remove(path)
		return fmt.Errorf("workload API: %w", err)
	case <-ctx.Done():
	}
	// Streams block until the client leaves, so do not wait for them.
	gs.Stop()
	_ = os.Remove(path)
	return nil
}

// listenPrivate listens on a Unix socket at path that no one but mode allows
// has ever been able to connect to. bind(2) creates the socket file with the
// process's umask, so a socket bound at path and chmod-ed afterwards is open
// to anyone for the moment between the two (with a umask of 0, to every local
// user, who would be handed the workload's SVID and key). It is bound instead
// in a fresh directory only this user can enter, given its mode there, and
// renamed into place.
func listenPrivate(path string, mode os.FileMode) (net.Listener, error) {
	dir, err := os.MkdirTemp(filepath.Dir(path), ".workload-api-")
	if err != nil {
		return nil, fmt.Errorf("workload API socket directory: %w", err)
	}
	defer os.RemoveAll(dir)
	tmp := filepath.Join(dir, "s")
	lis, err := net.Listen("unix", tmp)
	if err != nil {
		return nil, fmt.Errorf("listen on workload API socket: %w", err)
	}
	// The name changes under the listener: it must not unlink the old one on close.
	lis.(*net.UnixListener).SetUnlinkOnClose(false)
	if err := os.Chmod(tmp, mode); err != nil {
		lis.Close()
		return nil, fmt.Errorf("chmod workload API socket: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		lis.Close()
		return nil, fmt.Errorf("workload API socket %s: %w", path, err)
	}
	return lis, nil
}

// The SPIFFE Workload Endpoint spec requires this header on every call, so that a
// browser or SSRF-style request cannot reach the API.
func checkHeader(ctx context.Context) error {
	md, ok := metadata.FromIncomingContext(ctx)
	if !ok || len(md.Get("workload.spiffe.io")) != 1 || md.Get("workload.spiffe.io")[0] != "true" {
		return status.Error(codes.InvalidArgument, "security header missing from request: send metadata 'workload.spiffe.io: true'")
	}
	return nil
}

func (s *Server) unaryGuard(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	if err := checkHeader(ctx); err != nil {
		s.log.Warn("workload API call refused", "method", info.FullMethod, "reason", "missing workload.spiffe.io header")
		return nil, err
	}
	return h(ctx, req)
}

func (s *Server) streamGuard(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	if err := checkHeader(ss.Context()); err != nil {
		s.log.Warn("workload API call refused", "method", info.FullMethod, "reason", "missing workload.spiffe.io header")
		return err
	}
	return h(srv, ss)
}

func concatDER(certs []*x509.Certificate) []byte {
	var out []byte
	for _, c := range certs {
		out = append(out, c.Raw...)
	}
	return out
}

// FetchX509SVID streams the workload's X.509-SVID, sending again on every change.
func (s *Server) FetchX509SVID(_ *workload.X509SVIDRequest, stream grpc.ServerStreamingServer[workload.X509SVIDResponse]) error {
	return s.stream(stream.Context(), func() error {
		svid, err := s.cfg.Source.GetX509SVID()
		if err != nil {
			return status.Error(codes.Unavailable, "no X.509-SVID yet")
		}
		b := s.cfg.Source.Bundle()
		_, key, err := svid.MarshalRaw()
		if err != nil {
			return status.Errorf(codes.Internal, "marshal SVID: %v", err)
		}
		return stream.Send(&workload.X509SVIDResponse{Svids: []*workload.X509SVID{{
			SpiffeId:    svid.ID.String(),
			X509Svid:    concatDER(svid.Certificates),
			X509SvidKey: key,
			Bundle:      concatDER(b.X509Authorities()),
		}}})
	})
}

// FetchX509Bundles streams the X.509 trust bundles.
func (s *Server) FetchX509Bundles(_ *workload.X509BundlesRequest, stream grpc.ServerStreamingServer[workload.X509BundlesResponse]) error {
	return s.stream(stream.Context(), func() error {
		b := s.cfg.Source.Bundle()
		if b == nil {
			return status.Error(codes.Unavailable, "no bundle yet")
		}
		return stream.Send(&workload.X509BundlesResponse{Bundles: map[string][]byte{
			b.TrustDomain().IDString(): concatDER(b.X509Authorities()),
		}})
	})
}

// FetchJWTBundles streams the JWT bundles (JWKS per trust domain).
func (s *Server) FetchJWTBundles(_ *workload.JWTBundlesRequest, stream grpc.ServerStreamingServer[workload.JWTBundlesResponse]) error {
	return s.stream(stream.Context(), func() error {
		b := s.cfg.Source.Bundle()
		if b == nil {
			return status.Error(codes.Unavailable, "no bundle yet")
		}
		jwks, err := b.JWTBundle().Marshal()
		if err != nil {
			return status.Errorf(codes.Internal, "marshal JWT bundle: %v", err)
		}
		return stream.Send(&workload.JWTBundlesResponse{Bundles: map[string][]byte{b.TrustDomain().IDString(): jwks}})
	})
}

// stream sends once, then again after every update, until the client goes away.
func (s *Server) stream(ctx context.Context, send func() error) error {
	for {
		// Take the change channel before reading the state so no update is missed.
		changed := s.cfg.Source.Updated()
		if err := send(); err != nil {
			return err
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return nil
		}
	}
}

// FetchJWTSVID returns a JWT-SVID for the workload and the requested audience.
func (s *Server) FetchJWTSVID(ctx context.Context, req *workload.JWTSVIDRequest) (*workload.JWTSVIDResponse, error) {
	// go-spiffe sends an unset audience as [""]; a token for no one is refused too.
	if len(req.GetAudience()) == 0 || slices.Contains(req.GetAudience(), "") {
		return nil, status.Error(codes.InvalidArgument, "audience must be specified, and no audience may be empty")
	}
	svid, err := s.cfg.Source.GetX509SVID()
	if err != nil {
		return nil, status.Error(codes.Unavailable, "no identity yet")
	}
	if want := req.GetSpiffeId(); want != "" {
		id, err := spiffeid.FromString(want)
		if err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "spiffe_id: %v", err)
		}
		if id != svid.ID {
			return nil, status.Errorf(codes.PermissionDenied, "this workload is %s, not %s", svid.ID, id)
		}
	}
	j, err := s.cfg.Source.FetchJWTSVID(ctx, req.GetAudience())
	if err != nil {
		s.log.Warn("JWT-SVID request failed", "err", err)
		return nil, status.Errorf(codes.Unavailable, "mint JWT-SVID: %v", err)
	}
	return &workload.JWTSVIDResponse{Svids: []*workload.JWTSVID{{SpiffeId: j.ID.String(), Svid: j.Marshal()}}}, nil
}

// ValidateJWTSVID validates a JWT-SVID against the JWT bundle and one audience.
func (s *Server) ValidateJWTSVID(_ context.Context, req *workload.ValidateJWTSVIDRequest) (*workload.ValidateJWTSVIDResponse, error) {
	if req.GetAudience() == "" {
		return nil, status.Error(codes.InvalidArgument, "audience must be specified")
	}
	if req.GetSvid() == "" {
		return nil, status.Error(codes.InvalidArgument, "svid must be specified")
	}
	b := s.cfg.Source.Bundle()
	if b == nil {
		return nil, status.Error(codes.Unavailable, "no bundle yet")
	}
	j, err := jwtsvid.ParseAndValidate(req.GetSvid(), b, []string{req.GetAudience()})
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	claims, err := structpb.NewStruct(j.Claims)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "claims: %v", err)
	}
	return &workload.ValidateJWTSVIDResponse{SpiffeId: j.ID.String(), Claims: claims}, nil
}
