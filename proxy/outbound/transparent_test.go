package outbound

import (
	"bufio"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"testing"
	"time"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"github.com/rampart-mesh/rampart/proxy/h1"
	"github.com/rampart-mesh/rampart/proxy/listener"
	"github.com/rampart-mesh/rampart/proxy/xds"
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

// A redirected connection to a port declared TCP takes the port's TCP route
// without sniffing, as in Istio: bytes that look like HTTP do not divert it
// to the HTTP path (and from there, plaintext, to the original destination),
// and a server-first protocol gets its greeting at once.
func TestTransparentTCPPortNotSniffed(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	serve := func(addr, name string) string {
		lis, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { lis.Close() })
		go func() {
			for {
				c, err := lis.Accept()
				if err != nil {
					return
				}
				go func() {
					defer c.Close()
					_, _ = io.WriteString(c, name+"\n") // speaks first
					_, _ = io.Copy(io.Discard, c)
				}()
			}
		}()
		return lis.Addr().String()
	}
	clusterAddr := serve("127.0.0.1:0", "cluster")
	origAddr := serve("127.0.0.1:0", "passthrough")
	orig := netip.MustParseAddrPort(origAddr)

	ups := newUpstreams(t, map[string]string{"outbound|db": clusterAddr})
	tcp := NewTCP("", ups, slog.New(slog.DiscardHandler))
	go func() { _ = tcp.Run(ctx) }()
	l := tlsListenerFor(int(orig.Port()), nil, &listenerv3.FilterChain{Name: "db", Filters: []*listenerv3.Filter{{Name: tcpProxyFilter,
		ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(t, &tcpproxyv3.TcpProxy{StatPrefix: "db",
			ClusterSpecifier: &tcpproxyv3.TcpProxy_Cluster{Cluster: "outbound|db"}})}}}})
	res := &xds.Resources{Listeners: map[string]*listenerv3.Listener{"db": l}}
	applyTCP, err := tcp.Prepare(res)
	if err != nil {
		t.Fatal(err)
	}
	applyTCP()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	s, err := New(Config{Listener: lis, Upstreams: ups, Transparent: true, TCP: tcp})
	if err != nil {
		t.Fatal(err)
	}
	apply, err := s.Prepare(res)
	if err != nil {
		t.Fatal(err)
	}
	apply()
	s.h1 = &h1.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(599) })}

	for _, payload := range []string{"GET /x HTTP/1.1\r\nHost: db:5432\r\n\r\n", ""} {
		for deadline := time.Now().Add(5 * time.Second); tcp.routeFor(int(orig.Port())) == nil && time.Now().Before(deadline); {
			time.Sleep(10 * time.Millisecond)
		}
		client, err := net.Dial("tcp", lis.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		srv, err := lis.Accept()
		if err != nil {
			t.Fatal(err)
		}
		go s.classifyTo(ctx, srv, orig)
		_, _ = io.WriteString(client, payload)
		_ = client.SetReadDeadline(time.Now().Add(time.Second)) // well under the sniff timeout
		line, err := bufio.NewReader(client).ReadString('\n')
		client.Close()
		if line != "cluster\n" {
			t.Errorf("payload %q: the client read %q (%v); want the TCP route's cluster to answer at once", payload, line, err)
		}
	}
}
