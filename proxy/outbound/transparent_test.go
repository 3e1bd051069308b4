package outbound

import (
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/rampart-mesh/rampart/proxy/listener"
)

// TestTransparentConnHalfCloses: CloseWrite on a redirected connection, wrapped
// as classify wraps it, half-closes the TCP connection: the client reads the
// end while it can still send. The HTTP/1 server's lingering close relies on it.
func TestTransparentConnHalfCloses(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	client, err := net.DialTimeout("tcp", lis.Addr().String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	srv, err := lis.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	_ = client.SetDeadline(time.Now().Add(10 * time.Second))
	_ = srv.SetDeadline(time.Now().Add(10 * time.Second))

	if _, err := io.WriteString(client, "GET / HTTP/1.1\r\n"); err != nil {
		t.Fatal(err)
	}
	sc, isHTTP, err := listener.SniffHTTP(srv, 5*time.Second)
	if err != nil || !isHTTP {
		t.Fatalf("SniffHTTP = %t, %v; want HTTP", isHTTP, err)
	}
	var c net.Conn = &transparentConn{Conn: sc, dst: netip.MustParseAddrPort("10.0.0.1:80")}
	cw, ok := c.(interface{ CloseWrite() error })
	if !ok {
		t.Fatal("transparentConn has no CloseWrite: the HTTP/1 server cannot half-close it")
	}
	if err := cw.CloseWrite(); err != nil {
		t.Fatalf("CloseWrite: %v", err)
	}
	if n, err := client.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("client read %d bytes, %v; want EOF", n, err)
	}
	if _, err := io.WriteString(client, "Host: x\r\n\r\n"); err != nil {
		t.Fatalf("client cannot send after the half-close: %v", err)
	}
	_ = client.(*net.TCPConn).CloseWrite()
	got, err := io.ReadAll(c)
	if want := "GET / HTTP/1.1\r\nHost: x\r\n\r\n"; err != nil || string(got) != want {
		t.Fatalf("server read %q, %v; want %q", got, err, want)
	}
}
