package outbound

import (
	"context"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"time"

	"github.com/rampart-mesh/rampart/proxy/listener"
	"github.com/rampart-mesh/rampart/proxy/upstream"
)

type origDstKey struct{}

// transparentConn is a redirected connection with its original destination;
// Conn replays the bytes already sniffed.
type transparentConn struct {
	net.Conn
	dst netip.AddrPort
}

// CloseWrite half-closes the connection underneath when it can, else closes
// it. Embedding net.Conn would hide it, and the HTTP/1 server's lingering
// close (half-close, then drain what the client still sends, so no reset
// destroys a response it has not read) and Splice's half-close both look for it.
func (c *transparentConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Conn.Close()
}

// sniffTimeout bounds the wait for a client's first bytes; protocols where
// the server speaks first get TCP handling after it.
const sniffTimeout = 5 * time.Second

// acceptTransparent takes redirected connections: HTTP goes to the HTTP
// server (with its original destination), anything else is proxied as TCP.
func (s *Server) acceptTransparent(ctx context.Context) error {
	return listener.Serve(ctx, s.cfg.Listener, func(c net.Conn) { go s.classify(ctx, c) })
}

func (s *Server) classify(ctx context.Context, c net.Conn) {
	dst, err := listener.OriginalDst(c)
	if err != nil {
		s.log.Warn("transparent connection without an original destination", "peer", c.RemoteAddr().String(), "err", err)
		c.Close()
		return
	}
	// A connection sent straight to the listener would loop back to it. The
	// zones are left out: the listener's names its interface, the kernel's
	// original destination gives its index.
	if la, ok := c.LocalAddr().(*net.TCPAddr); ok && la.AddrPort().Port() == dst.Port() && la.AddrPort().Addr().Unmap().WithZone("") == dst.Addr().WithZone("") {
		c.Close()
		return
	}
	s.classifyTo(ctx, c, dst)
}

// classifyTo serves a redirected connection whose original destination is
// dst. As Istio, a port declared TCP (a TCP route and no HTTP route
// configuration) is never sniffed: its connections take the TCP route
// whatever their first bytes, and a server-first protocol does not wait.
func (s *Server) classifyTo(ctx context.Context, c net.Conn, dst netip.AddrPort) {
	if s.tcpOnly(int(dst.Port())) {
		s.proxyTCP(ctx, &transparentConn{Conn: c, dst: dst})
		return
	}
	sc, isHTTP, err := listener.SniffHTTP(c, sniffTimeout)
	if err != nil {
		c.Close()
		return
	}
	tc := &transparentConn{Conn: sc, dst: dst}
	if isHTTP {
		s.h1.ServeConn(ctx, tc)
		return
	}
	s.proxyTCP(ctx, tc)
}

// tcpOnly reports whether port has a TCP route and no HTTP route configuration.
func (s *Server) tcpOnly(port int) bool {
	if s.cfg.TCP == nil || s.cfg.TCP.routeFor(port) == nil {
		return false
	}
	if st := s.state.Load(); st != nil {
		if _, ok := st.ports[port]; ok {
			return false
		}
	}
	return true
}

// proxyTCP sends a non-HTTP connection to the TCP route for its original
// port, picking the filter chain as an explicit listener does (by SNI on TLS
// ports), or to where it was going (passthrough, Istio's ALLOW_ANY) when no
// route or chain takes it.
func (s *Server) proxyTCP(ctx context.Context, c *transparentConn) {
	defer c.Close()
	var (
		conn    net.Conn = c
		up      net.Conn
		err     error
		cluster string
		sni     string
	)
	var chain *tcpChain
	if s.cfg.TCP != nil {
		if r := s.cfg.TCP.routeFor(int(c.dst.Port())); r != nil {
			conn, chain, sni = r.choose(c)
			if chain != nil {
				cluster = chain.clusterFor()
			}
		}
	}
	if cl, ok := s.cfg.Upstreams.Cluster(cluster); ok && cluster != "" {
		up, _, err = cl.DialTCP(ctx, upstream.Request{OriginalDst: c.dst.String()})
	} else {
		cluster = "PassthroughCluster"
		var d net.Dialer
		up, err = d.DialContext(ctx, "tcp", c.dst.String())
	}
	if err != nil {
		s.log.Info("access", "protocol", "tcp", "cluster", cluster, "sni", sni, "destination", c.dst.String(), "flags", "UF", "err", err)
		return
	}
	defer up.Close()
	s.log.Info("access", "protocol", "tcp", "cluster", cluster, "sni", sni, "destination", c.dst.String())
	listener.SpliceIdle(conn, up, chain.idleOf())
}

// passthroughTransport is the PassthroughCluster's client: to the original
// destination itself, never through a proxy the environment names
// (http.DefaultTransport honours HTTP_PROXY).
var passthroughTransport = &http.Transport{
	Proxy:               nil,
	DialContext:         (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
	MaxIdleConnsPerHost: 16,
	IdleConnTimeout:     90 * time.Second,
}

// passthrough forwards an HTTP request no route knows to where it was going,
// as Istio's PassthroughCluster does (plaintext, no mesh identity).
func (s *Server) passthrough(w http.ResponseWriter, r *http.Request, dst netip.AddrPort) result {
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.Out.URL.Scheme, pr.Out.URL.Host = "http", dst.String()
			pr.Out.Host = pr.In.Host
			pr.Out.Header.Del("X-Forwarded-Client-Cert") // as forward: the app's is not passed on
		},
		Transport: passthroughTransport,
		ErrorHandler: func(w http.ResponseWriter, _ *http.Request, err error) {
			w.Header().Set("x-rampart-response-flags", "UF")
			http.Error(w, "upstream connect error: "+err.Error(), http.StatusServiceUnavailable)
		},
	}
	rec := &codeRecorder{ResponseWriter: w, code: 200}
	rp.ServeHTTP(rec, r)
	return result{code: rec.code, cluster: "PassthroughCluster", host: dst.String(), detail: "via_upstream"}
}
