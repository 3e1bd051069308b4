// Package proxy assembles rampart-sidecar: the identity agent, the SPIFFE Workload
// API for the app, and the inbound path (mTLS, authorization, decision log);
// outbound routing as it lands. New builds every part from typed Config; Run runs them under one
// errgroup, so the first failure stops the rest.
//
// It is data plane: it must not import policies/... or ca/server.
package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rampart-mesh/rampart/authz"
	"github.com/rampart-mesh/rampart/authz/decisionlog"
	"github.com/rampart-mesh/rampart/ca/agent"
	"github.com/rampart-mesh/rampart/ca/workloadapi"
	"github.com/rampart-mesh/rampart/proxy/inbound"
	"golang.org/x/sync/errgroup"
)

// Config configures a sidecar.
type Config struct {
	Agent agent.Config
	// WorkloadAPISocket is where the app fetches its SVID; empty disables the API.
	WorkloadAPISocket string
	// Inbound, if set, runs the inbound path in front of the app.
	Inbound *InboundConfig
	// Registry receives every metric; the caller serves it.
	Registry *prometheus.Registry
	Log      *slog.Logger
}

// InboundConfig configures the inbound path until xDS delivers it.
type InboundConfig struct {
	Listen string // e.g. 127.0.0.1:15006
	App    string // the app's address
	// Mode forces the mTLS mode (DISABLE, PERMISSIVE, STRICT); empty follows the
	// bundle's peer.json (PeerAuthentication) for the app's port.
	Mode string
	// BundleDir holds the compiled authorization bundle (rampartctl authz compile
	// --out); it is re-read when its .revision changes.
	BundleDir string
	Workload  authz.Workload
	// DecisionLog, if set, is the decision log file (denials and dry-run hits).
	DecisionLog string
	// LogAllows adds allowed requests to the decision log.
	LogAllows bool
}

// Proxy is a sidecar.
type Proxy struct {
	cfg    Config
	log    *slog.Logger
	agent  *agent.Agent
	wl     *workloadapi.Server
	engine *authz.Engine
	dlog   *decisionlog.Logger
}

// New builds the sidecar's parts. It does no I/O.
func New(cfg Config) (*Proxy, error) {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Registry == nil {
		cfg.Registry = prometheus.NewRegistry()
	}
	cfg.Agent.Log = cfg.Log
	cfg.Agent.Metrics = cfg.Registry
	a, err := agent.New(cfg.Agent)
	if err != nil {
		return nil, err
	}
	p := &Proxy{cfg: cfg, log: cfg.Log.With("component", "sidecar"), agent: a}
	if cfg.WorkloadAPISocket != "" {
		if p.wl, err = workloadapi.New(workloadapi.Config{Source: a, SocketPath: cfg.WorkloadAPISocket, Log: cfg.Log}); err != nil {
			return nil, err
		}
	}
	if in := cfg.Inbound; in != nil {
		if in.Listen == "" || in.App == "" || in.BundleDir == "" {
			return nil, errors.New("inbound: listen address, app address and bundle directory are required")
		}
		p.engine = authz.New(authz.Config{Log: cfg.Log})
		if in.DecisionLog != "" {
			allows := in.LogAllows
			if p.dlog, err = decisionlog.New(decisionlog.Config{Path: in.DecisionLog, LogAllows: &allows, Log: cfg.Log, Metrics: cfg.Registry}); err != nil {
				return nil, err
			}
		}
	}
	return p, nil
}

// runInbound loads the bundle, then serves the inbound path and reloads the
// bundle when its revision changes.
func (p *Proxy) runInbound(ctx context.Context) error {
	in := p.cfg.Inbound
	b, err := authz.LoadBundleDir(in.BundleDir)
	if err != nil {
		return err
	}
	if err := p.engine.Load(ctx, b); err != nil {
		return fmt.Errorf("authz bundle %s: %w", in.BundleDir, err)
	}
	authn := &jwtAuthn{log: p.log}
	if err := authn.load(ctx, in.BundleDir); err != nil {
		return err
	}
	if err := p.cfg.Registry.Register(authn); err != nil {
		return err
	}
	defer authn.stop()
	select {
	case <-p.agent.Ready():
	case <-ctx.Done():
		return nil
	}
	lis, err := net.Listen("tcp", in.Listen)
	if err != nil {
		return fmt.Errorf("inbound: listen on %s: %w", in.Listen, err)
	}
	var hook inbound.DecisionHook
	if p.dlog != nil {
		hook = func(ctx context.Context, r *authz.Request, d authz.Decision) {
			if p.dlog.ShouldLog(d) {
				_ = p.dlog.Log(ctx, decisionlog.FromDecision(d, decisionlog.RequestMeta(r)))
			}
		}
	}
	peerMode := &peerModes{}
	if err := peerMode.load(in.BundleDir, in.App); err != nil {
		lis.Close()
		return err
	}
	var modeFunc func() string
	if in.Mode == "" {
		modeFunc = peerMode.get
	}
	srv, err := inbound.New(inbound.Config{
		Listener: lis, App: in.App, Mode: in.Mode, ModeFunc: modeFunc, SVID: p.agent, Bundle: p.agent, TrustDomain: p.agent.TrustDomain(),
		Engine: p.engine, Authn: authn, Workload: in.Workload, OnDecide: hook, Log: p.cfg.Log, Metrics: p.cfg.Registry,
	})
	if err != nil {
		lis.Close()
		return err
	}
	mode := in.Mode
	if mode == "" {
		mode = peerMode.get() + " (PeerAuthentication)"
	}
	p.log.Info("inbound serving", "listen", lis.Addr().String(), "app", in.App, "mtls_mode", mode, "bundle_revision", b.Revision)
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return srv.Run(ctx) })
	g.Go(func() error {
		rev := b.Revision
		t := time.NewTicker(2 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return nil
			case <-t.C:
			}
			nb, err := authz.LoadBundleDir(in.BundleDir)
			if err != nil || nb.Revision == rev {
				continue
			}
			if err := p.engine.Load(ctx, nb); err != nil {
				p.log.Error("new authz bundle refused; keeping the last good one", "revision", nb.Revision, "err", err)
				rev = nb.Revision
				continue
			}
			if err := peerMode.load(in.BundleDir, in.App); err != nil {
				p.log.Error("new PeerAuthentication mode refused; keeping the last good one", "revision", nb.Revision, "err", err)
			}
			if err := authn.load(ctx, in.BundleDir); err != nil {
				p.log.Error("new RequestAuthentication rules refused; keeping the last good ones", "revision", nb.Revision, "err", err)
			}
			rev = nb.Revision
		}
	})
	return g.Wait()
}

// Agent returns the identity agent.
func (p *Proxy) Agent() *agent.Agent { return p.agent }

// ReadyHandler answers 200 once the sidecar holds an SVID, 503 before.
func (p *Proxy) ReadyHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		select {
		case <-p.agent.Ready():
			_, _ = w.Write([]byte("ok\n"))
		default:
			http.Error(w, "no SVID yet", http.StatusServiceUnavailable)
		}
	})
}

// Run runs the sidecar until ctx ends.
func (p *Proxy) Run(ctx context.Context) error {
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return p.agent.Run(ctx) })
	if p.wl != nil {
		g.Go(func() error {
			// The Workload API opens only once there is an SVID to hand out.
			select {
			case <-p.agent.Ready():
			case <-ctx.Done():
				return nil
			}
			return p.wl.Run(ctx)
		})
	}
	if p.cfg.Inbound != nil {
		g.Go(func() error { return p.runInbound(ctx) })
		if p.dlog != nil {
			g.Go(func() error { return p.dlog.Run(ctx) })
		}
	}
	return g.Wait()
}

// peerModes holds the mTLS mode for the app's port from the bundle's peer.json.
type peerModes struct{ mode atomic.Value }

func (p *peerModes) get() string {
	if m, ok := p.mode.Load().(string); ok {
		return m
	}
	return inbound.ModePermissive
}

func (p *peerModes) load(dir, app string) error {
	data, err := os.ReadFile(filepath.Join(dir, "peer.json"))
	if errors.Is(err, fs.ErrNotExist) {
		p.mode.Store(inbound.ModePermissive)
		return nil
	}
	if err != nil {
		return err
	}
	var pol struct {
		Mode  string            `json:"mode"`
		Ports map[string]string `json:"ports"`
	}
	if err := json.Unmarshal(data, &pol); err != nil {
		return fmt.Errorf("%s/peer.json: %w", dir, err)
	}
	mode := pol.Mode
	if _, port, err := net.SplitHostPort(app); err == nil {
		if m, ok := pol.Ports[port]; ok {
			mode = m
		}
	}
	switch mode {
	case inbound.ModeDisable, inbound.ModePermissive, inbound.ModeStrict:
	default:
		return fmt.Errorf("%s/peer.json: unknown mode %q", dir, mode)
	}
	p.mode.Store(mode)
	return nil
}
