package inbound

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rampart-mesh/rampart/authn"
	"github.com/rampart-mesh/rampart/authn/peer"
	"github.com/rampart-mesh/rampart/authz"
	"github.com/rampart-mesh/rampart/internal/uuid"
	"github.com/rampart-mesh/rampart/proxy/grpcreply"
	"github.com/rampart-mesh/rampart/proxy/h1"
	"github.com/rampart-mesh/rampart/proxy/listener"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"golang.org/x/net/http/httpguts"
)

// mTLS modes (PeerAuthentication).
const (
	ModeDisable    = "DISABLE"
	ModePermissive = "PERMISSIVE"
	ModeStrict     = "STRICT"
)

// Authenticator validates a request's JWT (authn/jwt implements it).
type Authenticator interface {
	Authenticate(ctx context.Context, r *http.Request) AuthnResult
}

// AuthnResult is what request authentication decided.
type AuthnResult struct {
	Status          int // 0 pass; 401 or 403
	Reason          string
	WWWAuthenticate string
	Auth            *authn.RequestAuth
	RemoveHeaders   []string
	SetHeaders      [][2]string
}

// DecisionHook receives every decision (for the decision log).
type DecisionHook func(ctx context.Context, r *authz.Request, d authz.Decision)

// Config configures an inbound listener.
type Config struct {
	// Listener accepts inbound connections (the sidecar's 15006, or a test's).
	Listener net.Listener
	// App is the workload's own address, where allowed requests go.
	App string
	// PortModeFunc, if set, gives the mTLS mode of another of the pod's ports
	// (portLevelMtls, else the workload's) for a captured listener's
	// passthrough connections; ModeFunc's (the app's port's) otherwise.
	PortModeFunc func(port int) string
	// Captured says every connection comes redirected by iptables
	// (rampart-sidecar init): one that was not is refused, and one sent to
	// another port than App's is passed to that port (see outsideCapture).
	Captured bool
	// GuardOnly builds a Server that only checks requests for another listener
	// (Guard); it has no Listener or App and is not Run.
	GuardOnly bool
	// Protocol is the port's protocol: "http" (default; HTTP/1.1, h2, gRPC),
	// "tcp" (authorization on connection attributes, then bytes to the app), or
	// "auto" (ProtocolAuto: detected per connection, as Istio does for a port
	// without a protocol name or appProtocol).
	Protocol string
	// Mode is the port's mTLS mode. Default PERMISSIVE.
	Mode string
	// ModeFunc, if set, is asked for the mode of each new connection instead,
	// so a policy change applies without restarting the listener.
	ModeFunc func() string
	// SVID and Bundle are the sidecar's identity sources (ca/agent).
	SVID        x509svid.Source
	Bundle      x509bundle.Source
	TrustDomain spiffeid.TrustDomain
	Engine      *authz.Engine
	// Authn, if set, validates JWTs (RequestAuthentication).
	Authn    Authenticator
	Workload authz.Workload
	OnDecide DecisionHook
	// RateLimit, if set, checks every authorized request against the
	// workload's local rate limits before it reaches the app.
	RateLimit RateLimiter
	// SniffTimeout bounds how long a client may take to send its first bytes.
	SniffTimeout time.Duration
	// HeaderTimeout bounds how long a client may take to send a request's
	// headers (slow clients are cut off). Default 10 s.
	HeaderTimeout time.Duration
	// MaxConnections bounds concurrent inbound connections; more are closed at
	// once. Default 10,000.
	MaxConnections int
	Log            *slog.Logger
	Metrics        prometheus.Registerer
}

// Server is the inbound path.
type Server struct {
	cfg          Config
	served       sync.WaitGroup // the connections accept started serving
	log          *slog.Logger
	tlsCfg       *tls.Config
	proxy        *httputil.ReverseProxy
	appTransport *h1.Transport // the proxy's, to the app
	grpcProxy    *httputil.ReverseProxy
	requests     *prometheus.CounterVec
	resets       prometheus.Counter
	plaintext    *prometheus.CounterVec
	refused      prometheus.Counter
	outside      *prometheus.CounterVec // connections a captured listener refused, by reason
	appPort      int                    // App's port, with Captured
	warnedMu     sync.Mutex
	warned       map[int]bool  // ports whose refusal was logged at Warn
	slots        chan struct{} // one per open connection

	mu       sync.Mutex
	plainIPs map[string]bool // bounds the plaintext metric's cardinality
}

// maxPlaintextSources bounds the distinct source_ip values of the plaintext metric.
const maxPlaintextSources = 1000

// New validates cfg. It does no I/O.
func New(cfg Config) (*Server, error) {
	if cfg.Engine == nil || (!cfg.GuardOnly && (cfg.Listener == nil || cfg.App == "")) {
		return nil, errors.New("inbound: Listener, App and Engine are required (Engine alone with GuardOnly)")
	}
	switch cfg.Protocol {
	case "":
		cfg.Protocol = authz.ProtocolHTTP
	case authz.ProtocolHTTP, authz.ProtocolTCP, ProtocolAuto:
	default:
		return nil, fmt.Errorf("inbound: unknown protocol %q (want http, tcp or auto)", cfg.Protocol)
	}
	switch cfg.Mode {
	case "":
		cfg.Mode = ModePermissive
	case ModeDisable, ModePermissive, ModeStrict:
	default:
		return nil, fmt.Errorf("inbound: unknown mTLS mode %q", cfg.Mode)
	}
	if !cfg.GuardOnly && (cfg.Mode != ModeDisable || cfg.ModeFunc != nil) && (cfg.SVID == nil || cfg.Bundle == nil) {
		return nil, errors.New("inbound: SVID and Bundle are required unless the mode is DISABLE")
	}
	if cfg.SniffTimeout == 0 {
		cfg.SniffTimeout = 10 * time.Second
	}
	if cfg.HeaderTimeout == 0 {
		cfg.HeaderTimeout = 10 * time.Second
	}
	if cfg.MaxConnections == 0 {
		cfg.MaxConnections = 10000
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Metrics == nil {
		cfg.Metrics = prometheus.NewRegistry()
	}
	s := &Server{cfg: cfg, log: cfg.Log.With("component", "inbound"), slots: make(chan struct{}, cfg.MaxConnections)}
	if cfg.SVID != nil && cfg.Bundle != nil {
		// Istio's sidecars also offer "istio-peer-exchange" and "istio" (TCP has
		// nothing else); accepting them keeps such handshakes from failing.
		s.tlsCfg = peer.ServerConfig(cfg.SVID, cfg.Bundle, cfg.TrustDomain, "h2", "http/1.1", "istio-peer-exchange", "istio")
	}
	app := &url.URL{Scheme: "http", Host: cfg.App}
	// Connections to the app are kept for reuse; net/http's default keeps only
	// two idle per host, so concurrent clients would dial the app per request.
	dial := (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	// Bodiless requests reach the app on the request's own goroutine (h1);
	// the rest through net/http.
	s.appTransport = &h1.Transport{
		Dial:           func(ctx context.Context, addr string) (net.Conn, error) { return dial(ctx, "tcp", addr) },
		MaxIdlePerHost: 1024, IdleTimeout: 90 * time.Second,
		Next: &http.Transport{
			Proxy:               nil,
			DialContext:         dial,
			MaxIdleConns:        1024,
			MaxIdleConnsPerHost: 1024,
			IdleConnTimeout:     90 * time.Second,
		},
	}
	s.proxy = &httputil.ReverseProxy{
		Transport:  s.appTransport,
		BufferPool: bufferPool{},
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(app)
			pr.Out.Host = pr.In.Host
			// X-Forwarded-For/-Host/-Proto from what the sidecar saw; Rewrite has
			// already dropped whatever the client sent in them.
			pr.SetXForwarded()
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			if r.Context().Err() != nil {
				// The client went away (Envoy's DC): nothing is wrong with the app.
				s.log.Debug("client disconnected before the app answered", "app", cfg.App, "err", err)
				w.WriteHeader(499)
				return
			}
			s.log.Warn("app unreachable", "app", cfg.App, "err", err)
			if grpcreply.Is(r) {
				// As Envoy's local replies to gRPC: a trailers-only UNAVAILABLE.
				grpcreply.Write(w, grpcreply.StatusFor(http.StatusServiceUnavailable), "upstream connect error")
				return
			}
			http.Error(w, "upstream connect error", http.StatusServiceUnavailable)
		},
	}
	// gRPC reaches the app as it left the client: HTTP/2, here in clear text (h2c).
	h2c := &http.Transport{Protocols: new(http.Protocols), MaxIdleConnsPerHost: 1024, IdleConnTimeout: 90 * time.Second}
	h2c.Protocols.SetUnencryptedHTTP2(true)
	s.grpcProxy = &httputil.ReverseProxy{Rewrite: s.proxy.Rewrite, ErrorHandler: s.proxy.ErrorHandler, Transport: h2c, BufferPool: bufferPool{}}
	s.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "istio_requests_total",
		Help: "Requests, labelled as Istio labels them (reporter destination: inbound; source: outbound).",
	}, []string{"reporter", "destination_workload", "destination_workload_namespace", "source_principal", "response_code", "connection_security_policy"})
	s.resets = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "rampart_inbound_plaintext_resets_total",
		Help: "Plaintext connections reset because the port is STRICT.",
	})
	s.plaintext = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "rampart_inbound_plaintext_requests_total",
		Help: "Requests that reached the workload without mTLS, by client IP ('other' past 1000 clients): who still needs mTLS before STRICT.",
	}, []string{"source_ip"})
	s.plainIPs = map[string]bool{}
	s.refused = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "rampart_inbound_connections_refused_total",
		Help: "Connections closed on accept because MaxConnections were open.",
	})
	s.outside = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "rampart_inbound_connections_outside_capture_total",
		Help: "Connections a captured inbound listener (--transparent) refused: not redirected by iptables, or over IPv6 from another port than the app's.",
	}, []string{"reason"})
	if cfg.Captured {
		_, port, err := net.SplitHostPort(cfg.App)
		if err == nil {
			s.appPort, err = net.LookupPort("tcp", port)
		}
		if err != nil || s.appPort == 0 {
			return nil, fmt.Errorf("inbound: app address %q: a captured listener needs the app's port: %v", cfg.App, err)
		}
		s.warned = map[int]bool{}
	}
	// istio_requests_total is shared with the outbound path (reporter
	// source), and the rest with a gateway's guard on the same sidecar: a
	// collector registered already is reused.
	var err error
	if s.requests, err = register(cfg.Metrics, s.requests); err != nil {
		return nil, err
	}
	if s.resets, err = register(cfg.Metrics, s.resets); err != nil {
		return nil, err
	}
	if s.plaintext, err = register(cfg.Metrics, s.plaintext); err != nil {
		return nil, err
	}
	if s.refused, err = register(cfg.Metrics, s.refused); err != nil {
		return nil, err
	}
	if s.outside, err = register(cfg.Metrics, s.outside); err != nil {
		return nil, err
	}
	return s, nil
}

// register registers c with reg, or returns the collector registered there
// already under its name.
func register[T prometheus.Collector](reg prometheus.Registerer, c T) (T, error) {
	err := reg.Register(c)
	var are prometheus.AlreadyRegisteredError
	if errors.As(err, &are) {
		if existing, ok := are.ExistingCollector.(T); ok {
			return existing, nil
		}
	}
	return c, err
}

// Run serves until ctx ends.
func (s *Server) Run(ctx context.Context) error {
	conns := listener.NewChan(s.cfg.Listener.Addr())
	// HTTP/2 comes here from h1.Server: over TLS with ALPN h2, or as h2c
	// (plaintext with prior knowledge, or TLS whose ALPN said otherwise).
	protocols := new(http.Protocols)
	protocols.SetHTTP1(true)
	protocols.SetHTTP2(true)
	protocols.SetUnencryptedHTTP2(true)
	hs := &http.Server{
		Protocols:         protocols,
		Handler:           http.HandlerFunc(s.serveHTTP),
		ReadHeaderTimeout: s.cfg.HeaderTimeout,
		MaxHeaderBytes:    64 << 10,
		IdleTimeout:       2 * time.Minute,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, connKey{}, c)
		},
	}
	// HTTP/1.x is served by h1.Server on each connection's goroutine; HTTP/2
	// connections go to net/http's server through conns.
	srv := &h1.Server{
		Handler:        hs.Handler,
		ConnContext:    hs.ConnContext,
		HeaderTimeout:  hs.ReadHeaderTimeout,
		IdleTimeout:    hs.IdleTimeout,
		MaxHeaderBytes: hs.MaxHeaderBytes,
		HTTP2:          conns.Hand,
	}
	errc := make(chan error, 2)
	go func() { errc <- hs.Serve(conns) }()
	go func() { errc <- s.accept(ctx, srv) }()
	select {
	case <-ctx.Done():
	case err := <-errc:
		if !errors.Is(err, http.ErrServerClosed) && ctx.Err() == nil {
			s.cfg.Listener.Close()
			return err
		}
	}
	s.cfg.Listener.Close()
	conns.Close()
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	_ = hs.Shutdown(sctx)
	// HTTP/1.x connections (h1.Server closes them once idle) and TCP splices
	// are the accept loop's own: Run returns once they are done, or at the
	// same deadline, so what serves after it (the decision log) sees every
	// request decided before shutdown.
	drained := make(chan struct{})
	go func() { s.served.Wait(); close(drained) }()
	select {
	case <-drained:
	case <-sctx.Done():
	}
	return nil
}

type connKey struct{}

// accept classifies each connection by the port's mode and hands the ones that
// may proceed to the HTTP server.
func (s *Server) accept(ctx context.Context, srv *h1.Server) error {
	return listener.Serve(ctx, s.cfg.Listener, func(c net.Conn) {
		mode := s.cfg.Mode
		if s.cfg.ModeFunc != nil {
			if m := s.cfg.ModeFunc(); m == ModeDisable || m == ModePermissive || m == ModeStrict {
				mode = m
			}
		}
		select {
		case s.slots <- struct{}{}:
		default:
			s.refused.Inc()
			c.Close()
			return
		}
		local := originalDst(c)
		// Redirected from another of the pod's ports: authorized as a TCP
		// connection to that port and passed to it, as Istio's inbound
		// passthrough (outsideCapture).
		var passTo *net.TCPAddr
		if s.cfg.Captured {
			var refuse bool
			if passTo, refuse = s.outsideCapture(c, local); refuse {
				<-s.slots
				c.Close()
				return
			}
			if passTo != nil && s.cfg.PortModeFunc != nil {
				if m := s.cfg.PortModeFunc(passTo.Port); m == ModeDisable || m == ModePermissive || m == ModeStrict {
					mode = m // that port's portLevelMtls, or the workload's
				}
			}
		}
		c = &slotConn{Conn: c, release: func() { <-s.slots }, local: local}
		s.served.Add(1)
		go func() {
			defer s.served.Done()
			sc, kind, err := listener.Sniff(c, s.cfg.SniffTimeout)
			if err != nil {
				c.Close()
				return
			}
			var conn net.Conn = sc
			if kind == listener.KindTLS && mode == ModePermissive {
				// PERMISSIVE, as Istio's inbound filter chains: TLS
				// from a mesh peer (its ALPN carries Istio's names,
				// which every sidecar's upstream TLS offers) is mTLS to
				// end here; other TLS is a client outside the mesh
				// talking TLS to the app itself, passed through as TCP.
				rc, hello, err := listener.ReadHello(sc, 0, s.cfg.SniffTimeout)
				if err != nil {
					c.Close()
					return
				}
				if !meshALPN(hello.ALPN) {
					s.serveTCP(ctx, rc, hello.ServerName, passTo)
					return
				}
				conn = rc
			}
			switch {
			case kind == listener.KindTLS && mode != ModeDisable:
				tc := tls.Server(conn, s.tlsCfg)
				hctx, cancel := context.WithTimeout(ctx, s.cfg.SniffTimeout)
				err := tc.HandshakeContext(hctx)
				cancel()
				if err != nil {
					s.log.Debug("inbound TLS handshake failed", "peer", c.RemoteAddr().String(), "err", err)
					c.Close()
					return
				}
				conn = tc
			case kind == listener.KindTLS: // DISABLE: no mTLS termination
			case mode == ModeStrict:
				s.resets.Inc()
				s.log.Info("plaintext connection reset: the port is STRICT", "peer", c.RemoteAddr().String())
				reset(c)
				return
			}
			if passTo != nil {
				s.serveTCP(ctx, conn, "", passTo)
				return
			}
			proto := s.cfg.Protocol
			if proto == ProtocolAuto {
				if proto, conn, err = s.detect(conn); err != nil {
					conn.Close()
					return
				}
			}
			if proto == authz.ProtocolTCP {
				s.serveTCP(ctx, conn, "", nil)
				return
			}
			srv.ServeConn(ctx, conn)
		}()
	})
}

// meshALPN says whether a ClientHello's ALPN list is a mesh client's: the
// names a sidecar offers for mTLS ("istio", "istio-peer-exchange",
// "istio-http/1.1", "istio-h2", ...), or exactly "h2", all that grpc-go's xDS
// credentials offer (Rampart's proxyless gRPC clients, which ignore the
// cluster's alpn_protocols). The price of the second: a gRPC client outside
// the mesh talking TLS to the app itself on a PERMISSIVE port has its TLS
// ended here (and needs mesh credentials), where Istio would pass it through.
func meshALPN(alpn []string) bool {
	if len(alpn) == 1 && alpn[0] == "h2" {
		return true
	}
	for _, a := range alpn {
		if a == "istio" || strings.HasPrefix(a, "istio-") {
			return true
		}
	}
	return false
}

// ProtocolAuto detects each connection's protocol.
const ProtocolAuto = "auto"

// httpALPN are the ALPN names that say the client sends HTTP: the standard
// ones, and Istio's, which its sidecars offer to say what they carry.
var httpALPN = map[string]bool{"h2": true, "http/1.1": true, "http/1.0": true, "istio-http/1.0": true, "istio-http/1.1": true, "istio-h2": true}

// detect decides whether a connection on an "auto" port carries HTTP: an HTTP
// ALPN name settles it; otherwise (plaintext, or ALPN "istio", which a sidecar
// offers for any TCP stream) the first bytes do, as Istio's HTTP inspector
// does. A client that sends nothing within the sniffing timeout gets TCP (a
// protocol where the server speaks first).
func (s *Server) detect(conn net.Conn) (string, net.Conn, error) {
	if tc, ok := conn.(*tls.Conn); ok && httpALPN[tc.ConnectionState().NegotiatedProtocol] {
		return authz.ProtocolHTTP, conn, nil
	}
	sc, isHTTP, err := listener.SniffHTTP(conn, s.cfg.SniffTimeout)
	if err != nil {
		return "", conn, err
	}
	var out net.Conn = sc
	if tc, ok := conn.(*tls.Conn); ok {
		// The HTTP server sees TLS only on a *tls.Conn; keep the handshake's
		// state (the peer's certificate) with the replaying wrapper.
		out = &sniffedTLS{Conn: sc, tls: tc}
	}
	if isHTTP {
		return authz.ProtocolHTTP, out, nil
	}
	return authz.ProtocolTCP, out, nil
}

// sniffedTLS is a TLS connection whose first decrypted bytes were read to
// detect its protocol.
type sniffedTLS struct {
	net.Conn
	tls *tls.Conn
}

// ConnectionState is the handshake's (h1.Server sets the request's TLS from it).
func (c *sniffedTLS) ConnectionState() tls.ConnectionState { return c.tls.ConnectionState() }

// reset closes c with a TCP RST rather than a FIN, as Envoy does for STRICT.
func reset(c net.Conn) {
	inner := c
	if sc, ok := c.(*slotConn); ok {
		inner = sc.Conn
	}
	if tc, ok := inner.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	c.Close()
}

func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	if r.TLS == nil {
		// A TLS connection served as HTTP/2 whose ALPN did not say h2
		// (h1.TLSView), or one sniffed on an auto port (sniffedTLS).
		switch c := ctx.Value(connKey{}).(type) {
		case *h1.TLSView:
			st := c.State
			r.TLS = &st
		case *sniffedTLS:
			st := c.tls.ConnectionState()
			r.TLS = &st
		}
	}
	security := "none"
	principal := ""
	if r.TLS != nil {
		security = "mutual_tls"
		if id, err := peer.ID(*r.TLS); err == nil {
			principal = id.String()
		}
	}
	reqID := r.Header.Get("x-request-id")
	if reqID == "" {
		reqID = uuid.New()
		r.Header.Set("x-request-id", reqID)
	}
	// A response that broke off after its status went out ends in a panic
	// (http.ErrAbortHandler, so the client sees it cut short); it still
	// counts, with the status it was sent with, as Envoy counts it.
	var sent int
	defer func() {
		if p := recover(); p != nil {
			s.count(r, principal, security, sent)
			panic(p)
		}
	}()
	s.count(r, principal, security, s.handle(ctx, w, r, principal, reqID, &sent))
}

// count records a served request in istio_requests_total (and a plaintext
// caller's address, for mtls readiness).
func (s *Server) count(r *http.Request, principal, security string, code int) {
	if security == "none" {
		ip, _, _ := net.SplitHostPort(r.RemoteAddr)
		s.mu.Lock()
		if !s.plainIPs[ip] && len(s.plainIPs) >= maxPlaintextSources {
			ip = "other"
		} else {
			s.plainIPs[ip] = true
		}
		s.mu.Unlock()
		s.plaintext.WithLabelValues(ip).Inc()
	}
	s.requests.WithLabelValues("destination", s.cfg.Workload.Name, s.cfg.Workload.Namespace, principalLabel(principal), strconv.Itoa(code), security).Inc()
}

func principalLabel(p string) string {
	if p == "" {
		return "unknown"
	}
	return p
}

// handle serves one request; *sent is the status once it has gone out.
func (s *Server) handle(ctx context.Context, w http.ResponseWriter, r *http.Request, principal, reqID string, sent *int) int {
	code, ok, respOps := s.check(ctx, w, r, principal, reqID)
	if !ok {
		return code
	}
	if len(respOps) > 0 {
		w = &responseOps{ResponseWriter: w, ops: respOps}
	}
	grpc := r.ProtoMajor == 2 && strings.HasPrefix(r.Header.Get("content-type"), "application/grpc")
	if !grpc && !httpguts.HeaderValuesContainsToken(r.Header["Connection"], "upgrade") {
		return s.forward(w, r, sent)
	}
	rec := &statusRecorder{ResponseWriter: w, code: 200}
	defer func() { *sent = rec.code }()
	if grpc {
		s.grpcProxy.ServeHTTP(rec, r)
	} else {
		s.proxy.ServeHTTP(rec, r)
	}
	return rec.code
}

// Guard runs request authentication and authorization on a request that
// arrived somewhere else (an ingress gateway's listener): it returns true when
// the request may proceed, with its headers updated as authentication says
// (claims to headers, token removed), or writes the denial and returns false.
func (s *Server) Guard(w http.ResponseWriter, r *http.Request) bool {
	reqID := r.Header.Get("x-request-id")
	if reqID == "" {
		reqID = uuid.New()
		r.Header.Set("x-request-id", reqID)
	}
	_, ok, respOps := s.check(r.Context(), w, r, "", reqID)
	if ok {
		// The gateway's own forwarding adds the upstream's headers to
		// these; they are set now.
		applyResponseOps(w.Header(), respOps)
	}
	return ok
}

// check decides a request; when it is denied the answer is written and ok is false.
// check authenticates and authorizes r. A denial is written to w; an allowed
// request has its headers updated for the app, and comes with the response
// header operations of the CUSTOM providers that allowed it
// (response_headers_to_add), to apply to the app's response.
func (s *Server) check(ctx context.Context, w http.ResponseWriter, r *http.Request, principal, reqID string) (int, bool, []authz.ResponseHeader) {
	ar := &authz.Request{
		ID: reqID, Protocol: authz.ProtocolHTTP, SourcePrincipal: principal,
		Method: r.Method, Host: r.Host, Path: r.URL.RequestURI(), Scheme: "http",
		Workload: s.cfg.Workload,
	}
	if r.ProtoMajor == 2 && strings.HasPrefix(r.Header.Get("content-type"), "application/grpc") {
		ar.Protocol = authz.ProtocolGRPC
	}
	if host, port, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		ar.SourceIP = host
		ar.SourcePort, _ = strconv.Atoi(port)
	}
	// The destination is the listener's address: the inbound connection's,
	// or for a gateway's request (Guard) its own listener's, which its
	// server puts in the context.
	var local net.Addr
	if c, ok := ctx.Value(connKey{}).(net.Conn); ok {
		local = c.LocalAddr()
	} else if a, ok := ctx.Value(http.LocalAddrContextKey).(net.Addr); ok {
		local = a
	}
	if local != nil {
		if host, port, err := net.SplitHostPort(local.String()); err == nil {
			ar.DestinationIP = host
			ar.DestinationPort, _ = strconv.Atoi(port)
		}
	}
	if r.TLS != nil {
		ar.SNI = r.TLS.ServerName
	}
	// The client's X-Forwarded-Client-Cert is never trusted: it is
	// replaced by the sidecar's statement of the verified peer before
	// anything reads the request (policies, CUSTOM providers, the app), as
	// Envoy's connection manager sets it ahead of its filters.
	delete(r.Header, "X-Forwarded-Client-Cert")
	var xfcc []string
	if principal != "" {
		xfcc = []string{"By=" + spiffeIDOf(s.cfg.SVID) + ";URI=" + principal}
		r.Header["X-Forwarded-Client-Cert"] = xfcc
	}
	ar.Headers = make([]authz.Header, 0, len(r.Header)+2)
	for name, vals := range r.Header {
		for _, v := range vals {
			ar.Headers = append(ar.Headers, authz.Header{Name: name, Value: v})
		}
	}
	// CUSTOM providers that include the body in their check get its start,
	// read when the first of them is asked; the app gets it whole, from the
	// same bytes on.
	if r.Body != nil && r.Body != http.NoBody && r.ContentLength != 0 {
		ar.ReadBody = func(limit int) (*authz.RequestBody, error) { return readBodyStart(r, limit) }
	}
	// Request authentication. CUSTOM runs before it (Istio's filter order), so a
	// CUSTOM denial wins over a JWT failure, and CUSTOM policies see the request
	// as it came (ar.BeforeAuthn); AUDIT, DENY and ALLOW see it with the token's
	// identity and authentication's header changes, as Envoy's RBAC does.
	var an AuthnResult
	if s.cfg.Authn != nil {
		an = s.cfg.Authn.Authenticate(ctx, r)
		set := make([]authz.Header, len(an.SetHeaders))
		for i, h := range an.SetHeaders {
			set[i] = authz.Header{Name: h[0], Value: h[1]}
		}
		ar = ar.AfterAuthn(an.Auth, an.RemoveHeaders, set)
	}
	d := s.cfg.Engine.Decide(ctx, ar)
	if s.cfg.OnDecide != nil {
		s.cfg.OnDecide(ctx, ar, d)
	}
	w.Header().Set("x-rampart-decision-id", d.DecisionID)
	// Headers the CUSTOM providers that allowed the request add to the
	// client's response (response_headers_to_add): Envoy adds them to any
	// response, a later filter's denial (here) or the app's (by handle,
	// once the app's headers are in: set replaces the app's value, append
	// adds to it).
	denying := an.Status != 0 || !d.Allowed
	if denying {
		applyResponseOps(w.Header(), d.ResponseHeaders)
	}
	if an.Status != 0 && !(d.Stage == "custom" && !d.Allowed) {
		if an.WWWAuthenticate != "" {
			w.Header().Set("WWW-Authenticate", an.WWWAuthenticate)
		}
		msg := "Jwt verification fails"
		if an.Status == http.StatusForbidden {
			msg = "Audiences in Jwt are not allowed"
		}
		localReply(w, ar, an.Status, msg)
		return an.Status, false, nil
	}
	if !d.Allowed {
		for k, v := range d.Headers {
			w.Header().Set(k, v)
		}
		body := authz.DeniedBody
		if d.Body != "" {
			body = d.Body
		}
		if d.Status == 400 {
			body = "Bad Request"
		}
		localReply(w, ar, d.Status, body)
		s.log.Info("request denied", "request_id", reqID, "status", d.Status, "detail", d.ResponseCodeDetail(), "reason", d.Reason)
		return d.Status, false, nil
	}
	if s.cfg.RateLimit != nil {
		if res := s.cfg.RateLimit.Check(ar, d.NormalizedPath); res.Limited {
			applyResponseOps(w.Header(), d.ResponseHeaders)
			return s.rateLimited(w, ar, res), false, nil
		}
	}
	// Allowed: what the app sees, in Envoy's filter order. The CUSTOM
	// providers' changes first (ext_authz: set, append, remove; the engine
	// has checked the names and values), then authentication's (jwt_authn
	// runs after ext_authz). A client's X-Forwarded-Client-Cert is never
	// trusted, and a provider cannot set one.
	for k, v := range d.Headers {
		r.Header.Set(k, v)
	}
	for _, h := range d.AppendHeaders {
		r.Header.Add(h.Name, h.Value)
	}
	for _, h := range d.RemoveHeaders {
		if !strings.EqualFold(h, "host") {
			r.Header.Del(h)
		}
	}
	for _, h := range an.RemoveHeaders {
		r.Header.Del(h)
	}
	for _, h := range an.SetHeaders {
		r.Header.Set(h[0], h[1])
	}
	// Again after the providers' and authentication's changes, which may not
	// speak for the peer either.
	delete(r.Header, "X-Forwarded-Client-Cert")
	if xfcc != nil {
		r.Header["X-Forwarded-Client-Cert"] = xfcc
	}
	return 200, true, d.ResponseHeaders
}

// applyResponseOps applies CUSTOM providers' response header operations.
func applyResponseOps(h http.Header, ops []authz.ResponseHeader) {
	for _, o := range ops {
		_, has := h[http.CanonicalHeaderKey(o.Name)]
		switch {
		case o.IfAbsent && has, o.IfExists && !has:
		case o.Append:
			h.Add(o.Name, o.Value)
		default:
			h.Set(o.Name, o.Value)
		}
	}
}

// responseOps applies CUSTOM providers' response header operations to the
// app's response as its status goes out, after the app's own headers are in.
type responseOps struct {
	http.ResponseWriter
	ops  []authz.ResponseHeader
	done bool
}

func (o *responseOps) WriteHeader(code int) {
	if !o.done && code >= 200 { // not on 1xx: they come before the response
		o.done = true
		applyResponseOps(o.Header(), o.ops)
	}
	o.ResponseWriter.WriteHeader(code)
}

func (o *responseOps) Write(b []byte) (int, error) {
	if !o.done {
		o.WriteHeader(http.StatusOK)
	}
	return o.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the connection (WebSocket upgrades).
func (o *responseOps) Unwrap() http.ResponseWriter { return o.ResponseWriter }

func (o *responseOps) Flush() {
	if !o.done {
		o.WriteHeader(http.StatusOK)
	}
	if f, ok := o.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func spiffeIDOf(src x509svid.Source) string {
	if src == nil {
		return ""
	}
	if s, err := src.GetX509SVID(); err == nil {
		return s.ID.String()
	}
	return ""
}

type statusRecorder struct {
	http.ResponseWriter
	code int
}

func (r *statusRecorder) WriteHeader(code int) {
	r.code = code
	r.ResponseWriter.WriteHeader(code)
}

// Unwrap lets http.ResponseController reach the connection (WebSocket upgrades).
func (r *statusRecorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

func (r *statusRecorder) Flush() {
	if f, ok := r.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// slotConn gives back its connection slot once, when closed.
type slotConn struct {
	net.Conn
	once    sync.Once
	release func()
	// local is the address the client connected to when iptables redirected
	// the connection to this listener (transparent capture); nil otherwise.
	local net.Addr
}

// LocalAddr is the address the client connected to: with transparent
// capture, the app's port the client dialled (which authorization's
// destination.port and to.operation.ports mean), not the listener's 15006.
func (c *slotConn) LocalAddr() net.Addr {
	if c.local != nil {
		return c.local
	}
	return c.Conn.LocalAddr()
}

// PassthroughSource is the address a captured sidecar's connections to its
// pod's other ports come from (Istio's 127.0.0.6): init leaves connections
// from it to the pod's addresses uncaptured.
const PassthroughSource = "127.0.0.6"

// outsideCapture decides a connection to a captured listener: served as
// the app's, passed through to another of the pod's ports (passTo), or
// refused (counted and logged: the first refusal for each port, of 64, is a
// warning). One sent straight to the listener (15006) is refused: checked as
// 15006 it would reach the app around a DENY on the app's port (Istio drops
// those too). One redirected from another port is Istio's inbound
// passthrough: authorized as a TCP connection to that port and passed to the
// address the kernel redirected it to (the interface's, which the client
// cannot choose; never the original destination, which it can: a loopback
// or IPv4-mapped one would reach services bound to loopback only) at that
// port. Only over IPv4: over IPv6 there is no uncaptured loopback source to
// pass from (Istio adds ::6 to lo), so those are refused.
func (s *Server) outsideCapture(c net.Conn, local net.Addr) (passTo *net.TCPAddr, refuse bool) {
	reason, port := "not_redirected", 0
	if dst, ok := local.(*net.TCPAddr); ok {
		if dst.Port == s.appPort {
			return nil, false
		}
		port = dst.Port
		own, ok := c.LocalAddr().(*net.TCPAddr)
		switch {
		case !ok || own.IP.To4() == nil:
			reason = "other_port_ipv6"
		case own.IP.IsLoopback():
			// The sidecar's own connection to its pod (init's uid rule
			// redirects it to 127.0.0.1): the original destination is the
			// address it dialled, one of the pod's.
			if ip := dst.IP.To4(); ip != nil && !ip.IsLoopback() && !ip.IsUnspecified() {
				return &net.TCPAddr{IP: ip, Port: dst.Port}, false
			}
			reason = "other_port_loopback"
		case own.IP.IsUnspecified():
			reason = "other_port_loopback"
		default:
			return &net.TCPAddr{IP: own.IP.To4(), Port: dst.Port}, false
		}
	}
	s.outside.WithLabelValues(reason).Inc()
	s.warnedMu.Lock()
	first := !s.warned[port] && len(s.warned) < 64
	if first {
		s.warned[port] = true
	}
	s.warnedMu.Unlock()
	log := s.log.Debug
	if first {
		log = s.log.Warn
	}
	switch reason {
	case "not_redirected":
		log("connection refused: not redirected by iptables; a captured inbound listener takes only connections iptables redirected", "peer", c.RemoteAddr().String(), "app_port", s.appPort)
	default:
		log("connection to another port refused: the pod's other ports are passed through over IPv4 to the pod's address only; exclude the port from capture (init --exclude-inbound-ports) to reach it otherwise", "peer", c.RemoteAddr().String(), "port", port, "app_port", s.appPort, "reason", reason)
	}
	return nil, true
}

// originalDst is c's destination before an iptables REDIRECT, or nil when
// the connection was not redirected (or the kernel cannot say: no
// connection tracking). Only the kernel sets it; a client cannot.
func originalDst(c net.Conn) net.Addr {
	for range 8 {
		if _, ok := c.(*net.TCPConn); ok {
			break
		}
		u, ok := c.(interface{ NetConn() net.Conn })
		if !ok {
			return nil
		}
		c = u.NetConn()
	}
	dst, err := listener.OriginalDst(c)
	if err != nil {
		return nil
	}
	local, ok := c.LocalAddr().(*net.TCPAddr)
	// The zones are left out: the listener's names its interface, the
	// kernel's original destination gives its index.
	if ok && local.Port == int(dst.Port()) && local.AddrPort().Addr().Unmap().WithZone("") == dst.Addr().WithZone("") {
		return nil
	}
	return net.TCPAddrFromAddrPort(dst)
}

func (c *slotConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}

// CloseWrite half-closes the connection underneath, so the HTTP/1 server can
// linger over unread request bytes (rather than have the kernel reset a
// response the client has not read) and TCP splicing passes a half-close on.
// The slot is kept until Close.
func (c *slotConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Close()
}

// serveTCP authorizes a TCP connection on its attributes (peer identity, IPs,
// ports, SNI) and, if allowed, splices it to the app; a denied connection is
// closed, as Envoy's network RBAC filter does.
func (s *Server) serveTCP(ctx context.Context, c net.Conn, sni string, passTo *net.TCPAddr) {
	defer c.Close()
	ar := &authz.Request{ID: uuid.New(), Protocol: authz.ProtocolTCP, Workload: s.cfg.Workload, SNI: sni}
	security := "none"
	tc, ok := c.(*tls.Conn)
	if sc, sniffed := c.(*sniffedTLS); sniffed {
		tc, ok = sc.tls, true
	}
	if ok {
		st := tc.ConnectionState()
		security = "mutual_tls"
		if id, err := peer.ID(st); err == nil {
			ar.SourcePrincipal = id.String()
		}
		ar.SNI = st.ServerName
	}
	if host, port, err := net.SplitHostPort(c.RemoteAddr().String()); err == nil {
		ar.SourceIP = host
		ar.SourcePort, _ = strconv.Atoi(port)
	}
	if host, port, err := net.SplitHostPort(c.LocalAddr().String()); err == nil {
		ar.DestinationIP = host
		ar.DestinationPort, _ = strconv.Atoi(port)
	}
	if passTo != nil {
		// Where the connection goes, not the address the client wrote.
		ar.DestinationIP = passTo.IP.String()
	}
	d := s.cfg.Engine.Decide(ctx, ar)
	if s.cfg.OnDecide != nil {
		s.cfg.OnDecide(ctx, ar, d)
	}
	code := "200"
	if !d.Allowed {
		code = "403"
		s.log.Info("connection denied", "request_id", ar.ID, "peer", ar.SourcePrincipal, "detail", d.ResponseCodeDetail(), "reason", d.Reason)
		s.requests.WithLabelValues("destination", s.cfg.Workload.Name, s.cfg.Workload.Namespace, principalLabel(ar.SourcePrincipal), code, security).Inc()
		return
	}
	var dialer net.Dialer
	to := s.cfg.App
	if passTo != nil {
		// To the pod's own address at the port the client dialled, so what
		// listens on loopback only stays out of reach; from 127.0.0.6, which
		// init leaves uncaptured (the sidecar's other connections to its pod
		// come back to this listener).
		to = passTo.String()
		dialer.LocalAddr = &net.TCPAddr{IP: net.ParseIP(PassthroughSource)}
	}
	app, err := dialer.DialContext(ctx, "tcp", to)
	if err != nil {
		if passTo != nil {
			// Nothing listening on the pod's address at that port: as a
			// port scan would find, not a fault of the app's.
			s.log.Debug("passthrough: nothing listens on the pod's address at this port", "to", to, "err", err)
			return
		}
		s.log.Warn("app unreachable", "app", to, "err", err)
		return
	}
	defer app.Close()
	s.requests.WithLabelValues("destination", s.cfg.Workload.Name, s.cfg.Workload.Namespace, principalLabel(ar.SourcePrincipal), code, security).Inc()
	listener.Splice(c, app)
}

// bufferPool reuses ReverseProxy's copy buffers (32 KiB each), which it would
// otherwise allocate and zero for every request.
type bufferPool struct{}

var proxyBufs = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

func (bufferPool) Get() []byte  { return *(proxyBufs.Get().(*[]byte)) }
func (bufferPool) Put(b []byte) { proxyBufs.Put(&b) }

// readBodyStart reads up to limit bytes of r's body (one more, to know
// whether that is all of it), and puts them back in front of the rest, so
// the app reads the body whole.
func readBodyStart(r *http.Request, limit int) (*authz.RequestBody, error) {
	buf, err := io.ReadAll(io.LimitReader(r.Body, int64(limit)+1))
	if err != nil {
		return nil, err
	}
	r.Body = &replayBody{Reader: io.MultiReader(bytes.NewReader(buf), r.Body), Closer: r.Body}
	if len(buf) > limit {
		return &authz.RequestBody{Data: buf[:limit]}, nil
	}
	return &authz.RequestBody{Data: buf, Complete: true}, nil
}

// replayBody is a request body whose start was read for the decision.
type replayBody struct {
	io.Reader
	io.Closer
}
