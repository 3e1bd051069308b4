package h1

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rampart-mesh/rampart/internal/replay"
	"golang.org/x/net/http/httpguts"
)

// Server serves HTTP/1.x on connections it is handed, one request at a time
// on the connection's own goroutine.
//
// net/http's server, on a sidecar, paid per request for a background read
// goroutine (to notice a client going away), a cancellable context, a copy of
// the header map for the response and the hand-offs between them. Server
// parses requests with net/http's own parser (http.ReadRequest), so requests
// are held to the same rules: differing Content-Length values, an unknown
// Transfer-Encoding, bad header names and values, a missing or repeated Host
// are refused with 400, a version other than 1.x with 505; with both
// Transfer-Encoding: chunked and Content-Length the chunks frame the body and
// the length is dropped, and a folded header line is joined to the one
// before (RFC 9112 6.3 and 5.2; the request goes on re-framed). It writes
// responses itself: a response
// whose length is known leaves in one write with its headers. A request still
// running after WatchAfter gets its connection watched, so a client that goes
// away cancels it.
//
// HTTP/2 (ALPN h2, or the h2c preface on a plaintext connection) is not
// spoken here: such a connection goes to HTTP2 with what was read replayed.
type Server struct {
	// Handler serves each request. The request's context carries
	// http.LocalAddrContextKey and ConnContext's values, and ends when the
	// handler returns or the client goes away.
	Handler http.Handler
	// ConnContext, if set, derives each connection's context.
	ConnContext func(ctx context.Context, c net.Conn) context.Context
	// HTTP2, if set, takes connections that speak HTTP/2; without it they
	// are closed.
	HTTP2 func(c net.Conn)
	// HeaderTimeout bounds reading a request's headers (default 10 s).
	HeaderTimeout time.Duration
	// IdleTimeout bounds the wait for the next request on a kept-alive
	// connection (default 2 min).
	IdleTimeout time.Duration
	// MaxHeaderBytes bounds a request's header block (default 64 KiB); past
	// it the answer is 431.
	MaxHeaderBytes int
	// WatchAfter is how long a request without a body runs before its
	// connection is watched for the client going away (default 50 ms). A
	// request with a body is not watched: its connection is busy with it.
	WatchAfter time.Duration
}

var headerEnd = []byte("\r\n\r\n")

// maxDrain is how much of a request body the handler left unread is read
// and discarded to keep the connection; more, and the connection is closed
// (net/http's limit).
const maxDrain = 256 << 10

// smallBody is how much of a response without a declared length is held
// back to send it with a Content-Length instead of chunked.
const smallBody = 4 << 10

var (
	readers = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 4<<10) }}
	writers = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 4<<10) }}
)

// ServeConn serves c until the client closes it, it idles past IdleTimeout,
// a response requires closing it, it is handed to HTTP2 or hijacked, or ctx
// ends (then it is closed once idle). It closes c unless handed on.
func (s *Server) ServeConn(ctx context.Context, c net.Conn) {
	sc := &serverConn{srv: s, c: c, remote: c.RemoteAddr().String()}
	sc.lr.r = c
	sc.br = readers.Get().(*bufio.Reader)
	sc.br.Reset(&sc.lr)
	sc.bw = writers.Get().(*bufio.Writer)
	sc.bw.Reset(c)
	// As net/http's server: handlers may ask which local address was dialled.
	ctx = context.WithValue(ctx, http.LocalAddrContextKey, c.LocalAddr())
	// httputil.ReverseProxy aborts a response whose upstream body broke off
	// (http.ErrAbortHandler) only under a server: otherwise it returns, and
	// the response would be finished as if whole.
	ctx = context.WithValue(ctx, http.ServerContextKey, serverMarker)
	if s.ConnContext != nil {
		ctx = s.ConnContext(ctx, c)
	}
	if cs, ok := c.(interface{ ConnectionState() tls.ConnectionState }); ok {
		st := cs.ConnectionState()
		sc.tls = &st
	}
	if sc.tls != nil && sc.tls.NegotiatedProtocol == "h2" {
		sc.handOff(false)
		return
	}
	// Closed by ctx while idle; a request in flight finishes first.
	stop := context.AfterFunc(ctx, func() {
		sc.imu.Lock()
		defer sc.imu.Unlock()
		sc.shutdown.Store(true)
		if sc.idle {
			_ = c.SetReadDeadline(time.Unix(1, 0))
		}
	})
	defer stop()
	// Requests end with their handler or their client, not with ctx (as with
	// net/http's Shutdown, a request in flight finishes): their contexts are
	// not registered with ctx, which would cost a lock and a map entry each.
	sc.serve(context.WithoutCancel(ctx))
}

type serverConn struct {
	srv    *Server
	c      net.Conn
	remote string
	tls    *tls.ConnectionState
	lr     limitedReader
	br     *bufio.Reader
	bw     *bufio.Writer

	// imu orders the idle state and its read deadline against shutdown: a
	// shutdown sets an expired deadline only on a connection still idle, and
	// a connection never starts waiting after a shutdown.
	imu      sync.Mutex
	idle     bool // waiting for the next request
	shutdown atomic.Bool
	hijacked bool

	// The watch on the connection while a request without a body runs: one
	// timer per connection, re-armed per request.
	wTimer   *time.Timer // touched by the connection's goroutine only
	wmu      sync.Mutex
	wArmed   bool
	wRunning bool
	wGone    bool
	wDone    chan struct{}
	wCancel  context.CancelFunc
}

func (sc *serverConn) headerTimeout() time.Duration {
	if sc.srv.HeaderTimeout > 0 {
		return sc.srv.HeaderTimeout
	}
	return 10 * time.Second
}

func (sc *serverConn) maxHeaderBytes() int64 {
	if sc.srv.MaxHeaderBytes > 0 {
		return int64(sc.srv.MaxHeaderBytes)
	}
	return 64 << 10
}

// close closes the connection and returns the buffers to their pools.
func (sc *serverConn) close() {
	if sc.wTimer != nil {
		sc.wTimer.Stop()
	}
	sc.c.Close()
	sc.release()
}

// rstAvoidance is how long a connection closed with request body still
// unread keeps reading (and discarding) after its response, as net/http's
// server does: closing a socket with unread data makes the kernel reset it,
// and a reset can reach the client before it has read the response.
const rstAvoidance = 500 * time.Millisecond

// closeUnread half-closes the connection, so the client sees the end of the
// response, then discards what it still sends for a bounded time before
// closing.
func (sc *serverConn) closeUnread() {
	if cw, ok := sc.c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
	// Without a half-close the client still has its response, framed and
	// marked Connection: close; reading on keeps the kernel from resetting
	// the connection under it.
	_ = sc.c.SetReadDeadline(time.Now().Add(rstAvoidance))
	_, _ = io.Copy(io.Discard, sc.c)
	sc.close()
}

func (sc *serverConn) release() {
	sc.br.Reset(nil)
	readers.Put(sc.br)
	sc.bw.Reset(nil)
	writers.Put(sc.bw)
	sc.br, sc.bw = nil, nil
}

// handOff gives the connection, with whatever was read of it, to HTTP2.
func (sc *serverConn) handOff(readAgain bool) {
	if sc.srv.HTTP2 == nil {
		sc.close()
		return
	}
	c := sc.c
	if readAgain && sc.br.Buffered() > 0 {
		buffered, _ := sc.br.Peek(sc.br.Buffered())
		c = &replay.Conn{Conn: sc.c, Head: append([]byte(nil), buffered...)}
	}
	if sc.tls != nil && sc.tls.NegotiatedProtocol != "h2" {
		// HTTP/2 on a TLS connection whose ALPN did not say so (Istio's
		// "istio"): net/http's server would read a *tls.Conn by its ALPN,
		// so it gets the stream as h2c, with the handshake's state kept.
		c = &TLSView{Conn: c, State: *sc.tls}
	}
	sc.release()
	sc.srv.HTTP2(c)
}

// TLSView is a connection whose TLS the sidecar has already ended, handed on
// as its decrypted stream with the handshake's State (the peer's
// certificate). It has no ConnectionState method on purpose: net/http's
// server serves h2c only on connections without one. A handler finds it as
// the connection of its request's context and takes the request's TLS state
// from it.
type TLSView struct {
	net.Conn
	State tls.ConnectionState
}

// NetConn is the connection underneath.
func (c *TLSView) NetConn() net.Conn { return c.Conn }

// serverMarker is the http.ServerContextKey value of requests served here.
var serverMarker = &http.Server{}

var h2Preface = []byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")

// http1ALPN are the ALPN names that promise HTTP/1.x. Any other (none, or
// Istio's "istio", which its sidecars offer for whatever they carry) leaves
// the first bytes to say: a connection that opens with HTTP/2's preface is
// served as HTTP/2.
var http1ALPN = map[string]bool{"http/1.1": true, "http/1.0": true, "istio-http/1.0": true, "istio-http/1.1": true}

func (sc *serverConn) serve(ctx context.Context) {
	idleTimeout := sc.srv.IdleTimeout
	if idleTimeout <= 0 {
		idleTimeout = 2 * time.Minute
	}
	first := true
	for {
		if sc.shutdown.Load() {
			sc.close()
			return
		}
		sc.lr.n = sc.maxHeaderBytes() + 4096
		if sc.br.Buffered() == 0 {
			wait := idleTimeout
			if first {
				wait = sc.headerTimeout()
			}
			sc.imu.Lock()
			if sc.shutdown.Load() {
				sc.imu.Unlock()
				sc.close()
				return
			}
			sc.idle = true
			_ = sc.c.SetReadDeadline(time.Now().Add(wait))
			sc.imu.Unlock()
			_, err := sc.br.Peek(1)
			sc.imu.Lock()
			sc.idle = false
			sc.imu.Unlock()
			if err != nil {
				sc.close()
				return
			}
		}
		if first {
			first = false
			if (sc.tls == nil || !http1ALPN[sc.tls.NegotiatedProtocol]) && sc.srv.HTTP2 != nil && sc.isPreface() {
				sc.handOff(true)
				return
			}
		}
		// http.ReadRequest drops the Host header (it is in req.Host): the
		// header block is kept to count Host lines, as net/http's server does.
		pre, _ := sc.br.Peek(sc.br.Buffered())
		// A header block already read whole needs no deadline to read it (the
		// first empty line ends it, and one is there); otherwise the rest
		// must come within the header timeout.
		if !bytes.Contains(pre, headerEnd) {
			_ = sc.c.SetReadDeadline(time.Now().Add(sc.headerTimeout()))
		}
		sc.lr.rec = append(sc.lr.rec[:0], pre...)
		sc.lr.recording = true
		req, err := http.ReadRequest(sc.br)
		sc.lr.recording = false
		if err != nil {
			var ne net.Error
			switch {
			case sc.lr.n <= 0:
				sc.fail(http.StatusRequestHeaderFieldsTooLarge, "431 Request Header Fields Too Large")
			case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.As(err, &ne):
				sc.close() // the client went away or was too slow: no one to answer
			default:
				sc.fail(http.StatusBadRequest, "400 Bad Request")
			}
			return
		}
		sc.lr.n = 1<<63 - 1
		_ = sc.c.SetReadDeadline(time.Time{})
		if req.ProtoMajor != 1 {
			sc.fail(http.StatusHTTPVersionNotSupported, "505 HTTP Version Not Supported")
			return
		}
		if msg := validate(req, countHosts(sc.lr.rec)); msg != "" {
			sc.fail(http.StatusBadRequest, "400 Bad Request: "+msg)
			return
		}
		if !sc.serveOne(ctx, req) {
			return
		}
	}
}

// isPreface says whether the connection starts with HTTP/2's preface (h2c
// with prior knowledge). Bytes that cannot begin it answer at once.
func (sc *serverConn) isPreface() bool {
	b, _ := sc.br.Peek(sc.br.Buffered())
	n := min(len(b), len(h2Preface))
	if n == 0 || string(b[:n]) != string(h2Preface[:n]) {
		return false
	}
	if n < len(h2Preface) {
		b, err := sc.br.Peek(len(h2Preface))
		return err == nil && string(b) == string(h2Preface)
	}
	return true
}

// countHosts counts the Host fields in a request's header block (the block
// is the start of b).
func countHosts(b []byte) int {
	i := bytes.IndexByte(b, '\n')
	if i < 0 {
		return 0
	}
	n := 0
	for rest := b[i+1:]; len(rest) > 0; {
		line := rest
		if j := bytes.IndexByte(rest, '\n'); j >= 0 {
			line, rest = rest[:j], rest[j+1:]
		} else {
			rest = nil
		}
		line = bytes.TrimSuffix(line, []byte("\r"))
		if len(line) == 0 {
			break
		}
		if len(line) >= 5 && strings.EqualFold(string(line[:5]), "host:") {
			n++
		}
	}
	return n
}

// validate applies the checks net/http's server makes beyond the parser's;
// hosts is how many Host fields the request had.
func validate(req *http.Request, hosts int) string {
	if req.ProtoAtLeast(1, 1) && hosts == 0 && req.Method != http.MethodConnect {
		return "missing required Host header"
	}
	if hosts > 1 {
		return "too many Host headers"
	}
	if hosts == 1 && req.URL.Host == "" && !httpguts.ValidHostHeader(req.Host) {
		return "malformed Host header"
	}
	for k, vv := range req.Header {
		if !httpguts.ValidHeaderFieldName(k) {
			return "invalid header name"
		}
		for _, v := range vv {
			if !httpguts.ValidHeaderFieldValue(v) {
				return "invalid header value"
			}
		}
	}
	delete(req.Header, "Host")
	return ""
}

// fail answers a request that could not be read, then closes.
func (sc *serverConn) fail(code int, msg string) {
	_ = sc.c.SetWriteDeadline(time.Now().Add(time.Second))
	fmt.Fprintf(sc.bw, "HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s",
		code, http.StatusText(code), len(msg), msg)
	_ = sc.bw.Flush()
	sc.close()
}

// serveOne runs the handler on req and finishes its response; false means
// the connection is done (closed, handed on or hijacked).
func (sc *serverConn) serveOne(ctx context.Context, req *http.Request) (keep bool) {
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var w *response
	var body *reqBody
	defer func() {
		// A handler that panics (http.ErrAbortHandler: a proxied body broke
		// off) loses its connection, not the process.
		if p := recover(); p != nil {
			if body != nil {
				body.detach()
			}
			if w != nil && w.watched && !sc.hijacked {
				sc.disarm()
			}
			if sc.hijacked {
				sc.c.Close()
			} else {
				sc.close()
			}
			keep = false
		}
	}()
	req = req.WithContext(rctx)
	req.RemoteAddr = sc.remote
	req.TLS = sc.tls
	w = &response{sc: sc, req: req, header: make(http.Header, 8), status: http.StatusOK, cl: -1}
	if req.Body != nil && req.Body != http.NoBody {
		body = &reqBody{rc: req.Body, w: w}
		if ex := req.Header.Get("Expect"); ex != "" {
			if !strings.EqualFold(ex, "100-continue") || !req.ProtoAtLeast(1, 1) {
				w.closeAfter = true
				w.WriteHeader(http.StatusExpectationFailed)
				w.finish()
				_ = sc.bw.Flush()
				sc.close()
				return false
			}
			body.cont = true
		}
		req.Body = body
	} else {
		w.watched = true
		sc.arm(cancel)
	}
	if req.Close || !req.ProtoAtLeast(1, 1) && !httpguts.HeaderValuesContainsToken(req.Header["Connection"], "keep-alive") {
		w.closeAfter = true
	}
	sc.srv.Handler.ServeHTTP(w, req)
	// From here on the server alone reads the connection.
	interrupted := body != nil && body.detach()
	if w.watched && !sc.hijacked {
		if sc.disarm() {
			w.closeAfter = true // the client went away
		}
	}
	if sc.hijacked {
		if interrupted {
			_ = sc.c.SetReadDeadline(time.Time{}) // the handler owns the connection now
		}
		return false
	}
	if interrupted {
		// A read of the body was cut short where it stood: the rest of the
		// body cannot be told from the next request.
		_ = sc.c.SetReadDeadline(time.Time{})
		body.eof = false
		w.closeAfter = true
	}
	// A connection that closes after this response (the handler said so, or
	// the server is shutting down) has no use for the rest of the body.
	if !w.committed && (httpguts.HeaderValuesContainsToken(w.header["Connection"], "close") || sc.shutdown.Load()) {
		w.closeAfter = true
	}
	// What the handler left of the body is read before the response is
	// finished, so a response that was held back can still say
	// "Connection: close" when too much is left to keep the connection. The
	// rest must come within the header timeout: a client that stalls in its
	// body gets its answer and a closed connection, not a wait.
	unread := false
	switch {
	case body == nil || body.eof:
	case body.cont:
		w.closeAfter = true // the client waits for a 100 Continue that never came
	case w.closeAfter:
		unread = true
	default:
		_ = sc.c.SetReadDeadline(time.Now().Add(sc.headerTimeout()))
		if !body.drain() {
			w.closeAfter, unread = true, true
		}
	}
	w.finish()
	if err := sc.bw.Flush(); err != nil || w.closeAfter || w.broken {
		if unread && err == nil && !w.broken {
			sc.closeUnread()
			return false
		}
		sc.close()
		return false
	}
	return true
}

func (sc *serverConn) watchAfter() time.Duration {
	if sc.srv.WatchAfter > 0 {
		return sc.srv.WatchAfter
	}
	return 50 * time.Millisecond
}

// arm starts the watch for a request without a body: after WatchAfter, the
// connection is read in the background (as net/http does for every request,
// here only for one still running then), so a client that goes away cancels
// the request.
func (sc *serverConn) arm(cancel context.CancelFunc) {
	sc.wmu.Lock()
	sc.wArmed, sc.wGone, sc.wCancel = true, false, cancel
	sc.wmu.Unlock()
	if sc.wTimer == nil {
		sc.wTimer = time.AfterFunc(sc.watchAfter(), sc.watch)
	} else {
		sc.wTimer.Reset(sc.watchAfter())
	}
}

// watch runs on the timer's goroutine. A late firing (its request already
// over) finds the watch disarmed and does nothing; one that lands in the next
// request only starts that request's watch early.
func (sc *serverConn) watch() {
	sc.wmu.Lock()
	if !sc.wArmed || sc.wRunning {
		sc.wmu.Unlock()
		return
	}
	sc.wRunning = true
	done := make(chan struct{})
	sc.wDone = done
	cancel, br := sc.wCancel, sc.br
	sc.wmu.Unlock()
	_, err := br.Peek(1)
	var ne net.Error
	if err != nil && !(errors.As(err, &ne) && ne.Timeout()) {
		sc.wmu.Lock()
		sc.wGone = true
		sc.wmu.Unlock()
		cancel()
	}
	close(done)
}

// disarm ends the watch; true means the client went away.
func (sc *serverConn) disarm() bool {
	sc.wTimer.Stop()
	sc.wmu.Lock()
	sc.wArmed = false
	running, done := sc.wRunning, sc.wDone
	sc.wmu.Unlock()
	if !running {
		return false
	}
	_ = sc.c.SetReadDeadline(time.Unix(1, 0))
	<-done
	_ = sc.c.SetReadDeadline(time.Time{})
	sc.wmu.Lock()
	defer sc.wmu.Unlock()
	sc.wRunning = false
	return sc.wGone
}

// reqBody is a request body as the handler sees it: Close does not read the
// rest (the server drains a bounded amount afterwards), and the first read
// answers "Expect: 100-continue". It may be read from another goroutine than
// the handler's, even after the handler returned (net/http's Transport sends
// a request body from its own goroutine and may still be at it when
// RoundTrip has returned): mu orders those reads with detach, which ends them
// before the server reads on or gives the connection's buffers back.
type reqBody struct {
	mu       sync.Mutex
	rc       io.ReadCloser
	w        *response
	cont     bool
	eof      bool
	detached bool
	// closed is set by Close without mu: a handler closing its body (as
	// httputil.ReverseProxy always does) must not wait behind a read still
	// blocked on another goroutine; detach ends that read.
	closed atomic.Bool
}

// errBodyDetached is what a read of a body gets once its handler has returned.
var errBodyDetached = errors.New("h1: request body read after its handler returned")

func (b *reqBody) Read(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.detached {
		return 0, errBodyDetached
	}
	if b.closed.Load() {
		return 0, http.ErrBodyReadAfterClose
	}
	if b.cont {
		b.cont = false
		b.w.continueOnce()
	}
	n, err := b.rc.Read(p)
	if err == io.EOF {
		b.eof = true
	}
	return n, err
}

func (b *reqBody) Close() error {
	b.closed.Store(true)
	return nil
}

// detach ends every read of the body from the handler's side; the server
// calls it when the handler has returned, before it reads the connection
// again or releases it. A read still blocked on another goroutine is cut
// short with an expired read deadline; interrupted says so, and what is left
// of the body is then unknown, so the connection must close.
func (b *reqBody) detach() (interrupted bool) {
	if !b.mu.TryLock() {
		_ = b.w.sc.c.SetReadDeadline(time.Unix(1, 0))
		b.mu.Lock()
		interrupted = true
	}
	b.detached = true
	b.mu.Unlock()
	return interrupted
}

// drain reads what the handler left of the body; false means too much was
// left (or the client never sent it after asking to continue) to keep the
// connection.
func (b *reqBody) drain() bool {
	if b.eof {
		return true
	}
	if b.cont {
		return false // the client waits for 100 Continue that never came
	}
	n, err := io.CopyN(io.Discard, b.rc, maxDrain+1)
	return err == io.EOF && n <= maxDrain
}

// limitedReader bounds what a request's header block may take, and keeps
// what it reads while recording.
type limitedReader struct {
	r         io.Reader
	n         int64
	recording bool
	rec       []byte
}

func (l *limitedReader) Read(p []byte) (int, error) {
	if l.n <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > l.n {
		p = p[:l.n]
	}
	n, err := l.r.Read(p)
	l.n -= int64(n)
	if l.recording {
		l.rec = append(l.rec, p[:n]...)
	}
	return n, err
}

// response is the http.ResponseWriter of one request.
type response struct {
	sc          *serverConn
	req         *http.Request
	header      http.Header
	status      int
	wroteHeader bool // the handler called WriteHeader or Write
	committed   bool // the status line and headers are in the buffer
	cl          int64
	written     int64
	chunked     bool
	noBody      bool
	closeAfter  bool
	broken      bool // a write failed or the body came short: close
	trailers    []string
	held        []byte // body held back while the length is unknown
	watched     bool   // the connection is watched while this request runs
	// wmu orders a 100 Continue, written by whichever goroutine first reads
	// the body, with the handler's own status line (WriteHeader).
	wmu sync.Mutex
}

// continueOnce answers "Expect: 100-continue" unless the response has
// started (a final status makes the client's body unnecessary).
func (w *response) continueOnce() {
	w.wmu.Lock()
	defer w.wmu.Unlock()
	if w.wroteHeader || w.sc.hijacked {
		return
	}
	sc := w.sc
	_, _ = sc.bw.WriteString("HTTP/1.1 100 Continue\r\n\r\n")
	_ = sc.bw.Flush()
}

func (w *response) Header() http.Header { return w.header }

func (w *response) WriteHeader(code int) {
	w.wmu.Lock()
	defer w.wmu.Unlock()
	if w.wroteHeader || w.sc.hijacked {
		return
	}
	if code < 100 || code > 999 {
		panic(fmt.Sprintf("invalid WriteHeader code %v", code))
	}
	if code >= 100 && code < 200 && code != http.StatusSwitchingProtocols {
		// An informational answer (103 Early Hints) goes now; the real one follows.
		w.writeStatusLine(code)
		w.writeFields(w.header, false)
		_, _ = w.sc.bw.WriteString("\r\n")
		if err := w.sc.bw.Flush(); err != nil {
			w.broken = true
		}
		return
	}
	w.wroteHeader = true
	w.status = code
	w.noBody = w.req.Method == http.MethodHead || code == http.StatusNoContent || code == http.StatusNotModified || code < 200
	if v := w.header.Get("Content-Length"); v != "" {
		if n, err := strconv.ParseInt(v, 10, 64); err == nil && n >= 0 {
			w.cl = n
		} else {
			w.header.Del("Content-Length")
		}
	}
	for _, v := range w.header["Trailer"] {
		for _, k := range strings.Split(v, ",") {
			if k = strings.TrimSpace(k); k != "" {
				w.trailers = append(w.trailers, http.CanonicalHeaderKey(k))
			}
		}
	}
	if w.cl >= 0 || w.noBody {
		w.commit()
	}
}

func (w *response) writeStatusLine(code int) {
	bw := w.sc.bw
	if line, ok := statusLines[code]; ok {
		_, _ = bw.WriteString(line)
		return
	}
	text := http.StatusText(code)
	if text == "" {
		text = "status code " + strconv.Itoa(code)
	}
	_, _ = bw.WriteString("HTTP/1.1 " + strconv.Itoa(code) + " " + text + "\r\n")
}

var statusLines = func() map[int]string {
	m := map[int]string{}
	for _, c := range []int{200, 201, 202, 204, 206, 301, 302, 304, 307, 308, 400, 401, 403, 404, 405, 408, 413, 429, 431, 499, 500, 502, 503, 504} {
		t := http.StatusText(c)
		if t == "" {
			t = "status code " + strconv.Itoa(c)
		}
		m[c] = "HTTP/1.1 " + strconv.Itoa(c) + " " + t + "\r\n"
	}
	return m
}()

// headerValue keeps a header value on one line (response splitting).
var headerValue = strings.NewReplacer("\n", " ", "\r", " ")

func (w *response) writeFields(h http.Header, skipFraming bool) {
	bw := w.sc.bw
	for k, vs := range h {
		if skipFraming {
			switch k {
			case "Content-Length", "Transfer-Encoding", "Connection", "Trailer":
				continue
			}
		}
		if strings.HasPrefix(k, http.TrailerPrefix) || !httpguts.ValidHeaderFieldName(k) {
			continue
		}
		for _, v := range vs {
			writeField(bw, k, v)
		}
	}
}

// commit puts the status line and headers in the buffer, choosing how the
// body is framed: a declared length, chunks, or (HTTP/1.0) the connection's
// end.
func (w *response) commit() {
	if w.committed {
		return
	}
	w.committed = true
	w.wroteHeader = true
	h := w.header
	if !w.noBody && w.cl < 0 || len(w.trailers) > 0 {
		if w.req.ProtoAtLeast(1, 1) {
			w.chunked = true
		} else {
			w.closeAfter = true
		}
	}
	if w.chunked && w.cl >= 0 && len(w.trailers) > 0 {
		w.cl = -1 // trailers need chunks; the length is not sent
	}
	if httpguts.HeaderValuesContainsToken(h["Connection"], "close") {
		w.closeAfter = true
	}
	if w.sc.shutdown.Load() {
		w.closeAfter = true
	}
	w.writeStatusLine(w.status)
	w.writeFields(h, true)
	bw := w.sc.bw
	if w.cl >= 0 && w.status >= 200 && w.status != http.StatusNoContent {
		_, _ = bw.WriteString("Content-Length: ")
		_, _ = bw.WriteString(strconv.FormatInt(w.cl, 10))
		_, _ = bw.WriteString("\r\n")
	}
	if w.chunked && !w.noBody {
		_, _ = bw.WriteString("Transfer-Encoding: chunked\r\n")
	}
	if len(w.trailers) > 0 && w.chunked && !w.noBody {
		_, _ = bw.WriteString("Trailer: " + strings.Join(w.trailers, ", ") + "\r\n")
	}
	if _, ok := h["Date"]; !ok {
		_, _ = bw.WriteString("Date: ")
		_, _ = bw.Write(time.Now().UTC().AppendFormat(make([]byte, 0, 32), http.TimeFormat))
		_, _ = bw.WriteString("\r\n")
	}
	if w.closeAfter {
		_, _ = bw.WriteString("Connection: close\r\n")
	} else if !w.req.ProtoAtLeast(1, 1) {
		_, _ = bw.WriteString("Connection: keep-alive\r\n")
	}
	_, _ = bw.WriteString("\r\n")
}

func (w *response) Write(p []byte) (int, error) {
	if w.sc.hijacked {
		return 0, http.ErrHijacked
	}
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if w.noBody {
		if w.req.Method == http.MethodHead {
			return len(p), nil
		}
		return 0, http.ErrBodyNotAllowed
	}
	if !w.committed {
		// Unknown length: hold a small body back to send its length.
		if len(w.held)+len(p) <= smallBody {
			w.held = append(w.held, p...)
			return len(p), nil
		}
		w.commit()
		if len(w.held) > 0 {
			held := w.held
			w.held = nil
			if _, err := w.writeBody(held); err != nil {
				return 0, err
			}
		}
	}
	return w.writeBody(p)
}

func (w *response) writeBody(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if w.cl >= 0 && w.written+int64(len(p)) > w.cl {
		return 0, http.ErrContentLength
	}
	w.written += int64(len(p))
	bw := w.sc.bw
	if w.chunked {
		_, _ = bw.WriteString(strconv.FormatInt(int64(len(p)), 16))
		_, _ = bw.WriteString("\r\n")
	}
	n, err := bw.Write(p)
	if w.chunked && err == nil {
		_, err = bw.WriteString("\r\n")
	}
	if err != nil {
		w.broken = true
	}
	return n, err
}

// Flush sends what is buffered, headers included.
func (w *response) Flush() {
	_ = w.FlushError()
}

// FlushError is Flush that says whether it worked (http.ResponseController).
func (w *response) FlushError() error {
	if w.sc.hijacked {
		return http.ErrHijacked
	}
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if !w.committed {
		w.commit()
		if len(w.held) > 0 {
			held := w.held
			w.held = nil
			if _, err := w.writeBody(held); err != nil {
				return err
			}
		}
	}
	if err := w.sc.bw.Flush(); err != nil {
		w.broken = true
		return err
	}
	return nil
}

// finish completes the response after the handler returned.
func (w *response) finish() {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if !w.committed {
		w.cl = int64(len(w.held))
		w.commit()
		held := w.held
		w.held = nil
		_, _ = w.writeBody(held)
	}
	bw := w.sc.bw
	if w.chunked && !w.noBody {
		_, _ = bw.WriteString("0\r\n")
		for _, k := range w.trailers {
			for _, v := range w.header[k] {
				_, _ = bw.WriteString(k + ": " + headerValue.Replace(v) + "\r\n")
			}
		}
		for k, vs := range w.header {
			if name, ok := strings.CutPrefix(k, http.TrailerPrefix); ok && httpguts.ValidHeaderFieldName(name) {
				for _, v := range vs {
					_, _ = bw.WriteString(name + ": " + headerValue.Replace(v) + "\r\n")
				}
			}
		}
		_, _ = bw.WriteString("\r\n")
	}
	if w.cl >= 0 && w.written < w.cl && !w.noBody {
		w.broken = true // the body came short: the client must see the end
	}
}

// Hijack hands the connection to the handler (WebSocket and other upgrades).
func (w *response) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	sc := w.sc
	if sc.hijacked {
		return nil, nil, http.ErrHijacked
	}
	if w.watched {
		sc.disarm()
	}
	if w.committed {
		if err := sc.bw.Flush(); err != nil {
			return nil, nil, err
		}
	}
	w.wmu.Lock()
	sc.hijacked = true
	w.wmu.Unlock()
	_ = sc.c.SetDeadline(time.Time{})
	// The buffers go with the connection; new ones serve nothing else.
	rw := bufio.NewReadWriter(sc.br, sc.bw)
	return sc.c, rw, nil
}

// SetReadDeadline and SetWriteDeadline serve http.ResponseController.
func (w *response) SetReadDeadline(t time.Time) error  { return w.sc.c.SetReadDeadline(t) }
func (w *response) SetWriteDeadline(t time.Time) error { return w.sc.c.SetWriteDeadline(t) }

// EnableFullDuplex: an HTTP/1 request body may always be read while the
// response is written here.
func (w *response) EnableFullDuplex() error { return nil }
