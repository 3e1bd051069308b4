// Package controlplane assembles rampartd: the CA and its identity endpoint, the
// admin socket and the monitoring endpoint, run together under one errgroup.
// Config sources, compilation and xDS join it as they land.
//
// It is control plane: it must not import proxy/..., ca/agent or ca/workloadapi.
package controlplane

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/rampart-mesh/rampart/ca/kubetoken"
	"github.com/rampart-mesh/rampart/policies/source/kube"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rampart-mesh/rampart/ca"
	"github.com/rampart-mesh/rampart/ca/jointoken"
	"github.com/rampart-mesh/rampart/ca/server"
	"github.com/rampart-mesh/rampart/internal/serve"
	"github.com/rampart-mesh/rampart/policies/compile"
	"github.com/rampart-mesh/rampart/policies/xds"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
)

// Config configures rampartd.
type Config struct {
	// CA configures the authority; its StateDir is rampartd's state directory.
	CA ca.Config
	// Listen is the identity (and later xDS) endpoint, host:port.
	Listen string
	// ConfigPaths are configuration files and directories (Istio and Rampart
	// YAML); with them rampartd serves each proxy its compiled policy over xDS.
	ConfigPaths []string
	// Kube, if set, is a Kubernetes cluster to read Istio objects, Services
	// and Pods from (beside or instead of ConfigPaths).
	Kube *kube.Config
	// TokenAudience is the audience of the Kubernetes service-account tokens
	// sidecars may join with instead of a join token (TokenReview, with
	// Kube); "" turns that off (join tokens only).
	TokenAudience string
	// Mesh is the mesh config.
	Mesh compile.Mesh
	// Registry receives every metric; the caller serves it.
	Registry *prometheus.Registry
	Log      *slog.Logger
}

// Server is a running rampartd.
type Server struct {
	cfg       Config
	log       *slog.Logger
	authority *ca.Authority
	caServer  *server.Server
	xds       *xds.Server
	kube      *kube.Source
}

// Info is written to <state-dir>/rampartd.json while rampartd runs, so tools find it.
type Info struct {
	PID         int    `json:"pid"`
	Listen      string `json:"listen"`
	AdminSocket string `json:"adminSocket"`
	TrustDomain string `json:"trustDomain"`
	StartedAt   string `json:"startedAt"`
}

// AdminSocketPath is where rampartd serves its admin API for stateDir.
func AdminSocketPath(stateDir string) string { return filepath.Join(stateDir, "rampartd.sock") }

// New validates cfg and wires the parts. It does no I/O.
func New(cfg Config) (*Server, error) {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Registry == nil {
		cfg.Registry = prometheus.NewRegistry()
	}
	if cfg.Listen == "" {
		return nil, errors.New("listen address is required")
	}
	cfg.CA.Log = cfg.Log
	cfg.CA.Metrics = cfg.Registry
	authority, err := ca.New(cfg.CA)
	if err != nil {
		return nil, err
	}
	host, _, err := net.SplitHostPort(cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("listen address %q: %w", cfg.Listen, err)
	}
	dns := []string{"localhost"}
	ips := []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
	if ip := net.ParseIP(host); ip != nil && !ip.IsLoopback() && !ip.IsUnspecified() {
		ips = append(ips, ip)
	} else if ip == nil && host != "" && host != "localhost" {
		dns = append(dns, host)
	}
	var xdsServer *xds.Server
	var register func(context.Context, *grpc.Server)
	var kubeSrc *kube.Source
	var kubeOnChange func()
	if cfg.Kube != nil {
		kc := *cfg.Kube
		kc.Log = cfg.Log
		kc.OnChange = func() {
			if kubeOnChange != nil {
				kubeOnChange()
			}
		}
		if kubeSrc, err = kube.New(kc); err != nil {
			return nil, err
		}
	}
	if len(cfg.ConfigPaths) > 0 || kubeSrc != nil {
		xc := xds.Config{Paths: cfg.ConfigPaths, Mesh: cfg.Mesh, Trust: bundleSource{authority}, StateDir: cfg.CA.StateDir, Log: cfg.Log, Metrics: cfg.Registry}
		if kubeSrc != nil {
			xc.Kube = kubeSrc
		}
		if xdsServer, err = xds.New(xc); err != nil {
			return nil, err
		}
		register = xdsServer.Register
		kubeOnChange = xdsServer.KubeChanged
	}
	// In a cluster, a sidecar may also join with its pod's service-account
	// token, which the API server reviews.
	var reviewer *kubetoken.Reviewer
	if cfg.Kube != nil && cfg.Kube.Kube != nil && cfg.TokenAudience != "" {
		reviewer = kubetoken.New(cfg.Kube.Kube.AuthenticationV1(), cfg.TokenAudience)
	}
	caServer, err := server.New(server.Config{
		Register:      register,
		Authority:     authority,
		Authenticator: credentials{join: jointoken.New(cfg.CA.StateDir, cfg.CA.Clock), kube: reviewer},
		Listen:        cfg.Listen,
		DNSNames:      dns,
		IPs:           ips,
		Clock:         cfg.CA.Clock,
		Log:           cfg.Log,
	})
	if err != nil {
		return nil, err
	}
	return &Server{cfg: cfg, log: cfg.Log.With("component", "rampartd"), authority: authority, caServer: caServer, xds: xdsServer, kube: kubeSrc}, nil
}

// credentials checks a join token with the join-token store and, in a
// cluster, any other bearer token with the API server's TokenReview.
type credentials struct {
	join *jointoken.Store
	kube *kubetoken.Reviewer // nil outside a cluster
}

func (c credentials) pick(token string) server.Authenticator {
	if c.kube == nil || strings.HasPrefix(token, jointoken.Prefix) {
		return c.join
	}
	return c.kube
}

func (c credentials) Authenticate(ctx context.Context, token string) (ca.Identity, error) {
	return c.pick(token).Authenticate(ctx, token)
}

func (c credentials) Consume(ctx context.Context, token string) error {
	return c.pick(token).Consume(ctx, token)
}

// Authority returns the CA (for tests and benchmarks).
func (s *Server) Authority() *ca.Authority { return s.authority }

// Run loads the CA (creating it on first start) and serves until ctx ends.
func (s *Server) Run(ctx context.Context) error {
	if err := s.authority.Load(); err != nil {
		return err
	}
	defer s.authority.Close()

	stateDir := s.cfg.CA.StateDir
	sock := AdminSocketPath(stateDir)
	_ = os.Remove(sock) // we hold the state-dir lock, so any socket here is stale
	adminLis, err := net.Listen("unix", sock)
	if err != nil {
		return fmt.Errorf("admin socket: %w", err)
	}
	if err := os.Chmod(sock, 0o600); err != nil {
		adminLis.Close()
		return fmt.Errorf("admin socket: %w", err)
	}

	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return s.authority.Run(ctx) })
	g.Go(func() error { return s.caServer.Run(ctx) })
	if s.xds != nil {
		g.Go(func() error { return s.xds.Run(ctx) })
	}
	if s.kube != nil {
		g.Go(func() error { return s.kube.Run(ctx) })
	}
	mux := http.NewServeMux()
	mux.Handle("/ca/", server.AdminHandler(s.authority))
	mux.Handle("/proxies", s.ProxyHandler())
	mux.Handle("/proxies/", s.ProxyHandler())
	admin := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	g.Go(func() error { return serve.HTTP(ctx, admin, adminLis) })
	info := Info{PID: os.Getpid(), AdminSocket: sock, TrustDomain: s.authority.TrustDomain().Name(), StartedAt: time.Now().UTC().Format(time.RFC3339)}
	g.Go(func() error {
		addr, err := s.caServer.Addr(ctx)
		if err != nil {
			return nil
		}
		info.Listen = addr.String()
		data, _ := json.MarshalIndent(info, "", "  ")
		infoPath := filepath.Join(stateDir, "rampartd.json")
		if err := ca.WriteFileAtomic(infoPath, append(data, '\n'), 0o644); err != nil {
			return fmt.Errorf("write %s: %w", infoPath, err)
		}
		s.log.Info("rampartd ready", "listen", info.Listen, "state_dir", stateDir, "admin_socket", sock)
		<-ctx.Done()
		_ = os.Remove(infoPath)
		return nil
	})
	err = g.Wait()
	_ = os.Remove(sock)
	return err
}

// bundleSource gives the xDS server the CA's current trust bundle.
type bundleSource struct{ a *ca.Authority }

func (b bundleSource) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	return b.a.Bundle().GetX509BundleForTrustDomain(td)
}

// ProxyHandler serves what rampartd knows of its proxies, read-only, as JSON:
// GET /proxies (status), /proxies/config?proxy= (policy bundle) and
// /proxies/xds?proxy=&type=listeners|routes|clusters|endpoints. The admin
// socket serves it, and the monitoring port under /debug/ (as istiod's 15014
// does) for 'rampartctl --server'.
func (s *Server) ProxyHandler() http.Handler {
	pm := http.NewServeMux()
	pm.HandleFunc("GET /proxies", func(w http.ResponseWriter, _ *http.Request) {
		status := []xds.ProxyStatus{}
		if s.xds != nil {
			status = s.xds.Status()
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(status)
	})
	pm.HandleFunc("GET /proxies/config", func(w http.ResponseWriter, r *http.Request) {
		if s.xds == nil {
			http.Error(w, "rampartd serves no configuration (start it with --config-dir)", http.StatusNotFound)
			return
		}
		b, acked, ok := s.xds.Config(r.URL.Query().Get("proxy"))
		if !ok {
			http.Error(w, "no such proxy", http.StatusNotFound)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{"acked": acked, "bundle": b})
	})
	pm.HandleFunc("GET /proxies/xds", func(w http.ResponseWriter, r *http.Request) {
		if s.xds == nil {
			http.Error(w, "rampartd serves no configuration (start it with --config-dir)", http.StatusNotFound)
			return
		}
		out, acked, ok := s.xds.Outbound(r.URL.Query().Get("proxy"))
		if !ok || out == nil {
			http.Error(w, "no such proxy", http.StatusNotFound)
			return
		}
		var msgs []proto.Message
		switch r.URL.Query().Get("type") {
		case "listeners":
			for _, m := range out.Listeners {
				msgs = append(msgs, m)
			}
		case "routes":
			for _, m := range out.Routes {
				msgs = append(msgs, m)
			}
		case "clusters":
			for _, m := range out.Clusters {
				msgs = append(msgs, m)
			}
		case "endpoints":
			for _, m := range out.Endpoints {
				msgs = append(msgs, m)
			}
		default:
			http.Error(w, "type must be listeners, routes, clusters or endpoints", http.StatusBadRequest)
			return
		}
		res := make([]json.RawMessage, 0, len(msgs))
		for _, m := range msgs {
			b, err := protojson.Marshal(m)
			if err != nil {
				http.Error(w, err.Error(), http.StatusInternalServerError)
				return
			}
			res = append(res, b)
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{"acked": acked, "resources": res})
	})
	return pm
}
