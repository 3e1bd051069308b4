// Package xds is rampartd's xDS server: go-control-plane's SnapshotCache and ADS
// server, with one snapshot per proxy holding what the proxy's workload needs.
// That is the compiled policy bundle as an ECDS resource (authz.WireBundle), and
// the listeners, routes, clusters and endpoints compile.CompileOutbound builds.
//
// A proxy is identified by its X.509-SVID: the node id it sends is its
// certificate's SPIFFE ID (then "~" and its workload's name), so it can only
// fetch config for its own identity.
//
// It is control plane: it must not import proxy/..., ca/agent or ca/workloadapi.
package xds

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rampart-mesh/rampart/authn/jwt"
	"github.com/rampart-mesh/rampart/authz"
	"github.com/rampart-mesh/rampart/policies/compile"
	"github.com/rampart-mesh/rampart/policies/offline"
	"github.com/rampart-mesh/rampart/policies/registry"
	regolib "github.com/rampart-mesh/rampart/policies/rego"
	"github.com/rampart-mesh/rampart/policies/source"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// Config configures a Server.
type Config struct {
	// Paths are the configuration files and directories (multi-document YAML).
	Paths []string
	// Kube, if set, adds the Istio objects, Services and Pods of a Kubernetes
	// cluster (its informers' caches); Generation counts its changes.
	Kube KubeSource
	// Mesh is the mesh config.
	Mesh compile.Mesh
	// Trust verifies proxies' client certificates (the CA's bundle).
	Trust x509bundle.Source
	// PollInterval is how often the paths are checked for changes. Default 100 ms.
	PollInterval time.Duration
	// StateDir, if set, is where the cluster objects of the last good
	// configuration are kept across restarts (kube-last-good.json).
	StateDir string
	// ForgetAfter is how long rampartd keeps a proxy that has no stream
	// (shown DISCONNECTED) before it drops its state and snapshot. Default 10
	// minutes.
	ForgetAfter time.Duration
	Log         *slog.Logger
	Metrics     prometheus.Registerer
}

// KubeSource is what the server reads from Kubernetes (kube.Source).
type KubeSource interface {
	Objects() []source.Object
	Registry(domain string) *registry.Registry
	HasSynced() bool
}

// Server serves per-proxy snapshots over ADS.
type Server struct {
	cfg   Config
	log   *slog.Logger
	cache cachev3.SnapshotCache
	// grpcCache holds proxyless gRPC clients' snapshots; mux routes each
	// request to its node's cache (proxyless.go).
	grpcCache cachev3.SnapshotCache
	mux       cachev3.Cache
	ads       serverv3.Server

	// keys names each proxy's entry in nodes and in the snapshot caches.
	keys nodeKeys
	// swept is when nodes disconnected for ForgetAfter were last dropped.
	swept time.Time

	mu   sync.Mutex
	objs []source.Object // last good configuration
	// loaded is set once the first configuration has loaded. Until then no
	// proxy is sent anything: a bundle compiled from no configuration has no
	// policy in it, and a sidecar that applied one (one reconnecting to a
	// restarting rampartd, say, while the Kubernetes caches sync) would allow
	// every request.
	loaded  bool
	net     *compile.Networking
	stamp   string // what the files looked like when objs was read
	nodes   map[string]*node
	kubeGen atomic.Int64      // bumped by KubeChanged
	streams map[int64]*stream // by stream id
	version int
	// built caches compiled output by workload (namespace, name, labels) for the
	// current configuration version: proxies of one workload share one bundle.
	// A reload keeps the entries of workloads its change cannot affect.
	built map[string]*built
	// providers summarizes the CUSTOM providers' bundles objs was compiled with.
	providers string
	// kubeGood holds the Kubernetes objects of the last configuration loaded,
	// by "Kind namespace/name": what an object whose new version is refused
	// stays at.
	kubeGood map[string]source.Object
	// kubeSaved is the digest of the kubeGood last written to StateDir.
	kubeSaved string
	// kubeRefused holds the cluster objects the last load refused alone, with
	// why: a refusal already reported is not reported again on every reload.
	kubeRefused map[string]string

	pushes      prometheus.Counter
	rejects     *prometheus.CounterVec
	proxies     prometheus.Gauge
	nacks       prometheus.Counter
	compiled    prometheus.Histogram
	compiles    prometheus.Counter
	recomputed  prometheus.Histogram
	convergence prometheus.Histogram
}

// stream is one ADS stream: its client certificate's identity, and whether it
// has been counted against its proxy.
type stream struct {
	certID  string
	nodeKey string       // the key of the stream's node (nodeKeys)
	node    *corev3.Node // the node nodeKey was named for
	counted bool
}

type built struct {
	wl      compile.Workload
	once    sync.Once
	done    atomic.Bool // once has run: err and the outputs are set
	ext     *corev3.TypedExtensionConfig
	wb      authz.WireBundle
	out     *compile.Outbound
	version string // of the whole snapshot: bundle and outbound resources
	err     error
}

func workloadKey(wl compile.Workload) string {
	keys := make([]string, 0, len(wl.Labels))
	for k := range wl.Labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	b.WriteString(wl.Namespace + "/" + wl.Name)
	if wl.Gateway {
		// A gateway proxy's build has the Gateways' listeners and routes; a
		// sidecar's of the same workload must not be shared with it.
		b.WriteString("\x00gateway")
	}
	for _, k := range keys {
		b.WriteString("\x00" + k + "=" + wl.Labels[k])
	}
	return b.String()
}

type node struct {
	id       spiffeid.ID
	workload compile.Workload

	sent     string            // version of the last snapshot set
	bundle   authz.WireBundle  // what was sent
	outbound *compile.Outbound // what was sent
	changed  time.Time         // when the change behind the unACKed version was seen
	acked    map[string]string // by type URL: the version the proxy last ACKed
	// claimed, by type URL, is the version a proxy said it runs in the first
	// request of its stream (a reconnect). go-control-plane answers a watch
	// set before the proxy's snapshot only if the snapshot's version differs,
	// so a proxy that reconnected before the first load and already runs
	// that version gets no answer to ACK: its claim stands for the ACK.
	claimed  map[string]string
	nacks    map[string]string // by type URL: the reason of a NACK not yet followed by an ACK of that type
	streams  int               // open ADS streams
	gone     time.Time         // when its last stream closed
	since    time.Time         // when its current stream opened
	lastSeen time.Time
	// proxyless is a gRPC client (GENERATOR: grpc); names are the resources
	// it subscribes to, by type URL.
	proxyless bool
	names     map[string][]string
}

// ProxyStatus is what `rampartctl proxy-status` shows for one proxy.
type ProxyStatus struct {
	Proxy     string    `json:"proxy"`
	Workload  string    `json:"workload"`
	Status    string    `json:"status"` // SYNCED, STALE, NACKED or DISCONNECTED
	Sent      string    `json:"sent"`
	Acked     string    `json:"acked"`
	NACK      string    `json:"nack,omitempty"`
	Connected time.Time `json:"connectedSince,omitzero"`
}

// Config returns the bundle last sent to a proxy (by SPIFFE ID) and whether the
// proxy has ACKed it.
func (s *Server) Config(proxy string) (authz.WireBundle, bool, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := s.lookup(proxy)
	if n == nil {
		return authz.WireBundle{}, false, false
	}
	return n.bundle, n.synced(), true
}

// lookup finds a proxy by node id, by workload (namespace/name), or by SPIFFE
// ID (the first of the workloads sharing it). s.mu is held.
func (s *Server) lookup(proxy string) *node {
	if n, ok := s.nodes[proxy]; ok {
		return n
	}
	keys := make([]string, 0, len(s.nodes))
	for k := range s.nodes {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		n := s.nodes[k]
		if n.workload.Namespace+"/"+n.workload.Name == proxy {
			return n
		}
	}
	for _, k := range keys {
		if n := s.nodes[k]; n.id.String() == proxy || n.id.Path() == "/ns/"+strings.Replace(proxy, "/", "/sa/", 1) {
			return n
		}
	}
	return nil
}

// Outbound returns the listeners, routes, clusters and endpoints last sent to
// a proxy, and whether the proxy has ACKed them.
func (s *Server) Outbound(proxy string) (*compile.Outbound, bool, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := s.lookup(proxy)
	if n == nil || n.outbound == nil {
		return nil, false, n != nil
	}
	return n.outbound, n.synced(), true
}

// synced reports whether the proxy has ACKed the last version sent for every
// type it subscribes to.
// noteClaim records the version a stream's first request for a type says
// the proxy runs; any answer to a response (ACK or NACK) replaces the claim.
func (n *node) noteClaim(req *discovery.DiscoveryRequest) {
	t := req.GetTypeUrl()
	if req.GetResponseNonce() != "" {
		delete(n.claimed, t)
		return
	}
	if v := req.GetVersionInfo(); v != "" {
		if n.claimed == nil {
			n.claimed = map[string]string{}
		}
		n.claimed[t] = v
	}
}

func (n *node) synced() bool {
	if n.proxyless {
		return n.proxylessSynced()
	}
	if len(n.acked) == 0 {
		return false
	}
	for _, v := range n.acked {
		if v != n.sent {
			return false
		}
	}
	// A proxy that takes clusters and listeners asks for their endpoints and
	// routes only after it has them: until it has ACKed those too, it is not
	// in sync (it cannot route yet).
	if n.outbound != nil {
		if _, cds := n.acked[resource.ClusterType]; cds && len(n.outbound.Endpoints) > 0 && n.acked[resource.EndpointType] != n.sent {
			return false
		}
		if _, lds := n.acked[resource.ListenerType]; lds && len(n.outbound.Routes) > 0 && n.acked[resource.RouteType] != n.sent {
			return false
		}
	}
	return true
}

// ackedAll is the version every subscribed type has ACKed, or the oldest
// differing one.
// nackText is the reasons of the NACKs in force, by type.
func (n *node) nackText() string {
	var out []string
	for _, t := range slices.Sorted(maps.Keys(n.nacks)) {
		out = append(out, t[strings.LastIndex(t, ".")+1:]+": "+n.nacks[t])
	}
	return strings.Join(out, "; ")
}

func (n *node) ackedAll() string {
	out := ""
	for _, v := range n.acked {
		if v != n.sent || out == "" {
			out = v
		}
	}
	return out
}

// Status reports every proxy the server has seen, sorted by name.
func (s *Server) Status() []ProxyStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]ProxyStatus, 0, len(s.nodes))
	for id, n := range s.nodes {
		st := ProxyStatus{Proxy: id, Workload: n.workload.Namespace + "/" + n.workload.Name, Sent: n.sent, Acked: n.ackedAll(), NACK: n.nackText(), Connected: n.since}
		switch {
		case n.streams == 0:
			st.Status = "DISCONNECTED"
		case len(n.nacks) > 0:
			st.Status = "NACKED"
		case n.synced():
			st.Status = "SYNCED"
		default:
			st.Status = "STALE"
		}
		out = append(out, st)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Proxy < out[j].Proxy })
	return out
}

// New validates cfg. It does no I/O.
func New(cfg Config) (*Server, error) {
	if len(cfg.Paths) == 0 && cfg.Kube == nil {
		return nil, errors.New("xds: at least one configuration path, or Kubernetes, is required")
	}
	if cfg.Trust == nil {
		return nil, errors.New("xds: Trust is required")
	}
	if cfg.ForgetAfter <= 0 {
		cfg.ForgetAfter = 10 * time.Minute
	}
	if cfg.PollInterval == 0 {
		cfg.PollInterval = 100 * time.Millisecond
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Metrics == nil {
		cfg.Metrics = prometheus.NewRegistry()
	}
	s := &Server{cfg: cfg, log: cfg.Log.With("component", "xds"), nodes: map[string]*node{}, streams: map[int64]*stream{}}
	s.cache, s.grpcCache, s.mux = newCaches(&s.keys)
	s.pushes = prometheus.NewCounter(prometheus.CounterOpts{Name: "rampart_xds_pushes_total", Help: "Snapshots set for proxies."})
	s.rejects = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "rampart_xds_config_rejected_total", Help: "Configuration changes refused (the last good configuration stays), by reason."}, []string{"reason"})
	s.proxies = prometheus.NewGauge(prometheus.GaugeOpts{Name: "rampart_xds_connected_proxies", Help: "Proxies with an open ADS stream."})
	s.nacks = prometheus.NewCounter(prometheus.CounterOpts{Name: "rampart_xds_nacks_total", Help: "Configuration a proxy refused."})
	s.compiled = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "rampart_xds_compile_seconds", Help: "Time to compile one proxy's bundle.", Buckets: prometheus.ExponentialBuckets(1e-4, 2, 16)})
	s.compiles = prometheus.NewCounter(prometheus.CounterOpts{Name: "rampart_xds_compiles_total", Help: "Workloads compiled (bundle and outbound resources); proxies of one workload share one compile."})
	s.recomputed = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "rampart_xds_recomputed_proxies",
		Help:    "Connected proxies whose configuration a loaded change recomputed (the others keep their compiled output).",
		Buckets: prometheus.ExponentialBuckets(1, 2, 14),
	})
	s.convergence = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "rampart_xds_convergence_seconds",
		Help:    "From a configuration change being seen to a proxy ACKing the configuration it produced.",
		Buckets: prometheus.ExponentialBuckets(1e-3, 2, 16),
	})
	for _, c := range []prometheus.Collector{s.pushes, s.rejects, s.proxies, s.nacks, s.compiled, s.compiles, s.recomputed, s.convergence} {
		if err := cfg.Metrics.Register(c); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// Register adds the ADS service to a gRPC server (rampartd's TLS endpoint); the
// service stops with ctx.
func (s *Server) Register(ctx context.Context, gs *grpc.Server) {
	s.ads = serverv3.NewServer(ctx, s.mux, serverv3.CallbackFuncs{
		StreamOpenFunc:    s.onOpen,
		StreamClosedFunc:  s.onClosed,
		StreamRequestFunc: s.onRequest,
	})
	discovery.RegisterAggregatedDiscoveryServiceServer(gs, sotwOnly{s.ads})
}

// sotwOnly serves state-of-the-world ADS and refuses incremental (delta) xDS:
// go-control-plane runs none of the callbacks above on a delta stream, so it
// would serve any node id's configuration without the client certificate and
// node id checks. No client of rampartd speaks delta.
type sotwOnly struct{ serverv3.Server }

func (sotwOnly) DeltaAggregatedResources(discovery.AggregatedDiscoveryService_DeltaAggregatedResourcesServer) error {
	return status.Error(codes.Unimplemented, "incremental (delta) xDS is not served; use the state-of-the-world ADS stream")
}

// KubeChanged tells the server the Kubernetes caches changed; the next poll
// reloads (the poll interval is the debounce).
func (s *Server) KubeChanged() { s.kubeGen.Add(1) }

// Run loads the configuration, then reloads it when the files change, until ctx ends.
func (s *Server) Run(ctx context.Context) error {
	if s.cfg.Kube != nil {
		s.log.Info("waiting for the Kubernetes caches to sync")
		for !s.cfg.Kube.HasSynced() {
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(s.cfg.PollInterval):
			}
		}
	}
	if err := s.reload(true); err != nil {
		return err
	}
	t := time.NewTicker(s.cfg.PollInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case now := <-t.C:
			s.forgetGone(now)
			if err := s.reload(false); err != nil {
				s.log.Error("configuration change refused; the last good configuration stays in force", "err", err)
			}
		}
	}
}

// stamp summarizes the files' names, sizes and modification times.
func stampOf(paths []string) string {
	h := sha256.New()
	for _, p := range paths {
		_ = filepath.Walk(p, func(path string, fi os.FileInfo, err error) error {
			if err == nil && !fi.IsDir() {
				fmt.Fprintf(h, "%s %d %d\n", path, fi.Size(), fi.ModTime().UnixNano())
			}
			return nil
		})
	}
	return hex.EncodeToString(h.Sum(nil))
}

// reload reads the configuration if it changed and, if it is valid, recompiles
// the snapshots of the proxies the change can affect (changeScope); the others
// keep their compiled output. An invalid change is refused whole, except that
// an invalid object from the cluster is refused alone (refuseKubeObjects).
func (s *Server) reload(first bool) error {
	stamp := stampOf(s.cfg.Paths) + fmt.Sprintf("/kube:%d", s.kubeGen.Load())
	s.mu.Lock()
	same := stamp == s.stamp
	s.mu.Unlock()
	if same && !first {
		return nil
	}
	if first && s.kubeGood == nil && s.cfg.Kube != nil {
		// The cluster objects the last run had in force: what a refused one
		// stays at, now as before the restart.
		good, err := loadLastGood(s.cfg.StateDir)
		if err != nil {
			s.log.Error("cannot read the cluster's last good objects; a refused security object will stop the start", "err", err)
		}
		s.kubeGood, s.kubeSaved = good, digestOf(good)
	}
	objs, err := source.ReadPaths(s.cfg.Paths)
	nDir := len(objs) // objs[nDir:] come from Kubernetes
	if err == nil && s.cfg.Kube != nil {
		objs = append(objs, s.cfg.Kube.Objects()...)
	}
	if err != nil {
		s.rejects.WithLabelValues("parse").Inc()
		s.mu.Lock()
		s.stamp = stamp // do not retry the same broken files every tick
		s.mu.Unlock()
		return err
	}
	// Objects without a namespace belong to "default", as kubectl apply would
	// place them (not to whichever workload is being compiled).
	for i := range objs {
		if objs[i].Namespace == "" {
			objs[i].Namespace = "default"
		}
	}
	// A change with an error finding is refused. One in a file refuses the
	// whole change: the operator who edited it sees the error, and the last
	// good configuration stays. An object in the cluster stays there, and
	// would refuse every later change, anyone's, and rampartd's start: so only
	// that object's change is refused. It stays at its last good version,
	// or, new, is left out (what refusing the whole change would have done
	// for it), with an error naming it.
	var (
		nw      *compile.Networking
		nfs     []compile.Finding
		refused []compile.Finding
	)
	refusedNow := map[string]string{}
	substituted := map[string]bool{} // objects put back at their last good version
	for round := 0; ; round++ {
		nw, nfs, refused = s.validate(objs)
		if len(refused) == 0 {
			break
		}
		bad := map[string]string{}
		for _, f := range refused {
			bad[f.Object] = f.String()
		}
		kept, fromDir := s.refuseKubeObjects(objs, nDir, bad, refusedNow, substituted)
		// Each round either refuses a new object or ends: a last good
		// version refused in turn (saved by an older rampartd) is left out,
		// or stops the start for a security kind, so three rounds suffice.
		if fromDir || round == 2 {
			s.rejects.WithLabelValues("invalid").Inc()
			s.mu.Lock()
			s.stamp = stamp
			s.mu.Unlock()
			return fmt.Errorf("%s", refused[0].String())
		}
		objs = kept
	}
	for _, f := range nfs {
		s.log.Warn("configuration finding", "finding", f.String())
	}
	good := map[string]source.Object{}
	for _, o := range objs[min(nDir, len(objs)):] {
		good[objectKey(o)] = o
	}
	s.kubeGood, s.kubeRefused = good, refusedNow
	if s.cfg.StateDir != "" && s.cfg.Kube != nil {
		if d := digestOf(good); d != s.kubeSaved {
			if err := saveLastGood(s.cfg.StateDir, good); err != nil {
				// Serving goes on; only a restart would miss it.
				s.log.Error("cannot keep the cluster's last good objects for a restart", "dir", s.cfg.StateDir, "err", err)
			} else {
				s.kubeSaved = d
			}
		}
	}
	// Only reload writes objs, net and providers, so they cannot change
	// between these two locked sections.
	next := loaded{objs: objs, net: nw, providers: providersDigest(s.cfg.Mesh)}
	s.mu.Lock()
	prev := loaded{objs: s.objs, net: s.net, providers: s.providers}
	s.mu.Unlock()
	sc := changeScope(s.cfg.Mesh, prev, next)
	s.mu.Lock()
	s.objs, s.net, s.providers, s.stamp, s.loaded = objs, nw, next.providers, stamp, true
	s.version++
	kept := map[string]*built{}
	for k, b := range s.built {
		// A compile still running, or one that failed, is not kept.
		if b.done.Load() && b.err == nil && !sc.affects(b.wl) {
			kept[k] = b
		}
	}
	s.built = kept
	nodes := make([]string, 0, len(s.nodes))
	recompute := 0
	for id, n := range s.nodes {
		nodes = append(nodes, id)
		if kept[builtKey(n)] == nil {
			recompute++
		}
	}
	s.mu.Unlock()
	s.recomputed.Observe(float64(recompute))
	s.log.Info("configuration loaded", "objects", len(objs), "proxies", len(nodes), "recomputed", recompute, "scope", sc.String())
	seen := time.Now()
	for _, id := range nodes {
		if err := s.push(id, seen); err != nil {
			s.log.Error("compile for proxy failed", "proxy", id, "err", err)
		}
	}
	return nil
}

// push compiles and sets the snapshot of one proxy; changed is when the change
// that led to it was seen.
func (s *Server) push(nodeID string, changed time.Time) error {
	// The configuration and its cache are read together, so a bundle built from
	// one version is never filed under another.
	s.mu.Lock()
	n := s.nodes[nodeID]
	if n == nil || !s.loaded {
		// Not loaded yet: the proxy's requests wait in go-control-plane's
		// watch; the first load pushes to every proxy connected by then.
		s.mu.Unlock()
		return nil
	}
	objs, nw := s.objs, s.net
	if s.built == nil {
		s.built = map[string]*built{}
	}
	key := builtKey(n)
	b, ok := s.built[key]
	if !ok {
		b = &built{wl: n.workload}
		s.built[key] = b
	}
	s.mu.Unlock()
	b.once.Do(func() {
		defer b.done.Store(true)
		s.compiles.Inc()
		start := time.Now()
		// A proxyless gRPC client enforces no policy (grpc-go never asks for
		// the bundle): only sidecars get one compiled.
		if !n.proxyless {
			b.wb, b.err = Compile(objs, s.cfg.Mesh, n.workload)
			if b.err != nil {
				return
			}
			// Never push what a proxy would have to refuse.
			if err := authz.CheckStrict(b.wb.Modules); err != nil {
				b.err = fmt.Errorf("compiled bundle for %s does not compile: %w", nodeID, err)
				return
			}
			if b.ext, b.err = b.wb.Extension(); b.err != nil {
				return
			}
		}
		s.compiled.Observe(time.Since(start).Seconds())
		if nw == nil {
			nw = &compile.Networking{Registry: &registry.Registry{}}
		}
		if b.out, b.err = compileFor(n)(nw, s.cfg.Mesh, n.workload); b.err != nil {
			return
		}
		b.version, b.err = snapshotVersion(b.wb.Revision, b.out)
	})
	if b.err != nil {
		return b.err
	}
	s.mu.Lock()
	same := n.sent == b.version
	s.mu.Unlock()
	if same {
		return nil // an unaffected proxy: nothing to build or push
	}
	wb, ext, out := b.wb, b.ext, b.out
	snap, err := cachev3.NewSnapshot(b.version, outboundResources(ext, out))
	if err != nil {
		return err
	}
	if err := consistent(n, snap, out); err != nil {
		return err
	}
	// The snapshot is filed under the key in the same critical section that
	// checks the key still names this proxy: one taken over by another
	// workload, or forgotten, while this was compiled gets nothing.
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.nodes[nodeID] != n || n.sent == b.version {
		// The change did not touch this proxy, or it is gone: nothing to push.
		return nil
	}
	if err := s.cacheOf(n).SetSnapshot(context.Background(), nodeID, snap); err != nil {
		return err
	}
	n.changed = changed
	n.sent, n.bundle, n.outbound = b.version, wb, out
	for t, v := range n.claimed {
		if v == n.sent {
			n.acked[t] = v
		}
	}
	s.pushes.Inc()
	return nil
}

// Compile builds one workload's wire bundle: its Rego (policy and library),
// RequestAuthentication rules and PeerAuthentication modes.
func Compile(objs []source.Object, mesh compile.Mesh, wl compile.Workload) (authz.WireBundle, error) {
	out, _ := offline.Compile(objs, mesh, wl)
	mods := offline.Bundle(out, mesh, nil).Modules
	// A sidecar evaluates the match sets and combines them in Go
	// (authz.MatchesQuery); the Rego reference decision is for reading and for
	// the offline tests that hold the two equal. Compiled in every sidecar it
	// held ~150 KB and cost ~0.9 MB of allocation per bundle.
	delete(mods, regolib.DecisionModule)
	rules, _ := offline.RequestAuthRules(objs, mesh, wl)
	if rules == nil {
		rules = []jwt.Rule{}
	}
	pas, _ := compile.DecodePeerAuthentications(objs, wl.Namespace)
	pp, _ := compile.ResolvePeerPolicy(mesh, wl, pas)
	rj, err := json.Marshal(rules)
	if err != nil {
		return authz.WireBundle{}, err
	}
	pj, err := json.Marshal(pp)
	if err != nil {
		return authz.WireBundle{}, err
	}
	rls, rlj, err := rateLimits(objs, mesh, wl)
	if err != nil {
		return authz.WireBundle{}, err
	}
	// Rego CUSTOM providers travel with the bundle, checked here; one whose
	// bundle does not load fails the compile, and proxies keep their last good
	// bundle (without one, a CUSTOM policy denies).
	var provs map[string]authz.WireProvider
	for _, p := range mesh.ExtensionProviders {
		if g := p.EnvoyExtAuthzGrpc; g != nil {
			if provs == nil {
				provs = map[string]authz.WireProvider{}
			}
			status, err := authz.ParseStatusOnError(g.StatusOnError)
			if err != nil {
				return authz.WireBundle{}, fmt.Errorf("extension provider %q: envoyExtAuthzGrpc.statusOnError: %w", p.Name, err)
			}
			// The sidecar dials the hostname: Istio's service may name a
			// namespace first ([<Namespace>/]<Hostname>).
			provs[p.Name] = authz.WireProvider{ExtAuthzGRPC: &authz.WireExtAuthz{
				Target: net.JoinHostPort(g.Host(), strconv.Itoa(g.Port)), Timeout: g.Timeout, FailOpen: g.FailOpen, StatusOnError: status},
				Body: g.IncludeRequestBodyInCheck}
			continue
		}
		if h := p.EnvoyExtAuthzHTTP; h != nil {
			if provs == nil {
				provs = map[string]authz.WireProvider{}
			}
			status, err := authz.ParseStatusOnError(h.StatusOnError)
			if err != nil {
				return authz.WireBundle{}, fmt.Errorf("extension provider %q: envoyExtAuthzHttp.statusOnError: %w", p.Name, err)
			}
			provs[p.Name] = authz.WireProvider{ExtAuthzHTTP: &authz.WireExtAuthzHTTP{
				Target: net.JoinHostPort(h.Host(), strconv.Itoa(h.Port)), PathPrefix: h.PathPrefix, Timeout: h.Timeout, FailOpen: h.FailOpen, StatusOnError: status,
				IncludeRequestHeadersInCheck: h.IncludeRequestHeadersInCheck, IncludeAdditionalHeadersInCheck: h.IncludeAdditionalHeadersInCheck,
				HeadersToUpstreamOnAllow: h.HeadersToUpstreamOnAllow, HeadersToDownstreamOnAllow: h.HeadersToDownstreamOnAllow, HeadersToDownstreamOnDeny: h.HeadersToDownstreamOnDeny,
			}, Body: h.IncludeRequestBodyInCheck}
			continue
		}
		if p.RampartRego == nil {
			continue
		}
		data, err := authz.BundleTarball(p.RampartRego.Bundle, p.RampartRego.PublicKey, p.RampartRego.Algorithm)
		if err != nil {
			return authz.WireBundle{}, fmt.Errorf("extension provider %q: %w", p.Name, err)
		}
		if provs == nil {
			provs = map[string]authz.WireProvider{}
		}
		provs[p.Name] = authz.WireProvider{Query: p.RampartRego.Query, Bundle: data, Body: p.RampartRego.IncludeRequestBodyInCheck}
	}
	h := sha256.New()
	names := make([]string, 0, len(mods))
	for n := range mods {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(h, "%s\x00%s\x00", n, mods[n])
	}
	h.Write(rj)
	h.Write(pj)
	h.Write(rlj)
	pnames := make([]string, 0, len(provs))
	for n := range provs {
		pnames = append(pnames, n)
	}
	sort.Strings(pnames)
	for _, n := range pnames {
		fmt.Fprintf(h, "provider\x00%s\x00%s\x00", n, provs[n].Query)
		h.Write(provs[n].Bundle)
		if x := provs[n].ExtAuthzGRPC; x != nil {
			fmt.Fprintf(h, "%s\x00%s\x00%t\x00%d\x00", x.Target, x.Timeout, x.FailOpen, x.StatusOnError)
		}
		if x := provs[n].ExtAuthzHTTP; x != nil {
			js, _ := json.Marshal(x) // maps marshal in key order
			h.Write(js)
		}
		if b := provs[n].Body; b != nil {
			fmt.Fprintf(h, "body\x00%d\x00%t\x00%t\x00", b.MaxRequestBytes, b.AllowPartialMessage, b.PackAsBytes)
		}
	}
	pn := ""
	if mesh.PathNormalization != nil {
		pn = mesh.PathNormalization.Normalization
	}
	fmt.Fprintf(h, "pathNormalization\x00%s\x00", pn)
	return authz.WireBundle{Revision: hex.EncodeToString(h.Sum(nil))[:16], Modules: mods, JWTRules: rj, Peer: pj, Providers: provs, RateLimits: rls,
		PathNormalization: pn}, nil
}

func (s *Server) onOpen(ctx context.Context, streamID int64, _ string) error {
	id, err := s.peerID(ctx)
	if err != nil {
		s.log.Warn("xDS stream refused", "reason", err.Error())
		return err
	}
	s.mu.Lock()
	s.streams[streamID] = &stream{certID: id.String()}
	s.mu.Unlock()
	s.proxies.Inc()
	return nil
}

func (s *Server) onClosed(streamID int64, _ *corev3.Node) {
	s.mu.Lock()
	if st := s.streams[streamID]; st != nil && st.counted {
		if n := s.nodes[st.nodeKey]; n != nil {
			if n.streams--; n.streams == 0 {
				n.gone = time.Now()
			}
		}
	}
	delete(s.streams, streamID)
	s.mu.Unlock()
	s.proxies.Dec()
}

// onRequest checks the node id against the stream's certificate, registers new
// proxies, and records ACKs and NACKs.
func (s *Server) onRequest(streamID int64, req *discovery.DiscoveryRequest) error {
	s.mu.Lock()
	st := s.streams[streamID]
	s.mu.Unlock()
	if st == nil {
		return errors.New("unknown stream")
	}
	certID := st.certID
	// The node id is "<SPIFFE ID>" or "<SPIFFE ID>~<workload name>" (several
	// workloads may share a service account); its identity must be the
	// certificate's. go-control-plane gives every request the node of the
	// stream's first.
	nodeID := req.GetNode().GetId()
	s.mu.Lock()
	key := st.nodeKey
	s.mu.Unlock()
	if nodeID == "" && key == "" {
		return errors.New("the first request of a stream must carry the node")
	}
	// go-control-plane gives every later request of a stream its first
	// request's node (the same pointer): only a node the stream has not
	// been named for is checked and keyed.
	s.mu.Lock()
	sameNode := st.node != nil && req.GetNode() == st.node
	s.mu.Unlock()
	if nodeID != "" && !sameNode {
		if idPart, _, _ := strings.Cut(nodeID, "~"); idPart != certID {
			s.log.Warn("xDS request refused: node id is not the client certificate's identity", "node", nodeID, "certificate", certID)
			return fmt.Errorf("node id %q is not your identity %q", nodeID, certID)
		}
		// The key is named and claimed for this stream in one critical
		// section: a second workload's stream arriving at once sees it
		// taken (busy), and gets a key of its own.
		s.mu.Lock()
		k, err := s.keys.assign(req.GetNode(), certID, func(key string) bool { return !s.busyLocked(key) })
		if err == nil && key == "" {
			st.nodeKey, st.node = k, req.GetNode()
		}
		s.mu.Unlock()
		if err != nil {
			s.log.Warn("xDS stream refused", "node", nodeID, "reason", err.Error())
			return status.Error(codes.ResourceExhausted, err.Error())
		}
		if key != "" && key != k {
			return errors.New("a stream's node cannot change its workload (name or labels): open a new stream")
		}
		key = k
	}
	if req.GetErrorDetail() != nil {
		s.nacks.Inc()
		s.log.Warn("proxy refused configuration (NACK)", "proxy", key, "type", req.GetTypeUrl(), "version", req.GetVersionInfo(), "error", req.GetErrorDetail().GetMessage())
	}
	now := time.Now()
	var wl compile.Workload
	var wlErr error
	var id spiffeid.ID
	if nodeID != "" && !sameNode {
		if id, wlErr = spiffeid.FromString(certID); wlErr == nil {
			wl, wlErr = workloadOf(id, req.GetNode())
		}
	}
	s.mu.Lock()
	n, known := s.nodes[key]
	if known && nodeID != "" && !sameNode && wlErr == nil && !st.counted && (builtKey(n) != builtKey(&node{workload: wl}) || n.proxyless != isProxyless(req.GetNode())) {
		// Another workload took this key over (it had no stream): it starts
		// afresh, as a new proxy.
		s.cacheOf(n).ClearSnapshot(key)
		delete(s.nodes, key)
		known = false
	}
	if known {
		n.lastSeen = now
		if !st.counted {
			st.counted = true
			n.streams++
			n.since, n.gone = now, time.Time{}
		}
		n.note(req)
		if req.GetResponseNonce() != "" && req.GetErrorDetail() == nil && n.synced() && !n.changed.IsZero() {
			s.convergence.Observe(time.Since(n.changed).Seconds())
			n.changed = time.Time{}
		}
	}
	s.mu.Unlock()
	if known {
		return nil
	}
	if nodeID == "" || sameNode {
		return errors.New("unknown proxy: the stream's node was forgotten")
	}
	if wlErr != nil {
		return wlErr
	}
	s.mu.Lock()
	n = &node{id: id, workload: wl, streams: 1, since: now, lastSeen: now, acked: map[string]string{}, proxyless: isProxyless(req.GetNode())}
	n.note(req)
	s.nodes[key] = n
	st.counted = true
	s.mu.Unlock()
	s.log.Info("proxy connected", "proxy", key, "workload", wl.Namespace+"/"+wl.Name)
	return s.push(key, now)
}

// note records what a request says of the proxy's state for its type: the
// first request of a type on a stream (no nonce) what the proxy holds, empty
// for a proxy that (re)started with nothing, whatever its earlier process
// ACKed; an answer its ACK or NACK of that type.
func (n *node) note(req *discovery.DiscoveryRequest) {
	t := req.GetTypeUrl()
	switch {
	case req.GetResponseNonce() == "":
		n.acked[t] = req.GetVersionInfo()
	case req.GetErrorDetail() != nil:
		if n.nacks == nil {
			n.nacks = map[string]string{}
		}
		n.nacks[t] = req.GetErrorDetail().GetMessage()
	default:
		n.acked[t] = req.GetVersionInfo()
		delete(n.nacks, t)
	}
	n.noteClaim(req)
	n.noteNames(req)
}

// busyLocked reports whether a stream is open under a node key, counted or
// only claimed (its node not registered yet). s.mu is held.
func (s *Server) busyLocked(key string) bool {
	if n := s.nodes[key]; n != nil && n.streams > 0 {
		return true
	}
	for _, st := range s.streams {
		if st.nodeKey == key {
			return true
		}
	}
	return false
}

// forgetGone drops the proxies whose last stream closed ForgetAfter ago:
// their state, snapshot and name, so that node ids and labels a client
// makes up cannot grow rampartd's memory without bound. It runs at most once
// a second.
func (s *Server) forgetGone(now time.Time) {
	if now.Sub(s.swept) < time.Second {
		return
	}
	s.swept = now
	var gone []string
	s.mu.Lock()
	for key, n := range s.nodes {
		if n.streams == 0 && !n.gone.IsZero() && now.Sub(n.gone) >= s.cfg.ForgetAfter {
			gone = append(gone, key)
			s.cacheOf(n).ClearSnapshot(key)
			delete(s.nodes, key)
		}
	}
	if len(gone) > 0 {
		// Compiled output no remaining proxy uses goes too.
		used := map[string]bool{}
		for _, n := range s.nodes {
			used[builtKey(n)] = true
		}
		for k := range s.built {
			if !used[k] {
				delete(s.built, k)
			}
		}
	}
	for _, key := range gone {
		s.keys.forget(key)
		s.log.Debug("forgot a disconnected proxy", "proxy", key)
	}
	// Names given to streams that never registered a proxy (refused on a
	// later check) go too.
	claimed := make(map[string]bool, len(s.streams))
	for _, st := range s.streams {
		claimed[st.nodeKey] = true
	}
	s.keys.sweep(func(key string) bool { return s.nodes[key] != nil || claimed[key] })
	s.mu.Unlock()
}

// workloadOf takes the namespace from the certificate (never from the proxy's
// word) and the workload name and labels from the node metadata.
func workloadOf(id spiffeid.ID, n *corev3.Node) (compile.Workload, error) {
	parts := strings.Split(strings.TrimPrefix(id.Path(), "/"), "/")
	if len(parts) != 4 || parts[0] != "ns" || parts[2] != "sa" {
		return compile.Workload{}, fmt.Errorf("identity %s is not /ns/<ns>/sa/<sa>", id)
	}
	ns, sa := parts[1], parts[3]
	wl := compile.Workload{Namespace: ns, Name: sa, Labels: map[string]string{}}
	md := n.GetMetadata().GetFields()
	if v := md["NAME"].GetStringValue(); v != "" {
		wl.Name = v
	}
	for k, v := range md["LABELS"].GetStructValue().GetFields() {
		wl.Labels[k] = v.GetStringValue()
	}
	wl.Gateway = md["ROUTER"].GetBoolValue()
	return wl, nil
}

func (s *Server) peerID(ctx context.Context) (spiffeid.ID, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return spiffeid.ID{}, errors.New("no peer")
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(ti.State.PeerCertificates) == 0 {
		return spiffeid.ID{}, errors.New("xDS needs the proxy's X.509-SVID as client certificate")
	}
	certs := make([]*x509.Certificate, len(ti.State.PeerCertificates))
	copy(certs, ti.State.PeerCertificates)
	id, _, err := x509svid.Verify(certs, s.cfg.Trust)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("client certificate: %w", err)
	}
	return id, nil
}

// outboundResources is a proxy's snapshot: its policy bundle (ECDS) and its
// listeners, routes, clusters and endpoints.
func outboundResources(ext *corev3.TypedExtensionConfig, out *compile.Outbound) map[resource.Type][]types.Resource {
	// Every type is present, even empty, so a proxy's wildcard requests are answered.
	res := map[resource.Type][]types.Resource{resource.ExtensionConfigType: {},
		resource.ListenerType: {}, resource.RouteType: {}, resource.ClusterType: {}, resource.EndpointType: {}}
	if ext != nil {
		res[resource.ExtensionConfigType] = []types.Resource{ext}
	}
	for _, l := range out.Listeners {
		res[resource.ListenerType] = append(res[resource.ListenerType], l)
	}
	for _, r := range out.Routes {
		res[resource.RouteType] = append(res[resource.RouteType], r)
	}
	for _, c := range out.Clusters {
		res[resource.ClusterType] = append(res[resource.ClusterType], c)
	}
	for _, e := range out.Endpoints {
		res[resource.EndpointType] = append(res[resource.EndpointType], e)
	}
	return res
}

// snapshotVersion hashes everything a proxy is sent, so an unchanged
// configuration keeps its version and nothing is pushed for it.
// bootID makes this process's snapshot versions its own. A sidecar that
// reconnects to a restarted rampartd before its first load waits in a watch
// that go-control-plane answers only with a version other than the one the
// sidecar runs: with the same configuration, a restarted rampartd would
// otherwise compute that very version, send nothing, and the sidecar would
// never subscribe to its endpoints and routes again on that stream.
var bootID = func() (b [16]byte) {
	_, _ = rand.Read(b[:])
	return b
}()

func snapshotVersion(revision string, out *compile.Outbound) (string, error) {
	h := sha256.New()
	h.Write(bootID[:])
	h.Write([]byte(revision))
	opts := proto.MarshalOptions{Deterministic: true}
	add := func(m proto.Message) error {
		b, err := opts.Marshal(m)
		if err != nil {
			return err
		}
		fmt.Fprintf(h, "\x00%d\x00", len(b))
		h.Write(b)
		return nil
	}
	for _, l := range out.Listeners {
		if err := add(l); err != nil {
			return "", err
		}
	}
	for _, r := range out.Routes {
		if err := add(r); err != nil {
			return "", err
		}
	}
	for _, c := range out.Clusters {
		if err := add(c); err != nil {
			return "", err
		}
	}
	for _, e := range out.Endpoints {
		if err := add(e); err != nil {
			return "", err
		}
	}
	return hex.EncodeToString(h.Sum(nil))[:16], nil
}

// validate decodes objs as a change is checked: the networking view, its
// findings, and the findings that refuse the change (none: it may load).
// Refused are an AuthorizationPolicy that does not decode or has a field its
// schema does not declare (the API server would prune it, and a misspelt
// field changes what the policy matches), and any error finding of the
// networking objects, rate limits, RequestAuthentications (a JWT rule every
// sidecar would refuse, NACKing its whole bundle) and PeerAuthentications (one
// that does not decode would be left out, and a STRICT with a typo would fall
// back to PERMISSIVE).
func (s *Server) validate(objs []source.Object) (nw *compile.Networking, nfs, refused []compile.Finding) {
	_, fs := compile.DecodeAuthorizationPolicies(objs, "default")
	for _, f := range fs {
		if f.Code == compile.CodeSchema || f.Code == compile.CodeUnknownField {
			refused = append(refused, f)
		}
	}
	var kreg *registry.Registry
	if s.cfg.Kube != nil {
		kreg = s.cfg.Kube.Registry("")
	}
	nw, nfs = compile.DecodeNetworkingWith(objs, s.cfg.Mesh, "default", kreg)
	nfs = append(nfs, rateLimitFindings(objs)...)
	ras, rfs := compile.DecodeRequestAuthentications(objs, "default")
	nfs = append(append(nfs, rfs...), compile.ValidateRequestAuthentications(ras)...)
	_, pfs := compile.DecodePeerAuthentications(objs, "default")
	nfs = append(nfs, pfs...)
	for _, f := range nfs {
		if f.Severity == compile.SeverityError {
			refused = append(refused, f)
		}
	}
	return nw, nfs, refused
}

// refuseKubeObjects returns objs with each object from Kubernetes
// (objs[nDir:]) that bad names back at its last good version, or left out
// when it has none; fromDir reports that the change cannot be refused object
// by object: bad names an object from a file (its editor sees the error), or,
// at start, a security object with no last good version.
func (s *Server) refuseKubeObjects(objs []source.Object, nDir int, bad, now map[string]string, substituted map[string]bool) (kept []source.Object, fromDir bool) {
	for _, o := range objs[:nDir] {
		if _, ok := bad[objectKey(o)]; ok {
			return nil, true
		}
	}
	kept = append(kept, objs[:nDir]...)
	refused := false
	for _, o := range objs[nDir:] {
		k := objectKey(o)
		why, ok := bad[k]
		if !ok {
			kept = append(kept, o)
			continue
		}
		g, ok := s.kubeGood[k]
		if substituted[k] {
			// Its last good version is refused too (saved by a rampartd
			// that validated less): there is none to keep.
			ok = false
		}
		if !ok && !s.loaded && securityKinds[o.Kind] {
			// At start there is no last good version to keep: this one may
			// have been valid before a restart and be what the sidecars
			// enforce. Leaving a security object out would fail open, so
			// rampartd does not start until it is fixed.
			s.log.Error("a cluster security object is refused, and rampartd has no last good version of it to keep: fix the object", "object", k, "finding", why)
			return nil, true
		}
		refused = true
		now[k] = why
		level := slog.LevelDebug // reported when it was first refused
		if s.kubeRefused[k] != why {
			level = slog.LevelError
			s.rejects.WithLabelValues("invalid_object").Inc()
		}
		if ok {
			s.log.Log(context.Background(), level, "a cluster object's change is refused; it stays at its last good version", "object", k, "finding", why)
			kept = append(kept, g)
			substituted[k] = true
		} else {
			s.log.Log(context.Background(), level, "a cluster object is refused and left out", "object", k, "finding", why)
		}
	}
	// A finding that names no object from either source cannot be refused
	// alone.
	return kept, !refused
}

// securityKinds are the kinds whose absence relaxes a control: refused
// alone, they are kept at their last good version, never left out when
// rampartd has none.
var securityKinds = map[string]bool{"AuthorizationPolicy": true, "RequestAuthentication": true, "PeerAuthentication": true, "RateLimitPolicy": true}

// objectKey names an object as findings do: "Kind namespace/name".
func objectKey(o source.Object) string {
	if o.Namespace == "" {
		return o.Kind + " " + o.Name
	}
	return o.Kind + " " + o.Namespace + "/" + o.Name
}
