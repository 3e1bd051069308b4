// Package proxy assembles rampart-sidecar: the identity agent, the SPIFFE Workload
// API for the app, the inbound path (mTLS, authentication, authorization,
// decision log), the outbound path and gateway listeners (routes and clusters),
// and the xDS client that configures them. New builds every part from typed
// Config; Run runs them under one errgroup, so the first failure stops the rest.
//
// It is data plane: it must not import policies/... or ca/server.
package proxy

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"sync/atomic"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rampart-mesh/rampart/authz"
	"github.com/rampart-mesh/rampart/authz/decisionlog"
	"github.com/rampart-mesh/rampart/ca/agent"
	"github.com/rampart-mesh/rampart/ca/workloadapi"
	"github.com/rampart-mesh/rampart/proxy/inbound"
	"github.com/rampart-mesh/rampart/proxy/outbound"
	"github.com/rampart-mesh/rampart/proxy/proxyless"
	"github.com/rampart-mesh/rampart/proxy/ratelimit"
	"github.com/rampart-mesh/rampart/proxy/upstream"
	"github.com/rampart-mesh/rampart/proxy/xds"
	"golang.org/x/sync/errgroup"
	"google.golang.org/protobuf/types/known/structpb"
)

// Config configures a sidecar.
type Config struct {
	Agent agent.Config
	// WorkloadAPISocket is where the app fetches its SVID; empty disables the API.
	WorkloadAPISocket string
	// Inbound, if set, runs the inbound path in front of the app.
	Inbound *InboundConfig
	// Outbound, if set, runs the outbound path (and ingress gateway listeners)
	// with listeners, routes, clusters and endpoints from rampartd over xDS.
	Outbound *OutboundConfig
	// Proxyless, if set, is the agent-only mode for a proxyless gRPC app: no
	// listeners; certificate files and a gRPC xDS bootstrap for the app.
	Proxyless *ProxylessConfig
	// Workload is this proxy's workload (namespace, name, labels), sent to
	// rampartd with its xDS requests; Inbound.Workload is used when it is empty.
	Workload authz.Workload
	// Registry receives every metric; the caller serves it.
	Registry *prometheus.Registry
	Log      *slog.Logger
	// Version is Rampart's version, recorded as labels.version in decision-log
	// events.
	Version string
	// DecisionLogOptions tune the decision log that Inbound.DecisionLog or
	// Outbound.DecisionLog turns on.
	DecisionLogOptions DecisionLogOptions
}

// DecisionLogOptions tune a sidecar's decision log.
type DecisionLogOptions struct {
	// Lossless makes a request wait for room in a full buffer (until the
	// request ends) instead of dropping its event and counting the drop.
	Lossless bool
	// MaxBytes rotates the file at this size; MaxFiles rotated files are kept.
	// Zero: the decision log's defaults (100 MiB, 5).
	MaxBytes int64
	MaxFiles int
	// Policy is a "package system.log" Rego module with OPA's mask and drop
	// rules, and PolicyFile the file it came from, for errors.
	Policy, PolicyFile string
}

// InboundConfig configures the inbound path; its policy comes over xDS unless BundleDir is set.
type InboundConfig struct {
	Listen string // e.g. 127.0.0.1:15006
	App    string // the app's address
	// Captured: connections come redirected by iptables (rampart-sidecar
	// init); others are refused, and those redirected from another port than
	// App's are passed to that port after TCP authorization.
	Captured bool
	// Protocol is "http" (default) or "tcp".
	Protocol string
	// Mode forces the mTLS mode (DISABLE, PERMISSIVE, STRICT); empty follows the
	// bundle's peer.json (PeerAuthentication) for the app's port.
	Mode string
	// BundleDir, if set, holds the compiled bundle (rampartctl authz compile
	// --out), re-read when its .revision changes; otherwise the bundle comes from
	// rampartd over xDS.
	BundleDir string
	Workload  authz.Workload
	// DecisionLog, if set, is the decision log file (denials and dry-run hits).
	DecisionLog string
	// LogAllows adds allowed requests to the decision log.
	LogAllows bool
}

// OutboundConfig configures the outbound path.
type OutboundConfig struct {
	// Listen is the explicit outbound listener (e.g. 127.0.0.1:15001): the app
	// uses it as its HTTP proxy or sends to it with the service's Host. Empty: none.
	Listen string
	// GatewayListen are ingress gateway listeners: the port each is bound to
	// selects the gateway's route configuration (Istio Gateway servers).
	// Requests there pass the gateway workload's RequestAuthentication and
	// AuthorizationPolicy first.
	GatewayListen []string
	// AccessLogAll logs every request; by default only failures and requests
	// the proxy shaped (response flags, 5xx).
	AccessLogAll bool
	// Transparent serves Listen for connections iptables redirected
	// (rampart-sidecar init) instead of explicit proxy requests.
	Transparent bool
	// DecisionLog, if set, records the gateway's denials (tamper-evident). With
	// an inbound path too, it must be the inbound path's DecisionLog: the two
	// share one log.
	DecisionLog string
	// LogAllows adds allowed requests to the decision log.
	LogAllows bool
}

// ProxylessConfig configures the agent-only mode for proxyless gRPC apps.
type ProxylessConfig struct {
	// CertDir receives cert-chain.pem, key.pem and root-cert.pem, rewritten
	// atomically on every rotation.
	CertDir string
	// Bootstrap is the gRPC xDS bootstrap file written for the app.
	Bootstrap string
}

// Proxy is a sidecar.
type Proxy struct {
	cfg    Config
	log    *slog.Logger
	agent  *agent.Agent
	wl     *workloadapi.Server
	engine *authz.Engine
	dlog   *decisionlog.Logger

	authn    *jwtAuthn
	peerMode *peerModes
	ups      *upstream.Manager
	outs     []*outbound.Server
	tcp      *outbound.TCP
	guard    *inbound.Server // the gateway's authentication and authorization
	grpc     *proxyless.Writer
	limiter  *ratelimit.Limiter // local rate limits, of the inbound path and the gateway's guard

	// Readiness: the first policy bundle and the first complete outbound
	// configuration have been applied.
	policyApplied, outboundApplied atomic.Bool
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
	p := &Proxy{cfg: cfg, log: cfg.Log.With("component", "sidecar"), agent: a, peerMode: &peerModes{}}
	p.authn = &jwtAuthn{log: p.log}
	if err := cfg.Registry.Register(p.authn); err != nil {
		return nil, err
	}
	if p.cfg.Workload.Namespace == "" && cfg.Inbound != nil {
		p.cfg.Workload = cfg.Inbound.Workload
	}
	if p.dlog, err = newDecisionLog(cfg); err != nil {
		return nil, err
	}
	if o := cfg.Outbound; o != nil {
		if o.Listen == "" && len(o.GatewayListen) == 0 {
			return nil, errors.New("outbound: a listen address or a gateway listener is required")
		}
		if p.ups, err = upstream.NewManager(upstream.Config{SVID: a, Bundle: a, Log: cfg.Log, Metrics: cfg.Registry}); err != nil {
			return nil, err
		}
		if len(o.GatewayListen) > 0 {
			if p.engine == nil {
				p.engine = authz.New(authz.Config{Log: cfg.Log})
			}
			var hook inbound.DecisionHook
			if p.dlog != nil && o.DecisionLog != "" {
				hook = p.logDecision
			}
			// The gateway's bundle carries the limits that apply to it (the
			// root namespace's); its guard enforces them as the inbound path does.
			if p.limiter, err = ratelimit.New(ratelimit.Config{Log: cfg.Log, Metrics: cfg.Registry}); err != nil {
				return nil, err
			}
			if p.guard, err = inbound.New(inbound.Config{GuardOnly: true, Engine: p.engine, Authn: p.authn, Workload: p.cfg.Workload,
				OnDecide: hook, RateLimit: p.limiter, Log: cfg.Log, Metrics: cfg.Registry}); err != nil {
				return nil, err
			}
		}
	}
	if pl := cfg.Proxyless; pl != nil {
		if cfg.Inbound != nil || cfg.Outbound != nil {
			return nil, errors.New("proxyless: the agent-only mode serves no inbound, outbound or gateway listeners")
		}
		if p.grpc, err = proxyless.New(proxyless.Config{Source: a, CertDir: pl.CertDir, Bootstrap: pl.Bootstrap,
			ControlPlane: cfg.Agent.ControlPlane, Workload: p.cfg.Workload, Log: cfg.Log}); err != nil {
			return nil, err
		}
	}
	if cfg.WorkloadAPISocket != "" {
		if p.wl, err = workloadapi.New(workloadapi.Config{Source: a, SocketPath: cfg.WorkloadAPISocket, Log: cfg.Log}); err != nil {
			return nil, err
		}
	}
	if in := cfg.Inbound; in != nil {
		if in.Listen == "" || in.App == "" {
			return nil, errors.New("inbound: listen address and app address are required")
		}
		if p.engine == nil { // the gateway's guard, built above, decides with the same engine
			p.engine = authz.New(authz.Config{Log: cfg.Log})
		}
		if p.limiter == nil { // one set of limits, one bundle: shared with the gateway's guard
			if p.limiter, err = ratelimit.New(ratelimit.Config{Log: cfg.Log, Metrics: cfg.Registry}); err != nil {
				return nil, err
			}
		}
	}
	if p.engine != nil {
		for _, r := range []string{"hit", "miss"} {
			cfg.Registry.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
				Name: "rampart_authz_verdict_cache_total", ConstLabels: prometheus.Labels{"result": r},
				Help: "Authorization decisions answered from the verdict cache (hit) or evaluated by OPA (miss).",
			}, func() float64 {
				h, m := p.engine.CacheStats()
				if r == "hit" {
					return float64(h)
				}
				return float64(m)
			}))
		}
	}
	return p, nil
}

// newDecisionLog builds the one decision log that the inbound path and the
// gateway listeners share; nil if neither has one.
func newDecisionLog(cfg Config) (*decisionlog.Logger, error) {
	var path string
	allows := false
	for _, c := range []struct {
		name, path string
		allows     bool
	}{
		{"inbound", inboundLog(cfg.Inbound), cfg.Inbound != nil && cfg.Inbound.LogAllows},
		{"gateway", outboundLog(cfg.Outbound), cfg.Outbound != nil && cfg.Outbound.LogAllows},
	} {
		if c.path == "" {
			continue
		}
		if path != "" && c.path != path {
			return nil, fmt.Errorf("decision log: the %s path logs to %s, but another path to %s: use one file", c.name, c.path, path)
		}
		path, allows = c.path, allows || c.allows
	}
	if path == "" {
		if o := cfg.DecisionLogOptions; o != (DecisionLogOptions{}) {
			return nil, errors.New("decision log options are set, but no listener has a decision log")
		}
		return nil, nil
	}
	labels := map[string]string{}
	if cfg.Version != "" {
		labels["version"] = cfg.Version
	}
	o := cfg.DecisionLogOptions
	l, err := decisionlog.New(decisionlog.Config{Path: path, LogAllows: &allows, Labels: labels, Log: cfg.Log, Metrics: cfg.Registry,
		Lossless: o.Lossless, MaxBytes: o.MaxBytes, MaxFiles: o.MaxFiles, Policy: o.Policy, PolicyFile: o.PolicyFile})
	if err != nil {
		return nil, err
	}
	return l, nil
}

func inboundLog(in *InboundConfig) string {
	if in == nil {
		return ""
	}
	return in.DecisionLog
}

func outboundLog(o *OutboundConfig) string {
	if o == nil || len(o.GatewayListen) == 0 {
		return ""
	}
	return o.DecisionLog
}

// logDecision records d in the decision log if the log selects it, with the
// sidecar's own identity as the destination principal and labels.id (the xDS
// node id, as OPA's labels.id names the instance). A dropped event is counted
// in decision_logs_dropped_total; the request goes on.
func (p *Proxy) logDecision(ctx context.Context, r *authz.Request, d authz.Decision) {
	if !p.dlog.ShouldLog(d) {
		return
	}
	m := decisionlog.RequestMeta(r)
	if svid, err := p.agent.GetX509SVID(); err == nil {
		m.DestinationPrincipal = svid.ID.String()
		m.Labels = map[string]string{"id": nodeID(m.DestinationPrincipal, p.cfg.Workload.Name)}
	}
	_ = p.dlog.Log(ctx, decisionlog.FromDecision(d, m))
}

// runInbound serves the inbound path. Its policy comes from rampartd over xDS
// (ECDS), or from a bundle directory when one is configured; either way a new
// bundle is swapped in atomically and a bad one is refused (NACKed) with the
// last good one kept. Until the first bundle arrives every request is denied.
func (p *Proxy) runInbound(ctx context.Context) error {
	in := p.cfg.Inbound
	authn, peerMode := p.authn, p.peerMode

	var source func(context.Context) error
	if in.BundleDir != "" {
		b, err := authz.LoadBundleDir(in.BundleDir)
		if err != nil {
			return err
		}
		for try := 1; ; try++ {
			if err = p.loadBundleDir(ctx, b, authn, peerMode); !errors.Is(err, errBundleDirMoved) || try == 5 {
				break
			}
			if b, err = authz.LoadBundleDir(in.BundleDir); err != nil {
				return err
			}
		}
		if err != nil {
			return err
		}
		source = func(ctx context.Context) error { return p.pollBundleDir(ctx, b.Revision, authn, peerMode) }
	}

	select {
	case <-p.agent.Ready():
	case <-ctx.Done():
		return nil
	}
	if source == nil {
		source = func(context.Context) error { return nil } // the xDS client runs beside
	}
	lis, err := net.Listen("tcp", in.Listen)
	if err != nil {
		return fmt.Errorf("inbound: listen on %s: %w", in.Listen, err)
	}
	var hook inbound.DecisionHook
	if p.dlog != nil && in.DecisionLog != "" {
		hook = p.logDecision
	}
	var modeFunc func() string
	var portModeFunc func(int) string
	if in.Mode == "" {
		modeFunc, portModeFunc = peerMode.get, peerMode.forPort
	}
	srv, err := inbound.New(inbound.Config{
		Listener: lis, App: in.App, Captured: in.Captured, Protocol: in.Protocol, Mode: in.Mode, ModeFunc: modeFunc, PortModeFunc: portModeFunc, SVID: p.agent, Bundle: p.agent, TrustDomain: p.agent.TrustDomain(),
		Engine: p.engine, Authn: authn, Workload: in.Workload, OnDecide: hook, RateLimit: p.limiter, Log: p.cfg.Log, Metrics: p.cfg.Registry,
	})
	if err != nil {
		lis.Close()
		return err
	}
	from := "xDS"
	if in.BundleDir != "" {
		from = in.BundleDir
	}
	p.log.Info("inbound serving", "listen", lis.Addr().String(), "app", in.App, "policy_from", from, "forced_mtls_mode", in.Mode)
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return srv.Run(ctx) })
	g.Go(func() error { return source(ctx) })
	return g.Wait()
}

// apply installs a bundle whole or not at all: build, validate, publish.
// The rate limits, CUSTOM providers, PeerAuthentication mode and
// RequestAuthentication rules are built and validated first, with nothing in
// force changed; the Rego is compiled and installed last, as it is the one
// part the engine cannot prepare without installing; only once it is in
// force are the other parts, which can no longer fail, published. A bundle
// with any part refused returns an error (the update is NACKed) and leaves
// every part at its last good value, so the sidecar never runs one bundle's
// authorization policy with another's authentication rules.
func (p *Proxy) apply(ctx context.Context, wb authz.WireBundle, authn *jwtAuthn, peerMode *peerModes) error {
	if p.engine == nil {
		return nil // neither inbound nor gateway: nothing here evaluates policy
	}
	b := wb.Bundle()
	var limits *ratelimit.Set
	if p.limiter != nil {
		var err error
		if limits, err = p.limiter.Build(wb.RateLimits); err != nil {
			return fmt.Errorf("rate limits: %w", err)
		}
	}
	provs, err := wb.LoadProviders(ctx)
	if err != nil {
		return err
	}
	b.Providers = provs
	var mode *peerPolicy
	if p.cfg.Inbound != nil {
		if mode, err = parsePeerMode(wb.Peer, p.cfg.Inbound.App); err != nil {
			return fmt.Errorf("peer modes: %w", err)
		}
	}
	rules, err := authn.build(wb.JWTRules)
	if err != nil {
		return fmt.Errorf("request authentication rules: %w", err)
	}
	if err := p.engine.Load(ctx, b); err != nil {
		return err
	}
	releaseMemory()
	if p.cfg.Inbound != nil {
		peerMode.set(mode)
	}
	authn.install(ctx, rules)
	if limits != nil {
		p.limiter.Swap(limits)
	}
	p.policyApplied.Store(true)
	return nil
}

func (p *Proxy) xdsClient(authn *jwtAuthn, peerMode *peerModes) (*xds.Client, error) {
	svid, err := p.agent.GetX509SVID()
	if err != nil {
		return nil, err
	}
	labels := map[string]any{}
	for k, v := range p.cfg.Workload.Labels {
		labels[k] = v
	}
	// ROUTER: a proxy serving gateway listeners (Istio's router proxies) is
	// sent the Gateways without a selector too.
	router := p.cfg.Outbound != nil && len(p.cfg.Outbound.GatewayListen) > 0
	md, err := structpb.NewStruct(map[string]any{"NAME": p.cfg.Workload.Name, "LABELS": labels, "ROUTER": router})
	if err != nil {
		return nil, err
	}
	cfg := xds.Config{
		Dial: p.agent.DialControlPlane,
		Node: &corev3.Node{Id: nodeID(svid.ID.String(), p.cfg.Workload.Name), Metadata: md},
		Apply: func(ctx context.Context, wb authz.WireBundle) error {
			return p.apply(ctx, wb, authn, peerMode)
		},
		Log: p.cfg.Log,
	}
	if p.cfg.Outbound != nil {
		cfg.ApplyOutbound = p.applyOutbound
	}
	if p.tcp != nil {
		cfg.CheckListener = outbound.CheckTCPListener
	}
	return xds.New(cfg)
}

// applyOutbound installs a complete set of listeners, routes, clusters and
// endpoints: every listener's routes are validated first, then the clusters are
// swapped, then the routes; an error before the swap changes nothing.
func (p *Proxy) applyOutbound(_ context.Context, res *xds.Resources) error {
	installs := make([]func(), 0, len(p.outs)+1)
	for _, o := range p.outs {
		install, err := o.Prepare(res)
		if err != nil {
			return err
		}
		installs = append(installs, install)
	}
	if p.tcp != nil {
		install, err := p.tcp.Prepare(res)
		if err != nil {
			return err
		}
		installs = append(installs, install)
	}
	clusters := make([]*clusterv3.Cluster, 0, len(res.Clusters))
	for _, c := range res.Clusters {
		clusters = append(clusters, c)
	}
	cla := make([]*endpointv3.ClusterLoadAssignment, 0, len(res.Endpoints))
	for _, e := range res.Endpoints {
		cla = append(cla, e)
	}
	if err := p.ups.Update(clusters, cla); err != nil {
		return err
	}
	for _, install := range installs {
		install()
	}
	p.outboundApplied.Store(true)
	return nil
}

// runOutbound serves the outbound listener and gateway listeners.
func (p *Proxy) runOutbound(ctx context.Context) error {
	defer p.ups.Close()
	g, ctx := errgroup.WithContext(ctx)
	for _, srv := range p.outs {
		g.Go(func() error { return srv.Run(ctx) })
	}
	if p.tcp != nil {
		g.Go(func() error { return p.tcp.Run(ctx) })
	}
	return g.Wait()
}

// listenOutbound opens the outbound listeners and builds their servers; it
// runs before the xDS client so no configuration arrives without a server.
func (p *Proxy) listenOutbound() error {
	o := p.cfg.Outbound
	principal := ""
	if svid, err := p.agent.GetX509SVID(); err == nil {
		principal = svid.ID.String()
	}
	add := func(addr string, gateway bool) error {
		lis, err := net.Listen("tcp", addr)
		if err != nil {
			return fmt.Errorf("outbound: listen on %s: %w", addr, err)
		}
		var guard func(http.ResponseWriter, *http.Request) bool
		if gateway && p.guard != nil {
			guard = p.guard.Guard
		}
		transparent := o.Transparent && !gateway
		if transparent {
			p.tcp = outbound.NewTCP("", p.ups, p.cfg.Log) // routes only; connections come redirected
		}
		var tcp *outbound.TCP
		if transparent {
			tcp = p.tcp
		}
		srv, err := outbound.New(outbound.Config{Listener: lis, Upstreams: p.ups, Gateway: gateway, Guard: guard, Transparent: transparent, TCP: tcp, AccessLogAll: o.AccessLogAll,
			Workload: p.cfg.Workload.Name, Namespace: p.cfg.Workload.Namespace, Principal: principal, Log: p.cfg.Log, Metrics: p.cfg.Registry})
		if err != nil {
			lis.Close()
			return err
		}
		p.outs = append(p.outs, srv)
		kind := "outbound"
		if gateway {
			kind = "gateway"
		}
		p.log.Info(kind+" serving", "listen", lis.Addr().String())
		return nil
	}
	if o.Listen != "" {
		if err := add(o.Listen, false); err != nil {
			return err
		}
		// Explicit capture: TCP services are served on the outbound IP at their own ports.
		if !o.Transparent {
			host, _, err := net.SplitHostPort(o.Listen)
			if err != nil {
				return fmt.Errorf("outbound: %s: %w", o.Listen, err)
			}
			p.tcp = outbound.NewTCP(host, p.ups, p.cfg.Log)
		}
	}
	for _, a := range o.GatewayListen {
		if err := add(a, true); err != nil {
			return err
		}
	}
	return nil
}

// pollBundleDir reloads the bundle directory when its revision changes.
func (p *Proxy) pollBundleDir(ctx context.Context, rev string, authn *jwtAuthn, peerMode *peerModes) error {
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		rev = p.reloadBundleDir(ctx, rev, authn, peerMode)
	}
}

// reloadBundleDir installs the bundle directory if its revision is not rev and
// returns the revision it saw. A bundle that is refused is logged and not
// retried until the revision changes again; the last good one stays in force.
func (p *Proxy) reloadBundleDir(ctx context.Context, rev string, authn *jwtAuthn, peerMode *peerModes) string {
	nb, err := authz.LoadBundleDir(p.cfg.Inbound.BundleDir)
	if err != nil || nb.Revision == rev {
		return rev
	}
	err = p.loadBundleDir(ctx, nb, authn, peerMode)
	if errors.Is(err, errBundleDirMoved) {
		p.log.Info("the bundle directory changed while being read; reading it again at the next poll", "revision", nb.Revision)
		return rev
	}
	if err != nil {
		p.log.Error("new bundle refused; keeping the last good one", "revision", nb.Revision, "err", err)
	}
	return nb.Revision
}

// loadBundleDir installs b, read from the bundle directory, with the
// directory's PeerAuthentication mode (peer.json) and RequestAuthentication
// rules (authn.json), whole or not at all, as apply does: the mode and rules
// are read and validated first, the Rego is installed last, and only then are
// the mode and rules published. On error nothing changed.
func (p *Proxy) loadBundleDir(ctx context.Context, b authz.Bundle, authn *jwtAuthn, peerMode *peerModes) error {
	in := p.cfg.Inbound
	mode, err := readPeerMode(in.BundleDir, in.App)
	if err != nil {
		return err
	}
	rules, err := authn.buildDir(in.BundleDir)
	if err != nil {
		return err
	}
	afterBundleDirRead()
	// peer.json and authn.json are read after the modules: a writer that
	// replaced them meanwhile has moved .revision too (it writes it last), and
	// the three must be of one revision.
	if cur := authz.BundleDirRevision(in.BundleDir); cur != b.Revision {
		return fmt.Errorf("%w (revision %s, now %s)", errBundleDirMoved, b.Revision, cur)
	}
	if err := p.engine.Load(ctx, b); err != nil {
		return fmt.Errorf("authz bundle %s: %w", in.BundleDir, err)
	}
	releaseMemory()
	peerMode.set(mode)
	authn.install(ctx, rules)
	return nil
}

// errBundleDirMoved: the bundle directory's revision changed while it was
// read; nothing was installed, and it is read again.
var errBundleDirMoved = errors.New("the bundle directory changed while being read")

// afterBundleDirRead runs between reading a bundle directory's files and
// checking its revision again (a test's hook).
var afterBundleDirRead = func() {}

// Agent returns the identity agent.
func (p *Proxy) Agent() *agent.Agent { return p.agent }

// ReadyHandler answers 200 once the sidecar holds an SVID, 503 before.
func (p *Proxy) ReadyHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		select {
		case <-p.agent.Ready():
		default:
			http.Error(w, "no SVID yet", http.StatusServiceUnavailable)
			return
		}
		if p.engine != nil && p.cfg.Inbound != nil && p.cfg.Inbound.BundleDir == "" && !p.policyApplied.Load() {
			http.Error(w, "no policy bundle from the control plane yet", http.StatusServiceUnavailable)
			return
		}
		if p.grpc != nil && !p.grpc.Ready() {
			http.Error(w, "the gRPC certificate files and bootstrap are not written yet", http.StatusServiceUnavailable)
			return
		}
		if p.cfg.Outbound != nil && !p.outboundApplied.Load() {
			http.Error(w, "no routes and clusters from the control plane yet", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
}

// Run runs the sidecar until ctx ends.
func (p *Proxy) Run(ctx context.Context) error {
	if p.dlog == nil {
		return p.serve(ctx)
	}
	// The decision log outlives the listeners: it stops only once they have
	// drained their requests (and logged their decisions). Its failure still
	// stops the sidecar.
	logCtx, stopLog := context.WithCancel(context.WithoutCancel(ctx))
	defer stopLog()
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		defer stopLog()
		return p.serve(ctx)
	})
	g.Go(func() error { return p.dlog.Run(logCtx) })
	return g.Wait()
}

// serve runs everything but the decision log until ctx ends.
func (p *Proxy) serve(ctx context.Context) error {
	defer p.authn.stop()
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return p.agent.Run(ctx) })
	if p.cfg.Outbound != nil || (p.cfg.Inbound != nil && p.cfg.Inbound.BundleDir == "") {
		g.Go(func() error {
			select {
			case <-p.agent.Ready():
			case <-ctx.Done():
				return nil
			}
			if p.cfg.Outbound != nil {
				if err := p.listenOutbound(); err != nil {
					return err
				}
				g.Go(func() error { return p.runOutbound(ctx) })
			}
			client, err := p.xdsClient(p.authn, p.peerMode)
			if err != nil {
				return err
			}
			return client.Run(ctx)
		})
	}
	if p.grpc != nil {
		g.Go(func() error { return p.grpc.Run(ctx) })
	}
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
	}
	if p.limiter != nil {
		g.Go(func() error { return p.limiter.Run(ctx) })
	}
	return g.Wait()
}

// peerModes holds the mTLS modes from the bundle's peer.json: the app's
// port's, and each other port's (a captured sidecar's inbound passthrough).
type peerModes struct{ pol atomic.Pointer[peerPolicy] }

// peerPolicy is a peer.json resolved: the app's port's mode, the workload's
// and those of the ports portLevelMtls names.
type peerPolicy struct {
	app, base string
	ports     map[int]string
}

var permissive = &peerPolicy{app: inbound.ModePermissive, base: inbound.ModePermissive}

func (p *peerModes) policy() *peerPolicy {
	if pol := p.pol.Load(); pol != nil {
		return pol
	}
	return permissive
}

// get is the app's port's mode.
func (p *peerModes) get() string { return p.policy().app }

// forPort is port's mode: portLevelMtls's for it, else the workload's.
func (p *peerModes) forPort(port int) string {
	pol := p.policy()
	if m, ok := pol.ports[port]; ok {
		return m
	}
	return pol.base
}

func (p *peerModes) set(pol *peerPolicy) { p.pol.Store(pol) }

// readPeerMode returns the modes from dir/peer.json for app; PERMISSIVE
// without one.
func readPeerMode(dir, app string) (*peerPolicy, error) {
	data, err := os.ReadFile(filepath.Join(dir, "peer.json"))
	if errors.Is(err, fs.ErrNotExist) {
		return permissive, nil
	}
	if err != nil {
		return nil, err
	}
	pol, err := parsePeerMode(data, app)
	if err != nil {
		return nil, fmt.Errorf("%s/peer.json: %w", dir, err)
	}
	return pol, nil
}

// parsePeerMode returns the modes in data (compile.PeerPolicy as JSON) for
// app's port and every other; PERMISSIVE when data is empty. Every mode must
// be known.
func parsePeerMode(data []byte, app string) (*peerPolicy, error) {
	if len(data) == 0 {
		return permissive, nil
	}
	var wire struct {
		Mode   string            `json:"mode"`
		Policy string            `json:"policy"` // the PeerAuthentication that set it, for reading
		Ports  map[string]string `json:"ports"`
	}
	if err := authz.DecodeWire(data, &wire); err != nil {
		return nil, err
	}
	known := func(m string) error {
		switch m {
		case inbound.ModeDisable, inbound.ModePermissive, inbound.ModeStrict:
			return nil
		}
		return fmt.Errorf("unknown mode %q", m)
	}
	if err := known(wire.Mode); err != nil {
		return nil, err
	}
	pol := &peerPolicy{app: wire.Mode, base: wire.Mode, ports: map[int]string{}}
	for k, m := range wire.Ports {
		port, err := strconv.Atoi(k)
		if err != nil || port <= 0 || port > 65535 {
			return nil, fmt.Errorf("ports: %q is not a port", k)
		}
		if err := known(m); err != nil {
			return nil, fmt.Errorf("ports[%s]: %w", k, err)
		}
		pol.ports[port] = m
	}
	if _, port, err := net.SplitHostPort(app); err == nil {
		if n, err := net.LookupPort("tcp", port); err == nil {
			if m, ok := pol.ports[n]; ok {
				pol.app = m
			}
		}
	}
	return pol, nil
}

// nodeID is the xDS node id: the SPIFFE ID, and the workload's name after "~"
// when it has one, since workloads may share a service account.
func nodeID(spiffeID, workload string) string {
	if workload == "" {
		return spiffeID
	}
	return spiffeID + "~" + workload
}

// releasing is set while releaseMemory runs.
var releasing atomic.Bool

// releaseMemory hands the heap's free memory back to the OS. Compiling a
// policy bundle is the sidecar's one burst of allocation; the garbage it
// leaves would otherwise hold the heap (and the proxy's RSS) at its
// high-water mark until the runtime's scavenger gets to it, minutes later.
// It runs in the background, one at a time.
func releaseMemory() {
	if !releasing.CompareAndSwap(false, true) {
		return
	}
	go func() {
		defer releasing.Store(false)
		debug.FreeOSMemory()
	}()
}
