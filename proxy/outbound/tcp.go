package outbound

import (
	"context"
	"errors"
	"fmt"
	"github.com/rampart-mesh/rampart/proxy/listener"
	"log/slog"
	"net"
	"strconv"
	"sync"

	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"github.com/rampart-mesh/rampart/proxy/upstream"
	"github.com/rampart-mesh/rampart/proxy/xds"
)

const tcpProxyFilter = "envoy.filters.network.tcp_proxy"

// TCP serves the TCP listeners of explicit capture: for each TCP service port
// the control plane sends, a local listener on the sidecar's own address and
// the service's port (the app connects to OUTBOUND_IP:PORT), proxied to the
// listener's cluster with mTLS to mesh peers.
type TCP struct {
	ip     string // the outbound listener's IP; "" keeps routes only (transparent capture)
	ups    *upstream.Manager
	log    *slog.Logger
	mu     sync.Mutex
	open   map[int]*tcpListener // by port
	base   context.Context      // Run's: dials end with the sidecar, not with an xDS stream
	last   []tcpRoute           // the routes last installed (kept until Run starts)
	routes map[int]tcpRoute     // by port
}

// clusterFor picks the cluster of the TCP route for a port ("" if none).
func (t *TCP) clusterFor(port int) string {
	t.mu.Lock()
	r, ok := t.routes[port]
	t.mu.Unlock()
	if !ok {
		return ""
	}
	if len(r.weights) == 0 {
		return r.cluster
	}
	var total uint64
	for _, w := range r.weights {
		total += uint64(w.weight)
	}
	if total == 0 {
		return r.cluster
	}
	n := randUint64() % total
	for _, w := range r.weights {
		if n < uint64(w.weight) {
			return w.cluster
		}
		n -= uint64(w.weight)
	}
	return r.cluster
}

type tcpListener struct {
	lis     net.Listener
	cluster string
	weights []weighted
	mu      sync.Mutex
}

type weighted struct {
	cluster string
	weight  uint32
}

// NewTCP builds the TCP listener set for an outbound IP.
func NewTCP(ip string, ups *upstream.Manager, log *slog.Logger) *TCP {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &TCP{ip: ip, ups: ups, log: log.With("component", "outbound-tcp"), open: map[int]*tcpListener{}}
}

// Run keeps the listeners until ctx ends, then closes them.
func (t *TCP) Run(ctx context.Context) error {
	t.mu.Lock()
	t.base = ctx
	last := t.last
	t.mu.Unlock()
	t.install(last)
	<-ctx.Done()
	t.Close()
	return nil
}

type tcpRoute struct {
	port    int
	cluster string
	weights []weighted
}

// Prepare validates the TCP listeners in res and returns the function that
// opens new ones, retargets kept ones and closes the rest.
func (t *TCP) Prepare(res *xds.Resources) (func(), error) {
	var routes []tcpRoute
	for name, l := range res.Listeners {
		for _, fc := range l.GetFilterChains() {
			for _, f := range fc.GetFilters() {
				if f.GetName() != tcpProxyFilter {
					continue
				}
				tp := &tcpproxyv3.TcpProxy{}
				if err := f.GetTypedConfig().UnmarshalTo(tp); err != nil {
					return nil, fmt.Errorf("listener %s: tcp_proxy: %w", name, err)
				}
				r := tcpRoute{port: int(l.GetAddress().GetSocketAddress().GetPortValue()), cluster: tp.GetCluster()}
				for _, w := range tp.GetWeightedClusters().GetClusters() {
					r.weights = append(r.weights, weighted{w.GetName(), w.GetWeight()})
				}
				if r.port == 0 || (r.cluster == "" && len(r.weights) == 0) {
					return nil, fmt.Errorf("listener %s: tcp_proxy needs a port and a cluster", name)
				}
				routes = append(routes, r)
			}
		}
	}
	return func() { t.install(routes) }, nil
}

func (t *TCP) install(routes []tcpRoute) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.last = routes
	ctx := t.base
	if ctx == nil || ctx.Err() != nil {
		return // Run installs them when it starts
	}
	want := map[int]tcpRoute{}
	for _, r := range routes {
		if _, dup := want[r.port]; dup {
			t.log.Warn("two TCP services share a port; only the first gets a local listener", "port", r.port)
			continue
		}
		want[r.port] = r
	}
	for port, l := range t.open {
		if _, ok := want[port]; !ok {
			l.lis.Close()
			delete(t.open, port)
		}
	}
	t.routes = want
	if t.ip == "" {
		return // transparent capture: the routes are looked up per connection
	}
	for port, r := range want {
		if l, ok := t.open[port]; ok {
			l.mu.Lock()
			l.cluster, l.weights = r.cluster, r.weights
			l.mu.Unlock()
			continue
		}
		lis, err := net.Listen("tcp", net.JoinHostPort(t.ip, strconv.Itoa(port)))
		if err != nil {
			t.log.Warn("TCP service port not served locally", "port", port, "err", err)
			continue
		}
		l := &tcpListener{lis: lis, cluster: r.cluster, weights: r.weights}
		t.open[port] = l
		t.log.Info("outbound TCP serving", "listen", lis.Addr().String(), "cluster", r.cluster)
		go t.serve(ctx, l)
	}
}

// Close closes every listener.
func (t *TCP) Close() {
	t.mu.Lock()
	defer t.mu.Unlock()
	for port, l := range t.open {
		l.lis.Close()
		delete(t.open, port)
	}
}

func (t *TCP) serve(ctx context.Context, l *tcpListener) {
	for {
		c, err := l.lis.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return
		}
		go t.proxy(ctx, l, c)
	}
}

func (t *TCP) proxy(ctx context.Context, l *tcpListener, c net.Conn) {
	defer c.Close()
	l.mu.Lock()
	cluster := l.cluster
	if len(l.weights) > 0 {
		var total uint64
		for _, w := range l.weights {
			total += uint64(w.weight)
		}
		if total > 0 {
			n := randUint64() % total
			for _, w := range l.weights {
				if n < uint64(w.weight) {
					cluster = w.cluster
					break
				}
				n -= uint64(w.weight)
			}
		}
	}
	l.mu.Unlock()
	cl, ok := t.ups.Cluster(cluster)
	if !ok {
		t.log.Warn("TCP connection refused: unknown cluster", "cluster", cluster)
		return
	}
	up, ep, err := cl.DialTCP(ctx, upstream.Request{})
	if err != nil {
		t.log.Info("access", "protocol", "tcp", "cluster", cluster, "flags", upstream.Flag(err), "err", err)
		return
	}
	defer up.Close()
	t.log.Info("access", "protocol", "tcp", "cluster", cluster, "upstream", ep.Address, "downstream", c.RemoteAddr().String())
	listener.Splice(c, up)
}
