package listener

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
)

// Chan is a net.Listener fed by hand: a server's accept loop classifies each
// connection (sniffing, TLS, original destination) and Pushes the ones an
// http.Server should serve.
type Chan struct {
	addr net.Addr
	ch   chan net.Conn
	once sync.Once
	done chan struct{}
}

// NewChan returns a Chan reporting addr as its address.
func NewChan(addr net.Addr) *Chan {
	return &Chan{addr: addr, ch: make(chan net.Conn), done: make(chan struct{})}
}

// Push hands c to Accept; false once the listener is closed (c is not taken).
func (l *Chan) Push(c net.Conn) bool {
	select {
	case l.ch <- c:
		return true
	case <-l.done:
		return false
	}
}

// Accept implements net.Listener.
func (l *Chan) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

// Close implements net.Listener.
func (l *Chan) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

// Addr implements net.Listener.
func (l *Chan) Addr() net.Addr { return l.addr }

// Splice copies bytes both ways between a and b. When one direction ends it
// half-closes the other side's write (or closes it), and it returns when both
// directions have ended.
func Splice(a, b net.Conn) {
	done := make(chan struct{}, 2)
	cp := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		if cw, ok := dst.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		} else {
			dst.Close()
		}
		done <- struct{}{}
	}
	go cp(a, b)
	go cp(b, a)
	<-done
	<-done
}

// Hand gives c to Accept, or closes it once the listener is closed.
func (l *Chan) Hand(c net.Conn) {
	if !l.Push(c) {
		c.Close()
	}
}

// Serve accepts connections from ln until ctx ends (nil) or Accept fails for
// good (the error), calling handle for each on the accepting goroutine:
// handle starts what serves the connection. Accept timeouts are retried.
func Serve(ctx context.Context, ln net.Listener, handle func(net.Conn)) error {
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return err
		}
		handle(c)
	}
}
