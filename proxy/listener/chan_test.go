package listener

import (
	"errors"
	"io"
	"net"
	"testing"
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
