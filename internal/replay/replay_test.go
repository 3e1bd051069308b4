package replay

import (
	"io"
	"net"
	"testing"
)

// The bytes already read come first, then what the peer sends next.
func TestConnReadsHeadThenConnection(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	go func() {
		_, _ = b.Write([]byte(" world"))
		b.Close()
	}()
	got, err := io.ReadAll(&Conn{Conn: a, Head: []byte("hello")})
	if err != nil || string(got) != "hello world" {
		t.Fatalf("read %q, %v; want %q", got, err, "hello world")
	}
}
