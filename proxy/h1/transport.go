// Package h1 is an HTTP/1.1 client transport for the proxy's hops: requests
// without a body travel on the caller's goroutine over pooled connections.
//
// net/http's Transport runs two goroutines per connection and passes every
// request and response between them and the caller; on a sidecar those
// hand-offs were a measurable part of each hop's CPU and latency. Transport
// here writes the request, reads the response and hands the connection back
// when the body is done. Requests with a body, upgrades and CONNECT go to
// Next (net/http), which streams a body while it reads the answer.
package h1

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/net/http/httpguts"
)

// Transport carries requests without a body (GET, HEAD, DELETE, ... the bulk
// of service traffic) over pooled HTTP/1.1 connections, one pool per
// URL.Host. The zero value is not usable: Dial and Next are required.
type Transport struct {
	// Dial connects to addr (URL.Host), TLS included when the scheme needs it:
	// the connection it returns speaks HTTP/1.1.
	Dial func(ctx context.Context, addr string) (net.Conn, error)
	// Next carries what Transport does not (bodies, upgrades, CONNECT).
	Next http.RoundTripper
	// MaxIdlePerHost bounds the idle connections kept per host (default 2).
	MaxIdlePerHost int
	// IdleTimeout closes a connection idle this long instead of reusing it
	// (default 90 s).
	IdleTimeout time.Duration

	mu     sync.Mutex
	idle   map[string][]*appConn // by host, most recently used last
	closed bool
	swept  time.Time // when idle connections past IdleTimeout were last closed
}

type appConn struct {
	c    net.Conn
	host string
	lim  *headLimit // under br
	br   *bufio.Reader
	bw   *bufio.Writer
	used time.Time
}

// errStale marks a failure on a reused connection before any response byte:
// the app closed it while idle, and the request may be sent again.
var errStale = errors.New("idle connection to the app was closed")

// RoundTrip implements http.RoundTripper.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	if (req.Body != nil && req.Body != http.NoBody) || req.ContentLength != 0 || req.Method == http.MethodConnect ||
		req.Header.Get("Upgrade") != "" || req.URL == nil || req.URL.Host == "" {
		return t.Next.RoundTrip(req)
	}
	for {
		ac, reused, err := t.get(req.Context(), req.URL.Host)
		if err != nil {
			return nil, err
		}
		if trace := httptrace.ContextClientTrace(req.Context()); trace != nil && trace.GotConn != nil {
			trace.GotConn(httptrace.GotConnInfo{Conn: ac.c, Reused: reused})
		}
		resp, err := t.exchange(req, ac, reused)
		if errors.Is(err, errStale) && replayable(req) && req.Context().Err() == nil {
			continue // a fresh connection next (get dials when the pool is empty)
		}
		return resp, err
	}
}

func (t *Transport) exchange(req *http.Request, ac *appConn, reused bool) (*http.Response, error) {
	// A cancelled request (the client went away, a timeout) unblocks the I/O.
	stop := context.AfterFunc(req.Context(), func() { _ = ac.c.SetDeadline(time.Unix(1, 0)) })
	fail := func(err error) (*http.Response, error) {
		stop()
		ac.c.Close()
		if cerr := req.Context().Err(); cerr != nil {
			return nil, cerr
		}
		return nil, err
	}
	if err := writeRequest(ac.bw, req); err != nil {
		return fail(err)
	}
	if err := ac.bw.Flush(); err != nil {
		if reused {
			return fail(errStale)
		}
		return fail(err)
	}
	for informational := 0; ; informational++ {
		if reused {
			if _, err := ac.br.Peek(1); err != nil {
				return fail(errStale)
			}
		}
		resp, err := readResponse(ac, req)
		if err != nil {
			return fail(err)
		}
		// Informational answers (103 Early Hints) precede the real one.
		if resp.StatusCode >= 100 && resp.StatusCode < 200 && resp.StatusCode != http.StatusSwitchingProtocols {
			if informational == maxInformational {
				return fail(fmt.Errorf("more than %d informational responses to one request", maxInformational))
			}
			reused = false
			continue
		}
		// A 101 switches the connection to another protocol: it is the
		// caller's now, never pooled again.
		keep := !resp.Close && !req.Close && resp.StatusCode != http.StatusSwitchingProtocols
		resp.Body = &appBody{rc: resp.Body, t: t, ac: ac, keep: keep, stop: stop, eof: resp.Body == http.NoBody}
		return resp, nil
	}
}

// maxResponseHeaderBytes bounds a response's status line and header block,
// and maxInformational the 1xx answers before the final one (net/http's
// Transport limits: 10 MB and 5): without them one answer could take the
// sidecar's memory.
const (
	maxResponseHeaderBytes = 10 << 20
	maxInformational       = 5
)

// readResponse reads a response with its head (status line and header
// block, as they come off the connection) limited to maxResponseHeaderBytes;
// the body is read without that limit.
func readResponse(ac *appConn, req *http.Request) (*http.Response, error) {
	ac.lim.n = maxResponseHeaderBytes
	resp, err := http.ReadResponse(ac.br, req)
	ac.lim.n = -1
	return resp, err
}

var errResponseHeadTooLarge = fmt.Errorf("response headers exceed %d bytes", maxResponseHeaderBytes)

// headLimit is the connection as an appConn's reader sees it: while n is not
// negative, at most n more bytes.
type headLimit struct {
	r io.Reader
	n int64
}

func (l *headLimit) Read(p []byte) (int, error) {
	if l.n < 0 {
		return l.r.Read(p)
	}
	if l.n == 0 {
		return 0, errResponseHeadTooLarge
	}
	if int64(len(p)) > l.n {
		p = p[:l.n]
	}
	n, err := l.r.Read(p)
	l.n -= int64(n)
	return n, err
}

// quiet says whether an idle connection may carry a request: the app has
// neither closed it nor sent anything unasked. It peeks at the socket without
// waiting (one system call); a connection whose socket it cannot reach is
// taken as it is.
func quiet(c net.Conn) bool {
	sc := socketOf(c)
	if sc == nil {
		return true
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return true
	}
	ok := true
	var b [1]byte
	if cerr := rc.Read(func(fd uintptr) bool {
		n, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		ok = n < 0 && (err == syscall.EAGAIN || err == syscall.EWOULDBLOCK)
		return true
	}); cerr != nil {
		return false
	}
	return ok
}

// socketOf finds the socket under c, through TLS and wrappers that give
// their connection with NetConn.
func socketOf(c net.Conn) syscall.Conn {
	for range 8 {
		if sc, ok := c.(syscall.Conn); ok {
			return sc
		}
		u, ok := c.(interface{ NetConn() net.Conn })
		if !ok {
			return nil
		}
		c = u.NetConn()
	}
	return nil
}

// writeRequest writes a request without a body as net/http's Request.Write
// does (the same default User-Agent, Content-Length: 0 where a body is
// expected, header values kept on one line), without its per-request
// allocations. What it does not expect (an opaque URL, a Host that needs
// punycode or is invalid) it leaves to Request.Write.
func writeRequest(bw *bufio.Writer, req *http.Request) error {
	host := req.Host
	if host == "" {
		host = req.URL.Host
	}
	if req.URL.Opaque != "" || !httpguts.ValidHostHeader(host) || req.Method == "" {
		return req.Write(bw)
	}
	for k, vs := range req.Header {
		if !httpguts.ValidHeaderFieldName(k) {
			return fmt.Errorf("net/http: invalid header field name %q", k)
		}
		for _, v := range vs {
			if !httpguts.ValidHeaderFieldValue(v) {
				return fmt.Errorf("net/http: invalid header field value for %q", k)
			}
		}
	}
	_, _ = bw.WriteString(req.Method)
	_ = bw.WriteByte(' ')
	_, _ = bw.WriteString(req.URL.RequestURI())
	_, _ = bw.WriteString(" HTTP/1.1\r\nHost: ")
	_, _ = bw.WriteString(host)
	_, _ = bw.WriteString("\r\n")
	ua := "Go-http-client/1.1"
	if vs, ok := req.Header["User-Agent"]; ok {
		ua = ""
		if len(vs) > 0 {
			ua = vs[0]
		}
	}
	if ua != "" {
		writeField(bw, "User-Agent", ua)
	}
	if req.Close && !httpguts.HeaderValuesContainsToken(req.Header["Connection"], "close") {
		_, _ = bw.WriteString("Connection: close\r\n")
	}
	switch req.Method {
	case http.MethodPost, http.MethodPut, http.MethodPatch:
		_, _ = bw.WriteString("Content-Length: 0\r\n")
	}
	for k, vs := range req.Header {
		switch k {
		case "Host", "User-Agent", "Content-Length", "Transfer-Encoding", "Trailer":
			continue
		}
		for _, v := range vs {
			writeField(bw, k, v)
		}
	}
	_, err := bw.WriteString("\r\n")
	return err
}

func writeField(bw *bufio.Writer, k, v string) {
	_, _ = bw.WriteString(k)
	_, _ = bw.WriteString(": ")
	if strings.ContainsAny(v, "\r\n") {
		v = headerValue.Replace(v)
	}
	_, _ = bw.WriteString(strings.TrimSpace(v))
	_, _ = bw.WriteString("\r\n")
}

// replayable: sending the request again cannot repeat an effect (net/http's
// rule for retrying on a connection the server closed).
func replayable(req *http.Request) bool {
	switch req.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
		return true
	}
	return req.Header.Get("Idempotency-Key") != "" || req.Header.Get("X-Idempotency-Key") != ""
}

func (t *Transport) idleTimeout() time.Duration {
	if t.IdleTimeout > 0 {
		return t.IdleTimeout
	}
	return 90 * time.Second
}

// get takes host's most recently used idle connection, or dials one.
func (t *Transport) get(ctx context.Context, host string) (*appConn, bool, error) {
	now := time.Now()
	t.mu.Lock()
	for q := t.idle[host]; len(q) > 0; q = t.idle[host] {
		ac := q[len(q)-1]
		t.idle[host] = q[:len(q)-1]
		if now.Sub(ac.used) < t.idleTimeout() {
			t.mu.Unlock()
			if quiet(ac.c) {
				return ac, true, nil
			}
			ac.c.Close()
			t.mu.Lock()
			continue
		}
		ac.c.Close()
	}
	t.mu.Unlock()
	c, err := t.Dial(ctx, host)
	if err != nil {
		return nil, false, err
	}
	lim := &headLimit{r: c, n: -1}
	return &appConn{c: c, host: host, lim: lim, br: bufio.NewReaderSize(lim, 4<<10), bw: bufio.NewWriterSize(c, 4<<10)}, false, nil
}

// put pools ac. Only appBody.Close calls it, and only when the request's
// cancellation hook never ran, so ac carries no deadline to clear.
func (t *Transport) put(ac *appConn) {
	if ac.br.Buffered() > 0 {
		// The app sent more than its response's framing said (a body on a
		// HEAD answer or a 204, a short Content-Length): those bytes would
		// be read as the next request's response.
		ac.c.Close()
		return
	}
	ac.used = time.Now()
	max := t.MaxIdlePerHost
	if max <= 0 {
		max = 2
	}
	t.mu.Lock()
	if t.closed || len(t.idle[ac.host]) >= max {
		t.mu.Unlock()
		ac.c.Close()
		return
	}
	if t.idle == nil {
		t.idle = map[string][]*appConn{}
	}
	t.idle[ac.host] = append(t.idle[ac.host], ac)
	// Now and then, close what has idled too long (hosts no longer used
	// included), so idle connections do not outlive IdleTimeout by much.
	var stale []*appConn
	if ac.used.Sub(t.swept) > t.idleTimeout()/2 {
		t.swept = ac.used
		for h, q := range t.idle {
			keep := q[:0]
			for _, c := range q {
				if ac.used.Sub(c.used) >= t.idleTimeout() {
					stale = append(stale, c)
				} else {
					keep = append(keep, c)
				}
			}
			if len(keep) == 0 {
				delete(t.idle, h)
			} else {
				t.idle[h] = keep
			}
		}
	}
	t.mu.Unlock()
	for _, c := range stale {
		c.c.Close()
	}
}

// CloseIdleConnections closes the pooled connections (and Next's). A
// connection busy now is closed when its request ends only if Close was
// called; see Close.
func (t *Transport) CloseIdleConnections() {
	t.mu.Lock()
	idle := t.idle
	t.idle = nil
	t.mu.Unlock()
	for _, q := range idle {
		for _, ac := range q {
			ac.c.Close()
		}
	}
	if ci, ok := t.Next.(interface{ CloseIdleConnections() }); ok {
		ci.CloseIdleConnections()
	}
}

// Close closes the idle connections and keeps none from now on: busy ones
// close when their request ends.
func (t *Transport) Close() {
	t.mu.Lock()
	t.closed = true
	t.mu.Unlock()
	t.CloseIdleConnections()
}

// appBody gives the connection back once the response body has been read to
// its end; closed early, the connection is closed with it.
type appBody struct {
	rc   io.ReadCloser
	t    *Transport
	ac   *appConn
	keep bool
	stop func() bool
	mu   sync.Mutex
	done bool
	eof  bool
}

func (b *appBody) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	if err == io.EOF {
		b.mu.Lock()
		b.eof = true
		b.mu.Unlock()
	}
	return n, err
}

func (b *appBody) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.done {
		return nil
	}
	b.done = true
	err := b.rc.Close()
	cancelled := !b.stop()
	if b.keep && b.eof && !cancelled {
		b.t.put(b.ac)
	} else {
		b.ac.c.Close()
	}
	return err
}
