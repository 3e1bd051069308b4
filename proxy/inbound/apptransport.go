package inbound

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"sync"
	"time"
)

// appTransport carries requests without a body (GET, HEAD, DELETE, ... the
// bulk of service traffic) to the app over pooled HTTP/1.1 connections, on
// the request's own goroutine: it writes the request, reads the response and
// hands the connection back when the body is done. net/http's Transport runs
// two goroutines per connection and passes every request and response between
// them and the caller; on a sidecar those hand-offs were a measurable part of
// each hop. Requests with a body, upgrades and CONNECT go to next (net/http),
// which streams bodies while it reads the answer.
type appTransport struct {
	addr        string
	next        http.RoundTripper
	dial        func(ctx context.Context, network, addr string) (net.Conn, error)
	maxIdle     int
	idleTimeout time.Duration

	mu   sync.Mutex
	idle []*appConn // most recently used last
}

type appConn struct {
	c    net.Conn
	br   *bufio.Reader
	bw   *bufio.Writer
	used time.Time
}

// errStale marks a failure on a reused connection before any response byte:
// the app closed it while idle, and the request may be sent again.
var errStale = errors.New("idle connection to the app was closed")

func (t *appTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if (req.Body != nil && req.Body != http.NoBody) || req.ContentLength != 0 || req.Method == http.MethodConnect ||
		req.Header.Get("Upgrade") != "" || req.URL.Host != t.addr || req.URL.Scheme != "http" {
		return t.next.RoundTrip(req)
	}
	for {
		ac, reused, err := t.get(req.Context())
		if err != nil {
			return nil, err
		}
		resp, err := t.exchange(req, ac, reused)
		if errors.Is(err, errStale) && replayable(req) && req.Context().Err() == nil {
			continue // a fresh connection next (get dials when the pool is empty)
		}
		return resp, err
	}
}

func (t *appTransport) exchange(req *http.Request, ac *appConn, reused bool) (*http.Response, error) {
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
	if err := req.Write(ac.bw); err != nil {
		return fail(err)
	}
	if err := ac.bw.Flush(); err != nil {
		if reused {
			return fail(errStale)
		}
		return fail(err)
	}
	for {
		if reused {
			if _, err := ac.br.Peek(1); err != nil {
				return fail(errStale)
			}
		}
		resp, err := http.ReadResponse(ac.br, req)
		if err != nil {
			return fail(err)
		}
		// Informational answers (103 Early Hints) precede the real one.
		if resp.StatusCode >= 100 && resp.StatusCode < 200 && resp.StatusCode != http.StatusSwitchingProtocols {
			reused = false
			continue
		}
		keep := !resp.Close && !req.Close
		resp.Body = &appBody{rc: resp.Body, t: t, ac: ac, keep: keep, stop: stop, eof: resp.Body == http.NoBody}
		return resp, nil
	}
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

// get takes the most recently used idle connection, or dials one.
func (t *appTransport) get(ctx context.Context) (*appConn, bool, error) {
	now := time.Now()
	t.mu.Lock()
	for len(t.idle) > 0 {
		ac := t.idle[len(t.idle)-1]
		t.idle = t.idle[:len(t.idle)-1]
		if now.Sub(ac.used) < t.idleTimeout {
			t.mu.Unlock()
			return ac, true, nil
		}
		ac.c.Close()
	}
	t.mu.Unlock()
	c, err := t.dial(ctx, "tcp", t.addr)
	if err != nil {
		return nil, false, err
	}
	return &appConn{c: c, br: bufio.NewReaderSize(c, 4<<10), bw: bufio.NewWriterSize(c, 4<<10)}, false, nil
}

func (t *appTransport) put(ac *appConn) {
	_ = ac.c.SetDeadline(time.Time{})
	ac.used = time.Now()
	t.mu.Lock()
	if len(t.idle) >= t.maxIdle {
		t.mu.Unlock()
		ac.c.Close()
		return
	}
	t.idle = append(t.idle, ac)
	t.mu.Unlock()
}

// CloseIdleConnections closes the pooled connections (and next's).
func (t *appTransport) CloseIdleConnections() {
	t.mu.Lock()
	idle := t.idle
	t.idle = nil
	t.mu.Unlock()
	for _, ac := range idle {
		ac.c.Close()
	}
	if ci, ok := t.next.(interface{ CloseIdleConnections() }); ok {
		ci.CloseIdleConnections()
	}
}

// appBody gives the connection back once the response body has been read to
// its end; closed early, the connection is closed with it.
type appBody struct {
	rc   io.ReadCloser
	t    *appTransport
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
