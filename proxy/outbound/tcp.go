package outbound

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tlsinspectorv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/tls_inspector/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"github.com/rampart-mesh/rampart/proxy/listener"
	"github.com/rampart-mesh/rampart/proxy/upstream"
	"github.com/rampart-mesh/rampart/proxy/xds"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

const (
	tcpProxyFilter     = "envoy.filters.network.tcp_proxy"
	tlsInspectorFilter = "envoy.filters.listener.tls_inspector"
	// defaultInspectTimeout is Envoy's listener_filters_timeout default. The
	// sidecar always bounds the wait for a ClientHello, even when told 0.
	defaultInspectTimeout = 15 * time.Second
)

// TCP serves the TCP listeners of explicit capture: for each TCP service port
// the control plane sends, a local listener on the sidecar's own address and
// the service's port (the app connects to OUTBOUND_IP:PORT), proxied to the
// listener's cluster with mTLS to mesh peers. A listener with a tls_inspector
// (TLS/HTTPS ports, shared by every such service) picks its filter chain by
// the SNI of the client's ClientHello, which it reads without terminating TLS
// and replays to the upstream.
type TCP struct {
	ip     string // the outbound listener's IP; "" keeps routes only (transparent capture)
	ups    *upstream.Manager
	log    *slog.Logger
	mu     sync.Mutex
	open   map[int]*tcpListener // by port
	base   context.Context      // Run's: dials end with the sidecar, not with an xDS stream
	last   []*tcpRoute          // the routes last installed (kept until Run starts)
	routes map[int]*tcpRoute    // by port
}

// routeFor returns the TCP route for a port (nil if none).
func (t *TCP) routeFor(port int) *tcpRoute {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.routes[port]
}

type tcpListener struct {
	lis   net.Listener
	mu    sync.Mutex
	route *tcpRoute
}

func (l *tcpListener) current() *tcpRoute {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.route
}

type weighted struct {
	cluster string
	weight  uint32
}

// tcpRoute is one listener's filter chains. It is immutable once built.
type tcpRoute struct {
	port     int
	listener string
	// inspect: the listener has a tls_inspector, so chains match the SNI.
	inspect   bool
	maxHello  int
	timeout   time.Duration
	onTimeout bool // continue_on_listener_filters_timeout: use the chain without server_names
	exact     map[string]*tcpChain
	wildcard  map[string]*tcpChain // by suffix after "*", e.g. ".example.com"
	fallback  *tcpChain            // the chain without server_names, if any
}

// tcpChain is a filter chain's tcp_proxy: a cluster, or weighted clusters.
type tcpChain struct {
	name    string
	cluster string
	weights []weighted
	idle    time.Duration // tcp_proxy idle_timeout (0: none)
}

// idleOf is a chain's idle timeout: nil (unset) is Envoy's default of an
// hour, and an explicit 0 turns it off.
func (c *tcpChain) idleOf() time.Duration {
	if c == nil {
		return listener.DefaultTCPIdleTimeout
	}
	return c.idle
}

// checkTCPProxy refuses tcp_proxy fields the sidecar does not implement, so
// a behaviour-changing setting is NACKed rather than silently ignored, and
// returns the idle timeout.
func checkTCPProxy(chain string, tp *tcpproxyv3.TcpProxy) (time.Duration, error) {
	idle := listener.DefaultTCPIdleTimeout
	if d := tp.GetIdleTimeout(); d != nil {
		if err := d.CheckValid(); err != nil || d.AsDuration() < 0 {
			return 0, fmt.Errorf("filter chain %s: tcp_proxy idle_timeout %v is not a duration of zero or more", chain, d)
		}
		idle = d.AsDuration()
	}
	rest := proto.Clone(tp).(*tcpproxyv3.TcpProxy)
	rest.StatPrefix, rest.ClusterSpecifier, rest.IdleTimeout = "", nil, nil
	var unknown []string
	rest.ProtoReflect().Range(func(fd protoreflect.FieldDescriptor, _ protoreflect.Value) bool {
		unknown = append(unknown, string(fd.Name()))
		return true
	})
	if len(unknown) > 0 {
		return 0, fmt.Errorf("filter chain %s: tcp_proxy sets %s, which the sidecar does not implement", chain, strings.Join(unknown, ", "))
	}
	return idle, nil
}

// pick chooses the chain for a server name as Envoy does: an exact name, then
// the longest wildcard suffix, then the chain without server_names.
func (r *tcpRoute) pick(sni string) *tcpChain {
	if sni != "" {
		if c, ok := r.exact[sni]; ok {
			return c
		}
		for i := strings.IndexByte(sni, '.'); i >= 0; {
			if c, ok := r.wildcard[sni[i:]]; ok {
				return c
			}
			next := strings.IndexByte(sni[i+1:], '.')
			if next < 0 {
				break
			}
			i += 1 + next
		}
	}
	return r.fallback
}

// clusterFor picks the chain's cluster for one connection.
func (c *tcpChain) clusterFor() string {
	var total uint64
	for _, w := range c.weights {
		total += uint64(w.weight)
	}
	if total == 0 {
		return c.cluster
	}
	n := randUint64() % total
	for _, w := range c.weights {
		if n < uint64(w.weight) {
			return w.cluster
		}
		n -= uint64(w.weight)
	}
	return c.cluster
}

// choose reads what the route needs from a new connection and picks its
// chain: nothing is read when no chain matches server names (a server-first
// protocol must not wait); else the ClientHello, bounded in size and time.
// The returned conn replays whatever was read. A nil chain means no chain
// applies (Envoy's NR); sni is for the access log.
func (r *tcpRoute) choose(c net.Conn) (net.Conn, *tcpChain, string) {
	if !r.inspect {
		return c, r.fallback, ""
	}
	rc, sni, err := listener.ReadClientHello(c, r.maxHello, r.timeout)
	if errors.Is(err, listener.ErrClientHelloTimeout) && !r.onTimeout {
		return rc, nil, ""
	}
	// Not TLS, too large or no SNI: as Envoy, the connection goes on without
	// a server name and only the chain without server_names can take it.
	return rc, r.pick(sni), sni
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

// Prepare validates the TCP listeners in res and returns the function that
// opens new ones, retargets kept ones and closes the rest. What it does not
// implement (other listener filters, filter_chain_match fields other than
// server_names, server_names without a tls_inspector) is refused, not ignored.
func (t *TCP) Prepare(res *xds.Resources) (func(), error) {
	names := make([]string, 0, len(res.Listeners))
	for name := range res.Listeners {
		names = append(names, name)
	}
	sort.Strings(names) // the first of two listeners on one port is the same every time
	var routes []*tcpRoute
	for _, name := range names {
		r, err := parseTCPListener(name, res.Listeners[name])
		if err != nil {
			return nil, fmt.Errorf("listener %s: %w", name, err)
		}
		if r != nil {
			routes = append(routes, r)
		}
	}
	return func() { t.install(routes) }, nil
}

// CheckTCPListener runs the checks Prepare runs on one listener's tcp_proxy
// chains, without installing anything (a listener without them passes).
func CheckTCPListener(name string, l *listenerv3.Listener) error {
	_, err := parseTCPListener(name, l)
	return err
}

// parseTCPListener reads a listener's tcp_proxy chains (nil: not a TCP listener).
func parseTCPListener(name string, l *listenerv3.Listener) (*tcpRoute, error) {
	r := &tcpRoute{port: int(l.GetAddress().GetSocketAddress().GetPortValue()), listener: name,
		exact: map[string]*tcpChain{}, wildcard: map[string]*tcpChain{}}
	found := false
	for i, fc := range l.GetFilterChains() {
		var tp *tcpproxyv3.TcpProxy
		for _, f := range fc.GetFilters() {
			if f.GetName() != tcpProxyFilter {
				continue
			}
			tp = &tcpproxyv3.TcpProxy{}
			if err := f.GetTypedConfig().UnmarshalTo(tp); err != nil {
				return nil, fmt.Errorf("tcp_proxy: %w", err)
			}
		}
		if tp == nil {
			continue
		}
		found = true
		c := &tcpChain{name: fc.GetName(), cluster: tp.GetCluster()}
		if c.name == "" {
			c.name = strconv.Itoa(i)
		}
		idle, err := checkTCPProxy(c.name, tp)
		if err != nil {
			return nil, err
		}
		c.idle = idle
		for _, w := range tp.GetWeightedClusters().GetClusters() {
			c.weights = append(c.weights, weighted{w.GetName(), w.GetWeight()})
		}
		if r.port == 0 || (c.cluster == "" && len(c.weights) == 0) {
			return nil, fmt.Errorf("filter chain %s: tcp_proxy needs a port and a cluster", c.name)
		}
		m := proto.Clone(fc.GetFilterChainMatch()).(*listenerv3.FilterChainMatch)
		var serverNames []string
		if m != nil {
			serverNames, m.ServerNames = m.GetServerNames(), nil
			if !proto.Equal(m, &listenerv3.FilterChainMatch{}) {
				return nil, fmt.Errorf("filter chain %s: filter_chain_match supports only server_names", c.name)
			}
		}
		if len(serverNames) == 0 {
			if r.fallback != nil {
				return nil, fmt.Errorf("filter chains %s and %s both match every connection", r.fallback.name, c.name)
			}
			r.fallback = c
			continue
		}
		for _, sn := range serverNames {
			sn = strings.ToLower(sn)
			set, key := r.exact, sn
			if strings.HasPrefix(sn, "*.") {
				set, key = r.wildcard, sn[1:]
			} else if strings.Contains(sn, "*") || sn == "" {
				return nil, fmt.Errorf("filter chain %s: server name %q: a wildcard is only \"*.\" in front", c.name, sn)
			}
			if prev, dup := set[key]; dup {
				return nil, fmt.Errorf("filter chains %s and %s both match server name %q", prev.name, c.name, sn)
			}
			set[key] = c
		}
	}
	if !found {
		return nil, nil
	}
	for _, lf := range l.GetListenerFilters() {
		if lf.GetName() != tlsInspectorFilter {
			return nil, fmt.Errorf("listener filter %q is not supported", lf.GetName())
		}
		ti := &tlsinspectorv3.TlsInspector{}
		if tc := lf.GetTypedConfig(); tc != nil {
			if err := tc.UnmarshalTo(ti); err != nil {
				return nil, fmt.Errorf("tls_inspector: %w", err)
			}
		}
		r.inspect = true
		r.maxHello = listener.DefaultMaxClientHello
		if v := ti.GetMaxClientHelloSize(); v != nil {
			if v.GetValue() > listener.MaxClientHelloLimit {
				return nil, fmt.Errorf("tls_inspector: max_client_hello_size %d is over %d", v.GetValue(), listener.MaxClientHelloLimit)
			}
			r.maxHello = int(v.GetValue())
		}
	}
	if !r.inspect && (len(r.exact) > 0 || len(r.wildcard) > 0) {
		return nil, errors.New("filter chains match server_names but there is no tls_inspector listener filter")
	}
	r.timeout = defaultInspectTimeout
	if d := l.GetListenerFiltersTimeout(); d != nil && d.AsDuration() > 0 {
		r.timeout = d.AsDuration()
	}
	r.onTimeout = l.GetContinueOnListenerFiltersTimeout()
	return r, nil
}

func (t *TCP) install(routes []*tcpRoute) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.last = routes
	ctx := t.base
	if ctx == nil || ctx.Err() != nil {
		return // Run installs them when it starts
	}
	want := map[int]*tcpRoute{}
	for _, r := range routes {
		if prev, dup := want[r.port]; dup {
			t.log.Warn("two TCP listeners share a port; only the first gets a local listener", "port", r.port, "serving", prev.listener, "skipped", r.listener)
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
			l.route = r
			l.mu.Unlock()
			continue
		}
		lis, err := net.Listen("tcp", net.JoinHostPort(t.ip, strconv.Itoa(port)))
		if err != nil {
			t.log.Warn("TCP service port not served locally", "port", port, "err", err)
			continue
		}
		l := &tcpListener{lis: lis, route: r}
		t.open[port] = l
		t.log.Info("outbound TCP serving", "listen", lis.Addr().String(), "listener", r.listener)
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
	r := l.current()
	conn, chain, sni := r.choose(c)
	if chain == nil {
		t.log.Info("access", "protocol", "tcp", "listener", r.listener, "sni", sni, "flags", "NR", "downstream", c.RemoteAddr().String())
		return
	}
	cluster := chain.clusterFor()
	cl, ok := t.ups.Cluster(cluster)
	if !ok {
		t.log.Info("access", "protocol", "tcp", "listener", r.listener, "sni", sni, "cluster", cluster, "flags", "NC", "downstream", c.RemoteAddr().String())
		return
	}
	up, ep, err := cl.DialTCP(ctx, upstream.Request{})
	if err != nil {
		t.log.Info("access", "protocol", "tcp", "listener", r.listener, "sni", sni, "cluster", cluster, "flags", upstream.Flag(err), "err", err)
		return
	}
	defer up.Close()
	t.log.Info("access", "protocol", "tcp", "listener", r.listener, "sni", sni, "cluster", cluster, "upstream", ep.Address, "downstream", c.RemoteAddr().String())
	listener.SpliceIdle(conn, up, chain.idleOf())
}
