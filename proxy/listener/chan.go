package listener

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
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

// DefaultTCPIdleTimeout is how long a spliced connection may carry no byte
// either way before both sides are closed: Envoy's tcp_proxy default.
const DefaultTCPIdleTimeout = time.Hour

// Splice is SpliceIdle with DefaultTCPIdleTimeout.
func Splice(a, b net.Conn) { SpliceIdle(a, b, DefaultTCPIdleTimeout) }

// SpliceIdle copies bytes both ways between a and b. When one direction ends
// it half-closes the other side's write (or closes it), and it returns when
// both directions have ended. Once no byte has moved either way for idle
// (0: no limit), both connections are closed: an idle or half-dead peer
// cannot hold the connection (and the listener's slot) for ever.
func SpliceIdle(a, b net.Conn, idle time.Duration) {
	var last atomic.Int64 // UnixNano of the last byte read either way
	last.Store(time.Now().UnixNano())
	var stop func() bool
	if idle > 0 {
		var t *time.Timer
		var mu sync.Mutex
		finished := false
		mu.Lock() // t is set before the timer's function can read it
		t = time.AfterFunc(idle, func() {
			mu.Lock()
			defer mu.Unlock()
			if finished {
				return
			}
			if left := idle - time.Since(time.Unix(0, last.Load())); left > 0 {
				t.Reset(left)
				return
			}
			a.Close()
			b.Close()
		})
		mu.Unlock()
		stop = func() bool {
			mu.Lock()
			defer mu.Unlock()
			finished = true
			return t.Stop()
		}
	}
	done := make(chan struct{}, 2)
	cp := func(dst, src net.Conn) {
		var r io.Reader = src
		if idle > 0 {
			r = &activeReader{r: src, last: &last}
		}
		_, _ = io.Copy(dst, r)
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
	if stop != nil {
		stop()
	}
}

// activeReader records when it last read a byte.
type activeReader struct {
	r    io.Reader
	last *atomic.Int64
}

func (a *activeReader) Read(p []byte) (int, error) {
	n, err := a.r.Read(p)
	if n > 0 {
		a.last.Store(time.Now().UnixNano())
	}
	return n, err
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
