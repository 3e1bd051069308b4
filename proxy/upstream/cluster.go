package upstream

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/netip"
	"net/url"
	"strconv"
	"sync/atomic"
)

// Cluster is one cluster of one Update: its configuration and endpoints are
// fixed; its connections, breaker counters and outlier state are shared with
// the clusters of later updates that keep its configuration. It is safe for
// concurrent use, and stays usable after an update replaced it.
type Cluster struct {
	name string
	cfg  *clusterConfig
	pool *pool
	eps  *endpointSet
}

// Request is what RoundTrip and DialTCP need to know about an attempt beyond
// the HTTP request itself.
type Request struct {
	// HashKey is the request's hash for RING_HASH and MAGLEV, when HasHash.
	// Without one those clusters pick at random, as Envoy does.
	HashKey uint64
	HasHash bool
	// Exclude lists endpoint addresses earlier attempts tried (the
	// previous_hosts retry predicate); they are avoided when others exist.
	Exclude []string
	// OriginalDst is the downstream connection's original destination
	// (host:port), the endpoint of an ORIGINAL_DST cluster.
	OriginalDst string
}

// Name is the cluster's name.
func (c *Cluster) Name() string { return c.name }

// Endpoints lists the cluster's endpoints, by priority.
func (c *Cluster) Endpoints() []Endpoint {
	var out []Endpoint
	for _, lv := range c.eps.levels {
		for _, h := range lv.hosts {
			out = append(out, h.ep)
		}
	}
	return out
}

// HTTP2 reports whether requests go upstream over HTTP/2 (always for h2
// clusters; by ALPN over TLS for auto_config ones, which report false).
func (c *Cluster) HTTP2() bool { return c.cfg.protocol == protoHTTP2 }

// RoundTrip sends req, already routed and rewritten, to one endpoint of the
// cluster; req's context carries the deadline. It enforces the circuit
// breakers, picks a usable endpoint by the cluster's lb_policy, chooses the
// transport socket the endpoint matches, and records the outcome for outlier
// detection. It does not retry.
//
// req is not modified; the request sent is a shallow copy addressed to the
// endpoint, with req.Host (or req.URL.Host) as its Host header, and req.Body
// is consumed and closed whatever happens, as http.RoundTripper does (a retry
// needs req.GetBody). Hop-by-hop headers are the caller's to remove. The
// caller must close the response body: the breakers count the request until
// then.
// A failure is an *Error with Envoy's response flag; the Endpoint is the one
// tried, if any.
func (c *Cluster) RoundTrip(req *http.Request, o Request) (*http.Response, Endpoint, error) {
	p := c.pool
	ctx := req.Context()
	h, err := c.hostFor(req, &o)
	if err != nil {
		closeBody(req)
		p.met.request(FlagNoHealthyUpstream)
		return nil, Endpoint{}, err
	}
	t, err := p.transportFor(p.sockets[h.sock], requestHost(req))
	if err != nil {
		closeBody(req)
		p.met.request(FlagConnectFailure)
		return nil, h.ep, &Error{Flag: FlagConnectFailure, Cluster: c.name, Endpoint: h.ep.Address, Err: err}
	}
	// A request waits for a connection as a pending request
	// (max_pending_requests); it counts against max_requests only once it
	// has one, as Envoy's requests resource does.
	if p.slots != nil {
		if err := p.slots.acquire(ctx); err != nil {
			closeBody(req)
			if errors.Is(err, ErrOverflow) {
				return nil, h.ep, c.overflow(breakerPending, h.ep.Address)
			}
			flag := ctxFlag(err)
			if ctx.Err() != nil {
				flag = ctxFlag(context.Cause(ctx))
			}
			p.met.request(flag)
			return nil, h.ep, &Error{Flag: flag, Cluster: c.name, Endpoint: h.ep.Address, Err: err}
		}
	}
	if p.requests.Add(1) > c.cfg.breakers.maxRequests {
		p.requests.Add(-1)
		if p.slots != nil {
			p.slots.release()
		}
		closeBody(req)
		return nil, h.ep, c.overflow(breakerRequests, h.ep.Address)
	}
	h.state.active.Add(1)
	a := new(attempt)
	resp, err := t.rt.RoundTrip(c.outbound(a, req, h, p.sockets[h.sock].scheme))
	if err != nil {
		c.release(h)
		flag, breaker := classify(ctx, err)
		if c.tracked(h) {
			switch flag {
			case FlagConnectFailure, FlagConnectionTermination, FlagTimeout:
				p.outlier.localFailure(h.state)
			}
		}
		if flag == FlagOverflow {
			p.met.overflow(breaker)
		}
		p.met.request(flag)
		return nil, h.ep, &Error{Flag: flag, Cluster: c.name, Endpoint: h.ep.Address, Breaker: breaker, Err: err}
	}
	if c.tracked(h) {
		p.outlier.localSuccess(h.state)
		p.outlier.response(h.state, resp.StatusCode)
	}
	p.met.request(flagNone)
	a.body = body{ReadCloser: resp.Body, c: c, h: h}
	resp.Body = &a.body
	if rw, ok := a.body.ReadCloser.(io.ReadWriteCloser); ok && resp.StatusCode == http.StatusSwitchingProtocols {
		// A protocol switch (WebSocket): net/http hands over the connection
		// as the body, and the caller writes to it too.
		resp.Body = &upgradedBody{body: &a.body, w: rw}
	}
	return resp, h.ep, nil
}

// upgradedBody is the body of a 101 response: the connection, both ways.
type upgradedBody struct {
	*body
	w io.Writer
}

func (u *upgradedBody) Write(p []byte) (int, error) { return u.w.Write(p) }

// tracked reports whether outlier detection watches h.
func (c *Cluster) tracked(h *host) bool {
	return c.pool.outlier != nil && c.cfg.lb != lbOriginalDst
}

// attempt is what one RoundTrip allocates: the request as sent and the
// response body's wrapper, in one allocation.
type attempt struct {
	req  http.Request
	url  url.URL
	body body
}

// outbound is the request as sent to h: a shallow copy of req addressed to
// the endpoint.
func (c *Cluster) outbound(a *attempt, req *http.Request, h *host, scheme string) *http.Request {
	a.req = *req
	if req.URL != nil {
		a.url = *req.URL
	}
	a.url.Scheme, a.url.Host = scheme, h.ep.Address
	out := &a.req
	out.URL = &a.url
	if out.Host == "" && req.URL != nil {
		out.Host = req.URL.Host
	}
	out.RequestURI = ""
	switch n := c.cfg.maxReqPerConn; {
	case n == 1 || c.pool.retired.Load():
		out.Close = true
	case n > 1:
		return countRequests(out, n)
	}
	return out
}

// countRequests counts requests per connection; the one that reaches n asks
// for its connection to close after it (Connection: close on HTTP/1.1, no new
// streams on HTTP/2). GotConn runs before net/http reads Close.
func countRequests(out *http.Request, n uint32) *http.Request {
	var traced *http.Request
	trace := &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) {
		if tc := connOf(info.Conn); tc != nil && tc.requests.Add(1) >= n {
			traced.Close = true
		}
	}}
	traced = out.WithContext(httptrace.WithClientTrace(out.Context(), trace))
	return traced
}

// release ends a request's claim on the breakers and the host.
func (c *Cluster) release(h *host) {
	p := c.pool
	h.state.active.Add(-1)
	if p.slots != nil {
		p.slots.release()
	}
	p.requests.Add(-1)
	if p.retired.Load() {
		p.closeIdle()
	}
}

func (c *Cluster) overflow(breaker, endpoint string) *Error {
	c.pool.met.overflow(breaker)
	c.pool.met.request(FlagOverflow)
	return &Error{Flag: FlagOverflow, Cluster: c.name, Endpoint: endpoint, Breaker: breaker, Err: ErrOverflow}
}

// hostFor picks the endpoint for an attempt.
func (c *Cluster) hostFor(req *http.Request, o *Request) (*host, error) {
	if c.cfg.lb == lbOriginalDst {
		return c.originalDst(req, o)
	}
	if h := c.pick(o); h != nil {
		return h, nil
	}
	return nil, &Error{Flag: FlagNoHealthyUpstream, Cluster: c.name, Err: ErrNoHealthyUpstream}
}

// originalDst makes the host of an ORIGINAL_DST cluster: the header named by
// original_dst_lb_config when present, else the connection's destination.
func (c *Cluster) originalDst(req *http.Request, o *Request) (*host, error) {
	addr := o.OriginalDst
	if c.cfg.origDstHeader != "" && req != nil {
		if v := req.Header.Get(c.cfg.origDstHeader); v != "" {
			addr = v
		}
	}
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		err = ErrNoOriginalDst
		if addr != "" {
			err = fmt.Errorf("%w: %q is not an IP:port", ErrNoOriginalDst, addr)
		}
		return nil, &Error{Flag: FlagNoHealthyUpstream, Cluster: c.name, Err: err}
	}
	port := ap.Port()
	if c.cfg.origDstPort != 0 {
		port = uint16(c.cfg.origDstPort)
	}
	a := net.JoinHostPort(ap.Addr().Unmap().String(), strconv.Itoa(int(port)))
	h := &host{ep: Endpoint{Address: a, Weight: 1}, healthy: true, sock: c.cfg.socketFor(nil), state: &hostState{addr: a}}
	s := c.cfg.sockets[h.sock]
	h.ep.TLS, h.ep.MTLS = s.tls, s.mesh()
	return h, nil
}

// DialTCP picks an endpoint as RoundTrip does and connects to it, over TLS
// when its transport socket says so (the handshake is done on return), for
// TCP proxying. max_connections bounds the connections; closing the returned
// connection releases it.
func (c *Cluster) DialTCP(ctx context.Context, o Request) (net.Conn, Endpoint, error) {
	p := c.pool
	h, err := c.hostFor(nil, &o)
	if err != nil {
		p.met.request(FlagNoHealthyUpstream)
		return nil, Endpoint{}, err
	}
	if p.conns.Load() >= c.cfg.breakers.maxConnections {
		return nil, h.ep, c.overflow(breakerConnections, h.ep.Address)
	}
	ps := p.sockets[h.sock]
	if _, err := p.transportFor(ps, ""); err != nil {
		p.met.request(FlagConnectFailure)
		return nil, h.ep, &Error{Flag: FlagConnectFailure, Cluster: c.name, Endpoint: h.ep.Address, Err: err}
	}
	var conn net.Conn
	var tracked *trackedConn
	if ps.sock.tls {
		var tc *tls.Conn
		if tc, err = p.dialTLS(ctx, h.ep.Address, ps.tcpTLS, true); err == nil {
			conn, tracked = tc, connOf(tc)
		}
	} else {
		if tracked, err = p.dial(ctx, h.ep.Address, true); err == nil {
			conn = tracked
		}
	}
	if err != nil {
		flag, breaker := classify(ctx, err)
		if c.tracked(h) && flag != FlagDownstreamTermination && flag != FlagOverflow {
			p.outlier.localFailure(h.state)
		}
		if flag == FlagOverflow {
			p.met.overflow(breaker)
		}
		p.met.request(flag)
		return nil, h.ep, &Error{Flag: flag, Cluster: c.name, Endpoint: h.ep.Address, Breaker: breaker, Err: err}
	}
	// The connection counts as a request in flight (LEAST_REQUEST) until it closes.
	h.state.active.Add(1)
	tracked.hs = h.state
	if c.tracked(h) {
		p.outlier.localSuccess(h.state)
		// A TCP connection made is a success for the consecutive detectors.
		p.outlier.response(h.state, http.StatusOK)
	}
	p.met.request(flagNone)
	return conn, h.ep, nil
}

// TryRetry claims a retry from the max_retries breaker (or the retry budget
// when the cluster has one). The caller calls release when the retry attempt
// is over. When ok is false the retry must not be made (Envoy's
// upstream_rq_retry_overflow); release is then a no-op.
func (c *Cluster) TryRetry() (release func(), ok bool) {
	p := c.pool
	b := c.cfg.breakers
	limit := b.maxRetries
	if b.budget {
		// Envoy's budget is a share of active plus pending requests;
		// requests counts only those that have a connection.
		active := p.requests.Load()
		if p.slots != nil {
			active += p.slots.pending()
		}
		limit = max(b.minRetryConcurrency, int64(float64(active)*b.budgetPercent/100))
	}
	if p.retries.Add(1) > limit {
		p.retries.Add(-1)
		p.met.overflow(breakerRetries)
		return func() {}, false
	}
	var done atomic.Bool
	return func() {
		if done.CompareAndSwap(false, true) {
			p.retries.Add(-1)
		}
	}, true
}

func closeBody(req *http.Request) {
	if req.Body != nil {
		req.Body.Close()
	}
}

// classify maps a RoundTrip or dial failure to its response flag.
func classify(ctx context.Context, err error) (flag, breaker string) {
	var de *dialError
	switch {
	case errors.Is(err, ErrOverflow):
		return FlagOverflow, breakerConnections
	case ctx.Err() != nil:
		// The cause tells a caller's timer (a cause that wraps
		// DeadlineExceeded) from a caller gone.
		return ctxFlag(context.Cause(ctx)), ""
	case errors.As(err, &de):
		return FlagConnectFailure, ""
	}
	return FlagConnectionTermination, ""
}

func ctxFlag(err error) string {
	if errors.Is(err, context.DeadlineExceeded) {
		return FlagTimeout
	}
	return FlagDownstreamTermination
}

// body releases the request's claims when the response has been read or
// closed.
type body struct {
	io.ReadCloser
	c    *Cluster
	h    *host
	done atomic.Bool
}

func (b *body) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != nil {
		b.finish()
	}
	return n, err
}

func (b *body) Close() error {
	err := b.ReadCloser.Close()
	b.finish()
	return err
}

func (b *body) finish() {
	if b.done.CompareAndSwap(false, true) {
		b.c.release(b.h)
	}
}
