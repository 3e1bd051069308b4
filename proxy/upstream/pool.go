package upstream

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	"github.com/rampart-mesh/rampart/proxy/h1"
)

// pool is the runtime of one cluster configuration: its connection pools (one
// http.Transport per transport socket), breaker counters, load-balancer and
// outlier state. It outlives updates that leave the cluster's configuration
// as it was, endpoints aside.
type pool struct {
	m       *Manager
	cfg     *clusterConfig
	key     *clusterv3.Cluster // the configuration, without load_assignment
	met     *clusterMetrics
	dialer  net.Dialer
	sockets []*poolSocket

	eps     atomic.Pointer[endpointSet] // the current endpoints
	states  map[string]*hostState       // by address; guarded by Manager.mu
	outlier *outlier                    // nil without outlier_detection

	requests atomic.Int64 // requests in flight (max_requests)
	conns    atomic.Int64 // open connections (max_connections for h2 and TCP)
	retries  atomic.Int64 // retries in flight (max_retries)
	slots    *slots       // HTTP/1.1 connections (max_connections, max_pending_requests); nil for h2

	rr   atomic.Uint64
	lbMu sync.Mutex

	retired atomic.Bool // replaced or closed: close connections as they go idle
}

type poolSocket struct {
	sock   *socket
	scheme string
	// transport serves the configured sni (and every request when the
	// cluster has neither auto_sni nor auto_san_validation).
	transport
	tcpTLS *tls.Config // for DialTCP: the configured ALPN as it is

	// perName: auto_sni or auto_san_validation over TLS. Each server name
	// gets connections of its own, so that a connection made (and
	// verified) for one name never carries a request for another.
	perName bool
	mu      sync.Mutex
	named   map[serverName]*transport
}

// transport is one connection pool of a transport socket.
type transport struct {
	http *http.Transport
	// rt carries requests: h1 in front of http for HTTP/1.1 clusters (bodiless
	// requests on the caller's goroutine), http alone otherwise.
	rt http.RoundTripper
	h1 *h1.Transport
}

// serverName is what a TLS connection sends as SNI and what the server's
// certificate must be valid for (when no SAN matcher is configured).
type serverName struct {
	sni, verify string
}

// maxNamedTransports bounds the per-name pools of an auto_sni socket: the
// names come from requests' Host headers, which the application chooses.
const maxNamedTransports = 256

func (m *Manager) newPool(cc *clusterConfig, key *clusterv3.Cluster, met *clusterMetrics) *pool {
	p := &pool{
		m:      m,
		cfg:    cc,
		key:    key,
		met:    met,
		dialer: net.Dialer{Timeout: cc.connectTimeout, KeepAliveConfig: cc.keepAlive},
		states: map[string]*hostState{},
	}
	p.eps.Store(&endpointSet{})
	if cc.protocol != protoHTTP2 {
		p.slots = &slots{max: cc.breakers.maxConnections, maxPending: cc.breakers.maxPending}
	}
	if cc.outlier != nil {
		p.outlier = &outlier{
			cfg: cc.outlier, clock: m.cfg.Clock, log: m.log, cluster: cc.name,
			hosts: &p.eps, ejection: met.ejections,
		}
	}
	for _, s := range cc.sockets {
		p.sockets = append(p.sockets, p.newSocket(s))
	}
	return p
}

func (p *pool) newSocket(s *socket) *poolSocket {
	ps := &poolSocket{sock: s, scheme: "http"}
	name := serverName{sni: s.sni, verify: s.sni}
	ps.transport = *p.newTransport(s, name)
	if s.tls {
		ps.scheme = "https"
		ps.tcpTLS = p.m.tlsConfig(s, s.alpn, name)
		ps.perName = p.cfg.autoSNI || p.cfg.autoSAN
	}
	return ps
}

func (p *pool) newTransport(s *socket, name serverName) *transport {
	cc := p.cfg
	t := &http.Transport{
		// Never a proxy from the environment: the sidecar is the proxy.
		Proxy: nil,
		// Bodies pass through as they are; the caller's client negotiated
		// its own encoding.
		DisableCompression:  true,
		MaxIdleConnsPerHost: int(max(1, min(cc.breakers.maxConnections, 1024))),
		IdleConnTimeout:     cc.idleTimeout,
	}
	var protos http.Protocols
	tr := &transport{http: t}
	var conf *tls.Config
	if s.tls {
		conf = p.m.tlsConfig(s, alpnFor(s.alpn, cc.protocol), name)
		t.DialTLSContext = func(ctx context.Context, _, addr string) (net.Conn, error) {
			c, err := p.dialTLS(ctx, addr, conf, cc.protocol == protoHTTP2)
			if err != nil {
				return nil, err
			}
			return c, nil
		}
		switch cc.protocol {
		case protoHTTP2:
			protos.SetHTTP2(true)
		case protoAuto:
			protos.SetHTTP1(true)
			protos.SetHTTP2(true)
		default:
			protos.SetHTTP1(true)
		}
	} else {
		t.DialContext = func(ctx context.Context, _, addr string) (net.Conn, error) {
			c, err := p.dial(ctx, addr, cc.protocol == protoHTTP2)
			if err != nil {
				return nil, err
			}
			return c, nil
		}
		if cc.protocol == protoHTTP2 {
			protos.SetUnencryptedHTTP2(true)
		} else {
			protos.SetHTTP1(true)
		}
	}
	t.Protocols = &protos
	tr.rt = t
	if cc.protocol == protoHTTP1 {
		tr.h1 = &h1.Transport{Next: t, MaxIdlePerHost: t.MaxIdleConnsPerHost, IdleTimeout: cc.idleTimeout}
		if s.tls {
			tr.h1.Dial = func(ctx context.Context, addr string) (net.Conn, error) {
				c, err := p.dialTLS(ctx, addr, conf, false)
				if err != nil {
					return nil, err
				}
				return c, nil
			}
		} else {
			tr.h1.Dial = func(ctx context.Context, addr string) (net.Conn, error) {
				c, err := p.dial(ctx, addr, false)
				if err != nil {
					return nil, err
				}
				return c, nil
			}
		}
		tr.rt = tr.h1
	}
	return tr
}

// transportFor is the pool that carries a request for host (the request's
// Host without its port, "" for TCP) over ps: under auto_sni the SNI is the
// host, and under auto_san_validation (or auto_sni, with no SAN matcher) the
// certificate must be valid for it. A TLS socket that verifies the chain but
// has no SAN matcher and no name to check fails closed with ErrNoServerName.
func (p *pool) transportFor(ps *poolSocket, host string) (*transport, error) {
	name := serverName{sni: ps.sock.sni, verify: ps.sock.sni}
	if ps.perName && host != "" {
		if p.cfg.autoSNI {
			name.sni = host
		}
		name.verify = host
	}
	if ps.sock.needsName() && name.verify == "" {
		return nil, errNoServerName(host == "")
	}
	if !ps.perName || name == (serverName{sni: ps.sock.sni, verify: ps.sock.sni}) {
		return &ps.transport, nil
	}
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if t, ok := ps.named[name]; ok {
		return t, nil
	}
	if ps.named == nil {
		ps.named = map[serverName]*transport{}
	}
	if len(ps.named) >= maxNamedTransports {
		// Drop one pool; its busy connections close when their requests end.
		for n, t := range ps.named {
			t.close()
			delete(ps.named, n)
			break
		}
	}
	t := p.newTransport(ps.sock, name)
	ps.named[name] = t
	return t, nil
}

func errNoServerName(tcp bool) error {
	if tcp {
		return fmt.Errorf("%w: the TLS transport socket has no sni and no subject alt names, and a TCP connection has no Host for auto_sni (set the DestinationRule's tls.sni or tls.subjectAltNames)", ErrNoServerName)
	}
	return fmt.Errorf("%w: the TLS transport socket has no sni and no subject alt names, the cluster has no auto_sni or auto_san_validation, or the request has no Host (set the DestinationRule's tls.sni or tls.subjectAltNames)", ErrNoServerName)
}

// requestHost is the name auto_sni uses: the request's Host without its port.
func requestHost(req *http.Request) string {
	h := req.Host
	if h == "" && req.URL != nil {
		h = req.URL.Host
	}
	if hh, _, err := net.SplitHostPort(h); err == nil {
		h = hh
	}
	return strings.ToLower(strings.TrimSuffix(strings.Trim(h, "[]"), "."))
}

func (t *transport) closeIdle() {
	if t.h1 != nil {
		t.h1.CloseIdleConnections() // and http's
		return
	}
	t.http.CloseIdleConnections()
}

// close closes t's idle connections now and its busy HTTP/1.1 ones when
// their requests end.
func (t *transport) close() {
	if t.h1 != nil {
		t.h1.Close()
	}
	t.closeIdle()
}

// all is the socket's transports: the configured one and the per-name ones.
func (ps *poolSocket) all() []*transport {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	out := []*transport{&ps.transport}
	for _, t := range ps.named {
		out = append(out, t)
	}
	return out
}

// dial connects to addr. limit applies max_connections (HTTP/2 and TCP; the
// HTTP/1.1 bound is slots).
func (p *pool) dial(ctx context.Context, addr string, limit bool) (*trackedConn, error) {
	if limit && p.conns.Load() >= p.cfg.breakers.maxConnections {
		return nil, fmt.Errorf("%w: %d connections open", ErrOverflow, p.conns.Load())
	}
	c, err := p.dialer.DialContext(ctx, p.cfg.network, addr)
	if err != nil {
		return nil, &dialError{err}
	}
	p.conns.Add(1)
	p.met.connsActive.Inc()
	p.met.connsTotal.Inc()
	return &trackedConn{Conn: c, p: p}, nil
}

func (p *pool) dialTLS(ctx context.Context, addr string, conf *tls.Config, limit bool) (*tls.Conn, error) {
	raw, err := p.dial(ctx, addr, limit)
	if err != nil {
		return nil, err
	}
	tc := tls.Client(raw, conf)
	hctx, cancel := context.WithTimeout(ctx, p.cfg.connectTimeout)
	defer cancel()
	if err := tc.HandshakeContext(hctx); err != nil {
		raw.Close()
		return nil, &dialError{fmt.Errorf("tls handshake: %w", err)}
	}
	return tc, nil
}

// closeIdle closes idle connections, and (net/http's promise) those that go
// idle until the next request starts.
func (p *pool) closeIdle() {
	for _, s := range p.sockets {
		for _, t := range s.all() {
			t.closeIdle()
		}
	}
}

func (p *pool) retire() {
	p.retired.Store(true)
	for _, s := range p.sockets {
		for _, t := range s.all() {
			t.close() // connections busy now close when their request ends
		}
	}
}

func (p *pool) ejected() int64 {
	if p.outlier == nil {
		return 0
	}
	return p.outlier.ejected.Load()
}

// trackedConn counts an open connection for max_connections and the
// connection gauge, and the requests it carried for
// max_requests_per_connection.
type trackedConn struct {
	net.Conn
	p        *pool
	hs       *hostState // DialTCP's host, whose active count it holds
	requests atomic.Uint32
	closed   atomic.Bool
}

func (c *trackedConn) Close() error {
	if c.closed.CompareAndSwap(false, true) {
		c.p.conns.Add(-1)
		c.p.met.connsActive.Dec()
		if c.hs != nil {
			c.hs.active.Add(-1)
		}
	}
	return c.Conn.Close()
}

// NetConn is the connection underneath (the HTTP/1 transport peeks at its
// socket before reusing it).
func (c *trackedConn) NetConn() net.Conn { return c.Conn }

// CloseWrite half-closes, for TCP proxying.
func (c *trackedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// CloseRead half-closes the read side.
func (c *trackedConn) CloseRead() error {
	if cr, ok := c.Conn.(interface{ CloseRead() error }); ok {
		return cr.CloseRead()
	}
	return nil
}

// ReadFrom and WriteTo keep the kernel's splice and sendfile paths when TCP
// proxying copies between connections.
func (c *trackedConn) ReadFrom(r io.Reader) (int64, error) {
	if tc, ok := r.(*trackedConn); ok {
		r = tc.Conn
	}
	if rf, ok := c.Conn.(io.ReaderFrom); ok {
		return rf.ReadFrom(r)
	}
	return io.Copy(struct{ io.Writer }{c.Conn}, r)
}

func (c *trackedConn) WriteTo(w io.Writer) (int64, error) {
	if tc, ok := w.(*trackedConn); ok {
		w = tc.Conn
	}
	if wt, ok := c.Conn.(io.WriterTo); ok {
		return wt.WriteTo(w)
	}
	return io.Copy(w, struct{ io.Reader }{c.Conn})
}

// connOf finds the trackedConn under a connection net/http reports.
func connOf(c net.Conn) *trackedConn {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	t, _ := c.(*trackedConn)
	return t
}
