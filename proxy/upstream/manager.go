package upstream

import (
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/protobuf/proto"
	"k8s.io/utils/clock"
)

// Config configures a Manager.
type Config struct {
	// SVID and Bundle are the sidecar's identity and trust bundle, used for
	// mTLS to peers in the mesh. Both are read on every handshake, so
	// rotation takes effect for new connections. Required.
	SVID   x509svid.Source
	Bundle x509bundle.Source
	// TrustDomain is whose members a mesh peer may be when a cluster lists no
	// subject alt names. Zero: the trust domain of the sidecar's own SVID.
	TrustDomain spiffeid.TrustDomain
	Log         *slog.Logger
	Metrics     prometheus.Registerer // nil: a private registry
	Clock       clock.PassiveClock    // outlier ejection times; nil: the real clock
}

// Manager holds the sidecar's clusters. Its methods are safe for concurrent
// use; Update calls are serialized.
type Manager struct {
	cfg      Config
	log      *slog.Logger
	met      *metrics
	clusters atomic.Pointer[map[string]*Cluster]

	mu         sync.Mutex // serializes Update and Close
	clusterMet map[string]*clusterMetrics
	closed     bool
}

// ErrClosed is returned by Update after Close.
var ErrClosed = errors.New("upstream: manager closed")

// NewManager validates cfg and fills its defaults. It does no I/O.
func NewManager(cfg Config) (*Manager, error) {
	if cfg.SVID == nil || cfg.Bundle == nil {
		return nil, errors.New("upstream: SVID and Bundle are required")
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Metrics == nil {
		cfg.Metrics = prometheus.NewRegistry()
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	met, err := newMetrics(cfg.Metrics)
	if err != nil {
		return nil, err
	}
	m := &Manager{cfg: cfg, log: cfg.Log.With("component", "upstream"), met: met, clusterMet: map[string]*clusterMetrics{}}
	m.clusters.Store(&map[string]*Cluster{})
	return m, nil
}

// Cluster returns the named cluster of the last good update.
func (m *Manager) Cluster(name string) (*Cluster, bool) {
	c, ok := (*m.clusters.Load())[name]
	return c, ok
}

// parsed is a validated cluster waiting to be published.
type parsed struct {
	cc  *clusterConfig
	key *clusterv3.Cluster
	eps *endpointSet
}

// Update validates every cluster and load assignment, then replaces the whole
// set at once. On error nothing changes, and the error names the cluster (or
// assignment) and the field, for the xDS client's NACK.
//
// Endpoints of EDS clusters come from assignments, matched by
// eds_cluster_config.service_name or else the cluster's name; STATIC and DNS
// clusters carry load_assignment inline. A cluster whose configuration
// (load_assignment aside) is unchanged keeps its connections, breaker counts
// and outlier state, and its hosts keep theirs by address. Removed and
// replaced clusters close their idle connections, and the others as they go
// idle. Update keeps references to the protos: do not modify them after.
func (m *Manager) Update(clusters []*clusterv3.Cluster, assignments []*endpointv3.ClusterLoadAssignment) error {
	ps, err := m.parse(clusters, assignments)
	if err != nil {
		return err
	}
	return m.publish(ps)
}

// parse validates and parses clusters and their load assignments: what
// Update installs, and all Check runs.
func (m *Manager) parse(clusters []*clusterv3.Cluster, assignments []*endpointv3.ClusterLoadAssignment) ([]parsed, error) {
	byName := make(map[string]*endpointv3.ClusterLoadAssignment, len(assignments))
	for i, a := range assignments {
		name := a.GetClusterName()
		switch {
		case a == nil:
			return nil, fmt.Errorf("assignments[%d]: nil", i)
		case name == "":
			return nil, fmt.Errorf("assignments[%d]: cluster_name: empty", i)
		case byName[name] != nil:
			return nil, fmt.Errorf("assignment %q: cluster_name: given twice", name)
		}
		byName[name] = a
	}
	used := map[string]bool{}
	ps := make([]parsed, 0, len(clusters))
	for i, c := range clusters {
		name := c.GetName()
		switch {
		case c == nil:
			return nil, fmt.Errorf("clusters[%d]: nil", i)
		case name == "":
			return nil, fmt.Errorf("clusters[%d]: name: empty", i)
		}
		for _, p := range ps {
			if p.cc.name == name {
				return nil, fmt.Errorf("cluster %q: name: given twice", name)
			}
		}
		cc, err := m.parseCluster(c)
		if err != nil {
			return nil, fmt.Errorf("cluster %q: %w", name, err)
		}
		var eps *endpointSet
		switch cc.discovery {
		case clusterv3.Cluster_EDS:
			used[cc.edsName] = true
			if eps, err = parseEndpoints(cc, byName[cc.edsName]); err != nil {
				return nil, fmt.Errorf("cluster %q: assignment %q: %w", name, cc.edsName, err)
			}
		case clusterv3.Cluster_ORIGINAL_DST:
			eps = &endpointSet{allHealthy: true}
		default:
			if eps, err = parseEndpoints(cc, c.GetLoadAssignment()); err != nil {
				return nil, fmt.Errorf("cluster %q: load_assignment.%w", name, err)
			}
		}
		key := proto.CloneOf(c)
		key.LoadAssignment = nil
		ps = append(ps, parsed{cc: cc, key: key, eps: eps})
	}
	for name, a := range byName {
		if !used[name] {
			if err := a.Validate(); err != nil {
				return nil, fmt.Errorf("assignment %q: %w", name, err)
			}
		}
	}
	return ps, nil
}

func (m *Manager) publish(ps []parsed) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return ErrClosed
	}
	old := *m.clusters.Load()
	next := make(map[string]*Cluster, len(ps))
	kept, fresh := 0, 0
	for _, p := range ps {
		name := p.cc.name
		var pl *pool
		if oc, ok := old[name]; ok && proto.Equal(oc.pool.key, p.key) {
			pl = oc.pool
			kept++
		} else {
			cm := m.clusterMet[name]
			if cm == nil {
				cm = m.met.forCluster(name)
				m.clusterMet[name] = cm
			}
			pl = m.newPool(p.cc, p.key, cm)
			fresh++
		}
		pl.states = p.eps.attach(pl.states)
		pl.eps.Store(p.eps)
		if pl.outlier != nil {
			pl.outlier.recount()
		}
		// The pool's configuration, which equals p.cc, so that it always
		// matches the pool's transports.
		next[name] = &Cluster{name: name, cfg: pl.cfg, pool: pl, eps: p.eps}
	}
	m.clusters.Store(&next)
	for name, oc := range old {
		if nc, ok := next[name]; !ok || nc.pool != oc.pool {
			oc.pool.retire()
		}
		if _, ok := next[name]; !ok {
			m.met.deleteCluster(name)
			delete(m.clusterMet, name)
		}
	}
	m.log.Debug("clusters updated", "clusters", len(next), "kept", kept, "new", fresh)
	return nil
}

// Close closes idle connections of every cluster, and the others as they go
// idle; clusters stay usable but keep no connection open. Update fails after
// Close.
func (m *Manager) Close() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.closed = true
	for _, c := range *m.clusters.Load() {
		c.pool.retire()
	}
}
