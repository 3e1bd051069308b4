package outbound

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"log/slog"
	"math/big"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tlsinspectorv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/tls_inspector/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rampart-mesh/rampart/ca"
	"github.com/rampart-mesh/rampart/ca/catest"
	"github.com/rampart-mesh/rampart/internal/freeport"
	"github.com/rampart-mesh/rampart/proxy/listener"
	"github.com/rampart-mesh/rampart/proxy/upstream"
	"github.com/rampart-mesh/rampart/proxy/xds"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

func TestTCPChainPick(t *testing.T) {
	a, b, wide, def := &tcpChain{name: "a"}, &tcpChain{name: "b"}, &tcpChain{name: "wide"}, &tcpChain{name: "default"}
	r := &tcpRoute{
		exact:    map[string]*tcpChain{"a.example.com": a},
		wildcard: map[string]*tcpChain{".b.example.com": b, ".example.com": wide},
	}
	for _, tc := range []struct {
		sni      string
		fallback *tcpChain
		want     *tcpChain
	}{
		{sni: "a.example.com", want: a},
		{sni: "x.b.example.com", want: b},   // the longest wildcard suffix
		{sni: "y.x.b.example.com", want: b}, // several labels under it
		{sni: "b.example.com", want: wide},  // "*.b.example.com" needs a label in front
		{sni: "c.example.com", want: wide},  // exact misses, wildcard takes it
		{sni: "example.com", want: nil},     // no chain without server_names
		{sni: "example.com", fallback: def, want: def},
		{sni: "", fallback: def, want: def},
		{sni: "", want: nil},
		{sni: "a.example.com.evil.org", want: nil}, // suffixes only
	} {
		r.fallback = tc.fallback
		if got := r.pick(tc.sni); got != tc.want {
			t.Errorf("pick(%q) with fallback %v = %v, want %v", tc.sni, tc.fallback != nil, got, tc.want)
		}
	}
}

// idle_timeout: unset is Envoy's hour, an explicit value is taken, and 0
// turns the timeout off.
func TestTCPProxyIdleTimeout(t *testing.T) {
	for _, tc := range []struct {
		idle *durationpb.Duration
		want time.Duration
	}{{nil, time.Hour}, {durationpb.New(90 * time.Second), 90 * time.Second}, {durationpb.New(0), 0}} {
		got, err := checkTCPProxy("x", &tcpproxyv3.TcpProxy{StatPrefix: "c", ClusterSpecifier: &tcpproxyv3.TcpProxy_Cluster{Cluster: "c"}, IdleTimeout: tc.idle})
		if err != nil || got != tc.want {
			t.Errorf("idle_timeout %v: %v, %v; want %v", tc.idle, got, err, tc.want)
		}
	}
}

func TestTCPListenerRefusesWhatItDoesNotImplement(t *testing.T) {
	tp := func(cluster string) []*listenerv3.Filter {
		return []*listenerv3.Filter{{Name: tcpProxyFilter, ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(t,
			&tcpproxyv3.TcpProxy{StatPrefix: cluster, ClusterSpecifier: &tcpproxyv3.TcpProxy_Cluster{Cluster: cluster}})}}}
	}
	for _, tc := range []struct {
		name string
		l    *listenerv3.Listener
		want string
	}{
		{"server names without tls_inspector", tlsListenerFor(443, nil, &listenerv3.FilterChain{
			FilterChainMatch: &listenerv3.FilterChainMatch{ServerNames: []string{"a"}}, Filters: tp("c")}), "no tls_inspector"},
		{"two default chains", tlsListenerFor(443, &tlsinspectorv3.TlsInspector{}, &listenerv3.FilterChain{Name: "x", Filters: tp("c")}, &listenerv3.FilterChain{Name: "y", Filters: tp("d")}), "both match every connection"},
		{"duplicate server name", tlsListenerFor(443, &tlsinspectorv3.TlsInspector{},
			&listenerv3.FilterChain{Name: "x", FilterChainMatch: &listenerv3.FilterChainMatch{ServerNames: []string{"a.example.com"}}, Filters: tp("c")},
			&listenerv3.FilterChain{Name: "y", FilterChainMatch: &listenerv3.FilterChainMatch{ServerNames: []string{"A.example.com"}}, Filters: tp("d")}), "both match server name"},
		{"other match fields", tlsListenerFor(443, &tlsinspectorv3.TlsInspector{}, &listenerv3.FilterChain{
			FilterChainMatch: &listenerv3.FilterChainMatch{ServerNames: []string{"a"}, TransportProtocol: "tls"}, Filters: tp("c")}), "only server_names"},
		{"infix wildcard", tlsListenerFor(443, &tlsinspectorv3.TlsInspector{}, &listenerv3.FilterChain{
			FilterChainMatch: &listenerv3.FilterChainMatch{ServerNames: []string{"a.*.com"}}, Filters: tp("c")}), "wildcard"},
		{"tcp_proxy fields not implemented", tlsListenerFor(443, nil, &listenerv3.FilterChain{Name: "x", Filters: []*listenerv3.Filter{{Name: tcpProxyFilter,
			ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(t, &tcpproxyv3.TcpProxy{StatPrefix: "c", ClusterSpecifier: &tcpproxyv3.TcpProxy_Cluster{Cluster: "c"},
				MaxConnectAttempts: wrapperspb.UInt32(3), MaxDownstreamConnectionDuration: durationpb.New(time.Second)})}}}}), "max_connect_attempts, max_downstream_connection_duration"},
		{"negative idle_timeout", tlsListenerFor(443, nil, &listenerv3.FilterChain{Name: "x", Filters: []*listenerv3.Filter{{Name: tcpProxyFilter,
			ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(t, &tcpproxyv3.TcpProxy{StatPrefix: "c", ClusterSpecifier: &tcpproxyv3.TcpProxy_Cluster{Cluster: "c"},
				IdleTimeout: durationpb.New(-time.Second)})}}}}), "idle_timeout"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tcp := NewTCP("127.0.0.1", nil, nil)
			_, err := tcp.Prepare(&xds.Resources{Listeners: map[string]*listenerv3.Listener{"l": tc.l}})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Prepare = %v, want an error with %q", err, tc.want)
			}
			// The xDS client runs the same check when the listener arrives.
			if err := CheckTCPListener("l", tc.l); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("CheckTCPListener = %v, want an error with %q", err, tc.want)
			}
		})
	}
}

// tlsEnv is a sidecar's explicit TCP listeners on loopback in front of real
// backends: TLS servers that greet with their name and echo, and a plain
// one that reports the first bytes it received.
type tlsEnv struct {
	t     *testing.T
	tcp   *TCP
	ups   *upstream.Manager
	port  int
	log   *catest.SyncBuffer
	addrs map[string]string // backend name → address
	plain chan []byte       // what the plain backend received first
}

func newTLSEnv(t *testing.T) *tlsEnv {
	t.Helper()
	e := &tlsEnv{t: t, log: &catest.SyncBuffer{}, addrs: map[string]string{}, plain: make(chan []byte, 8)}
	for _, name := range []string{"a.example.com", "b.example.com"} {
		e.addrs[name] = e.tlsBackend(name)
	}
	e.addrs["plain"] = e.plainBackend()
	e.ups = newUpstreams(t, e.addrs)
	e.tcp = NewTCP("127.0.0.1", e.ups, slog.New(slog.NewTextHandler(e.log, nil)))
	e.port = freePort(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = e.tcp.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return e
}

// newUpstreams is an upstream manager with a client identity from a test CA
// and a static plaintext cluster for each name → address in addrs.
func newUpstreams(t *testing.T, addrs map[string]string) *upstream.Manager {
	t.Helper()
	return newUpstreamsWith(t, addrs, nil)
}

// newUpstreamsWith is newUpstreams with each cluster changed by mod (if set).
func newUpstreamsWith(t *testing.T, addrs map[string]string, mod func(*clusterv3.Cluster)) *upstream.Manager {
	t.Helper()
	return newUpstreamsReg(t, addrs, mod, nil)
}

// newUpstreamsReg is newUpstreamsWith with the manager's metrics in reg.
func newUpstreamsReg(t *testing.T, addrs map[string]string, mod func(*clusterv3.Cluster), reg prometheus.Registerer) *upstream.Manager {
	t.Helper()
	a, err := ca.New(ca.Config{StateDir: t.TempDir(), TrustDomain: spiffeid.RequireTrustDomainFromString("cluster.local")})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Load(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	ups, err := upstream.NewManager(upstream.Config{SVID: staticSVID{catest.IssueSVID(t, a, "default", "client")}, Bundle: a.Bundle(), Metrics: reg})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ups.Close)
	var clusters []*clusterv3.Cluster
	for name, addr := range addrs {
		host, port, _ := net.SplitHostPort(addr)
		p, _ := strconv.Atoi(port)
		clusters = append(clusters, &clusterv3.Cluster{Name: name, ConnectTimeout: durationpb.New(5 * time.Second),
			ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
			LoadAssignment: &endpointv3.ClusterLoadAssignment{ClusterName: name, Endpoints: []*endpointv3.LocalityLbEndpoints{{LbEndpoints: []*endpointv3.LbEndpoint{{
				HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: &corev3.Address{Address: &corev3.Address_SocketAddress{
					SocketAddress: &corev3.SocketAddress{Address: host, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(p)}}}}}}}}}}},
		})
	}
	if mod != nil {
		for _, c := range clusters {
			mod(c)
		}
	}
	if err := ups.Update(clusters, nil); err != nil {
		t.Fatal(err)
	}
	return ups
}

type staticSVID struct{ s *x509svid.SVID }

func (s staticSVID) GetX509SVID() (*x509svid.SVID, error) { return s.s, nil }

func freePort(t *testing.T) int {
	t.Helper()
	p, err := freeport.Port()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func (e *tlsEnv) serveBackend(handle func(net.Conn)) string {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		e.t.Fatal(err)
	}
	var wg sync.WaitGroup
	e.t.Cleanup(func() { lis.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(20 * time.Second))
				handle(c)
			})
		}
	})
	return lis.Addr().String()
}

// tlsBackend greets with its name, then echoes, over TLS with a certificate for name.
func (e *tlsEnv) tlsBackend(name string) string {
	cert := selfSigned(e.t, name)
	return e.serveBackend(func(c net.Conn) {
		tc := tls.Server(c, &tls.Config{Certificates: []tls.Certificate{cert}})
		if _, err := io.WriteString(tc, name+"\n"); err != nil {
			return
		}
		_, _ = io.Copy(tc, tc)
		_ = tc.CloseWrite()
	})
}

func (e *tlsEnv) plainBackend() string {
	return e.serveBackend(func(c net.Conn) {
		buf := make([]byte, 64<<10)
		n, _ := c.Read(buf)
		e.plain <- buf[:n]
	})
}

func selfSigned(t *testing.T, name string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name}, DNSNames: []string{name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func mustAny(t *testing.T, m proto.Message) *anypb.Any {
	t.Helper()
	a, err := anypb.New(m)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func tlsListenerFor(port int, ti *tlsinspectorv3.TlsInspector, chains ...*listenerv3.FilterChain) *listenerv3.Listener {
	l := &listenerv3.Listener{
		Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
			Address: "0.0.0.0", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(port)}}}},
		FilterChains: chains,
	}
	if ti != nil {
		a, _ := anypb.New(ti)
		l.ListenerFilters = []*listenerv3.ListenerFilter{{Name: tlsInspectorFilter, ConfigType: &listenerv3.ListenerFilter_TypedConfig{TypedConfig: a}}}
	}
	return l
}

// chain is a filter chain to cluster for server names (none: the default chain).
func (e *tlsEnv) chain(cluster string, names ...string) *listenerv3.FilterChain {
	fc := &listenerv3.FilterChain{Name: cluster + "-chain", Filters: []*listenerv3.Filter{{Name: tcpProxyFilter, ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(e.t,
		&tcpproxyv3.TcpProxy{StatPrefix: cluster, ClusterSpecifier: &tcpproxyv3.TcpProxy_Cluster{Cluster: cluster}})}}}}
	if len(names) > 0 {
		fc.FilterChainMatch = &listenerv3.FilterChainMatch{ServerNames: names}
	}
	return fc
}

// apply installs one TLS listener and waits until it serves.
func (e *tlsEnv) apply(l *listenerv3.Listener) {
	e.t.Helper()
	apply, err := e.tcp.Prepare(&xds.Resources{Listeners: map[string]*listenerv3.Listener{"0.0.0.0_" + strconv.Itoa(e.port): l}})
	if err != nil {
		e.t.Fatal(err)
	}
	apply()
	deadline := time.Now().Add(10 * time.Second)
	for {
		e.tcp.mu.Lock()
		_, open := e.tcp.open[e.port]
		e.tcp.mu.Unlock()
		if open {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatal("listener not open")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (e *tlsEnv) dial() net.Conn {
	e.t.Helper()
	c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(e.port)), 5*time.Second)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(15 * time.Second))
	return c
}

// through runs a TLS session with server name sni through the listener and
// returns who answered (the greeting and the certificate's name agree), after
// echoing a payload larger than any buffer on the way.
func (e *tlsEnv) through(sni string) (string, error) {
	e.t.Helper()
	tc := tls.Client(e.dial(), &tls.Config{ServerName: sni, InsecureSkipVerify: true}) //nolint:gosec // the test checks the name itself
	if err := tc.Handshake(); err != nil {
		return "", err
	}
	br := bufio.NewReader(tc)
	greeting, err := br.ReadString('\n')
	if err != nil {
		return "", err
	}
	name := strings.TrimSpace(greeting)
	if cn := tc.ConnectionState().PeerCertificates[0].Subject.CommonName; cn != name {
		e.t.Errorf("greeting %q from a server whose certificate is %q", name, cn)
	}
	payload := bytes.Repeat([]byte("0123456789abcdef"), 16<<10) // 256 KiB
	go func() { _, _ = tc.Write(payload); _ = tc.CloseWrite() }()
	echoed, err := io.ReadAll(br)
	if err != nil || !bytes.Equal(echoed, payload) {
		e.t.Errorf("echo through %s: %d of %d bytes, equal=%t, err %v", name, len(echoed), len(payload), bytes.Equal(echoed, payload), err)
	}
	return name, nil
}

func TestTCPTLSListenerBySNI(t *testing.T) {
	e := newTLSEnv(t)
	ti := &tlsinspectorv3.TlsInspector{}
	e.apply(tlsListenerFor(e.port, ti,
		e.chain("a.example.com", "a.example.com"),
		e.chain("b.example.com", "*.b.example.com", "b.example.com"),
		e.chain("plain")))

	for _, tc := range []struct{ sni, want string }{
		{"a.example.com", "a.example.com"},
		{"A.Example.Com", "a.example.com"},
		{"b.example.com", "b.example.com"},
		{"x.b.example.com", "b.example.com"},
	} {
		if got, err := e.through(tc.sni); err != nil || got != tc.want {
			t.Errorf("SNI %q reached %q (%v), want %q", tc.sni, got, err, tc.want)
		}
	}

	// An unknown name goes to the chain without server_names, which gets the
	// ClientHello byte for byte: it reads the same SNI from it.
	go func() {
		tc := tls.Client(e.dial(), &tls.Config{ServerName: "other.example.org", InsecureSkipVerify: true}) //nolint:gosec // never completes
		_ = tc.Handshake()
	}()
	hello := <-e.plain
	lis, srv := pipeWith(t, hello)
	defer lis.Close()
	if _, sni, err := listener.ReadClientHello(srv, 0, 5*time.Second); err != nil || sni != "other.example.org" {
		t.Errorf("the default chain's backend got a ClientHello for %q (%v), want other.example.org", sni, err)
	}
	// Not TLS at all: the bytes arrive as sent.
	c := e.dial()
	if _, err := io.WriteString(c, "hello, plaintext\n"); err != nil {
		t.Fatal(err)
	}
	if got := <-e.plain; string(got) != "hello, plaintext\n" {
		t.Errorf("plain backend got %q", got)
	}

	// Live: without the default chain an unknown name is refused (NR), and
	// a.example.com now goes to b's backend.
	e.apply(tlsListenerFor(e.port, ti,
		e.chain("b.example.com", "a.example.com", "b.example.com")))
	if got, err := e.through("a.example.com"); err != nil || got != "b.example.com" {
		t.Errorf("after the swap a.example.com reached %q (%v), want b.example.com", got, err)
	}
	if got, err := e.through("c.example.com"); err == nil {
		t.Errorf("unknown SNI reached %q, want the connection closed", got)
	}
	waitLog(t, e.log, "flags=NR")
	if !strings.Contains(e.log.String(), "sni=c.example.com") {
		t.Errorf("NR access line lacks the SNI:\n%s", e.log.String())
	}
}

// TestTCPTLSListenerSlowClient: a client that never finishes its ClientHello
// is closed after listener_filters_timeout, or handed to the default chain
// when continue_on_listener_filters_timeout says so.
func TestTCPTLSListenerSlowClient(t *testing.T) {
	e := newTLSEnv(t)
	l := tlsListenerFor(e.port, &tlsinspectorv3.TlsInspector{}, e.chain("a.example.com", "a.example.com"), e.chain("plain"))
	l.ListenerFiltersTimeout = durationpb.New(200 * time.Millisecond)
	e.apply(l)
	c := e.dial()
	if _, err := c.Write([]byte{0x16, 0x03}); err != nil {
		t.Fatal(err)
	}
	if n, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatalf("read %d bytes, want the connection closed", n)
	}
	waitLog(t, e.log, "flags=NR")
	select {
	case b := <-e.plain:
		t.Fatalf("the default chain got %q although continue_on_listener_filters_timeout is false", b)
	default:
	}

	l = proto.Clone(l).(*listenerv3.Listener)
	l.ContinueOnListenerFiltersTimeout = true
	e.apply(l)
	c = e.dial()
	if _, err := c.Write([]byte{0x16, 0x03}); err != nil {
		t.Fatal(err)
	}
	if got := <-e.plain; !bytes.Equal(got, []byte{0x16, 0x03}) {
		t.Errorf("default chain got %x, want 1603", got)
	}
}

// TestTCPPlainListenerDoesNotWait: without a tls_inspector nothing is read
// before dialing, so a protocol where the server speaks first works.
func TestTCPPlainListenerDoesNotWait(t *testing.T) {
	e := newTLSEnv(t)
	l := tlsListenerFor(e.port, nil, e.chain("a.example.com"))
	l.ListenerFiltersTimeout = durationpb.New(time.Hour) // would block the greeting if anything waited
	e.apply(l)
	tc := tls.Client(e.dial(), &tls.Config{ServerName: "anything", InsecureSkipVerify: true}) //nolint:gosec // test
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	if g, err := bufio.NewReader(tc).ReadString('\n'); err != nil || g != "a.example.com\n" {
		t.Errorf("greeting %q %v", g, err)
	}
}

func waitLog(t *testing.T, log *catest.SyncBuffer, s string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(log.String(), s) {
		if time.Now().After(deadline) {
			t.Fatalf("log never said %q:\n%s", s, log.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// pipeWith returns a connection that reads b, then EOF.
func pipeWith(t *testing.T, b []byte) (io.Closer, net.Conn) {
	t.Helper()
	a, c := net.Pipe()
	go func() { _, _ = a.Write(b); a.Close() }()
	return a, c
}
