package listener

import (
	"errors"
	"io"
	"net"
	"testing"
	"time"
)

func TestChanHandsOverAndCloses(t *testing.T) {
	l := NewChan(&net.TCPAddr{})
	a, b := net.Pipe()
	defer b.Close()
	go func() {
		if !l.Push(a) {
			t.Error("push refused on an open listener")
		}
	}()
	c, err := l.Accept()
	if err != nil || c != a {
		t.Fatalf("Accept = %v, %v; want the pushed conn", c, err)
	}
	l.Close()
	if _, err := l.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Accept after Close: %v, want net.ErrClosed", err)
	}
	if l.Push(a) {
		t.Fatal("a closed listener took a connection")
	}
}

func TestSplice(t *testing.T) {
	srv, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	// An echo server behind the splice.
	go func() {
		c, err := srv.Accept()
		if err != nil {
			return
		}
		_, _ = io.Copy(c, c)
		c.Close()
	}()
	front, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer front.Close()
	go func() {
		in, err := front.Accept()
		if err != nil {
			return
		}
		out, err := net.Dial("tcp", srv.Addr().String())
		if err != nil {
			in.Close()
			return
		}
		Splice(in, out)
		in.Close()
		out.Close()
	}()
	c, err := net.Dial("tcp", front.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	_ = c.(*net.TCPConn).CloseWrite() // the half-close must travel through
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "hello" {
		t.Fatalf("echo through the splice = %q, %v", got, err)
	}
}

// A spliced connection that carries no byte either way for the idle timeout
// is closed at both ends; one that keeps talking is not.
func TestSpliceIdleTimeout(t *testing.T) {
	const idle = 200 * time.Millisecond
	a1, a2 := net.Pipe()
	b1, b2 := net.Pipe()
	done := make(chan struct{})
	start := time.Now()
	go func() { SpliceIdle(a2, b1, idle); close(done) }()
	// Talk for three idle periods: the splice must stay up.
	go func() { _, _ = io.Copy(io.Discard, b2) }()
	var lastWrite time.Time
	for time.Since(start) < 3*idle {
		lastWrite = time.Now()
		if _, err := a1.Write([]byte("x")); err != nil {
			t.Fatalf("write while active, after %v: %v", time.Since(start), err)
		}
		time.Sleep(idle / 4)
	}
	select {
	case <-done:
		t.Fatal("an active splice was closed")
	default:
	}
	// Then fall silent: both ends are closed within about one idle period.
	select {
	case <-done:
	case <-time.After(10 * idle):
		t.Fatal("an idle splice was never closed")
	}
	if waited := time.Since(lastWrite); waited < idle {
		t.Fatalf("closed %v after the last byte; want at least the idle timeout %v", waited, idle)
	}
	if _, err := a1.Write([]byte("x")); err == nil {
		t.Fatal("the client side is still open")
	}
}
