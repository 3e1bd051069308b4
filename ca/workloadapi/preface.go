package workloadapi

import (
	"bytes"
	"errors"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/rampart-mesh/rampart/internal/replay"
)

// http2Preface is what every gRPC client sends first.
var http2Preface = []byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")

// prefaceListener hands gRPC only connections that begin with the HTTP/2 preface.
// Anything else (garbage, HTTP/1, a stuck client) is logged and closed here, so
// the server never spends more than a short deadline on it.
type prefaceListener struct {
	net.Listener
	log   *slog.Logger
	conns chan net.Conn
	errc  chan error
	once  sync.Once
	done  chan struct{}
}

func newPrefaceListener(l net.Listener, log *slog.Logger) *prefaceListener {
	p := &prefaceListener{Listener: l, log: log, conns: make(chan net.Conn), errc: make(chan error, 1), done: make(chan struct{})}
	go p.acceptLoop()
	return p
}

func (p *prefaceListener) acceptLoop() {
	var delay time.Duration
	for {
		c, err := p.Listener.Accept()
		if err != nil {
			// A temporary error (EMFILE under load) must not end accepting for good:
			// gRPC would retry Accept forever and never get another connection.
			var te interface{ Temporary() bool }
			if errors.As(err, &te) && te.Temporary() {
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				p.log.Warn("workload API accept failed; retrying", "err", err, "retry_in", delay)
				t := time.NewTimer(delay)
				select {
				case <-t.C:
					continue
				case <-p.done:
					t.Stop()
					return
				}
			}
			p.errc <- err
			return
		}
		delay = 0
		go p.check(c)
	}
}

func (p *prefaceListener) check(c net.Conn) {
	buf := make([]byte, len(http2Preface))
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := io.ReadFull(c, buf)
	_ = c.SetReadDeadline(time.Time{})
	if err != nil || !bytes.Equal(buf, http2Preface) {
		reason := "not a gRPC (HTTP/2) client"
		if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) {
			reason = err.Error()
		}
		p.log.Warn("workload API connection closed", "reason", reason, "bytes_read", n)
		c.Close()
		return
	}
	select {
	case p.conns <- &replay.Conn{Conn: c, Head: buf}:
	case <-p.done:
		c.Close()
	}
}

func (p *prefaceListener) Accept() (net.Conn, error) {
	select {
	case c := <-p.conns:
		return c, nil
	case err := <-p.errc:
		p.errc <- err
		return nil, err
	case <-p.done:
		return nil, net.ErrClosed
	}
}

func (p *prefaceListener) Close() error {
	p.once.Do(func() { close(p.done) })
	return p.Listener.Close()
}
