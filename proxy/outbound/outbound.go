// Package outbound is the sidecar's outbound path: the app's requests into the
// mesh. In explicit capture the app sends to the outbound listener (as its HTTP
// proxy, or with the service's host in the Host header); the request's port
// picks the listener's route configuration, the route picks a cluster, and the
// upstream manager sends it, with mTLS to peers in the mesh. Faults, retries,
// timeouts, mirroring, redirects and header rewrites follow the route.
//
// It is data plane: it must not import policies/... or ca/server.
package outbound

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rampart-mesh/rampart/internal/replay"
	"github.com/rampart-mesh/rampart/internal/uuid"
	"github.com/rampart-mesh/rampart/proxy/grpcreply"
	"github.com/rampart-mesh/rampart/proxy/h1"
	"github.com/rampart-mesh/rampart/proxy/listener"
	"github.com/rampart-mesh/rampart/proxy/route"
	"github.com/rampart-mesh/rampart/proxy/upstream"
	"github.com/rampart-mesh/rampart/proxy/xds"
)

// Config configures a Server.
type Config struct {
	// Listener is the outbound listener (127.0.0.1:15001 in explicit capture).
	Listener net.Listener
	// Upstreams sends requests to clusters.
	Upstreams *upstream.Manager
	// Transparent serves connections redirected by iptables (rampart-sidecar
	// init): each one's original destination picks the route configuration (by
	// port) or the TCP route; what no route knows passes through to where it
	// was going. TCP, when set, holds the TCP routes.
	Transparent bool
	TCP         *TCP
	// Gateway makes this an ingress gateway listener: the route configuration
	// is chosen by the port the listener is bound to, not by the Host header.
	Gateway bool
	// Guard, if set, checks each request first (an ingress gateway's request
	// authentication and authorization); false means it answered.
	Guard func(http.ResponseWriter, *http.Request) bool
	// AccessLogAll logs every request at info level; by default successes are
	// logged at debug level and failures (flags, 5xx) at info.
	AccessLogAll bool
	// Workload names the proxy in metrics and logs; Principal is its SPIFFE ID.
	Workload, Namespace, Principal string
	// MaxRetryBody is the largest request body kept to replay on retry; larger
	// bodies are streamed and not retried. Default 64 KiB.
	MaxRetryBody int64
	Log          *slog.Logger
	Metrics      prometheus.Registerer
}

// Server is the outbound path.
type Server struct {
	cfg      Config
	log      *slog.Logger
	state    atomic.Pointer[state]
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
	rnd      func() uint64
	h1       *h1.Server // serves HTTP/1.x connections (set by Run)
	// mirrorsSkipped counts mirrors not sent because the request body was
	// larger than MaxRetryBody (the copy would need all of it).
	mirrorsSkipped prometheus.Counter
}

// state is one applied configuration: the route table and which route
// configuration serves each port.
type state struct {
	table *route.Table
	ports map[int]string // port → route configuration name
}

// New validates cfg. It does no I/O.
func New(cfg Config) (*Server, error) {
	if cfg.Listener == nil || cfg.Upstreams == nil {
		return nil, errors.New("outbound: Listener and Upstreams are required")
	}
	if cfg.MaxRetryBody == 0 {
		cfg.MaxRetryBody = 64 << 10
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Metrics == nil {
		cfg.Metrics = prometheus.NewRegistry()
	}
	s := &Server{cfg: cfg, log: cfg.Log.With("component", "outbound"), rnd: rand.Uint64}
	// The same metric as the inbound path's, so both register as one.
	s.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "istio_requests_total",
		Help: "Requests, labelled as Istio labels them (reporter destination: inbound; source: outbound).",
	}, []string{"reporter", "destination_workload", "destination_workload_namespace", "source_principal", "response_code", "connection_security_policy"})
	s.duration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "istio_request_duration_milliseconds",
		Help:    "Request duration as the client's sidecar saw it.",
		Buckets: []float64{1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000},
	}, []string{"reporter", "source_workload", "destination_service", "response_code"})
	if err := cfg.Metrics.Register(s.requests); err != nil {
		var are prometheus.AlreadyRegisteredError
		if !errors.As(err, &are) {
			return nil, err
		}
		s.requests = are.ExistingCollector.(*prometheus.CounterVec)
	}
	s.mirrorsSkipped = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "rampart_outbound_mirrors_skipped_total",
		Help: "Mirrored requests not sent because the request body was larger than the buffer limit.",
	})
	if err := cfg.Metrics.Register(s.mirrorsSkipped); err != nil {
		var are prometheus.AlreadyRegisteredError
		if !errors.As(err, &are) {
			return nil, err
		}
		s.mirrorsSkipped = are.ExistingCollector.(prometheus.Counter)
	}
	if err := cfg.Metrics.Register(s.duration); err != nil {
		var are prometheus.AlreadyRegisteredError
		if !errors.As(err, &are) {
			return nil, err
		}
		s.duration = are.ExistingCollector.(*prometheus.HistogramVec)
	}
	return s, nil
}

// Prepare validates the listeners and routes of a complete set of resources
// and returns the function that installs them; nothing changes until it is
// called, so the caller can update clusters in between, all or nothing.
func (s *Server) Prepare(res *xds.Resources) (func(), error) {
	ports := map[int]string{}
	for name, l := range res.Listeners {
		rn, err := xds.RouteNameOf(l)
		if err != nil {
			return nil, fmt.Errorf("listener %s: %w", name, err)
		}
		if rn == "" {
			continue // a TCP listener: the TCP routes (tcp.go) serve it
		}
		gateway := l.GetTrafficDirection() == corev3.TrafficDirection_INBOUND
		if gateway != s.cfg.Gateway {
			continue
		}
		port := int(l.GetAddress().GetSocketAddress().GetPortValue())
		if port == 0 {
			return nil, fmt.Errorf("listener %s: no port", name)
		}
		ports[port] = rn
	}
	routes := make([]*routev3.RouteConfiguration, 0, len(res.Routes))
	for _, r := range res.Routes {
		routes = append(routes, r)
	}
	table, err := route.New(routes)
	if err != nil {
		return nil, err
	}
	return func() { s.state.Store(&state{table: table, ports: ports}) }, nil
}

// Run serves until ctx ends.
func (s *Server) Run(ctx context.Context) error {
	// HTTP/1.1 and h2c: a gRPC app speaks HTTP/2 in clear text to its sidecar.
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	hs := &http.Server{
		Handler:           s,
		ReadHeaderTimeout: 10 * time.Second,
		MaxHeaderBytes:    64 << 10,
		IdleTimeout:       2 * time.Minute,
		Protocols:         &protos,
	}
	errc := make(chan error, 2)
	// HTTP/1.x is served by h1.Server on each connection's goroutine; HTTP/2
	// (h2c) connections are handed to net/http's server through conns.
	conns := listener.NewChan(s.cfg.Listener.Addr())
	defer conns.Close()
	connContext := func(ctx context.Context, c net.Conn) context.Context {
		if rc, ok := c.(*replay.Conn); ok {
			c = rc.Conn
		}
		if tc, ok := c.(*transparentConn); ok {
			return context.WithValue(ctx, origDstKey{}, tc.dst)
		}
		return ctx
	}
	hs.ConnContext = connContext
	s.h1 = &h1.Server{
		Handler:        s,
		ConnContext:    connContext,
		HeaderTimeout:  hs.ReadHeaderTimeout,
		IdleTimeout:    hs.IdleTimeout,
		MaxHeaderBytes: hs.MaxHeaderBytes,
		HTTP2:          conns.Hand,
	}
	go func() { errc <- hs.Serve(conns) }()
	if s.cfg.Transparent {
		go func() { errc <- s.acceptTransparent(ctx) }()
	} else {
		go func() {
			errc <- listener.Serve(ctx, s.cfg.Listener, func(c net.Conn) { go s.h1.ServeConn(ctx, c) })
		}()
	}
	select {
	case <-ctx.Done():
	case err := <-errc:
		if !errors.Is(err, http.ErrServerClosed) {
			s.cfg.Listener.Close()
			return err
		}
	}
	s.cfg.Listener.Close()
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	_ = hs.Shutdown(sctx)
	return nil
}

// result is what the access log and metrics record of one request.
type result struct {
	code    int
	flags   string
	cluster string
	host    string
	detail  string
	// attempts is how many times the request was sent upstream (Envoy's
	// UPSTREAM_REQUEST_ATTEMPT_COUNT); 0 when it never was.
	attempts int
	// abort: the upstream's body broke off after the response started. The
	// handler panics with http.ErrAbortHandler once the request is recorded.
	abort bool
}

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	res := s.serve(w, r)
	s.requests.WithLabelValues("source", hostOnly(r.Host), s.cfg.Namespace, s.cfg.Principal, strconv.Itoa(res.code), "unknown").Inc()
	s.duration.WithLabelValues("source", s.cfg.Workload, hostOnly(r.Host), strconv.Itoa(res.code)).Observe(float64(time.Since(start)) / float64(time.Millisecond))
	// Every request that failed or was shaped by the proxy (a response flag,
	// a 5xx) is logged; plain successes only at debug level, so the access
	// log costs nothing on the hot path unless asked for.
	level := slog.LevelDebug
	if res.flags != "" || res.code >= 500 || res.attempts > 1 || s.cfg.AccessLogAll {
		level = slog.LevelInfo
	}
	if s.log.Enabled(r.Context(), level) {
		s.log.Log(r.Context(), level, "access", "method", r.Method, "authority", r.Host, "path", r.URL.RequestURI(), "status", res.code,
			"flags", flagOrDash(res.flags), "detail", res.detail, "cluster", res.cluster, "upstream", res.host,
			"attempts", res.attempts, "duration_ms", time.Since(start).Milliseconds(), "request_id", r.Header.Get("x-request-id"))
	}
	if res.abort {
		// Returning would let the server end the message (the last chunk,
		// END_STREAM) and the client would take a short body for a whole
		// one; the abort cuts the connection (or resets the stream) instead.
		panic(http.ErrAbortHandler)
	}
}

// copyBufs are the buffers responses are copied through, reused.
var copyBufs = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

func flagOrDash(f string) string {
	if f == "" {
		return "-"
	}
	return f
}

func hostOnly(h string) string {
	if host, _, err := net.SplitHostPort(h); err == nil {
		return host
	}
	return h
}

// target returns the authority and port a request is for: the absolute URL of
// a proxy request, else the Host header; port 80 when none is given.
func target(r *http.Request) (string, int) {
	host := r.Host
	if r.URL.IsAbs() && r.URL.Host != "" {
		host = r.URL.Host
	}
	if h, p, err := net.SplitHostPort(host); err == nil {
		n, err := strconv.Atoi(p)
		if err == nil && n > 0 && n < 65536 {
			return host, n
		}
		return h, 0
	}
	return host, 80
}

func (s *Server) serve(w http.ResponseWriter, r *http.Request) result {
	st := s.state.Load()
	if st == nil {
		return reply(w, r, http.StatusServiceUnavailable, "NC", "no configuration from the control plane yet")
	}
	if s.cfg.Guard != nil {
		rec := &codeRecorder{ResponseWriter: w}
		if !s.cfg.Guard(rec, r) {
			return result{code: rec.code, flags: "UAEX", detail: "denied by the gateway's policy"}
		}
	}
	if r.Method == http.MethodConnect {
		return reply(w, r, http.StatusMethodNotAllowed, "NR", "CONNECT is not supported on the outbound listener")
	}
	authority, port := target(r)
	r.Host = authority
	dst, transparent := r.Context().Value(origDstKey{}).(netip.AddrPort)
	if transparent {
		port = int(dst.Port())
	}
	if s.cfg.Gateway {
		port = 0
		if a, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr); ok {
			if tcp, ok := a.(*net.TCPAddr); ok {
				port = tcp.Port
			}
		}
	}
	rc, ok := st.ports[port]
	if !ok && transparent {
		return s.passthrough(w, r, dst)
	}
	if !ok {
		return reply(w, r, http.StatusNotFound, "NR", fmt.Sprintf("no listener for port %d", port))
	}
	// The route is matched on what the app asked for; absolute-form targets become origin-form.
	if r.URL.IsAbs() {
		r.URL.Scheme, r.URL.Host = "", ""
	}
	rt := st.table.Match(rc, r)
	if rt == nil && transparent {
		return s.passthrough(w, r, dst)
	}
	if rt == nil {
		return reply(w, r, http.StatusNotFound, "NR", "route_not_found")
	}
	if r.Header.Get("x-request-id") == "" {
		r.Header.Set("x-request-id", uuid.New())
	}
	// CORS comes before fault injection, as in Istio's filter chain. Envoy's
	// CORS filter is bypassed on a route that redirects or answers directly.
	var cors http.Header
	if rt.Redirect == nil && rt.Direct == nil {
		var res result
		var done bool
		if cors, res, done = s.cors(w, r, rt.Cors); done {
			return res
		}
	}
	if f := rt.Fault; f != nil {
		delay, abort := f.ShouldDelay(s.rnd()), f.ShouldAbort(s.rnd())
		if delay || abort {
			if f.Enter() {
				defer f.Leave()
			} else {
				delay, abort = false, false // max_active_faults reached
			}
		}
		delayed := false
		if delay {
			delayed = true
			t := time.NewTimer(f.Delay)
			select {
			case <-t.C:
			case <-r.Context().Done():
				t.Stop()
				return result{code: 499, flags: "DI,DC", detail: "downstream_remote_disconnect"}
			}
		}
		if abort {
			fi := "FI"
			if delayed {
				fi = "DI,FI" // Envoy logs both
			}
			body := f.AbortBody
			if body == "" {
				body = "fault filter abort"
			}
			if f.AbortGRPC {
				grpcreply.Write(w, f.AbortGRPCStatus, body)
				return result{code: http.StatusOK, flags: fi, detail: "fault_filter_abort"}
			}
			if grpcreply.Is(r) {
				grpcreply.Write(w, grpcreply.StatusFor(f.AbortStatus), body)
				return result{code: http.StatusOK, flags: fi, detail: "fault_filter_abort"}
			}
			w.Header().Set("content-type", "text/plain")
			w.WriteHeader(f.AbortStatus)
			_, _ = io.WriteString(w, body)
			return result{code: f.AbortStatus, flags: fi, detail: "fault_filter_abort"}
		}
		if delayed {
			res := s.forwardOrReply(w, r, rt, cors)
			res.flags = strings.TrimPrefix(res.flags+",DI", ",")
			return res
		}
	}
	return s.forwardOrReply(w, r, rt, cors)
}

// cors is Envoy's CORS filter for a route's policy c. A preflight (OPTIONS
// with Origin and Access-Control-Request-Method) from an origin c allows is
// answered here; one from another origin goes on to the route when c forwards
// unmatched preflights (Istio's unmatchedPreflights FORWARD, the default),
// else gets an empty 200. Any other request from an allowed origin gets
// access-control-allow-origin, -expose-headers and -allow-credentials on its
// response: they are set on w's header now (local replies) and returned in
// extra (nil when there are none: no allocation for a route without CORS),
// which forward sets again over the upstream's. done means w was answered.
func (s *Server) cors(w http.ResponseWriter, r *http.Request, c *route.Cors) (extra http.Header, res result, done bool) {
	if c == nil || !c.Enabled.Hit(s.rnd()) {
		return nil, result{}, false
	}
	origin := r.Header.Get("Origin")
	if origin == "" {
		return nil, result{}, false
	}
	allowed := c.AllowsOrigin(origin)
	if r.Method == http.MethodOptions && r.Header.Get("Access-Control-Request-Method") != "" {
		if !allowed {
			if c.ForwardNotMatchingPreflights {
				return nil, result{}, false
			}
			w.WriteHeader(http.StatusOK)
			return nil, result{code: http.StatusOK, detail: "cors_preflight_origin_not_allowed"}, true
		}
		h := w.Header()
		h.Set("Access-Control-Allow-Origin", origin)
		if c.AllowCredentials {
			h.Set("Access-Control-Allow-Credentials", "true")
		}
		if c.AllowMethods != "" {
			h.Set("Access-Control-Allow-Methods", c.AllowMethods)
		}
		if c.AllowHeaders != "" {
			h.Set("Access-Control-Allow-Headers", c.AllowHeaders)
		}
		if c.MaxAge != "" {
			h.Set("Access-Control-Max-Age", c.MaxAge)
		}
		if c.AllowPrivateNetworkAccess && r.Header.Get("Access-Control-Request-Private-Network") == "true" {
			h.Set("Access-Control-Allow-Private-Network", "true")
		}
		w.WriteHeader(http.StatusOK)
		return nil, result{code: http.StatusOK, detail: "cors_preflight"}, true
	}
	if !allowed {
		return nil, result{}, false
	}
	extra = http.Header{}
	extra.Set("Access-Control-Allow-Origin", origin)
	if c.AllowCredentials {
		extra.Set("Access-Control-Allow-Credentials", "true")
	}
	if c.ExposeHeaders != "" {
		extra.Set("Access-Control-Expose-Headers", c.ExposeHeaders)
	}
	for k, vs := range extra {
		w.Header()[k] = vs
	}
	return extra, result{}, false
}

// forwardOrReply answers a redirect or direct response route itself and
// forwards the rest.
func (s *Server) forwardOrReply(w http.ResponseWriter, r *http.Request, rt *route.Route, extra http.Header) result {
	// The route's response header operations apply to the answers the
	// sidecar makes for it too, as Envoy's.
	switch {
	case rt.Redirect != nil:
		loc := rt.Redirect.Location(r)
		w.Header().Set("Location", loc)
		rt.ApplyResponse(w.Header())
		w.WriteHeader(rt.Redirect.Code)
		return result{code: rt.Redirect.Code, detail: "direct_response"}
	case rt.Direct != nil:
		if rt.Direct.Body != "" {
			w.Header().Set("content-type", "text/plain")
		}
		rt.ApplyResponse(w.Header())
		w.WriteHeader(rt.Direct.Status)
		_, _ = io.WriteString(w, rt.Direct.Body)
		return result{code: rt.Direct.Status, detail: "direct_response"}
	}
	return s.forward(w, r, rt, extra)
}

// reply answers a request with an error of the sidecar's own. A gRPC request
// (r may be nil: not one) gets it as Envoy sends a local reply to one: a
// trailers-only response, HTTP 200, with the gRPC status for code.
func reply(w http.ResponseWriter, r *http.Request, code int, flags, detail string) result {
	w.Header().Set("x-rampart-response-flags", flags)
	if strings.Contains(flags, "UO") {
		w.Header().Set("x-envoy-overloaded", "true") // as Envoy marks its overflow replies
	}
	if r != nil && grpcreply.Is(r) {
		grpcreply.Write(w, grpcreply.StatusFor(code), detail)
		return result{code: http.StatusOK, flags: flags, detail: detail}
	}
	w.Header().Set("content-type", "text/plain")
	w.WriteHeader(code)
	_, _ = io.WriteString(w, detail+"\n")
	return result{code: code, flags: flags, detail: detail}
}

func (s *Server) forward(w http.ResponseWriter, r *http.Request, rt *route.Route, extra http.Header) (res result) {
	// The route timeout, like Envoy's, counts from the end of the request
	// (its body read to the end), not from its headers: a slow upload is not
	// an upstream timeout.
	// A route without timers (Istio's default: no timeout) pays for none.
	var end *requestEnd
	if rt.Timeout > 0 || rt.Retry != nil && (rt.Retry.PerTryTimeout > 0 || rt.Retry.PerTryIdleTimeout > 0) {
		end = &requestEnd{}
	}
	ctx := r.Context()
	if rt.Timeout > 0 {
		var cancelRoute context.CancelCauseFunc
		ctx, cancelRoute = context.WithCancelCause(ctx)
		defer cancelRoute(nil)
		stop := end.after(rt.Timeout, func() { cancelRoute(errRouteTimeout) })
		defer stop.Stop()
	}
	// The request is this handler's own: the copy that leaves shares its
	// header map (edited in place) and gets its own URL.
	upgrade := upgradeType(r.Header)
	// gRPC needs "te: trailers" end to end (Envoy keeps it too).
	te := strings.Contains(strings.ToLower(r.Header.Get("Te")), "trailers")
	out := r.WithContext(ctx)
	u := *r.URL
	out.URL = &u
	out.RequestURI = ""
	h1.RemoveHopHeaders(out.Header)
	// The app's x-forwarded-client-cert is not passed on: Envoy's default
	// (SANITIZE) on the sidecar's outbound listeners, so that an app cannot
	// claim a peer identity to an upstream that trusts the header.
	out.Header.Del("X-Forwarded-Client-Cert")
	if upgrade != "" {
		out.Header.Set("Connection", "Upgrade")
		out.Header.Set("Upgrade", upgrade)
	}
	if te {
		out.Header.Set("Te", "trailers")
	}
	switch {
	case s.cfg.Gateway:
		// The mesh's edge: the scheme is the one the client used, whatever
		// it says (Envoy with use_remote_address, as Istio's gateways).
		proto := "http"
		if r.TLS != nil {
			proto = "https"
		}
		out.Header.Set("x-forwarded-proto", proto)
	case out.Header.Get("x-forwarded-proto") == "":
		out.Header.Set("x-forwarded-proto", "http") // a sidecar keeps the app's, as Envoy off the edge
	}
	clusterName := rt.PickCluster(s.rnd())
	rt.ApplyRequestFor(out, clusterName)
	out.URL.Scheme = "http"
	out.URL.Host = out.Host
	cl, ok := s.cfg.Upstreams.Cluster(clusterName)
	if !ok {
		return reply(w, r, http.StatusServiceUnavailable, "NC", "cluster_not_found "+clusterName)
	}
	// A body up to MaxRetryBody is kept so that a retry or a mirror can send
	// it again. One of known length is read first; one of unknown length
	// (chunked, HTTP/2 without content-length) streams to the attempts
	// through a tee that keeps a copy: reading it all first would stall a
	// stream whose client waits for answers before it ends its request.
	// Each attempt reads the tee through a reader of its own whose Close
	// leaves the body open, so that an attempt that failed before reading
	// any of it (connect failure, refused stream) leaves it whole to the
	// next; the tee closes the body once, when the request is done.
	var body []byte
	var tee *bodyTee
	retriable := rt.Retry != nil && rt.Retry.NumRetries > 0 && upgrade == ""
	var mirrors []route.Mirror
	for _, m := range rt.Mirrors {
		if m.ShouldMirror(s.rnd()) {
			mirrors = append(mirrors, m)
		}
	}
	if out.Body != nil && out.Body != http.NoBody && (retriable || len(mirrors) > 0) {
		switch {
		case r.ContentLength >= 0 && r.ContentLength <= s.cfg.MaxRetryBody:
			b, err := io.ReadAll(io.LimitReader(r.Body, s.cfg.MaxRetryBody+1))
			if err != nil {
				return reply(w, r, http.StatusBadRequest, "DPE", "downstream body: "+err.Error())
			}
			body = b
		case r.ContentLength < 0:
			var rb io.ReadCloser = r.Body
			if end != nil {
				rb = &endReader{ReadCloser: r.Body, end: end, size: -1}
			}
			tee = &bodyTee{r: rb, limit: s.cfg.MaxRetryBody}
			defer tee.Close()
		default:
			retriable = false
		}
	}
	switch {
	case end == nil:
	case out.Body == nil || out.Body == http.NoBody || body != nil || upgrade != "":
		end.end() // no body, or read whole already; an upgrade's is the tunnel
	case tee == nil:
		out.Body = &endReader{ReadCloser: out.Body, end: end, size: r.ContentLength}
	}
	sendMirrors := func() {
		if tee != nil {
			b, ok := tee.complete()
			if !ok {
				s.mirrorsSkipped.Add(float64(len(mirrors)))
				s.log.Debug("mirror skipped: request body over the limit or not read to its end", "limit", s.cfg.MaxRetryBody)
				return
			}
			body = b
		} else if out.Body != nil && out.Body != http.NoBody && body == nil {
			s.mirrorsSkipped.Add(float64(len(mirrors)))
			s.log.Debug("mirror skipped: request body over the limit", "limit", s.cfg.MaxRetryBody)
			return
		}
		for _, m := range mirrors {
			s.mirror(out, m, body, rt.Timeout)
		}
	}
	if tee == nil && len(mirrors) > 0 {
		sendMirrors()
		mirrors = nil
	}
	// Mirrors of a streamed body wait for the attempt that reads it; when
	// none had when it answered, for the end of the request.
	defer func() {
		if len(mirrors) > 0 {
			sendMirrors()
		}
	}()
	// cur is the streamed body's reader of the latest attempt.
	var cur *teeReader
	// replayable reports whether another attempt can send the body again:
	// a streamed body must have been read to its end within the limit (the
	// next attempt sends the copy), or not at all (the next attempt reads
	// it). With take, a body not read at all is taken from the last
	// attempt, whose transport can then read none of it.
	replayable := func(take bool) bool {
		if tee == nil || body != nil {
			return true
		}
		b, ok := tee.replay(cur, take)
		if ok && b != nil {
			body = b
		}
		return ok
	}
	var hashKey uint64
	var hasHash bool
	hk, ok, setCookies := rt.HashKeyCookie(r, hostOnly(r.RemoteAddr), r.RemoteAddr)
	if ok {
		hashKey, hasHash = hk, true
	}
	var tried []string
	attempts := 1
	if retriable {
		attempts += rt.Retry.NumRetries
	}
	var resp *http.Response
	var ep upstream.Endpoint
	var err error
	flags := ""
	// slot is the retry the cluster's max_retries breaker granted: held, as
	// Envoy holds it, until the retried attempt is judged (the next retry
	// asks again) or the request is done.
	var slot func()
	takeSlot := func(release func()) {
		if slot != nil {
			slot()
		}
		slot = release
	}
	defer func() { takeSlot(nil) }()
	// Local replies name the cluster and the last host tried.
	sent := 0
	defer func() {
		res.attempts = sent
		if res.cluster == "" {
			res.cluster = clusterName
		}
		if res.host == "" {
			res.host = ep.Address
		}
	}()
	permitted := false // the retry budget already let this attempt go
	lastTry := ctx     // the context of the attempt whose response is sent
	for i := 0; i < attempts; i++ {
		if i > 0 && !permitted {
			takeSlot(nil) // the last retry is judged: its slot is free before the next is asked
			release, ok := cl.TryRetry()
			if !ok {
				flags = "UO"
				break
			}
			takeSlot(release)
		}
		permitted = false
		if i > 0 {
			// Envoy's backoff: fully jittered, the ceiling doubling from the base.
			base := rt.Retry.BackOffBase
			if base <= 0 {
				base = 25 * time.Millisecond
			}
			ceil := min(base<<min(i-1, 16), max(rt.Retry.BackOffMax, base))
			wait := time.Duration(s.rnd() % uint64(ceil))
			tm := time.NewTimer(wait)
			select {
			case <-tm.C:
			case <-ctx.Done():
				// The request ended during the backoff: no attempt is made.
				tm.Stop()
				if r.Context().Err() != nil {
					return result{code: 499, flags: "DC", detail: "downstream_remote_disconnect"}
				}
				return reply(w, r, http.StatusGatewayTimeout, "UT", "upstream_response_timeout")
			}
		}
		// An attempt's own timers (per_try_timeout, per_try_idle_timeout)
		// start, as the route's, once the request has ended.
		actx := ctx
		var cancel context.CancelFunc = func() {}
		var idle *endTimer
		if p := rt.Retry; p != nil && (p.PerTryTimeout > 0 || p.PerTryIdleTimeout > 0) {
			var acancel context.CancelCauseFunc
			actx, acancel = context.WithCancelCause(ctx)
			var try *endTimer
			if p.PerTryTimeout > 0 {
				try = end.after(p.PerTryTimeout, func() { acancel(errPerTryTimeout) })
			}
			if p.PerTryIdleTimeout > 0 {
				idle = end.after(p.PerTryIdleTimeout, func() { acancel(errPerTryIdle) })
			}
			cancel = func() {
				try.Stop()
				idle.Stop()
				acancel(nil)
			}
		}
		// A shallow copy when an attempt has its own context or body (the
		// transport does not modify a request); otherwise out itself.
		try := out
		if actx != ctx || body != nil || tee != nil {
			try = out.WithContext(actx)
		}
		if body != nil {
			try.Body = io.NopCloser(bytes.NewReader(body))
			try.ContentLength = int64(len(body))
		} else if tee != nil {
			cur = tee.reader()
			try.Body = cur
		}
		lastTry = actx
		req := upstream.Request{HashKey: hashKey, HasHash: hasHash}
		if rt.Retry != nil && rt.Retry.AvoidPreviousHosts {
			req.Exclude = tried
		}
		sent++
		resp, ep, err = cl.RoundTrip(try, req)
		if ep.Address != "" {
			tried = append(tried, ep.Address)
		}
		if err == nil && idle != nil && upgrade == "" { // an upgrade's body is the tunnel
			idle.Reset() // the headers came: the body's reads reset it again
			resp.Body = &idleReader{ReadCloser: resp.Body, idle: idle}
		}
		if len(mirrors) > 0 && !tee.unread() {
			sendMirrors() // a streamed body: the copy is complete once the attempt read it
			mirrors = nil
		}
		if err != nil {
			tryCause := context.Cause(actx)
			cancel()
			switch {
			case r.Context().Err() != nil:
				// The client went away: Envoy's downstream termination,
				// not an upstream's failure.
				return result{code: 499, flags: "DC", detail: "downstream_remote_disconnect"}
			case context.Cause(ctx) == errRouteTimeout:
				return reply(w, r, http.StatusGatewayTimeout, "UT", "upstream_response_timeout")
			case upstream.Flag(err) == upstream.FlagNoHealthyUpstream:
				// Envoy answers at once when there is no host to try.
				return reply(w, r, http.StatusServiceUnavailable, "UH", "no_healthy_upstream")
			}
			kind := route.AttemptReset
			switch {
			case tryCause == errPerTryTimeout || tryCause == errPerTryIdle:
				kind = route.AttemptTimeout
			case upstream.Flag(err) == upstream.FlagConnectFailure:
				kind = route.AttemptConnectFailure
			}
			again := retriable && rt.Retry.ShouldRetry(0, kind) && upstream.Flag(err) != "UO"
			if again && i+1 < attempts && replayable(true) {
				continue
			}
			// URX: the attempt would have been retried, but no retry was left.
			urx := ""
			if again && i+1 == attempts {
				urx = ",URX"
			}
			if kind == route.AttemptTimeout {
				detail := "upstream_per_try_timeout"
				if tryCause == errPerTryIdle {
					detail = "upstream_per_try_idle_timeout"
				}
				return reply(w, r, http.StatusGatewayTimeout, "UT"+urx, detail)
			}
			f := upstream.Flag(err)
			if f == "" {
				f = "UC"
			}
			return reply(w, r, http.StatusServiceUnavailable, f+urx, "upstream_reset_before_response_started{"+err.Error()+"}")
		}
		again := retriable && shouldRetryResponse(rt.Retry, resp)
		if again && i+1 == attempts {
			flags = "URX" // retriable, and no retry left
		}
		if again && i+1 < attempts && replayable(false) {
			// The budget is asked before this response is thrown away: when
			// it says no, the client gets this response (flag UO), as Envoy
			// forwards the upstream's answer on a retry overflow. A body
			// not read yet is taken from this attempt only then: until
			// then its transport may still start sending it.
			takeSlot(nil) // this attempt's own retry slot is free before the next is asked
			if release, ok := cl.TryRetry(); !ok {
				flags = strings.TrimPrefix(flags+",UO", ",")
			} else if !replayable(true) {
				release()
			} else {
				takeSlot(release)
				permitted = true
				_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
				resp.Body.Close()
				cancel()
				continue
			}
		}
		defer cancel()
		break
	}
	if resp == nil {
		return reply(w, r, http.StatusServiceUnavailable, "UO", "retry budget exhausted")
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusSwitchingProtocols && upgrade != "" {
		res := s.tunnel(w, resp, clusterName)
		res.host = ep.Address
		return res
	}
	h1.RemoveHopHeaders(resp.Header)
	rt.ApplyResponseFor(resp.Header, clusterName)
	for k, vs := range resp.Header {
		w.Header()[k] = vs
	}
	for k, vs := range extra { // the CORS filter's, over the upstream's
		w.Header()[k] = vs
	}
	for _, c := range setCookies {
		w.Header().Add("Set-Cookie", c)
	}
	// Trailers (gRPC's grpc-status) are announced so the server sends them.
	for k := range resp.Trailer {
		w.Header().Add("Trailer", k)
	}
	w.WriteHeader(resp.StatusCode)
	var flush http.Flusher
	if f, ok := w.(http.Flusher); ok && (resp.ContentLength == -1 || strings.HasPrefix(resp.Header.Get("content-type"), "text/event-stream")) {
		f.Flush() // a streaming client needs the headers before the first message
		flush = f
	}
	takeSlot(nil) // the retried attempt is judged: its slot is free again
	// A read that failed because the client's own request ended (it went
	// away) is not the upstream's doing, and there is no one left to abort.
	if err := copyBody(w, flush, resp.Body); err != nil && r.Context().Err() == nil {
		f, detail := "UC", "upstream_reset_after_response_started{"+err.Error()+"}"
		switch context.Cause(lastTry) {
		case errRouteTimeout:
			f, detail = "UT", "upstream_response_timeout"
		case errPerTryTimeout:
			f, detail = "UT", "upstream_per_try_timeout"
		case errPerTryIdle:
			f, detail = "UT", "upstream_per_try_idle_timeout"
		}
		return result{code: resp.StatusCode, cluster: clusterName, host: ep.Address, flags: strings.TrimPrefix(flags+","+f, ","),
			detail: detail, abort: true}
	}
	for k, vs := range resp.Trailer {
		w.Header()[http.TrailerPrefix+k] = vs
	}
	return result{code: resp.StatusCode, cluster: clusterName, host: ep.Address, flags: flags, detail: "via_upstream"}
}

// shouldRetryResponse reports whether a response may be retried under p: by
// its HTTP status, or by the grpc-status in its headers (a trailers-only gRPC
// response) for the policy's gRPC conditions.
func shouldRetryResponse(p *route.RetryPolicy, resp *http.Response) bool {
	if resp.Header.Get("x-envoy-ratelimited") != "" {
		// Envoy retries a response its upstream marked rate limited only
		// under envoy-ratelimited, never under 5xx or gateway-error.
		return p.ShouldRetry(resp.StatusCode, route.AttemptRateLimited)
	}
	if p.ShouldRetry(resp.StatusCode, route.AttemptOK) {
		return true
	}
	if gs := resp.Header.Get("Grpc-Status"); gs != "" {
		if code, err := strconv.Atoi(gs); err == nil {
			return p.ShouldRetryGRPC(code)
		}
	}
	return false
}

// bodyTee passes a request body of unknown length through to the attempts
// and keeps a copy while it fits in limit, so that a retry or a mirror can
// send it again once it has been read to its end. Attempts read it through
// readers of their own (reader); only one reads at a time.
type bodyTee struct {
	r     io.ReadCloser
	limit int64
	once  sync.Once // closes r

	mu      sync.Mutex
	buf     []byte
	over    bool
	eof     bool
	reading bool // a Read of r is under way
}

// errAttemptDone is what an attempt's reader returns once the attempt is
// over: a transport that reads on after RoundTrip returned must not take
// bytes from the next attempt.
var errAttemptDone = errors.New("request body: attempt over")

// teeReader is one attempt's view of a bodyTee. Its Close ends the attempt's
// reading and leaves the body open for the next one.
type teeReader struct {
	t    *bodyTee
	done bool // guarded by t.mu
}

// reader returns a reader for a new attempt.
func (b *bodyTee) reader() *teeReader { return &teeReader{t: b} }

func (a *teeReader) Read(p []byte) (int, error) {
	b := a.t
	b.mu.Lock()
	if a.done {
		b.mu.Unlock()
		return 0, errAttemptDone
	}
	b.reading = true
	b.mu.Unlock()
	n, err := b.r.Read(p)
	b.mu.Lock()
	defer b.mu.Unlock()
	b.reading = false
	if n > 0 && !b.over {
		if int64(len(b.buf)+n) > b.limit {
			b.over, b.buf = true, nil
		} else {
			b.buf = append(b.buf, p[:n]...)
		}
	}
	if err == io.EOF {
		b.eof = true
	}
	return n, err
}

func (a *teeReader) Close() error {
	a.t.mu.Lock()
	defer a.t.mu.Unlock()
	a.done = true
	return nil
}

// Close closes the body, once, when the request is done.
func (b *bodyTee) Close() error {
	var err error
	b.once.Do(func() { err = b.r.Close() })
	return err
}

// complete returns the whole body once it has been read to its end within
// the limit.
func (b *bodyTee) complete() ([]byte, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.completeLocked()
}

func (b *bodyTee) completeLocked() ([]byte, bool) {
	if !b.eof || b.over {
		return nil, false
	}
	if b.buf == nil {
		return []byte{}, true
	}
	return b.buf, true
}

// unread reports whether no attempt has read any of the body and none is
// reading it. b may be nil (no streamed body): false.
func (b *bodyTee) unread() bool {
	if b == nil {
		return false
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.unreadLocked()
}

func (b *bodyTee) unreadLocked() bool {
	return !b.reading && len(b.buf) == 0 && !b.over && !b.eof
}

// replay reports whether another attempt can send the body after the one
// that read it through last (may be nil): the whole copy when the body was
// read to its end within the limit, or nil and true when nothing of it was
// read, so that the next attempt reads it from the start; with take, last
// then can read no more, so that the bytes go to the next attempt only. A
// body read in part, over the limit, or still being read by the transport
// of last cannot be sent again.
func (b *bodyTee) replay(last *teeReader, take bool) ([]byte, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if body, ok := b.completeLocked(); ok {
		return body, true
	}
	if !b.unreadLocked() {
		return nil, false
	}
	if take && last != nil {
		last.done = true
	}
	return nil, true
}

// upgradeType is the protocol a request asks to switch to (Connection:
// upgrade plus Upgrade: websocket, …), or "".
func upgradeType(h http.Header) string {
	for _, v := range h.Values("Connection") {
		for _, f := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(f), "upgrade") {
				return h.Get("Upgrade")
			}
		}
	}
	return ""
}

// tunnel completes a protocol switch (WebSocket): the 101 goes to the app,
// then bytes flow both ways until either side closes.
func (s *Server) tunnel(w http.ResponseWriter, resp *http.Response, cluster string) result {
	up, ok := resp.Body.(io.ReadWriteCloser)
	hj, ok2 := w.(http.Hijacker)
	if !ok || !ok2 {
		return reply(w, nil, http.StatusBadGateway, "UPE", "upgrade not possible on this connection")
	}
	conn, brw, err := hj.Hijack()
	if err != nil {
		return result{code: http.StatusSwitchingProtocols, flags: "DC", cluster: cluster, detail: "hijack failed"}
	}
	defer conn.Close()
	resp.Body = nil // the tunnel owns it now
	defer up.Close()
	if err := (&http.Response{StatusCode: resp.StatusCode, ProtoMajor: 1, ProtoMinor: 1, Header: resp.Header}).Write(brw); err != nil {
		return result{code: http.StatusSwitchingProtocols, flags: "DC", cluster: cluster, detail: "downstream write failed"}
	}
	if err := brw.Flush(); err != nil {
		return result{code: http.StatusSwitchingProtocols, flags: "DC", cluster: cluster}
	}
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(up, brw); done <- struct{}{} }()
	go func() { _, _ = io.Copy(conn, up); done <- struct{}{} }()
	<-done
	return result{code: http.StatusSwitchingProtocols, cluster: cluster, detail: "via_upstream"}
}

// copyBody copies an upstream's response body to the client, flushing after
// each read when f is set (a stream). It returns the upstream's read error,
// io.EOF excepted. A write that fails means the client went away: the copy
// ends without an error, as there is no one left to tell.
func copyBody(w io.Writer, f http.Flusher, r io.Reader) error {
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	buf := *bp
	for {
		n, err := r.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return nil
			}
			if f != nil {
				f.Flush()
			}
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// mirror sends a copy of the request to another cluster and throws the answer
// away, as Envoy's shadowing does: the Host gets "-shadow" appended, and the
// copy never delays or changes the real request.
func (s *Server) mirror(r *http.Request, mp route.Mirror, body []byte, timeout time.Duration) {
	clusterName := mp.Cluster
	cl, ok := s.cfg.Upstreams.Cluster(clusterName)
	if !ok {
		return
	}
	// The copy has the route's timeout, as Envoy's shadow requests do;
	// without one, it is still bounded.
	if timeout <= 0 {
		timeout = mirrorTimeout
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), timeout)
	m := r.Clone(ctx)
	if mp.HostRewrite != "" {
		m.Host = mp.HostRewrite
	}
	if !mp.NoShadowSuffix {
		host, port, err := net.SplitHostPort(m.Host)
		if err == nil {
			m.Host = net.JoinHostPort(host+"-shadow", port)
		} else {
			m.Host += "-shadow"
		}
	}
	m.URL.Host = m.Host
	m.Body = http.NoBody
	m.ContentLength = 0
	if body != nil {
		m.Body, m.ContentLength = io.NopCloser(bytes.NewReader(body)), int64(len(body))
	}
	go func() {
		defer cancel()
		resp, _, err := cl.RoundTrip(m, upstream.Request{})
		if err != nil {
			s.log.Debug("mirror failed", "cluster", clusterName, "err", err)
			return
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}()
}

func randUint64() uint64 { return rand.Uint64() }

// codeRecorder remembers the status a guard answered with.
type codeRecorder struct {
	http.ResponseWriter
	code int
}

func (c *codeRecorder) WriteHeader(code int) {
	c.code = code
	c.ResponseWriter.WriteHeader(code)
}

// mirrorTimeout bounds a mirrored copy on a route without a timeout.
const mirrorTimeout = 10 * time.Second

// The causes of a request's or an attempt's cancellation by its timers. They
// are deadlines: the upstream package reads them as timeouts (UT, and a
// local-origin failure for outlier detection), not as a client gone.
var (
	errRouteTimeout  = fmt.Errorf("route timeout: %w", context.DeadlineExceeded)
	errPerTryTimeout = fmt.Errorf("per-try timeout: %w", context.DeadlineExceeded)
	errPerTryIdle    = fmt.Errorf("per-try idle timeout: %w", context.DeadlineExceeded)
)

// requestEnd is the end of the downstream request: its body read to the end,
// or none. Envoy starts the route's and the attempts' timers there.
type requestEnd struct {
	mu      sync.Mutex
	ended   bool
	pending []*endTimer
}

// endTimer calls f d after the request ended (or after its last Reset).
type endTimer struct {
	e       *requestEnd
	d       time.Duration
	f       func()
	t       *time.Timer // nil until the request ends; guarded by e.mu
	stopped bool
}

// after returns a timer that calls f d after the request ends: from now if it
// has ended.
func (e *requestEnd) after(d time.Duration, f func()) *endTimer {
	t := &endTimer{e: e, d: d, f: f}
	e.mu.Lock()
	if e.ended {
		t.t = time.AfterFunc(d, f)
	} else {
		e.pending = append(e.pending, t)
	}
	e.mu.Unlock()
	return t
}

// end marks the request ended and starts the pending timers; later calls do
// nothing.
func (e *requestEnd) end() {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.ended {
		return
	}
	e.ended = true
	for _, t := range e.pending {
		if !t.stopped {
			t.t = time.AfterFunc(t.d, t.f)
		}
	}
	e.pending = nil
}

// Stop keeps the timer from firing; nil is a timer never set.
func (t *endTimer) Stop() {
	if t == nil {
		return
	}
	t.e.mu.Lock()
	t.stopped = true
	if t.t != nil {
		t.t.Stop()
	}
	t.e.mu.Unlock()
}

// Reset starts the count again, if it has started and not fired or stopped.
func (t *endTimer) Reset() {
	t.e.mu.Lock()
	if t.t != nil && !t.stopped && t.t.Stop() {
		t.t.Reset(t.d)
	}
	t.e.mu.Unlock()
}

// endReader is a request body that marks the request ended when it has been
// read to its end: EOF, or size bytes when the length is known (a transport
// may stop reading at the declared length).
type endReader struct {
	io.ReadCloser
	end  *requestEnd
	size int64 // -1: unknown
	n    int64
}

func (r *endReader) Read(p []byte) (int, error) {
	n, err := r.ReadCloser.Read(p)
	r.n += int64(n)
	if err == io.EOF || (r.size >= 0 && r.n >= r.size) {
		r.end.end()
	}
	return n, err
}

// idleReader is an upstream response body whose reads restart the attempt's
// idle timer (per_try_idle_timeout).
type idleReader struct {
	io.ReadCloser
	idle *endTimer
}

func (r *idleReader) Read(p []byte) (int, error) {
	n, err := r.ReadCloser.Read(p)
	if n > 0 {
		r.idle.Reset()
	}
	return n, err
}
